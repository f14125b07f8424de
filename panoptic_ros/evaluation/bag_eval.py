"""Offline evaluation of a model on a rosbag2 recording: every frame, in order, none dropped.

    backend = create_backend("onnxruntime", "models/psn.onnx")
    ground_truth = TopicGroundTruth("drive.mcap", "/camera/panoptic_gt")
    evaluation = evaluate_bag("drive.mcap", "/camera/image_raw", backend, ground_truth=ground_truth)
    evaluation.write_report("report/")

Each frame goes through what panoptic_node does to a live one: decode (raw or compressed), resize
to the model's input (bilinear), run, map the outputs back to the camera's size (nearest), with
the node's own `Resampler`. The prediction is then compared with the frame's ground truth at the
camera's size. Ground truth comes from

- a topic of 32SC1 id images (class * label_divisor + instance, -1 void; what `panoptic-ros synth
  --bag` writes): the message whose header stamp is nearest to the frame's, within a tolerance
  (0: the same stamp). Both topics are read as streams, so their stamps must increase along each
  topic, as recorded ones do;
- a panoptic folder in COCO or Cityscapes layout (JSON + PNG folder), matched by file name:
  "stamp": the last run of digits in a PNG's name is the frame's header stamp in nanoseconds
  (e.g. `frame_1700000000100000000.png`), matched within the tolerance; "index": the PNGs sorted
  by name are the image topic's frames in bag order (the 1st PNG is the topic's 1st message, and
  so on; an undecodable message still takes its place).

Frames are skipped from the metrics, never silently, with a reason counted in the report: no
ground truth, ground truth of another size than the image, ground truth with unknown classes,
an undecodable image. A bag that turns out damaged part-way ends the run after the frames before
the damage, which are evaluated and reported with the error.

`PredictionBagWriter` (eval-bag --output-bag) writes what the node would have published for every
frame (id image 32SC1, semantic mono8, overlay rgb8, PanopticInstanceArray and the PanopticClassMap,
with the custom types' definitions in the bag), stamped like the source frames. The messages are
built by the node's builders (rclpy types) and carried into the bag's rosbags types through their
CDR bytes.
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.serialization import serialize_message
from std_msgs.msg import Header
from tqdm import tqdm

from panoptic_ros.classes import DEFAULT_LABEL_DIVISOR, LabelSet
from panoptic_ros.data.formats import (
    PanopticAnnotation,
    from_id_map,
    read_cityscapes_panoptic,
    read_coco_panoptic,
    to_id_map,
)
from panoptic_ros.data.rosbag_io import (
    IMAGE_TYPE,
    BagError,
    BagWriter,
    ImageFrame,
    SkippedMessage,
    list_topics,
    read_id_images,
    read_images,
    typestore,
)
from panoptic_ros.evaluation.pq import PQAccumulator, PQResult
from panoptic_ros.evaluation.report import side_by_side, write_report
from panoptic_ros.imaging import Resampler, overlay_image, segment_colors
from panoptic_ros.pipeline_io import PanopticResult, Thresholds
from panoptic_ros.ros.image_conversion import to_image_msg
from panoptic_ros.ros.outputs import class_map_msg, instance_array_msg

# Per-frame stages timed, in milliseconds (a stage a frame does not go through has no sample). decode: bag read,
# deserialization and image decoding; resize: to the model and back; ground_truth: its lookup and reading;
# evaluation: the PQ counts; total: all of the frame's stages.
STAGES = ("decode", "resize", "inference", "ground_truth", "evaluation", "output_bag", "total")
# Reasons a frame is left out of the metrics.
NO_GROUND_TRUTH = "no ground truth"
SIZE_MISMATCH = "size mismatch"
INVALID_GROUND_TRUTH = "invalid ground truth"
UNDECODABLE_IMAGE = "undecodable image"
INSTANCE_ARRAY_TYPE = "panoptic_ros/msg/PanopticInstanceArray"
CLASS_MAP_TYPE = "panoptic_ros/msg/PanopticClassMap"
GT_LAYOUTS = ("coco", "cityscapes")
GT_MATCHES = ("stamp", "index")
OVERLAY_ALPHA = 0.5


# ---------------------------------------------------------------------------------------------
# Ground truth


@dataclass
class GroundTruthFrame:
    """One frame's ground truth: a pipeline id map (from a bag topic) or an annotation (from a folder)."""

    id_map: np.ndarray | None = None  # int32 (H, W): class * label_divisor + instance, -1 void
    annotation: PanopticAnnotation | None = None  # categories = the model's train ids

    @property
    def shape(self) -> tuple[int, int]:
        ids = self.id_map if self.id_map is not None else self.annotation.ids
        return int(ids.shape[0]), int(ids.shape[1])

    def add_to(self, accumulator: PQAccumulator, prediction: np.ndarray, label_divisor: int,
               label_set: LabelSet) -> None:
        """Add this frame pair; an annotation keeps its own segments (crowd flags, unlisted ids) as listed."""
        if self.id_map is not None:
            accumulator.add_id_maps(self.id_map, prediction, label_divisor)
        else:
            accumulator.add(self.annotation, from_id_map(prediction, label_divisor, label_set))

    def as_id_map(self, label_divisor: int, label_set: LabelSet) -> np.ndarray:
        """The pipeline id map, for overlays."""
        if self.id_map is not None:
            return self.id_map
        return to_id_map(self.annotation, label_divisor, label_set)


class GroundTruthSource(Protocol):
    """Where frames find their ground truth."""

    notes: list[str]  # what the report should say about the source (unreadable messages, errors)

    def lookup(self, stamp_ns: int, index: int) -> GroundTruthFrame | None:
        """The ground truth of the image topic's `index`-th message (0-based), stamped `stamp_ns`, or None."""

    def describe(self) -> str: ...


class TopicGroundTruth:
    """Ground truth from a topic of 32SC1 id images, matched to frames by header stamp (nearest within tolerance).

    The topic is read alongside the frames, holding only the messages within the tolerance window.
    Construction reads the first message, so a missing topic fails before any frame is run.
    """

    def __init__(self, bag: str | Path, topic: str, tolerance_ns: int = 0) -> None:
        if tolerance_ns < 0:
            raise ValueError(f"the ground-truth stamp tolerance must be >= 0, got {tolerance_ns} ns")
        self.bag, self.topic, self.tolerance_ns = Path(bag), topic, int(tolerance_ns)
        self._errors: list[str] = []
        self._unreadable: list[SkippedMessage] = []
        self._messages = read_id_images(self.bag, topic, self._unreadable)
        self._pending: dict[int, np.ndarray] = {}
        self._newest: int | None = None
        self._done = False
        self._read_next(first=True)

    def describe(self) -> str:
        tolerance = f" within {self.tolerance_ns / 1e6:g} ms" if self.tolerance_ns else ""
        return f"topic {self.topic} (same header stamp{tolerance})"

    def lookup(self, stamp_ns: int, index: int) -> GroundTruthFrame | None:
        while True:
            # Frame stamps increase: ground truth older than this frame's window can match no later frame.
            for stamp in [s for s in self._pending if s < stamp_ns - self.tolerance_ns]:
                del self._pending[stamp]
            if self._done or self._newest > stamp_ns + self.tolerance_ns:
                break
            self._read_next()
        candidates = [s for s in self._pending if abs(s - stamp_ns) <= self.tolerance_ns]
        if not candidates:
            return None
        nearest = min(candidates, key=lambda s: (abs(s - stamp_ns), s))
        return GroundTruthFrame(id_map=self._pending.pop(nearest))

    def _read_next(self, first: bool = False) -> None:
        try:
            message = next(self._messages)
        except StopIteration:
            self._done = True
            return
        except BagError as error:
            if first:
                raise
            self._done = True
            self._errors.append(f"ground truth ends early: {error}")
            return
        self._pending[message.stamp_ns] = message.pixels
        self._newest = message.stamp_ns if self._newest is None else max(self._newest, message.stamp_ns)

    @property
    def notes(self) -> list[str]:
        if not self._unreadable:
            return list(self._errors)
        first = self._unreadable[0]
        return [f"{len(self._unreadable)} unreadable ground-truth messages (first at {first.bag_time_ns} ns: "
                f"{first.reason})", *self._errors]


class FolderGroundTruth:
    """Ground truth from a COCO or Cityscapes panoptic folder, matched to frames by file name (see module doc).

    `png_dir` is the PNG folder; the JSON defaults to the folder's name + .json (both datasets' layout).
    "coco" layout: categories must be the model's train ids; "cityscapes": label ids are mapped to the
    19 train ids (a JSON already in train ids is taken as is).
    """

    def __init__(self, png_dir: str | Path, label_set: LabelSet, json_path: str | Path | None = None,
                 layout: str = "coco", match: str = "stamp", tolerance_ns: int = 0) -> None:
        if layout not in GT_LAYOUTS:
            raise ValueError(f"ground-truth layout must be one of {', '.join(GT_LAYOUTS)}, got {layout!r}")
        if match not in GT_MATCHES:
            raise ValueError(f"ground-truth matching must be one of {', '.join(GT_MATCHES)}, got {match!r}")
        if tolerance_ns < 0:
            raise ValueError(f"the ground-truth stamp tolerance must be >= 0, got {tolerance_ns} ns")
        self.png_dir = Path(png_dir)
        self.json_path = Path(json_path) if json_path is not None else self.png_dir.with_suffix(".json")
        self.match, self.tolerance_ns = match, int(tolerance_ns)
        if layout == "cityscapes":
            categories, self._annotations = read_cityscapes_panoptic(self.json_path, self.png_dir, train_ids=True)
        else:
            categories, self._annotations = read_coco_panoptic(self.json_path, self.png_dir)
        check_categories(categories, label_set, self.json_path)
        names = [entry["file_name"] for entry in self._annotations.entries]
        # Annotation positions in matching order: by file name, or by the stamp in it (kept, sorted, alongside).
        if match == "index":
            self._order = np.argsort(names, kind="stable")
        else:
            stamps = np.array([stamp_from_file_name(name) for name in names], dtype=np.int64)
            self._order = np.argsort(stamps, kind="stable")
            self._stamps = stamps[self._order]
            repeated = self._stamps[1:][self._stamps[1:] == self._stamps[:-1]]
            if repeated.size:
                raise ValueError(f"{self.json_path}: several files carry stamp {repeated[0]}; each stamp names one "
                                 "frame")
        self._used: set[int] = set()  # each file is one frame's ground truth

    def describe(self) -> str:
        rule = (f"by stamp in file name{f' within {self.tolerance_ns / 1e6:g} ms' if self.tolerance_ns else ''}"
                if self.match == "stamp" else "by frame index (files sorted by name)")
        return f"folder {self.png_dir} ({len(self._order)} files, {rule})"

    def lookup(self, stamp_ns: int, index: int) -> GroundTruthFrame | None:
        if self.match == "index":
            position = index if index < len(self._order) else None
        else:
            position = _nearest(self._stamps, stamp_ns, self.tolerance_ns)
        if position is None or position in self._used:
            return None
        self._used.add(position)
        return GroundTruthFrame(annotation=self._annotations[int(self._order[position])])

    @property
    def notes(self) -> list[str]:
        if self.match != "stamp" or self._used or not len(self._stamps):
            return []
        return [f"no file name matched a frame stamp (stamps read from the names: {self._stamps[0]} to "
                f"{self._stamps[-1]}); if the files are in frame order, match by index"]


def stamp_from_file_name(file_name: str) -> int:
    """The stamp (ns) a ground-truth file name carries: the last run of digits in its name."""
    digits = re.findall(r"\d+", Path(file_name).stem)
    if not digits:
        raise ValueError(f"ground-truth file {file_name!r} has no stamp in its name; matching by stamp needs names "
                         "ending in the frame's header stamp in nanoseconds (e.g. frame_1700000000100000000.png), "
                         "or use matching by index")
    return int(digits[-1])


def _nearest(sorted_stamps: np.ndarray, stamp_ns: int, tolerance_ns: int) -> int | None:
    """Position of the stamp nearest to `stamp_ns` (the earlier on a tie) if within tolerance, else None."""
    right = int(np.searchsorted(sorted_stamps, stamp_ns))
    near = [p for p in (right - 1, right) if 0 <= p < sorted_stamps.size]
    if not near:
        return None
    best = min(near, key=lambda p: abs(int(sorted_stamps[p]) - stamp_ns))
    return best if abs(int(sorted_stamps[best]) - stamp_ns) <= tolerance_ns else None


def check_categories(categories: list[dict], label_set: LabelSet, source: Path) -> None:
    """Ground-truth categories must be the model's classes: id = train id, same thing/stuff kind."""
    for category in categories:
        cid = int(category["id"])
        if not 0 <= cid < label_set.num_classes:
            raise ValueError(f"{source}: category {cid} ({category.get('name')!r}) is not one of the model's classes: "
                             f"ids 0..{label_set.num_classes - 1} ({', '.join(label_set.names)}) of label set "
                             f"{label_set.name!r}; map the dataset's ids to these train ids first")
        if bool(category.get("isthing")) != label_set.thing[cid]:
            kind = "a thing" if label_set.thing[cid] else "stuff"
            raise ValueError(f"{source}: category {cid} ({category.get('name')!r}) has isthing "
                             f"{category.get('isthing')}, but the model's class {cid} ({label_set.names[cid]}) is "
                             f"{kind}")


# ---------------------------------------------------------------------------------------------
# Output bag


def prediction_namespace(image_topic: str) -> str:
    """Where the node would publish for this camera: the image topic's parent ("/camera/image_raw" -> "/camera")."""
    return image_topic.rstrip("/").rpartition("/")[0]


class PredictionBagWriter:
    """Writes per frame what panoptic_node publishes, into a rosbag2 (.db3: sqlite3, else mcap).

    Topics: <namespace>/panoptic/{id_image, semantic, overlay, instances, class_map}, each message with
    the source frame's header (stamp, frame_id) and written at the source frame's bag time.
    """

    def __init__(self, path: str | Path, namespace: str, label_set: LabelSet, label_divisor: int,
                 model_name: str) -> None:
        path = Path(path)
        self._bag = BagWriter(path, "sqlite3" if path.suffix == ".db3" else "mcap")
        self._prefix = f"{namespace}/panoptic/"
        self.label_set, self.label_divisor, self.model_name = label_set, label_divisor, model_name
        self._class_map_written = False

    def __enter__(self) -> PredictionBagWriter:
        self._bag.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._bag.__exit__(*exc)

    def write(self, frame: ImageFrame, result: PanopticResult, resampler: Resampler, panoptic: np.ndarray) -> None:
        """One frame's outputs; `panoptic` is the id map already at the camera's size."""
        header = Header(stamp=Time(sec=frame.stamp_ns // 1_000_000_000, nanosec=frame.stamp_ns % 1_000_000_000),
                        frame_id=frame.frame_id)
        semantic = resampler.to_camera(result.semantic)
        colors = resampler.to_camera(segment_colors(result.panoptic, result.semantic, self.label_set,
                                                    self.label_divisor))
        segments = resampler.segments_to_camera(result.valid_instances)
        messages = [
            ("id_image", IMAGE_TYPE, to_image_msg(panoptic, "32SC1", header)),
            ("semantic", IMAGE_TYPE, to_image_msg(semantic, "mono8", header)),
            ("overlay", IMAGE_TYPE, to_image_msg(overlay_image(frame.pixels, colors, semantic, OVERLAY_ALPHA), "rgb8",
                                                 header)),
            ("instances", INSTANCE_ARRAY_TYPE, instance_array_msg(segments, self.label_set, header,
                                                                  resampler.camera_hw, self.label_divisor,
                                                                  self.model_name)),
        ]
        if not self._class_map_written:  # latched in the node; once, with the first frame, here
            messages.append(("class_map", CLASS_MAP_TYPE, class_map_msg(self.label_set, header, self.label_divisor,
                                                                        self.model_name)))
            self._class_map_written = True
        for name, msgtype, msg in messages:
            # rclpy message -> CDR bytes -> the bag's (rosbags) type: the node's builders define every message.
            converted = typestore().deserialize_cdr(serialize_message(msg), msgtype)
            self._bag.write(self._prefix + name, msgtype, frame.bag_time_ns, converted)


# ---------------------------------------------------------------------------------------------
# Evaluation


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
                            skipped=self.skipped, info=info, label_set=label_set)


def image_topic_count(bag: str | Path, topic: str) -> int:
    """Messages on `topic`; BagError naming the bag's topics when it is missing."""
    topics = list_topics(bag)
    for info in topics:
        if info.name == topic:
            return info.count
    listed = ", ".join(f"{t.name} ({t.msgtype}, {t.count} msgs)" for t in topics) or "none"
    raise BagError(f"topic {topic!r} is not in bag {bag}; its topics: {listed}")


def evaluate_bag(bag: str | Path, image_topic: str, backend, *, ground_truth: GroundTruthSource | None = None,
                 thresholds: Thresholds | None = None, label_divisor: int = DEFAULT_LABEL_DIVISOR,
                 max_frames: int | None = None, num_overlays: int = 4, output_bag: str | Path | None = None,
                 progress: bool = False) -> BagEvaluation:
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
    run = _BagRun(backend, thresholds or Thresholds(), label_divisor, ground_truth,
                  overlay_at=np.linspace(0, total - 1, min(num_overlays, total)).round().astype(int).tolist())
    writer = (PredictionBagWriter(output_bag, prediction_namespace(image_topic), backend.label_set, label_divisor,
                                  backend.model_name) if output_bag is not None else None)
    undecodable: list[SkippedMessage] = []  # filled by read_images as it meets them
    bag_error = None
    with (closing(read_images(bag, image_topic, undecodable)) as frames, writer or nullcontext(),
          tqdm(total=total, desc="eval-bag", unit="frame", disable=not progress) as bar):
        while run.frames + len(undecodable) < total:
            start = time.perf_counter()
            try:
                frame = next(frames)
            except StopIteration:
                break
            except BagError as error:
                bag_error = str(error)
                break
            finally:
                run.count_undecodable(undecodable)
            index = run.frames + len(undecodable)  # the frame's position in the topic
            if index >= total:  # undecodable messages used up the frames asked for
                break
            run.process(frame, index, start, writer)
            bar.update(index + 1 - bar.n)
        bar.update(run.frames + len(undecodable) - bar.n)

    described = backend.describe()
    info = {"bag": str(bag), "image topic": image_topic,
            "ground truth": ground_truth.describe() if ground_truth is not None else "none",
            "model": backend.model_name, "model file": str(described["model_path"]), "backend": described["backend"],
            "device": described["device"], "input size": "x".join(map(str, backend.input_hw)),
            "thresholds": run.thresholds.as_dict(), "label divisor": label_divisor}
    if output_bag is not None:
        info["output bag"] = str(output_bag)
    return BagEvaluation(result=run.evaluator.result(),
                         latencies_ms={stage: run.latencies[stage] for stage in STAGES if stage in run.latencies},
                         skipped=dict(run.evaluator.skipped), frames=run.frames, overlays=run.overlays,
                         bag_error=bag_error, notes=run.evaluator.notes, info=info)


class FrameEvaluator:
    """Scores predictions against a ground-truth source, one frame at a time, with the skip rules of the module.

    `add` looks a frame's ground truth up and adds the pair to the PQ counts, or counts the frame as
    skipped by reason (the first example of each reason becomes a note). Without a source, nothing is
    scored and `result()` is None; `skip` also records frames left out for other reasons.
    """

    def __init__(self, ground_truth: GroundTruthSource | None, label_set: LabelSet,
                 label_divisor: int = DEFAULT_LABEL_DIVISOR) -> None:
        self.ground_truth, self.label_set, self.label_divisor = ground_truth, label_set, label_divisor
        self.accumulator = PQAccumulator.from_label_set(label_set)
        self.skipped: Counter[str] = Counter()
        self._notes: list[str] = []

    def add(self, prediction: np.ndarray, stamp_ns: int, index: int,
            times: dict[str, float] | None = None) -> GroundTruthFrame | None:
        """Score one prediction (pipeline id map at the image's size) of the topic's `index`-th frame; returns the
        ground truth it was scored against, or None. Fills times["ground_truth"] / ["evaluation"] (s) if given."""
        if self.ground_truth is None:
            return None
        times = {} if times is None else times
        tick = time.perf_counter()
        gt = self.ground_truth.lookup(stamp_ns, index)
        times["ground_truth"] = time.perf_counter() - tick
        where = f"frame {index} (stamp {stamp_ns})"
        if gt is None:
            self.skip(NO_GROUND_TRUTH, f"{where}: no ground truth")
            return None
        if gt.shape != prediction.shape:
            self.skip(SIZE_MISMATCH, f"{where}: ground truth is {gt.shape[0]}x{gt.shape[1]}, the image "
                                     f"{prediction.shape[0]}x{prediction.shape[1]}")
            return None
        tick = time.perf_counter()
        try:
            gt.add_to(self.accumulator, prediction, self.label_divisor, self.label_set)
        except ValueError as error:
            self.skip(INVALID_GROUND_TRUTH, f"{where}: {error}")
            return None
        times["evaluation"] = time.perf_counter() - tick
        return gt

    def skip(self, reason: str, detail: str) -> None:
        """Count a frame left out of the metrics."""
        if not self.skipped[reason]:  # the first example of each reason goes into the report
            self._notes.append(detail)
        self.skipped[reason] += 1

    @property
    def notes(self) -> list[str]:
        """First example of each skip reason, then what the source says about itself."""
        return self._notes + (self.ground_truth.notes if self.ground_truth is not None else [])

    def result(self) -> PQResult | None:
        return self.accumulator.result() if self.ground_truth is not None else None


class _BagRun:
    """The per-frame work of evaluate_bag and what it accumulates."""

    def __init__(self, backend, thresholds: Thresholds, label_divisor: int, ground_truth: GroundTruthSource | None,
                 overlay_at: list[int]) -> None:
        self.backend, self.thresholds, self.label_divisor = backend, thresholds, label_divisor
        self.evaluator = FrameEvaluator(ground_truth, backend.label_set, label_divisor)
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.overlays: list[np.ndarray] = []
        self.frames = 0
        self._overlay_at = set(overlay_at)
        self._resamplers: dict[tuple[int, int], Resampler] = {}
        self._undecodable_counted = 0

    def count_undecodable(self, undecodable: list[SkippedMessage]) -> None:
        for message in undecodable[self._undecodable_counted:]:
            self.evaluator.skip(UNDECODABLE_IMAGE, f"image message at {message.bag_time_ns} ns: {message.reason}")
        self._undecodable_counted = len(undecodable)

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
        self.frames += 1
        gt = self.evaluator.add(panoptic, frame.stamp_ns, index, times)
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
