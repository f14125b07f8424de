"""A camera driver in its own process, as a robot has one: it publishes rgb8 frames of one size with
one QoS to a running panoptic_node and counts the frames the node answers (by the stamp of its
panoptic/timing messages); it can also wait for the node's /diagnostics to warn about it.

    python -m panoptic_ros.ros.camera_trial --namespace /robot --size 1280x720 --qos best_effort --frames 8

prints one JSON line: size, QoS, frames sent and answered, and the WARN seen (if asked for). `--table`
instead starts a node itself and re-runs the whole QoS-by-size-by-profile table of README's "Cameras on a
robot" section, each driver in a process of its own. The two-process tests use this module.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

PROFILE = Path(__file__).resolve().parents[2] / "config" / "fastdds_large_data.xml"
PROFILE_VARIABLES = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")  # Fast DDS 2.x, 3.x
QOS_CHOICES = ("reliable", "best_effort")
SIZES = ((640, 480), (1280, 720), (2048, 1024))
STAMP_BASE = 5_000_000


def profile_environment(path: Path | str | None) -> dict[str, str]:
    """The variables that make Fast DDS 2.x and 3.x read the profile at `path` (none for None)."""
    return dict.fromkeys(PROFILE_VARIABLES, str(path)) if path else {}


def without_profile(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in PROFILE_VARIABLES}


def driver_qos(qos: str):
    """What camera drivers use: sensor data (best effort, keep last 5) or the default (reliable, keep last 10)."""
    from rclpy.qos import QoSProfile, qos_profile_sensor_data

    return qos_profile_sensor_data if qos == "best_effort" else QoSProfile(depth=10)


def frame(width: int, height: int, index: int):
    from sensor_msgs.msg import Image

    gray = (index * 37) % 256  # a flat frame: the trial is about transport, not content
    msg = Image(height=height, width=width, encoding="rgb8", step=width * 3,
                data=array.array("B", bytes([gray]) * (width * height * 3)))
    msg.header.frame_id = "trial_camera"
    msg.header.stamp.sec = STAMP_BASE + index
    return msg


def run_driver(namespace: str, camera: str, width: int, height: int, qos: str, frames: int, answer_timeout: float,
               match_timeout: float, expect_warn: float, mute: bool = False) -> dict[str, Any]:
    """Publish `frames` frames one at a time, each until answered or `answer_timeout`; with `expect_warn` > 0,
    instead publish (nothing if `mute`: a stuck driver) for up to that many seconds while watching /diagnostics
    for the node's WARN about silence."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from panoptic_ros.msg import PanopticTiming

    rclpy.init()
    node = rclpy.create_node("camera_trial_driver", namespace=namespace)
    prefix = f"{camera}/" if camera else ""
    publisher = node.create_publisher(Image, prefix + "image", driver_qos(qos))
    answered: set[int] = set()
    warnings: list[tuple[float, str]] = []
    condition = threading.Condition()

    def on_timing(msg) -> None:
        with condition:
            answered.add(msg.header.stamp.sec - STAMP_BASE)
            condition.notify_all()

    def on_diagnostics(msg) -> None:
        for status in msg.status:
            level = status.level if isinstance(status.level, int) else ord(status.level)
            if status.name.endswith(f": {camera or 'image'}") and status.hardware_id == f"{namespace}/panoptic_node" \
                    and level == 1 and "no frames" in status.message:
                with condition:
                    warnings.append((time.monotonic(), status.message))
                    condition.notify_all()

    timing = node.create_subscription(PanopticTiming, prefix + "panoptic/timing", on_timing, QoSProfile(depth=100))
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.05)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    result: dict[str, Any] = {"size": f"{width}x{height}", "qos": qos, "profile": bool(os.environ.get(
        PROFILE_VARIABLES[0])), "frame_kB": round(width * height * 3 / 1000)}
    try:
        deadline = time.monotonic() + match_timeout
        while publisher.get_subscription_count() == 0 or timing.get_publisher_count() == 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no panoptic_node on {publisher.topic_name} within {match_timeout:.0f} s")
            time.sleep(0.05)
        matched = time.monotonic()
        # input_qos auto: the node re-subscribes with the driver's reliability within about a second; frames sent
        # before the new subscription is matched are not for it.
        wanted = ReliabilityPolicy.RELIABLE if qos == "reliable" else ReliabilityPolicy.BEST_EFFORT
        while {i.qos_profile.reliability for i in node.get_subscriptions_info_by_topic(publisher.topic_name)} != {
                wanted} or publisher.get_subscription_count() != 1:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the node did not subscribe {qos} to {publisher.topic_name} in {match_timeout} s")
            time.sleep(0.05)
        result["qos_settled_s"] = round(time.monotonic() - matched, 2)
        if expect_warn > 0:
            index = 0
            with condition:
                while not warnings and time.monotonic() - matched < expect_warn:
                    if not mute:
                        publisher.publish(frame(width, height, index))
                        index += 1
                    condition.wait(0.2)
            result.update(sent=index, answered=len(answered), warn_after_match_s=round(warnings[0][0] - matched, 2)
                          if warnings else None, warn_message=warnings[0][1] if warnings else "")
        else:
            for index in range(frames):
                publisher.publish(frame(width, height, index))
                with condition:
                    condition.wait_for(lambda i=index: i in answered, answer_timeout)
            result.update(sent=frames, answered=len(answered),
                          every_frame_after_the_first=set(range(1, frames)) <= answered)
    finally:
        stop.set()
        spinner.join()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return result


def driver_process(namespace: str, camera: str, size: tuple[int, int], qos: str, profile: bool, frames: int = 4,
                   expect_warn: float = 0.0, mute: bool = False, answer_timeout: float = 10.0,
                   timeout: float = 120.0) -> dict[str, Any]:
    """Run one driver in a process of its own (with or without the profile); its JSON result."""
    env = without_profile(dict(os.environ))
    env.update(profile_environment(PROFILE if profile else None))
    command = [sys.executable, "-m", "panoptic_ros.ros.camera_trial", "--namespace", namespace, "--camera", camera,
               "--size", f"{size[0]}x{size[1]}", "--qos", qos, "--frames", str(frames), "--expect-warn",
               str(expect_warn), "--answer-timeout", str(answer_timeout), *(["--mute"] if mute else [])]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"camera trial failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def node_command(namespace: str, cameras: tuple[str, ...], diagnostics_period: float = 0.5) -> list[str]:
    """panoptic_node on the shipped psn model (CPU), input_qos auto, serving `cameras`."""
    return [sys.executable, "-m", "panoptic_ros.ros.node", "--ros-args", "-r", f"__ns:={namespace}",
            "-p", "model:=psn", "-p", "backend:=onnxruntime", "-p", "device:=cpu",
            "-p", f"diagnostics_period:={diagnostics_period}", "-p", f"cameras:=[{', '.join(cameras)}]"]


def start_node(namespace: str, cameras: tuple[str, ...], profile: bool, **popen: Any) -> subprocess.Popen:
    env = {**without_profile(dict(os.environ)), **profile_environment(PROFILE if profile else None)}
    return subprocess.Popen(node_command(namespace, cameras), env=env, **popen)


def table(frames: int) -> list[dict[str, Any]]:
    """The issue's table: each size with a reliable driver and no DDS set-up in the driver (the node has the
    profile, as the launch file starts it), and with a best-effort driver with the profile in both processes;
    then a best-effort 640x480 driver with no profile anywhere (answered, or the node's WARN)."""
    from panoptic_ros.ros.client import stop_node

    namespace = f"/camera_trial_{os.getpid()}"
    rows = []
    node = start_node(namespace, ("sized",), profile=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for size in SIZES:
            for qos, profile in (("reliable", False), ("best_effort", True)):
                row = driver_process(namespace, "sized", size, qos, profile=profile, frames=frames)
                rows.append({**row, "node_profile": True})
    finally:
        stop_node(node)
    bare = f"{namespace}_bare"
    node = start_node(bare, ("silent",), profile=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        row = driver_process(bare, "silent", (640, 480), "best_effort", profile=False, expect_warn=10.0)
        rows.append({**row, "node_profile": False})
    finally:
        stop_node(node)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| camera frames (rgb8) | driver's QoS | Fast DDS profile (driver / node) | answered by the node |",
             "|---|---|---|---|"]
    for row in rows:
        answer = f"{row['answered']} of {row['sent']}"
        if row.get("warn_after_match_s") is not None:
            answer += f"; /diagnostics WARN {row['warn_after_match_s']:.1f} s after matching"
        profiles = " / ".join("yes" if row[key] else "no" for key in ("profile", "node_profile"))
        lines.append(f"| {row['size']} ({row['frame_kB']} kB) | {row['qos'].replace('_', ' ')} | {profiles} | "
                     f"{answer} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespace", default="", help="the node's namespace")
    parser.add_argument("--camera", default="", help="camera name (the node's `cameras` entry; empty: one camera)")
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT")
    parser.add_argument("--qos", choices=QOS_CHOICES, default="best_effort")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--answer-timeout", type=float, default=3.0, help="seconds to wait for each answer")
    parser.add_argument("--match-timeout", type=float, default=30.0)
    parser.add_argument("--expect-warn", type=float, default=0.0,
                        help="publish for up to this many seconds, waiting for the node's WARN about silence")
    parser.add_argument("--mute", action="store_true", help="with --expect-warn: publish nothing (a stuck driver)")
    parser.add_argument("--table", action="store_true", help="start a node and re-run the whole table")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown(table(args.frames)))
        return 0
    width, height = (int(v) for v in args.size.lower().split("x"))
    print(json.dumps(run_driver(args.namespace, args.camera, width, height, args.qos, args.frames,
                                args.answer_timeout, args.match_timeout, args.expect_warn, args.mute)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
