"""Offline evaluation of a model on a rosbag2 recording: every frame, in order, none dropped.

    backend = create_backend("onnxruntime", "models/psn.onnx")
    ground_truth = TopicGroundTruth("drive.mcap", "/camera/panoptic_gt")
    evaluation = evaluate_bag("drive.mcap", "/camera/image_raw", backend, ground_truth=ground_truth)
    evaluation.write_report("report/")

Each frame goes through what panoptic_node does to a live one: decode (raw or compressed), resize
to the model's input (bilinear), run, map the outputs back to the camera's size (nearest), with
the node's own `Resampler`. The prediction is then scored against the frame's ground truth at the
camera's size (evaluation.ground_truth: a topic of id images or a panoptic folder; evaluation.scoring:
the skip rules). `output_bag` also writes what the node would have published (evaluation.prediction_bag).
`tracking` gives every frame's things track ids and scores them (STQ; tracking.evaluation).

Every message of the image topic has a position (0-based, undecodable messages included): it is what
`max_frames` counts and what index-matched ground truth goes by. A bag that turns out damaged part-way
ends the run after the frames before the damage, which are evaluated and reported with the error.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from panoptic_ros.classes import DEFAULT_LABEL_DIVISOR, LabelSet
from panoptic_ros.data.rosbag_io import BagError, ImageFrame, SkippedMessage, list_topics, read_images
from panoptic_ros.evaluation.ground_truth import GroundTruthSource
from panoptic_ros.evaluation.pq import PQResult
from panoptic_ros.evaluation.prediction_bag import PredictionBagWriter, prediction_namespace
from panoptic_ros.evaluation.report import side_by_side, write_report
from panoptic_ros.evaluation.scoring import UNDECODABLE_IMAGE, FrameEvaluator
from panoptic_ros.imaging import Resampler
from panoptic_ros.pipeline_io import Thresholds
from panoptic_ros.tracking.evaluation import SequenceTracking
from panoptic_ros.tracking.stq import STQResult

# Per-frame stages timed, in milliseconds (a stage a frame does not go through has no sample). decode: bag read,
# deserialization and image decoding; resize: to the model and back; ground_truth: its lookup and reading;
# evaluation: the PQ (and STQ) counts; tracking: the tracker; total: all of the frame's stages.
STAGES = ("decode", "resize", "inference", "tracking", "ground_truth", "evaluation", "output_bag", "total")


@dataclass
class BagEvaluation:
    """What a run over a bag measured; `write_report` turns it into the report folder."""

    result: PQResult | None  # None without ground truth
    latencies_ms: dict[str, list[float]]  # per stage, one sample per frame that went through it
    skipped: dict[str, int]  # frames left out of the metrics, by reason
    frames: int  # frames run through the model
    overlays: list[np.ndarray] = field(default_factory=list)  # side-by-side strips
    bag_error: str | None = None  # the damage that ended reading early, if any
    notes: list[str] = field(default_factory=list)  # first example of each skip reason, source notes
    info: dict[str, object] = field(default_factory=dict)  # bag, topics, model, thresholds, ...
    tracking: STQResult | None = None  # with tracking and ground truth
    tracking_mode: str = ""  # where the track ids came from

    def write_report(self, directory: str | Path, label_set: LabelSet | None = None) -> dict[str, Path]:
        """metrics.json, report.md, charts and overlays (evaluation.report.write_report)."""
        info = dict(self.info)
        info["frames run"] = self.frames
        if self.result is not None:
            info["frames evaluated"] = self.result.num_frames
        if self.bag_error:
            info["bag error"] = self.bag_error
        if self.notes:
            info["notes"] = "; ".join(self.notes)
        return write_report(directory, result=self.result, latencies_ms=self.latencies_ms, overlays=self.overlays,
                            skipped=self.skipped, info=info, label_set=label_set,
                            tracking=(self.tracking, self.tracking_mode) if self.tracking is not None else None)


def image_topic_count(bag: str | Path, topic: str) -> int:
    """Messages on `topic`; BagError naming the bag's topics when it is missing."""
    topics = list_topics(bag)
    for info in topics:
        if info.name == topic:
            return info.count
    listed = ", ".join(f"{t.name} ({t.msgtype}, {t.count} msgs)" for t in topics) or "none"
    raise BagError(f"topic {topic!r} is not in bag {bag}; its topics: {listed}")


def topic_messages(bag: str | Path, topic: str) -> Iterator[ImageFrame | SkippedMessage]:
    """Every message of an image topic in bag order: its decoded frame, or the SkippedMessage of one that could
    not be decoded. Damage part-way raises BagError after the messages before it."""
    undecodable: list[SkippedMessage] = []  # read_images records them here as it passes over them
    with closing(read_images(bag, topic, undecodable)) as frames:
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                frame = None
            except BagError as error:
                frame = error
            yield from undecodable
            undecodable.clear()
            if frame is None:
                return
            if isinstance(frame, BagError):
                raise frame
            yield frame


def evaluate_bag(bag: str | Path, image_topic: str, backend, *, ground_truth: GroundTruthSource | None = None,
                 thresholds: Thresholds | None = None, label_divisor: int = DEFAULT_LABEL_DIVISOR,
                 max_frames: int | None = None, num_overlays: int = 4, output_bag: str | Path | None = None,
                 tracking: SequenceTracking | None = None, progress: bool = False) -> BagEvaluation:
    """Run `backend` (runtime.backends.Backend) on every frame of `image_topic` in bag order and evaluate.

    Without `ground_truth`, only latencies and overlays are measured. `max_frames` limits the run to the
    topic's first messages; `num_overlays` strips are taken at evenly spaced frames; `output_bag` writes
    the predictions (PredictionBagWriter). Raises BagError / FileNotFoundError when the bag or topic
    cannot be read at all; damage found part-way ends the run with `bag_error` set.
    """
    if max_frames is not None and max_frames <= 0:
        raise ValueError(f"max_frames must be positive, got {max_frames}")
    if num_overlays < 0:
        raise ValueError(f"num_overlays must be >= 0, got {num_overlays}")
    total = image_topic_count(bag, image_topic)
    total = min(total, max_frames) if max_frames is not None else total
    run = _BagRun(backend, thresholds or Thresholds(), label_divisor, ground_truth, tracking,
                  overlay_at=np.linspace(0, total - 1, min(num_overlays, total)).round().astype(int).tolist())
    writer = (PredictionBagWriter(output_bag, prediction_namespace(image_topic), backend.label_set, label_divisor,
                                  backend.model_name) if output_bag is not None else None)
    bag_error = None
    with (closing(topic_messages(bag, image_topic)) as messages, writer or nullcontext(),
          tqdm(total=total, desc="eval-bag", unit="frame", disable=not progress) as bar):
        for index in range(total):  # the message's position in the topic
            start = time.perf_counter()
            try:
                message = next(messages)
            except StopIteration:
                break
            except BagError as error:
                bag_error = str(error)
                break
            if isinstance(message, SkippedMessage):
                run.skip_undecodable(message)
            else:
                run.process(message, index, start, writer)
            bar.update()

    described = backend.describe()
    info = {"bag": str(bag), "image topic": image_topic,
            "ground truth": ground_truth.describe() if ground_truth is not None else "none",
            "model": backend.model_name, "model file": str(described["model_path"]), "backend": described["backend"],
            "device": described["device"], "input size": "x".join(map(str, backend.input_hw)),
            "thresholds": run.thresholds.as_dict(), "label divisor": label_divisor}
    if output_bag is not None:
        info["output bag"] = str(output_bag)
    if tracking is not None:
        info["tracking"] = "; ".join(filter(None, (tracking.mode, tracking.note)))
    return BagEvaluation(result=run.evaluator.result(),
                         latencies_ms={stage: run.latencies[stage] for stage in STAGES if stage in run.latencies},
                         skipped=dict(run.evaluator.skipped), frames=run.frames, overlays=run.overlays,
                         bag_error=bag_error, notes=run.evaluator.notes, info=info,
                         tracking=tracking.result() if tracking is not None else None,
                         tracking_mode=tracking.mode if tracking is not None else "")


class _BagRun:
    """The per-frame work of evaluate_bag and what it accumulates."""

    def __init__(self, backend, thresholds: Thresholds, label_divisor: int, ground_truth: GroundTruthSource | None,
                 tracking: SequenceTracking | None, overlay_at: list[int]) -> None:
        self.backend, self.thresholds, self.label_divisor = backend, thresholds, label_divisor
        self.tracking = tracking
        self.evaluator = FrameEvaluator(ground_truth, backend.label_set, label_divisor)
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.overlays: list[np.ndarray] = []
        self.frames = 0
        self._overlay_at = set(overlay_at)
        self._resamplers: dict[tuple[int, int], Resampler] = {}

    def skip_undecodable(self, message: SkippedMessage) -> None:
        self.evaluator.skip(UNDECODABLE_IMAGE, f"image message at {message.bag_time_ns} ns: {message.reason}")

    def process(self, frame: ImageFrame, index: int, start: float, writer: PredictionBagWriter | None) -> None:
        """Run, evaluate and write one decoded frame, the topic's `index`-th; `start` is when its decoding began."""
        decoded = time.perf_counter()
        camera_hw = frame.pixels.shape[:2]
        resampler = self._resamplers.setdefault(camera_hw, Resampler(camera_hw, self.backend.input_hw))
        model_rgb = resampler.to_model(frame.pixels)
        resized = time.perf_counter()
        result = self.backend.run(model_rgb, self.thresholds, self.label_divisor)
        inferred = time.perf_counter()
        panoptic = resampler.to_camera(result.panoptic)
        times = {"decode": decoded - start, "resize": (resized - decoded) + (time.perf_counter() - inferred),
                 "inference": inferred - resized}
        if self.tracking is not None:  # every frame, scored or not: tracks run on
            tick = time.perf_counter()
            tracks = self.tracking.track(result)
            times["tracking"] = time.perf_counter() - tick
        self.frames += 1
        gt = self.evaluator.add(panoptic, frame.stamp_ns, index, times)
        if gt is not None and self.tracking is not None:
            tick = time.perf_counter()
            self.tracking.score_frame(gt, panoptic, tracks)
            times["evaluation"] += time.perf_counter() - tick
        if writer is not None:
            tick = time.perf_counter()
            writer.write(frame, result, resampler, panoptic)
            times["output_bag"] = time.perf_counter() - tick
        times["total"] = time.perf_counter() - start
        for stage, seconds in times.items():
            self.latencies[stage].append(seconds * 1e3)
        if index in self._overlay_at:  # after the clock: overlays are the report's, not the pipeline's
            gt_map = gt.as_id_map(self.label_divisor, self.backend.label_set) if gt is not None else None
            self.overlays.append(side_by_side(frame.pixels, gt_map, panoptic, self.backend.label_set,
                                              self.label_divisor))
