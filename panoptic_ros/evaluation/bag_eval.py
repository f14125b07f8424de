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
`frame_range` evaluates a range of positions only, as one of several workers sharing a long bag
(evaluation.frame_ranges); the messages before it are read but not decoded.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from panoptic_ros.classes import DEFAULT_LABEL_DIVISOR, LabelSet
from panoptic_ros.data.rosbag_io import (
    BagError,
    ImageFrame,
    SkippedMessage,
    decode_image,
    list_topics,
    read_image_messages,
    stamp_to_ns,
)
from panoptic_ros.evaluation.frame_ranges import AFTER, BEFORE, WHOLE_BAG, FrameOrderAccumulator, FrameRange, RangeCut
from panoptic_ros.evaluation.ground_truth import GroundTruthSource
from panoptic_ros.evaluation.overlap import ahead
from panoptic_ros.evaluation.pq import PQAccumulator, PQResult
from panoptic_ros.evaluation.prediction_bag import PredictionBagWriter, prediction_namespace
from panoptic_ros.evaluation.report import side_by_side, write_report
from panoptic_ros.evaluation.scoring import UNDECODABLE_IMAGE, FrameEvaluator
from panoptic_ros.imaging import Resampler
from panoptic_ros.pipeline_io import PanopticResult, Thresholds
from panoptic_ros.runtime.model_thresholds import ThresholdsInForce, thresholds_in_force
from panoptic_ros.tracking.evaluation import SequenceTracking
from panoptic_ros.tracking.stq import STQResult

# Per-frame stages timed, in milliseconds (a stage a frame does not go through has no sample). decode: bag read,
# deserialization and image decoding; resize: to the model and back; tracking: the tracker; ground_truth: its
# lookup and reading; evaluation: the PQ (and STQ) counts; total: the sum of the frame's stages (with overlap,
# stages of consecutive frames run at the same time, so frames per second are more than 1000 / total).
STAGES = ("decode", "resize", "inference", "tracking", "ground_truth", "evaluation", "output_bag", "total")
QUEUE_DEPTH = 4  # frames waiting between two stages: bounds memory (a few 1024x2048 frames) when one stage lags


@dataclass
class BagEvaluation:
    """What a run over a bag measured; `write_report` turns it into the report folder."""

    accumulator: PQAccumulator | None  # the PQ counts; None without ground truth
    latencies_ms: dict[str, list[float]]  # per stage, one sample per frame that went through it
    skipped: dict[str, int]  # frames left out of the metrics, by reason
    frames: int  # frames run through the model
    overlays: list[np.ndarray] = field(default_factory=list)  # side-by-side strips
    bag_error: str | None = None  # the damage that ended reading early, if any
    notes: list[str] = field(default_factory=list)  # first example of each skip reason, source notes
    info: dict[str, object] = field(default_factory=dict)  # bag, topics, model, thresholds, ...
    label_set: LabelSet | None = None  # the model's classes
    tracking: STQResult | None = None  # with tracking and ground truth
    tracking_mode: str = ""  # where the track ids came from
    thresholds: ThresholdsInForce | None = None  # what the model ran with, and where each value came from
    not_converged: int = 0  # frames whose unrolled NMS / pasting did not reach its fixed point
    candidates_dropped: int = 0  # valid candidates that did not fit the model's K slots, over all frames

    @property
    def result(self) -> PQResult | None:
        """PQ and mIoU of the frames evaluated (None without ground truth)."""
        return self.accumulator.result() if self.accumulator is not None else None

    def write_report(self, directory: str | Path, label_set: LabelSet | None = None) -> dict[str, Path]:
        """metrics.json, report.md, charts and overlays (evaluation.report.write_report)."""
        label_set = label_set or self.label_set
        info = dict(self.info)
        info["frames run"] = self.frames
        info["frames not converged"], info["candidates dropped"] = self.not_converged, self.candidates_dropped
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


def evaluate_bag(bag: str | Path, image_topic: str, backend, *, ground_truth: GroundTruthSource | None = None,
                 thresholds: Mapping[str, float] | Thresholds | None = None, label_divisor: int = DEFAULT_LABEL_DIVISOR,
                 max_frames: int | None = None, num_overlays: int = 4, output_bag: str | Path | None = None,
                 tracking: SequenceTracking | None = None, overlap: bool = True, progress: bool = False,
                 progress_position: int = 0, progress_label: str = "eval-bag",
                 frame_range: FrameRange = WHOLE_BAG) -> BagEvaluation:
    """Run `backend` (runtime.backends.Backend) on every frame of `image_topic` in bag order and evaluate.

    The model runs with its own default thresholds (its file's metadata) but for `thresholds` (name -> value
    overrides; a Thresholds overrides all). Without `ground_truth`, only latencies and overlays are measured.
    `max_frames` limits the run to the topic's first messages; `num_overlays` strips are taken at evenly spaced
    frames; `output_bag` writes the predictions (PredictionBagWriter). `frame_range`: only its messages run (of
    the first `max_frames`); overlays stay at the positions a run over the whole bag takes them at. With
    `overlap`, decoding, inference and scoring run on threads of their own with QUEUE_DEPTH frames between them
    (evaluation.overlap); the results are the same. Raises
    BagError / FileNotFoundError when the bag or topic cannot be read at all; damage found part-way ends the
    run with `bag_error` set, and so does a frame whose processing fails (the error names the bag and frame).
    """
    if max_frames is not None and max_frames <= 0:
        raise ValueError(f"max_frames must be positive, got {max_frames}")
    if num_overlays < 0:
        raise ValueError(f"num_overlays must be >= 0, got {num_overlays}")
    if tracking is not None and not frame_range.whole:
        raise ValueError("tracking follows a bag's frames in order, from the first: it cannot run on a frame range")
    total = image_topic_count(bag, image_topic)
    total = min(total, max_frames) if max_frames is not None else total
    overrides = thresholds.as_dict() if isinstance(thresholds, Thresholds) else dict(thresholds or {})
    in_force = thresholds_in_force(backend.info, overrides)
    run = _BagRun(bag, backend, in_force.thresholds, label_divisor, ground_truth, tracking,
                  overlay_at=np.linspace(0, total - 1, min(num_overlays, total)).round().astype(int).tolist())
    if not frame_range.whole:  # a part of the bag: its frames' IoU sums are kept for joining (frame_ranges)
        run.evaluator.accumulator = FrameOrderAccumulator(run.evaluator.accumulator.categories)
    writer = (PredictionBagWriter(output_bag, prediction_namespace(image_topic), backend.label_set, label_divisor,
                                  backend.model_name) if output_bag is not None else None)
    tolerance_ns = ground_truth.stamp_tolerance_ns if ground_truth is not None else None
    cut = RangeCut(frame_range, 2 * tolerance_ns if tolerance_ns is not None else None)
    read = _read(read_image_messages(bag, image_topic), total, cut)
    in_range = min(frame_range.stop if frame_range.stop is not None else total, total) - min(frame_range.start, total)
    inferred = _each(run.infer, ahead(read, QUEUE_DEPTH) if overlap else read)
    with (closing(ahead(inferred, QUEUE_DEPTH) if overlap else inferred) as items, writer or nullcontext(),
          tqdm(total=in_range, desc=progress_label, unit="frame", disable=not progress, position=progress_position,
               leave=progress_position == 0) as bar):
        try:
            for item in items:
                run.score(item, writer)
                bar.update()
        except FrameError as error:  # like damage: the frames before it are kept and reported
            run.bag_error = str(error)

    described = backend.describe()
    info = {"bag": str(bag), "image topic": image_topic,
            "ground truth": ground_truth.describe() if ground_truth is not None else "none",
            "model": backend.model_name, "model file": str(described["model_path"]), "backend": described["backend"],
            "device": described["device"], "input size": "x".join(map(str, backend.input_hw)),
            "thresholds": run.thresholds.as_dict(), "threshold sources": in_force.report(),
            "label divisor": label_divisor}
    if output_bag is not None:
        info["output bag"] = str(output_bag)
    if tracking is not None:
        info["tracking"] = "; ".join(filter(None, (tracking.mode, tracking.note)))
    return BagEvaluation(accumulator=run.evaluator.accumulator if ground_truth is not None else None,
                         latencies_ms={stage: run.latencies[stage] for stage in STAGES if stage in run.latencies},
                         skipped=dict(run.evaluator.skipped), frames=run.frames, overlays=run.overlays,
                         bag_error=run.bag_error, notes=run.evaluator.notes, info=info, label_set=backend.label_set,
                         tracking=tracking.result() if tracking is not None else None,
                         tracking_mode=tracking.mode if tracking is not None else "", thresholds=in_force,
                         not_converged=run.not_converged, candidates_dropped=run.candidates_dropped)


class FrameError(RuntimeError):
    """Processing one frame failed (an unreadable ground-truth file, a runtime error); names the bag and frame."""


@dataclass
class _Read:
    """A message read from the topic at `index`: a frame, an undecodable message, or the damage that ends it."""

    index: int
    message: ImageFrame | SkippedMessage | BagError  # BagError: damage, or a RangeError
    times: dict[str, float] = field(default_factory=dict)  # seconds per stage, filled as it goes


@dataclass
class _Inferred:
    read: _Read
    result: PanopticResult
    resampler: Resampler
    panoptic: np.ndarray  # at the camera's size
    tracks: dict[int, int] | None  # track id of each thing segment, with tracking


def _read(messages: Iterator[tuple[int, object]], total: int, cut: RangeCut) -> Iterator[_Read]:
    """The decoded messages of the range (`cut`) among the topic's first `total`, each with its position
    (undecodable messages included); damage part-way, before the range or in it, is the last item."""
    with closing(messages):
        for index in range(total):  # the message's position in the topic
            start = time.perf_counter()
            try:
                bag_time, msg = next(messages)
                place = cut.place(index, stamp_to_ns(msg.header.stamp))
            except StopIteration:
                return
            except BagError as error:
                yield _Read(index, error)
                return
            if place == BEFORE:
                continue
            if place == AFTER:
                return
            try:
                message = ImageFrame(stamp_to_ns(msg.header.stamp), bag_time, msg.header.frame_id, decode_image(msg))
            except ValueError as error:
                message = SkippedMessage(bag_time, str(error))
            yield _Read(index, message, {"decode": time.perf_counter() - start})


def _each(function, items: Iterator) -> Iterator:
    """`function` of each item, as a generator that closes `items` when it is closed (a stage of the loop)."""
    with closing(items):
        for item in items:
            yield function(item)


class _BagRun:
    """The per-frame work of evaluate_bag, in two stages (infer, then score), and what it accumulates."""

    def __init__(self, bag: str | Path, backend, thresholds: Thresholds, label_divisor: int,
                 ground_truth: GroundTruthSource | None, tracking: SequenceTracking | None,
                 overlay_at: list[int]) -> None:
        self.bag, self.backend, self.thresholds, self.label_divisor = bag, backend, thresholds, label_divisor
        self.tracking = tracking
        self.evaluator = FrameEvaluator(ground_truth, backend.label_set, label_divisor)
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.overlays: list[np.ndarray] = []
        self.frames = 0
        self.not_converged = 0
        self.candidates_dropped = 0
        self.bag_error: str | None = None
        self._overlay_at = set(overlay_at)
        self._resamplers: dict[tuple[int, int], Resampler] = {}

    def infer(self, read: _Read) -> _Read | _Inferred:
        """Resize a decoded frame to the model, run it, and bring the outputs back to the camera's size."""
        frame = read.message
        if not isinstance(frame, ImageFrame):
            return read
        try:
            tick = time.perf_counter()
            camera_hw = frame.pixels.shape[:2]
            resampler = self._resamplers.setdefault(camera_hw, Resampler(camera_hw, self.backend.input_hw))
            model_rgb = resampler.to_model(frame.pixels)
            resized = time.perf_counter()
            result = self.backend.run(model_rgb, self.thresholds, self.label_divisor)
            inferred = time.perf_counter()
            panoptic = resampler.to_camera(result.panoptic)
            read.times["resize"] = (resized - tick) + (time.perf_counter() - inferred)
            read.times["inference"] = inferred - resized
            tracks = None
            if self.tracking is not None:  # every frame, scored or not, in order: tracks run on
                tick = time.perf_counter()
                tracks = self.tracking.track(result)
                read.times["tracking"] = time.perf_counter() - tick
        except Exception as error:
            raise self._frame_error(read, "inference", error) from error
        return _Inferred(read, result, resampler, panoptic, tracks)

    def score(self, item: _Read | _Inferred, writer: PredictionBagWriter | None) -> None:
        """Score (and write) one inferred frame; count an undecodable message; note the damage that ends the bag."""
        if isinstance(item, _Read):
            message = item.message
            if isinstance(message, SkippedMessage):
                self.evaluator.skip(UNDECODABLE_IMAGE, f"bag {self.bag}, image message {item.index} (at "
                                                       f"{message.bag_time_ns} ns): {message.reason}")
            else:
                self.bag_error = f"bag {self.bag}: stopped at image message {item.index}: {message}"
            return
        read, frame = item.read, item.read.message
        times = read.times
        self.frames += 1
        self.not_converged += not item.result.converged
        self.candidates_dropped += item.result.candidates_dropped
        try:
            gt = self.evaluator.add(item.panoptic, frame.stamp_ns, read.index, times)
            if gt is not None and self.tracking is not None:
                tick = time.perf_counter()
                self.tracking.score_frame(gt, item.panoptic, item.tracks)
                times["evaluation"] += time.perf_counter() - tick
            if writer is not None:
                tick = time.perf_counter()
                writer.write(frame, item.result, item.resampler, item.panoptic)
                times["output_bag"] = time.perf_counter() - tick
        except Exception as error:
            raise self._frame_error(read, "scoring", error) from error
        times["total"] = sum(times.values())
        for stage, seconds in times.items():
            self.latencies[stage].append(seconds * 1e3)
        if read.index in self._overlay_at:  # outside the timed stages: overlays are the report's, not the pipeline's
            gt_map = gt.as_id_map(self.label_divisor, self.backend.label_set) if gt is not None else None
            self.overlays.append(side_by_side(frame.pixels, gt_map, item.panoptic, self.backend.label_set,
                                              self.label_divisor))

    def _frame_error(self, read: _Read, stage: str, error: Exception) -> FrameError:
        frame = read.message
        return FrameError(f"bag {self.bag}, image message {read.index} (stamp {frame.stamp_ns}): {stage} failed: "
                          f"{type(error).__name__}: {error}")
