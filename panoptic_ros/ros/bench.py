"""`panoptic-ros bench node`: load test and overhead benchmark of a live panoptic_node process.

Starts panoptic_node, publishes camera frames (1024x2048 rgb8 at 30 Hz for 60 s by default) from
this process while subscribing to its outputs, and reports:
- memory: the node's resident set (VmRSS) sampled from /proc through the run, and its peak (VmHWM);
- freshness: every output comes from the newest frame: when the node starts on a frame, typically (median)
  at most one newer frame has been sent (one can be in transit), this lag does not grow over the run,
  and outputs never go back to an older frame; the outputs' age (receive time minus send time) is reported;
- drops: the node's drop counter equals frames received minus frames processed; a frame sent but never
  received was replaced in the node's reader history (keep last 1) before its executor took it, or, with
  --input-qos SENSOR_DATA (best effort), lost on the link;
- the node's own per-frame overhead: everything except the backend run (convert, resize both ways,
  messages, publishing), from its per-frame timing messages (panoptic/timing), and the cost of receiving (deserializing)
  one frame, which happens in the executor thread before the node's callback runs; also the worker's CPU
  time for the same work (robust on a shared machine, where wall-clock stages include waiting for a CPU);
- the tracker's cost per frame at the frame size with 50 thing instances (tracking.bench), in this process.
Exit status 0 when the freshness, drop and memory checks pass.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from panoptic_ros import bench_report
from panoptic_ros.ros.node_counters import NodeCounters

STAMP_BASE = 1_000_000  # frame i is stamped sec = STAMP_BASE + i
DISTINCT_FRAMES = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="psn", help="shipped model name or model file (default: psn)")
    parser.add_argument("--backend", default="onnxruntime", help="backend of the node (default: onnxruntime)")
    parser.add_argument("--device", default="cpu", help="device of the node (default: cpu)")
    parser.add_argument("--params-file", type=Path, help="parameters file for the node (before the options above)")
    parser.add_argument("--height", type=int, default=1024, help="camera frame height (default: 1024)")
    parser.add_argument("--width", type=int, default=2048, help="camera frame width (default: 2048)")
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second to publish (default: 30)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to publish (default: 60)")
    parser.add_argument("--overlay", action="store_true", help="also subscribe to panoptic/overlay (RViz watching)")
    parser.add_argument("--input-qos", default="DEFAULT", choices=("auto", "DEFAULT", "SENSOR_DATA"),
                        help="the node's input QoS: DEFAULT (reliable: no frame is lost on the link) or SENSOR_DATA "
                             "(best effort, as a camera driver); the node keeps only the newest frame either way")
    parser.add_argument("--max-rss-growth-mb", type=float, default=50.0,
                        help="allowed RSS growth from the second to the last quarter of the run (default: 50; the "
                             "first quarter is warm-up: buffers and DDS histories fill)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    bench_report.add_arguments(parser)


def read_memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in kB, from /proc/<pid>/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


class MemorySampler(threading.Thread):
    """Samples a process's RSS every `period` seconds until stopped."""

    def __init__(self, pid: int, period: float = 0.5) -> None:
        super().__init__(name="rss_sampler", daemon=True)
        self.pid, self.period = pid, period
        self.samples: list[tuple[float, int]] = []  # (monotonic time, VmRSS kB)
        self.peak_kb = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.period):
            try:
                memory = read_memory_kb(self.pid)
            except FileNotFoundError:
                return
            self.samples.append((time.monotonic(), memory["VmRSS"]))
            self.peak_kb = max(self.peak_kb, memory["VmHWM"])

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@dataclass
class Arrivals:
    """When each frame was sent, and when its instance array came back."""

    sent: dict[int, float] = field(default_factory=dict)
    received: list[tuple[int, float]] = field(default_factory=list)  # (frame index, monotonic time)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_output(self, camera: str, topic: str, msg) -> None:
        if topic == "instances":
            with self.lock:
                self.received.append((msg.header.stamp.sec - STAMP_BASE, time.monotonic()))


def make_frames(height: int, width: int, count: int):
    """`count` distinct rgb8 Image messages of a street-like scene (bands of color plus seeded noise)."""
    from sensor_msgs.msg import Image

    rng = np.random.default_rng(0)
    frames = []
    for _ in range(count):
        pixels = np.empty((height, width, 3), np.uint8)
        pixels[: height // 2] = (70, 130, 180)
        pixels[height // 2:] = (128, 64, 128)
        pixels[height // 3: height * 3 // 4, width // 4: width // 2] = (0, 0, 142)
        pixels += rng.integers(0, 30, pixels.shape, dtype=np.uint8)
        msg = Image(height=height, width=width, encoding="rgb8", step=width * 3,
                    data=array.array("B", pixels.tobytes()))
        msg.header.frame_id = "bench_camera"
        frames.append(msg)
    return frames


def receive_cost_ms(frame) -> float:
    """Mean time to deserialize one frame: what the node's executor pays per frame before its callback."""
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image

    data = serialize_message(frame)
    start = time.perf_counter()
    for _ in range(10):
        deserialize_message(data, Image)
    return (time.perf_counter() - start) / 10 * 1e3


def counters(client, camera: str = "") -> NodeCounters:
    return NodeCounters.from_status(client.camera_status(camera))


def wait_until_settled(client, timeout: float, quiet: float = 1.5) -> NodeCounters:
    """The node's counters once every received frame was processed or dropped and no frame arrived for
    `quiet` seconds (late deliveries of a reliable link included)."""
    deadline = time.monotonic() + timeout
    previous = None
    while time.monotonic() < deadline:
        client.camera_status("", lambda v: NodeCounters.from_status(v).settled,
                             timeout=max(0.1, deadline - time.monotonic()))
        current = counters(client)
        if current == previous:
            return current
        previous = current
        time.sleep(quiet)
    raise TimeoutError(f"the node did not settle within {timeout:.0f} s")


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


@contextmanager
def _environment(values: dict[str, str]):
    """Set environment variables for the duration of the block, then put back what was there."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run(args: argparse.Namespace) -> int:
    import subprocess

    from panoptic_ros.ros.client import PanopticClient, start_node, stop_node

    namespace = f"/panoptic_bench_{os.getpid()}"
    ros_args = ["-r", f"__ns:={namespace}"]
    if args.params_file:
        ros_args += ["--params-file", str(args.params_file)]
    ros_args += ["-p", f"model:={args.model}", "-p", f"backend:={args.backend}", "-p", f"device:={args.device}",
                 "-p", "diagnostics_period:=0.5", "-p", f"max_pixels:={max(args.height * args.width, 1)}",
                 "-p", f"input_qos:={args.input_qos}"]
    outputs = ("id_image", "semantic", "instances") + (("overlay",) if args.overlay else ())
    arrivals = Arrivals()
    # Large frames: Fast DDS's shared-memory + TCP transports, for the node and for our participant (read
    # when it is created; the variable is put back after). On these machines ROS_AUTOMATIC_DISCOVERY_RANGE=
    # LOCALHOST undoes that for best-effort input (frames are lost): leave it unset for SENSOR_DATA runs.
    transports = {"FASTDDS_BUILTIN_TRANSPORTS": os.environ.get("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")}
    process = start_node(ros_args, env=transports, stdout=subprocess.DEVNULL)
    with _environment(transports):
        client = PanopticClient(namespace, outputs=outputs, timing=True, on_output=arrivals.on_output)
    sampler = MemorySampler(process.pid)
    period = 1.0 / args.rate
    frames = make_frames(args.height, args.width, DISTINCT_FRAMES)
    try:
        client.wait_for_node(timeout=120)
        print(f"node up (pid {process.pid}); warming up", flush=True)
        warm = frames[0]
        for i in range(-100, 0):  # negative indices: warm-up frames, not measured
            warm.header.stamp.sec = STAMP_BASE + i
            client.publish("", warm)
            time.sleep(0.2)
            if arrivals.received:
                break
        else:
            raise RuntimeError("no output from the node during warm-up")
        before = wait_until_settled(client, timeout=60)
        client.reset_latencies()  # the latency series and arrivals start with the measured run
        with arrivals.lock:
            arrivals.received.clear()
        sampler.start()
        print(f"publishing {args.width}x{args.height} rgb8 at {args.rate:g} Hz for {args.duration:g} s", flush=True)
        start = time.monotonic()
        count = int(args.duration * args.rate)
        for index in range(count):
            target = start + index * period
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            frame = frames[index % DISTINCT_FRAMES]
            frame.header.stamp.sec = STAMP_BASE + index
            arrivals.sent[index] = time.monotonic()
            client.publish("", frame)
        publish_seconds = time.monotonic() - start
        after = wait_until_settled(client, timeout=60)
        sampler.stop()
        overhead_cpu_ms = float(client.camera_status("")["overhead_cpu_ms"])  # median of the last 100 frames
        figures = _figures(args, count, publish_seconds, before, after, arrivals, client, sampler,
                           receive_cost_ms(frames[0]), overhead_cpu_ms)
    finally:
        client.close()
        code = stop_node(process)
    figures["node_exit_code"] = code
    from panoptic_ros.tracking.bench import tracker_figures  # scipy: only when benchmarking

    figures.update(tracker_figures(args.height, args.width))
    return _report(args, figures)


def _figures(args, sent: int, publish_seconds: float, before: NodeCounters, after: NodeCounters,
             arrivals: Arrivals, client, sampler: MemorySampler, receive_ms: float, overhead_cpu_ms: float) -> dict:
    delta = (after - before).as_dict()
    latencies = {stage: list(values) for (_, stage), values in client.latencies.items()}
    frames = min(len(v) for v in latencies.values())
    total = np.asarray(latencies["total"][:frames])
    inference = np.asarray(latencies["inference"][:frames])
    overhead = total - inference

    received = [(i, t) for i, t in arrivals.received if i >= 0]
    indices = [i for i, _ in received]
    ages_ms = [(t - arrivals.sent[i]) * 1e3 for i, t in received]
    quarter = max(1, len(ages_ms) // 4)
    rss = [kb / 1024 for _, kb in sampler.samples]
    rss_quarter = max(1, len(rss) // 4)
    # Lag of an output: how many newer frames had been sent when the node started on it (its receive
    # time minus its total node time; outputs and latency values arrive in the same, processing, order).
    # A newest-frame node stays at 0-1 (a frame in transit); a queue would fall further behind every frame.
    send_times = [arrivals.sent[i] for i in range(sent)]
    lags = [int(np.searchsorted(send_times, t - ms / 1e3, side="right")) - 1 - i
            for (i, t), ms in zip(received, total, strict=False)]
    figures = {
        "frame": f"{args.width}x{args.height} rgb8", "rate_hz": args.rate, "duration_s": args.duration,
        "model": args.model, "backend": args.backend, "device": args.device, "overlay_subscribed": args.overlay,
        "input_qos": args.input_qos, "load_average_1min": os.getloadavg()[0],
        "sent": sent, "publish_rate_hz": sent / publish_seconds,
        "node_received": delta["received"], "node_processed": delta["processed"], "node_dropped": delta["dropped"],
        "node_rejected": delta["rejected"], "node_failed": delta["failed"],
        "processed_rate_hz": delta["processed"] / publish_seconds,
        "outputs_received": len(received),
        "age_ms_p50": percentile(ages_ms, 50), "age_ms_p99": percentile(ages_ms, 99), "age_ms_max": max(ages_ms),
        "age_ms_first_quarter_median": percentile(ages_ms[:quarter], 50),
        "age_ms_last_quarter_median": percentile(ages_ms[-quarter:], 50),
        "lag_frames_p50": percentile(lags, 50), "lag_frames_p99": percentile(lags, 99), "lag_frames_max": max(lags),
        "lag_frames_first_quarter_mean": float(np.mean(lags[:quarter])),
        "lag_frames_last_quarter_mean": float(np.mean(lags[-quarter:])),
        "outputs_in_frame_order": indices == sorted(indices),
        "rss_mb_second_quarter_mean": float(np.mean(rss[rss_quarter: 2 * rss_quarter])), "rss_mb_last_quarter_mean":
            float(np.mean(rss[-rss_quarter:])), "rss_mb_max_sampled": max(rss), "rss_mb_peak_vmhwm":
            sampler.peak_kb / 1024,
        "rss_mb_per_second": [round(mb, 1) for mb in rss[:: max(1, int(round(1.0 / sampler.period)))]],
        "frames_timed": frames,
        "latency_ms_p50": {stage: percentile(v[:frames], 50) for stage, v in latencies.items()},
        "latency_ms_mean": {stage: float(np.mean(v[:frames])) for stage, v in latencies.items()},
        "latency_ms_p99": {stage: percentile(v[:frames], 99) for stage, v in latencies.items()},
        "overhead_ms_mean": float(overhead.mean()), "overhead_ms_p50": percentile(overhead, 50),
        "overhead_ms_p99": percentile(overhead, 99),
        "receive_deserialize_ms": receive_ms,
        "overhead_cpu_ms_p50": overhead_cpu_ms,
    }
    # Headline figures are medians: on a shared machine, means mostly measure other people's jobs.
    own = figures["overhead_ms_p50"] + receive_ms
    figures["overhead_with_receive_ms_p50"] = own
    figures["overhead_share_of_frame_time"] = own / (own + percentile(inference, 50))
    figures["checks"] = load_checks(figures, delta, args.max_rss_growth_mb)
    return figures


def load_checks(figures: dict, delta: dict, max_rss_growth_mb: float) -> dict[str, bool]:
    """The pass/fail checks of a load run, from its figures and the node's counter changes over it."""
    return {
        "drop_counter_equals_received_minus_processed":
            delta["dropped"] == delta["received"] - delta["processed"] - delta["rejected"] - delta["failed"],
        # The median, not the tail: on a busy machine frames can sit in transit or in the executor for a
        # while (p99, max are reported); a queue instead falls behind by more frames every second.
        "outputs_from_newest_frames": figures["outputs_in_frame_order"] and figures["lag_frames_p50"] <= 1,
        # In frames, not in ms: the age also follows the backend's speed, which a shared machine changes.
        "staleness_does_not_grow": figures["lag_frames_last_quarter_mean"] <= figures["lag_frames_first_quarter_mean"]
        + 1,
        "memory_flat": figures["rss_mb_last_quarter_mean"] - figures["rss_mb_second_quarter_mean"]
        <= max_rss_growth_mb,
    }


def _report(args, figures: dict) -> int:
    from panoptic_ros.tracking.bench import tracker_report_line

    f = figures
    stages = ", ".join(f"{s} {f['latency_ms_p50'][s]:.2f}/{f['latency_ms_mean'][s]:.2f}"
                       for s in ("convert", "resize", "inference", "publish", "total"))
    lines = [
        f"panoptic_node under load: {f['frame']} at {f['rate_hz']:g} Hz for {f['duration_s']:g} s "
        f"({f['model']} on {f['backend']}/{f['device']}, input QoS {f['input_qos']}"
        f"{', overlay subscribed' if f['overlay_subscribed'] else ''}; load average {f['load_average_1min']:.1f})",
        f"  sent {f['sent']} frames ({f['publish_rate_hz']:.1f} Hz); node received {f['node_received']}, "
        f"processed {f['node_processed']} ({f['processed_rate_hz']:.2f} Hz), dropped {f['node_dropped']}, "
        f"rejected {f['node_rejected']}, failed {f['node_failed']}",
        f"  output age ms (sent to output received): p50 {f['age_ms_p50']:.0f}, p99 {f['age_ms_p99']:.0f}, max "
        f"{f['age_ms_max']:.0f}; first/last quarter median {f['age_ms_first_quarter_median']:.0f}/"
        f"{f['age_ms_last_quarter_median']:.0f}; in frame order: {f['outputs_in_frame_order']}",
        f"  newer frames already sent when the node started a frame: p50 {f['lag_frames_p50']:.0f}, p99 "
        f"{f['lag_frames_p99']:.0f}, max {f['lag_frames_max']}; first/last quarter mean "
        f"{f['lag_frames_first_quarter_mean']:.2f}/{f['lag_frames_last_quarter_mean']:.2f}",
        f"  node RSS MB: second quarter {f['rss_mb_second_quarter_mean']:.0f}, last quarter "
        f"{f['rss_mb_last_quarter_mean']:.0f}, max sampled {f['rss_mb_max_sampled']:.0f}, peak (VmHWM) "
        f"{f['rss_mb_peak_vmhwm']:.0f}",
        f"  stage latency ms, median/mean of {f['frames_timed']} frames: {stages}",
        f"  node overhead per frame (all but the backend run) ms: p50 {f['overhead_ms_p50']:.2f}, "
        f"mean {f['overhead_ms_mean']:.2f}, p99 {f['overhead_ms_p99']:.2f}; with receiving (deserialize, "
        f"{f['receive_deserialize_ms']:.2f}): {f['overhead_with_receive_ms_p50']:.2f} ms = "
        f"{100 * f['overhead_share_of_frame_time']:.1f}% of the median frame time",
        f"  node overhead per frame as worker CPU time (not inflated by waiting for a busy CPU): p50 "
        f"{f['overhead_cpu_ms_p50']:.2f} ms",
        tracker_report_line(f),
        "  checks: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in f["checks"].items()),
    ]
    print("\n".join(lines), flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    machine = bench_report.describe_machine(f"the node's (model {f['model']} on {f['backend']}/{f['device']})",
                                            ("onnxruntime", "rclpy"))
    bench_report.publish(args, "node", machine, _markdown_table(f), f"{f['frame']} at {f['rate_hz']:g} Hz for "
                         f"{f['duration_s']:g} s, input QoS {f['input_qos']}; checks: " +
                         ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in f["checks"].items()))
    return 0 if all(f["checks"].values()) else 1


def _markdown_table(f: dict) -> str:
    """The headline figures: medians, and the overhead as a share of the frame time (a ratio from one run)."""
    rows = [("frames sent / processed / dropped", f"{f['sent']} / {f['node_processed']} / {f['node_dropped']}"),
            ("inference per frame, p50 ms", f"{f['latency_ms_p50']['inference']:.1f}"),
            ("node overhead per frame (all but inference, with receiving), p50 ms",
             f"{f['overhead_with_receive_ms_p50']:.2f}"),
            ("overhead share of the frame time", f"{100 * f['overhead_share_of_frame_time']:.1f}%"),
            ("newer frames sent when the node started a frame, p50", f"{f['lag_frames_p50']:.0f}"),
            ("node RSS, peak MB", f"{f['rss_mb_peak_vmhwm']:.0f}"),
            (f"tracker per frame ({f['tracker_frame']}), CPU time p50 ms", f"{f['tracker_cpu_ms_p50']:.2f}")]
    return "\n".join(["| figure | value |", "|---|---:|", *(f"| {name} | {value} |" for name, value in rows)])
