"""Rosbag replay through a live panoptic_node: the evaluation users run on the vehicle's own recordings.

`replay()` does, in order:
1. checks the bag (image topic present and an Image or CompressedImage topic, ground-truth topic an Image);
2. starts panoptic_node in its own process with the params file, in a private namespace (a replay never
   talks to a live camera or node on the same network), its `image` input remapped to the bag's topic name
   inside that namespace; the node's log goes to <report>/node.log;
3. waits until the node is ready: its subscription and outputs matched, and it answered a warm-up frame (a
   copy of the first frame with a stamp of its own), so model loading and the first, slow inference are not
   measured;
4. plays every image message of the topic as raw CDR (header stamps untouched) from a real rclpy publisher
   when its bag time comes, scaled by `rate`, like `ros2 bag play`;
5. records what the node publishes for those frames: id images (compressed in memory), instance arrays,
   the node's per-frame timing messages and its /diagnostics;
6. stops the node (SIGINT) once it is idle, evaluates the id images against the ground-truth topic by header
   stamp, and writes the report of `eval-bag` plus end-to-end latency (output received - frame published) and
   drops (frames sent - frames processed, broken down with the node's own counters).
With `tracking`, the node runs with its `tracking` parameter set to that value and the replay scores track ids
too (STQ, identity switches): its track images when true, its per-frame ids (the id images) when false.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from panoptic_ros.classes import LabelSet
from panoptic_ros.data.rosbag_io import (
    COMPRESSED_TYPE,
    IMAGE_TYPE,
    BagError,
    TopicInfo,
    list_topics,
    read_images,
    stamp_to_ns,
)
from panoptic_ros.evaluation.pq import PQResult
from panoptic_ros.pipeline_io import THRESHOLD_INPUTS
from panoptic_ros.ros.node_counters import NodeCounters
from panoptic_ros.runtime.model_thresholds import check_overrides
from panoptic_ros.tracking.stq import STQAccumulator, STQResult, split_id_map

END_TO_END = "end_to_end"  # latency series name: output received - frame published
DIAGNOSTICS_PERIOD_S = 0.25  # the node reports this often during a replay, so the end is seen quickly
WARMUP_ATTEMPT_S = 3.0  # a warm-up frame not answered within this is sent again (best-effort input may lose it)
QUIET_S = 2.0  # an idle node whose received count has not moved for this long has seen all it will see
OUTPUT_WAIT_S = 5.0  # how long outputs of processed frames may still be on their way to us
LOG_TAIL_LINES = 25


@dataclass(frozen=True)
class FrameCounts:
    """What happened to the frames of a replay; node counters are over the playback only (warm-up excluded)."""

    sent: int  # image messages published by the replay
    received: int  # frames that reached the node's callback
    processed: int  # frames the node ran and published
    dropped: int  # frames the node replaced by a newer one before running them
    rejected: int  # malformed frames the node refused
    failed: int  # frames whose processing raised
    outputs: int  # id images of sent frames that reached the replay

    @property
    def lost(self) -> int:
        """Frames sent that never reached the node (a best-effort link under load loses some)."""
        return self.sent - self.received

    @property
    def not_processed(self) -> int:
        """Dropped frames in the user's sense: sent and never turned into outputs by the node."""
        return self.sent - self.processed

    @property
    def consistent(self) -> bool:
        """The node's own counters explain every frame that was sent and not processed."""
        return self.not_processed == self.lost + self.dropped + self.rejected + self.failed

    def as_dict(self) -> dict[str, int | bool]:
        return {"frames sent": self.sent, "frames received by the node": self.received,
                "frames processed": self.processed, "frames not processed": self.not_processed,
                "dropped by the node": self.dropped, "lost before the node": self.lost,
                "rejected by the node": self.rejected, "failed in the node": self.failed,
                "outputs received": self.outputs, "drop counts consistent": self.consistent}


@dataclass
class ReplayResult:
    report: dict[str, Path]  # files written, by name (see report.write_report), plus "node_log"
    result: PQResult | None  # None without a ground-truth topic or when no frame could be evaluated
    counts: FrameCounts
    latency_ms: dict[str, dict[str, float]]  # per series (node stages, "total", END_TO_END): count, mean, p50, ...
    info: dict[str, Any]
    tracking: STQResult | None = None  # with `tracking` and a ground-truth topic
    label_set: LabelSet | None = None


# ---------------------------------------------------------------------------------------------
# The bag


@dataclass(frozen=True)
class BagTopics:
    image: TopicInfo
    gt: TopicInfo | None


def check_bag(bag: Path, image_topic: str, gt_topic: str | None) -> BagTopics:
    """The bag's image (and ground-truth) topic; FileNotFoundError / BagError (a ValueError) naming the bag's
    topics when one is missing or carries the wrong type."""
    topics = {t.name: t for t in list_topics(bag)}

    def find(name: str, types: tuple[str, ...], what: str) -> TopicInfo:
        listed = ", ".join(f"{t.name} ({t.msgtype}, {t.count} msgs)" for t in topics.values()) or "none"
        if name not in topics:
            raise BagError(f"{what} topic {name!r} is not in bag {bag}; its topics: {listed}")
        if topics[name].msgtype not in types:
            raise BagError(f"{what} topic {name!r} in bag {bag} carries {topics[name].msgtype}, expected "
                           f"{' or '.join(types)}; its topics: {listed}")
        if topics[name].count == 0:
            raise BagError(f"{what} topic {name!r} in bag {bag} has no messages")
        return topics[name]

    image = find(image_topic, (IMAGE_TYPE, COMPRESSED_TYPE), "image")
    gt = find(gt_topic, (IMAGE_TYPE,), "ground-truth") if gt_topic else None
    return BagTopics(image, gt)


def raw_messages(bag: Path, topic: str):
    """(bag time ns, raw CDR bytes) of every message on `topic`, in bag time order: played without decoding."""
    from rosbags.rosbag2 import Reader

    reader = Reader(bag)
    reader.open()
    count = 0
    try:
        messages = reader.messages(connections=[c for c in reader.connections if c.topic == topic])
        while True:
            try:
                _, bag_time, raw = next(messages)
            except StopIteration:
                return
            except Exception as error:  # rosbags raises many kinds for damaged files; all mean the same here
                raise BagError(f"bag {bag} is truncated or corrupt: reading {topic!r} failed after {count} "
                               f"messages: {type(error).__name__}: {error}") from error
            count += 1
            yield bag_time, bytes(raw)
    finally:
        reader.close()


# ---------------------------------------------------------------------------------------------
# Recording


@dataclass
class Recorder:
    """When each frame was sent, and what came back for it (outputs of other stamps, e.g. warm-up, are ignored)."""

    sent_at: dict[int, float] = field(default_factory=dict)  # stamp ns -> monotonic time published
    received_at: dict[int, float] = field(default_factory=dict)  # stamp ns -> monotonic time its id image arrived
    id_images: dict[int, tuple[tuple[int, int], bytes]] = field(default_factory=dict)  # stamp -> (shape, zlib int32)
    track_images: dict[int, tuple[tuple[int, int], bytes]] = field(default_factory=dict)  # likewise
    instance_counts: dict[int, int] = field(default_factory=dict)  # stamp ns -> segments in its instance array
    lock: threading.Lock = field(default_factory=threading.Lock)
    clock: Callable[[], float] = time.monotonic  # seconds; injected by tests

    def mark_sent(self, stamp_ns: int) -> None:
        with self.lock:
            self.sent_at[stamp_ns] = self.clock()

    def on_output(self, camera: str, topic: str, msg) -> None:
        """PanopticClient callback (its spin thread)."""
        from panoptic_ros.ros.image_conversion import image_msg_to_array

        now = self.clock()
        stamp = stamp_to_ns(msg.header.stamp)
        with self.lock:
            if stamp not in self.sent_at:
                return
        if topic in ("id_image", "track_image"):
            ids = np.ascontiguousarray(image_msg_to_array(msg), dtype=np.int32)
            stored = (ids.shape, zlib.compress(ids, 1))  # id maps are flat regions: 20-100x smaller, ~1 ms
            with self.lock:
                if topic == "track_image":
                    self.track_images[stamp] = stored
                else:
                    self.received_at[stamp], self.id_images[stamp] = now, stored
        elif topic == "instances":
            with self.lock:
                self.instance_counts[stamp] = len(msg.segments)

    def id_image(self, stamp_ns: int, track: bool = False) -> np.ndarray:
        """The id image (or with `track`, the track image) of a frame."""
        shape, data = (self.track_images if track else self.id_images)[stamp_ns]
        return np.frombuffer(zlib.decompress(data), dtype=np.int32).reshape(shape)

    def end_to_end_ms(self) -> list[float]:
        with self.lock:
            return [(self.received_at[s] - self.sent_at[s]) * 1e3 for s in sorted(self.received_at)]


# ---------------------------------------------------------------------------------------------
# The node


class NodeFailed(RuntimeError):
    """panoptic_node exited or never became ready; the message ends with its log's last lines."""


def node_arguments(namespace: str, image_topic: str, compressed: bool, params_file: Path,
                   model_path: Path | None, tracking: bool | None = None) -> list[str]:
    """`--ros-args` of the replay's node: private namespace, the bag's topic name inside it, the params file."""
    input_name = "image/compressed" if compressed else "image"
    arguments = ["-r", f"__ns:={namespace}", "-r", f"{input_name}:={image_topic.lstrip('/')}",
                 "--params-file", str(params_file),
                 "-p", f"input_type:={'compressed' if compressed else 'raw'}",
                 "-p", f"diagnostics_period:={DIAGNOSTICS_PERIOD_S}"]
    if model_path is not None:
        arguments += ["-p", f"model:={model_path}"]
    if tracking is not None:
        arguments += ["-p", f"tracking:={str(tracking).lower()}"]
    return arguments


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    text = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return "\n".join(text[-lines:]) or "(empty)"


class NodeWatch:
    """The node process and its log: raises NodeFailed, with the log's tail, when the process has gone."""

    def __init__(self, process: subprocess.Popen, log_path: Path) -> None:
        self.process, self.log_path = process, log_path

    def check(self) -> None:
        if self.process.poll() is not None:
            raise NodeFailed(f"panoptic_node exited with code {self.process.returncode}; last lines of "
                             f"{self.log_path}:\n{log_tail(self.log_path)}")

    def fail(self, what: str) -> NodeFailed:
        return NodeFailed(f"{what}; last lines of {self.log_path}:\n{log_tail(self.log_path)}")


def node_status(client, hardware_id: str, predicate: Callable[[dict[str, str]], bool], timeout: float
                ) -> dict[str, str]:
    """The newest /diagnostics values of the node `hardware_id` (its full name) that satisfy `predicate`."""
    from panoptic_ros.ros.diagnostics import status_values

    def find():
        for array in reversed(client.diagnostics):
            for status in array.status:
                if status.hardware_id == hardware_id:
                    values = status_values(status)
                    return values if predicate(values) else None
        return None
    return client.wait_for(find, timeout, f"a /diagnostics status of {hardware_id}")


def _idle(values: dict[str, str]) -> bool:
    return NodeCounters.from_status(values).settled


def wait_until_settled(client, hardware_id: str, watch: NodeWatch, baseline: NodeCounters, sent: int,
                       timeout: float) -> dict[str, str]:
    """The node's status once it is idle and has received all `sent` frames since `baseline`, or (frames lost on
    a best-effort link) once its received count has stood still for QUIET_S."""
    deadline = time.monotonic() + timeout
    last_received, since = -1, time.monotonic()
    while True:
        watch.check()
        try:
            values = node_status(client, hardware_id, _idle, timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            raise watch.fail(f"panoptic_node did not finish the frames within {timeout:.0f} s") from None
        received = int(values["received"]) - baseline.received
        if received >= sent:
            return values
        if received != last_received:
            last_received, since = received, time.monotonic()
        elif time.monotonic() - since > QUIET_S:
            return values
        time.sleep(DIAGNOSTICS_PERIOD_S)


def wait_until_ready(client, publisher, hardware_id: str, watch: NodeWatch, warmup_msg, timeout: float) -> int:
    """Wait for discovery, then send the warm-up frame until the node answers it; the number of warm-up sends.
    A node that refuses the frame (an encoding it does not read, too many pixels) fails at once, with its reason."""
    deadline = time.monotonic() + timeout

    def matched() -> bool:
        return publisher.get_subscription_count() > 0 and all(s.get_publisher_count() > 0
                                                               for s in client.subscriptions)
    while not matched():
        watch.check()
        if time.monotonic() > deadline:
            raise watch.fail(f"panoptic_node did not subscribe and advertise its outputs within {timeout:.0f} s")
        time.sleep(0.05)
    sends = 0
    while True:
        sends += 1
        warmup_msg.header.stamp.sec, warmup_msg.header.stamp.nanosec = 0, sends  # stamps no bag frame has
        publisher.publish(warmup_msg)
        try:
            client.outputs("", (0, sends), ("id_image",), timeout=WARMUP_ATTEMPT_S)
            return sends
        except TimeoutError:
            watch.check()
            try:
                status = node_status(client, hardware_id, lambda values: True, timeout=1.0)
            except TimeoutError:
                status = {}
            if int(status.get("rejected", 0)) + int(status.get("failed", 0)):
                raise NodeFailed(f"panoptic_node cannot use the frames of this topic: {status['last_problem']}"
                                 ) from None
            if time.monotonic() > deadline:
                raise watch.fail(f"panoptic_node did not answer a warm-up frame within {timeout:.0f} s") from None


def play(bag: Path, topic: str, count: int, publisher, recorder: Recorder, rate: float, progress: bool = False
         ) -> tuple[int, int]:
    """Publish the `count` messages of `topic` at their bag time / rate; (frames sent, frames skipped because their
    stamp repeats an earlier one's: outputs are matched to frames by stamp, so a repeat would be ambiguous)."""
    from rclpy.serialization import deserialize_message
    from tqdm import tqdm

    sent = repeated = 0
    start = first_bag_time = None
    for bag_time, raw in tqdm(raw_messages(bag, topic), desc="replay", unit="frame", total=count,
                              disable=not progress):
        stamp = stamp_to_ns(deserialize_message(raw, publisher.msg_type).header.stamp)
        if stamp in recorder.sent_at:
            repeated += 1
            continue
        if start is None:
            start, first_bag_time = time.monotonic(), bag_time
        delay = start + (bag_time - first_bag_time) / 1e9 / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        recorder.mark_sent(stamp)
        publisher.publish(raw)
        sent += 1
    return sent, repeated


@dataclass
class LiveRun:
    """What the live part of a replay measured."""

    counts: FrameCounts
    repeated_stamps: int
    playback_s: float
    stage_latencies_ms: dict[str, list[float]]  # the node's latency topics, per stage
    label_set: LabelSet
    label_divisor: int
    status: dict[str, str]  # the node's last /diagnostics values (backend, model, device, ...)
    exit_code: int
    fusion: dict[str, int]  # frames not converged and candidates dropped while the bag played (not the warm-up)


def run_live(bag: Path, topics: BagTopics, params_file: Path, model_path: Path | None, rate: float,
             recorder: Recorder, log_path: Path, ready_timeout: float, progress: bool,
             tracking: bool | None = None) -> LiveRun:
    """Start the node, warm it up, play the bag into it, wait until it has finished, stop it."""
    from rclpy.qos import QoSProfile
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CompressedImage, Image

    from panoptic_ros.ros.client import NODE_NAME, PanopticClient, start_node, stop_node
    from panoptic_ros.ros.diagnostics import TOTAL

    compressed = topics.image.msgtype == COMPRESSED_TYPE
    msg_type = CompressedImage if compressed else Image
    namespace = f"/panoptic_replay_{os.getpid()}"
    hardware_id = f"{namespace}/{NODE_NAME}"
    messages = raw_messages(bag, topics.image.name)
    warmup = deserialize_message(next(messages)[1], msg_type)
    messages.close()

    with log_path.open("w") as log:
        process = start_node(node_arguments(namespace, topics.image.name, compressed, params_file, model_path,
                                            tracking), stdout=log, stderr=subprocess.STDOUT)
        watch = NodeWatch(process, log_path)
        client = None
        try:
            outputs = ("id_image", "instances", *(("track_image",) if tracking else ()))
            client = PanopticClient(namespace, outputs=outputs, timing=True, on_output=recorder.on_output)
            # The bag's topic name inside the private namespace, where the node's input is remapped to.
            publisher = client.node.create_publisher(msg_type, topics.image.name.lstrip("/"), QoSProfile(depth=10))
            warmups = wait_until_ready(client, publisher, hardware_id, watch, warmup, ready_timeout)
            warmed = wait_until_settled(client, hardware_id, watch, NodeCounters(), warmups, ready_timeout)
            baseline = NodeCounters.from_status(warmed)
            client.reset_latencies()
            start = time.monotonic()
            sent, repeated = play(bag, topics.image.name, topics.image.count, publisher, recorder, rate, progress)
            playback_s = time.monotonic() - start
            status = wait_until_settled(client, hardware_id, watch, baseline, sent, ready_timeout)
            done = (NodeCounters.from_status(status) - baseline).as_dict()
            fusion = {label: int(status[key]) - int(warmed[key]) for label, key in FUSION_COUNTERS.items()}
            # Outputs, then the latency values (published last), of the final frames may still be on their way.
            deadline = time.monotonic() + OUTPUT_WAIT_S
            while (min(len(recorder.id_images), len(client.latencies[("", TOTAL)])) < done["processed"]
                   and time.monotonic() < deadline):
                time.sleep(0.05)
            stage_latencies = {stage: list(values) for (_, stage), values in client.latencies.items()}
            class_map = client.class_maps[""][-1]
        finally:
            if client is not None:
                client.close()
            exit_code = stop_node(process)
    counts = FrameCounts(sent=sent, outputs=len(recorder.id_images), **done)
    return LiveRun(counts, repeated, playback_s, stage_latencies, label_set_of(class_map), class_map.label_divisor,
                   status, exit_code, fusion)


# report label -> the node's /diagnostics key (counters since the node started)
FUSION_COUNTERS = {"frames not converged": "not_converged", "candidates dropped": "candidates_dropped"}


def status_thresholds(status: dict[str, str]) -> tuple[dict[str, float], dict[str, str]]:
    """The thresholds the node ran with and their sources, from its /diagnostics values ("0.3 (model default)")."""
    values, sources = {}, {}
    for name in THRESHOLD_INPUTS:
        value, _, source = status[name].partition(" (")
        values[name], sources[name] = float(value), source.removesuffix(")")
    return values, sources


def label_set_of(class_map) -> LabelSet:
    """The running model's label set, from its panoptic/class_map message."""
    return LabelSet(name=class_map.model_name or "model", names=tuple(c.name for c in class_map.classes),
                    thing=tuple(bool(c.is_thing) for c in class_map.classes),
                    colors=tuple(tuple(round(255 * v) for v in (c.color.r, c.color.g, c.color.b))
                                 for c in class_map.classes))


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class Evaluation:
    result: PQResult | None
    skipped: dict[str, int]  # frames with an output left out of the metrics, by reason (eval-bag's reasons)
    notes: list[str]  # the first example of each reason, and the ground truth's notes
    overlays: list[np.ndarray]
    tracking: STQResult | None = None


def overlay_stamps(stamps: list[int], count: int) -> list[int]:
    """`count` stamps spread evenly over the run."""
    if not stamps or count <= 0:
        return []
    return sorted({stamps[i] for i in np.linspace(0, len(stamps) - 1, min(count, len(stamps))).round().astype(int)})


def evaluate(bag: Path, topics: BagTopics, recorder: Recorder, label_set: LabelSet, label_divisor: int,
             overlay_count: int, tracking: bool | None = None) -> Evaluation:
    """PQ of the recorded id images against the ground-truth topic (eval-bag's matching: same header stamp), and
    side-by-side overlays of a few frames. With `tracking` set, STQ too: of the track images (true; a frame
    without one is scored as untracked) or of the id images' per-frame ids (false)."""
    from panoptic_ros.evaluation.ground_truth import TopicGroundTruth
    from panoptic_ros.evaluation.report import side_by_side
    from panoptic_ros.evaluation.scoring import FrameEvaluator

    stamps = sorted(recorder.id_images)  # ground truth is read as a stream: ask in stamp order
    chosen = overlay_stamps(stamps, overlay_count)
    ground_truth = TopicGroundTruth(bag, topics.gt.name) if topics.gt is not None else None
    evaluator = FrameEvaluator(ground_truth, label_set, label_divisor)
    position = {stamp: i for i, stamp in enumerate(recorder.sent_at)}  # the frame's place among those sent
    gt_of_chosen: dict[int, np.ndarray] = {}
    stq = STQAccumulator(label_set.thing) if tracking is not None and ground_truth is not None else None
    if ground_truth is not None:
        for stamp in stamps:
            gt = evaluator.add(recorder.id_image(stamp), stamp, position[stamp])
            if gt is not None and stamp in chosen:
                gt_of_chosen[stamp] = gt.as_id_map(label_divisor, label_set)
            if gt is not None and stq is not None:
                tracked = tracking and stamp in recorder.track_images
                predicted = recorder.id_image(stamp, track=tracked)
                classes, tracks = split_id_map(predicted, label_divisor)
                stq.add(*split_id_map(gt.as_id_map(label_divisor, label_set), label_divisor), classes,
                        tracks if tracked or not tracking else np.zeros_like(tracks))

    overlays = []
    for frame in read_images(bag, topics.image.name, skipped=[]):
        if frame.stamp_ns in chosen and frame.pixels.shape[:2] == recorder.id_images[frame.stamp_ns][0]:
            overlays.append(side_by_side(frame.pixels, gt_of_chosen.get(frame.stamp_ns),
                                         recorder.id_image(frame.stamp_ns), label_set, label_divisor))
            if len(overlays) == len(chosen):
                break
    result = evaluator.result()
    return Evaluation(result if result is not None and result.num_frames else None, dict(evaluator.skipped),
                      evaluator.notes, overlays, stq.result() if stq is not None and stq.switches_per_frame else None)


# ---------------------------------------------------------------------------------------------
# The whole replay


def params_file_overrides(params_file: Path) -> dict[str, float]:
    """The thresholds the params file sets (overrides of the model's defaults; checked here, so a bad file fails
    before the node starts)."""
    from panoptic_ros.evaluation.node_params import read_params_file

    values = read_params_file(params_file)
    overrides = {name: values[name] for name in THRESHOLD_INPUTS if name in values}
    check_overrides(overrides)
    return overrides


def replay(bag: str | Path, image_topic: str, report_dir: str | Path, *, params_file: str | Path,
           gt_topic: str | None = None, model_path: str | Path | None = None, rate: float = 1.0,
           overlays: int = 4, ready_timeout: float = 120.0, progress: bool = False,
           tracking: bool | None = None) -> ReplayResult:
    """Replay `bag`'s `image_topic` through a live panoptic_node started with `params_file` (and `model_path`
    instead of its model), evaluate against `gt_topic`, and write the report into `report_dir`. `tracking`:
    see the module's doc.

    Raises FileNotFoundError / BagError (a ValueError) for a missing bag, topic or file, NodeFailed (a
    RuntimeError) when the node exits or does not become ready, RuntimeError when no output came back.
    """
    from panoptic_ros.evaluation.report import latency_summary, write_report

    bag, report_dir, params_file = Path(bag), Path(report_dir), Path(params_file)
    if not rate > 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if model_path is not None:
        model_path = Path(model_path).resolve()
        if not model_path.is_file():
            raise FileNotFoundError(f"model file not found: {model_path}")
    params_file_overrides(params_file)
    topics = check_bag(bag, image_topic, gt_topic)
    report_dir.mkdir(parents=True, exist_ok=True)
    log_path = report_dir / "node.log"
    recorder = Recorder()
    live = run_live(bag, topics, params_file, model_path, rate, recorder, log_path, ready_timeout, progress,
                    tracking)
    counts = live.counts
    if counts.outputs == 0:
        raise RuntimeError(f"no outputs came back from panoptic_node: it received {counts.received} of "
                           f"{counts.sent} frames, processed {counts.processed}, rejected {counts.rejected}, failed "
                           f"{counts.failed} (last problem: {live.status.get('last_problem') or 'none'}); "
                           f"last lines of {log_path}:\n{log_tail(log_path)}")

    evaluation = evaluate(bag, topics, recorder, live.label_set, live.label_divisor, overlays, tracking)
    latencies = {**live.stage_latencies_ms, END_TO_END: recorder.end_to_end_ms()}
    not_evaluated = {"dropped by the node (a newer frame replaced it)": counts.dropped,
                     "lost before the node": counts.lost, "rejected by the node": counts.rejected,
                     "failed in the node": counts.failed, "output not received": counts.processed - counts.outputs,
                     "repeated stamp (not sent)": live.repeated_stamps, **evaluation.skipped}
    status = live.status
    thresholds, sources = status_thresholds(status)
    # The keys eval-bag's report has, then the replay's own.
    info = {"bag": str(bag), "image topic": image_topic,
            "ground truth": f"topic {gt_topic} (same header stamp)" if gt_topic else "none",
            "model": status.get("model", ""), "model file": status.get("model_path", ""),
            "backend": status.get("backend", ""), "device": status.get("device", ""),
            "input size": status.get("input_hw", ""), "thresholds": thresholds, "threshold sources": sources,
            "label divisor": live.label_divisor, **live.fusion,
            "frames evaluated": evaluation.result.num_frames if evaluation.result is not None else 0,
            "params file": str(params_file), "playback rate": rate, "playback seconds": round(live.playback_s, 2),
            "frames in bag": topics.image.count, **counts.as_dict(),
            "instance arrays received": len(recorder.instance_counts),
            "segments per frame": round(float(np.mean(list(recorder.instance_counts.values()) or [0])), 1),
            "node exit code": live.exit_code}
    if evaluation.notes:
        info["notes"] = "; ".join(evaluation.notes)
    mode = tracking_mode(tracking)
    if mode:
        info["tracking"] = mode
    paths = write_report(report_dir, result=evaluation.result, latencies_ms=latencies, overlays=evaluation.overlays,
                         skipped={k: v for k, v in not_evaluated.items() if v}, info=info, label_set=live.label_set,
                         tracking=(evaluation.tracking, mode) if evaluation.tracking is not None else None)
    paths["node_log"] = log_path
    return ReplayResult(paths, evaluation.result, counts, latency_summary(latencies), info, evaluation.tracking,
                        live.label_set)


def tracking_mode(tracking: bool | None) -> str:
    """Where a replay's track ids come from."""
    if tracking is None:
        return ""
    return "panoptic_node's tracker (tracking: true)" if tracking else "per-frame ids (tracking: false)"


def summary(run: ReplayResult) -> str:
    """A few lines for the terminal: quality, latency, drops, where the report is."""
    def number(value: float | None) -> str:
        return f"{value:.1f}" if value is not None else "-"

    lines = []
    if run.result is not None:
        r = run.result
        lines.append(f"PQ {number(r.all.pq)}  SQ {number(r.all.sq)}  RQ {number(r.all.rq)}  mIoU {number(r.miou)}  "
                     f"({r.num_frames} frames evaluated)")
    for name, label in ((END_TO_END, "end-to-end"), ("inference", "inference")):
        if name in run.latency_ms:
            s = run.latency_ms[name]
            lines.append(f"latency {label}: p50 {s['p50']:.0f} ms, p90 {s['p90']:.0f} ms, p99 {s['p99']:.0f} ms")
    c = run.counts
    lines.append(f"dropped frames: {c.not_processed} of {c.sent} (newer frame replaced it: {c.dropped}, lost before "
                 f"the node: {c.lost}, rejected: {c.rejected}, failed: {c.failed})"
                 + ("" if c.consistent else " -- the node's counters do not add up to this; see metrics.json"))
    if run.tracking is not None:
        from panoptic_ros.tracking.report import summary_line

        lines.append(summary_line(run.tracking, run.info["tracking"], run.label_set))
    ignored = [name for name, source in run.info["threshold sources"].items() if source.endswith("override ignored")]
    if ignored:
        lines.append(f"warning: the params file sets {', '.join(ignored)}, which {run.info['model']} does not use: "
                     "no effect")
    fusion = {label: run.info[label] for label in FUSION_COUNTERS}
    if any(fusion.values()):
        lines.append("warning: " + ", ".join(f"{label}: {count}" for label, count in fusion.items())
                     + " (NMS / pasting stopped at the graph's sweep bound; objects beyond K are void)")
    lines.append(f"report: {run.report['markdown']}")
    return "\n".join(lines)
