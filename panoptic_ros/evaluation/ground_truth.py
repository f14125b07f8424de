"""Where eval-bag's frames find their ground truth: a topic of id images in the bag, or a panoptic folder.

- `TopicGroundTruth`: a topic of 32SC1 id images (class * label_divisor + instance, -1 void; what
  `panoptic-ros synth --bag` writes): the message whose header stamp is nearest to the frame's, within
  a tolerance (0: the same stamp). The topic is read as a stream alongside the frames, so stamps must
  increase along it, as recorded ones do.
- `FolderGroundTruth`: a panoptic folder in COCO or Cityscapes layout (JSON + PNG folder), matched by
  file name. "stamp": the last run of digits in a PNG's name is the frame's header stamp in
  nanoseconds (e.g. `frame_1700000000100000000.png`), matched within the tolerance; "index": the PNGs
  sorted by name are the image topic's messages in bag order (the 1st PNG is the topic's 1st message,
  and so on; an undecodable message still takes its place).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from panoptic_ros.classes import LabelSet
from panoptic_ros.data.formats import (
    PanopticAnnotation,
    from_id_map,
    read_cityscapes_panoptic,
    read_coco_panoptic,
    to_id_map,
)
from panoptic_ros.data.rosbag_io import BagError, SkippedMessage, read_id_images
from panoptic_ros.evaluation.pq import PQAccumulator

GT_LAYOUTS = ("coco", "cityscapes")
GT_MATCHES = ("stamp", "index")


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

    @property
    def stamp_tolerance_ns(self) -> int | None:
        """How far a frame's stamp may be from its ground truth's; None where frames are matched by index."""

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

    @property
    def stamp_tolerance_ns(self) -> int | None:
        return self.tolerance_ns

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

    @property
    def stamp_tolerance_ns(self) -> int | None:
        return self.tolerance_ns if self.match == "stamp" else None

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
