"""Track ids for a camera's thing instances, frame after frame (ROS-free; the node, eval-bag and replay share it).

Each frame's thing instances are associated with the camera's live tracks of the same class (a class change
is a new track) by optimal assignment (`scipy.optimize.linear_sum_assignment`) on

- mask IoU with the track's mask of the previous frame, where it was seen there and the IoU reaches
  `mask_iou`; else, as a fallback,
- box IoU with the track's last box moved on by its last velocity (boxes survive occlusions, masks do not),
  where it reaches `box_iou`; a mask match always beats a box match.

As in ByteTrack (Zhang et al. 2022), detections scoring at least `high_score` are associated first, with
every live track; the low-scoring rest then only with the tracks seen in the previous frame that are still
unmatched. A high-scoring detection left unmatched starts a track; a low-scoring one stays untracked (track
id 0): alone, it is more likely a false positive. A track not seen for more than `max_age` frames dies.
Track ids come from a `TrackIds` counter: unique per run (shared by a node's cameras), never reused.

Masks are compared on a grid of at most GRID_PIXELS pixels (every s-th row and column of the id map: s = 1
up to 362x362, s = 4 at 1024x2048), which keeps a frame's cost within the node's budget; the IoU is then a
sample estimate of the full-resolution one.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from panoptic_ros.pipeline_io import COL
from panoptic_ros.tracking.config import TrackerConfig

GRID_PIXELS = 1 << 17
DENSE_IDS = 1 << 20  # ids below this are looked up in a table
_FORBIDDEN = 1e6  # cost of a pair that may not be matched (other class, overlap below the thresholds)


class TrackIds:
    """Track ids 1, 2, 3, ... for one run, never reused; thread-safe, so cameras' trackers can share one."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            return next(self._counter)


@dataclass(eq=False)  # tracks are compared by identity
class _Track:
    id: int
    class_id: int
    box: np.ndarray  # x1, y1, x2, y2 (inclusive pixels) where it was last seen
    last_seen: int  # frame number
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # box change per frame

    def predicted_box(self, frame: int) -> np.ndarray:
        return self.box + self.velocity * (frame - self.last_seen)


class Tracker:
    """One camera's tracks. `update` takes each frame's id map and instance table, in order."""

    def __init__(self, thing: Sequence[bool], config: TrackerConfig | None = None, ids: TrackIds | None = None
                 ) -> None:
        self.thing = np.asarray(thing, dtype=bool)  # per class id: is it a thing
        self.config = config or TrackerConfig()
        self._ids = ids or TrackIds()
        self._tracks: list[_Track] = []
        self._frame = 0
        self._previous: np.ndarray | None = None  # grid of 1 + index into _seen (0: no track), last frame
        self._seen: list[_Track] = []  # tracks seen in the last frame, in the order of _previous

    @property
    def live_tracks(self) -> int:
        return len(self._tracks)

    def update(self, panoptic: np.ndarray, instances: np.ndarray) -> dict[int, int]:
        """Track ids of one frame's thing instances, {segment id: track id} (0: an untracked low-score detection).

        `panoptic`: the frame's id map (H, W); `instances`: its valid instance-table rows (pipeline_io.COL),
        boxes in the id map's pixels. Stuff rows are ignored.
        """
        self._frame += 1
        rows = np.asarray(instances, dtype=np.float64).reshape(-1, len(COL))
        classes = rows[:, COL["class_id"]].astype(np.int64)
        rows = rows[(classes < self.thing.size) & self.thing[np.clip(classes, 0, self.thing.size - 1)]]
        segment_ids = rows[:, COL["id"]].astype(np.int64)
        classes = rows[:, COL["class_id"]].astype(np.int64)
        scores = rows[:, COL["score"]]
        boxes = rows[:, [COL["x1"], COL["y1"], COL["x2"], COL["y2"]]]

        grid = self._grid(panoptic)
        detection_map = _index_map(grid, segment_ids)
        mask_iou = self._mask_iou(detection_map, len(rows))
        assigned: dict[int, _Track] = {}  # detection index -> track
        high = np.flatnonzero(scores >= self.config.high_score)
        low = np.flatnonzero(scores < self.config.high_score)
        seen_last_frame = set(self._seen)
        for detections, tracks in ((high, self._tracks), (low, [t for t in self._tracks if t in seen_last_frame])):
            taken = set(assigned.values())
            assigned.update(self._associate(detections, [t for t in tracks if t not in taken], classes, boxes,
                                            mask_iou))

        for j in high:
            if j not in assigned:
                track = _Track(self._ids.next(), int(classes[j]), boxes[j].copy(), self._frame)
                self._tracks.append(track)
                assigned[j] = track
        for j, track in assigned.items():
            gap = self._frame - track.last_seen
            if gap:
                track.velocity = (boxes[j] - track.box) / gap
            track.box, track.last_seen = boxes[j].copy(), self._frame
        self._tracks = [t for t in self._tracks if self._frame - t.last_seen <= self.config.max_age]

        # This frame's masks, as track indices, for the next frame's mask IoU.
        order = sorted(assigned)
        self._seen = [assigned[j] for j in order]
        slot = np.zeros(len(rows) + 1, dtype=np.int32)
        slot[np.asarray(order, dtype=np.int64) + 1] = np.arange(1, len(order) + 1, dtype=np.int32)
        self._previous = slot[detection_map]
        return {int(segment_ids[j]): (assigned[j].id if j in assigned else 0) for j in range(len(rows))}

    def _grid(self, panoptic: np.ndarray) -> np.ndarray:
        height, width = panoptic.shape
        stride = max(1, math.ceil(math.sqrt(height * width / GRID_PIXELS)))
        grid = panoptic[::stride, ::stride]
        if self._previous is not None and self._previous.shape != grid.shape:  # the camera's size changed
            self._previous, self._seen = None, []
        return grid

    def _mask_iou(self, detection_map: np.ndarray, count: int) -> np.ndarray:
        """IoU (len(_seen), count) of the previous frame's track masks with this frame's detection masks."""
        if self._previous is None or not self._seen:
            return np.zeros((0, count))
        cols = count + 1
        joint = np.bincount((self._previous.astype(np.int64) * cols + detection_map).ravel(),
                            minlength=(len(self._seen) + 1) * cols).reshape(-1, cols)
        intersection = joint[1:, 1:]
        union = joint[1:].sum(axis=1)[:, None] + joint[:, 1:].sum(axis=0)[None, :] - intersection
        return intersection / np.maximum(union, 1)

    def _associate(self, detections: np.ndarray, tracks: list[_Track], classes: np.ndarray, boxes: np.ndarray,
                   mask_iou: np.ndarray) -> dict[int, _Track]:
        if detections.size == 0 or not tracks:
            return {}
        row_of = {t: i for i, t in enumerate(self._seen)}
        predicted = np.array([t.predicted_box(self._frame) for t in tracks])
        box = box_iou(predicted, boxes[detections])
        mask = np.zeros_like(box)
        rows = np.array([row_of.get(t, -1) for t in tracks])
        mask[rows >= 0] = mask_iou[rows[rows >= 0]][:, detections]
        cost = np.where(mask >= self.config.mask_iou, 1.0 - mask,
                        np.where(box >= self.config.box_iou, 2.0 - box, _FORBIDDEN))
        cost[np.array([t.class_id for t in tracks])[:, None] != classes[detections][None, :]] = _FORBIDDEN
        track_rows, detection_cols = linear_sum_assignment(cost)
        return {int(detections[c]): tracks[r] for r, c in zip(track_rows, detection_cols, strict=True)
                if cost[r, c] < _FORBIDDEN}


def _index_map(grid: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
    """1 + the index of each grid pixel's segment in `segment_ids` (0: not one of them, void included)."""
    return map_ids(grid, segment_ids, np.arange(1, segment_ids.size + 1), 0)


def map_ids(ids: np.ndarray, keys: np.ndarray, values: np.ndarray, default: int | None) -> np.ndarray:
    """values[k] where ids == keys[k]; elsewhere `default`, or (None) the id itself. int64, the shape of `ids`.

    A lookup table indexed by id where ids are small (class * 1000 + n: a few thousand entries), a binary
    search among the keys where a large label divisor would make the table too big."""
    ids = np.asarray(ids)
    keys, values = np.asarray(keys, dtype=np.int64), np.asarray(values, dtype=np.int64)
    top = int(max(ids.max(initial=0), keys.max(initial=0)))
    if top < DENSE_IDS:
        lookup = np.arange(-1, top + 1) if default is None else np.full(top + 2, default, dtype=np.int64)
        lookup[keys + 1] = values  # shifted by one: void (-1) reads entry 0
        return lookup[np.maximum(ids, -1) + 1]
    order = np.argsort(keys)
    sorted_keys = keys[order]
    position = np.minimum(np.searchsorted(sorted_keys, ids), max(keys.size - 1, 0))
    found = sorted_keys[position] == ids if keys.size else np.zeros(ids.shape, dtype=bool)
    others = ids.astype(np.int64) if default is None else default
    return np.where(found, values[order][position] if keys.size else 0, others)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU (len(a), len(b)) of boxes x1, y1, x2, y2 in inclusive pixel coordinates."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    intersection = np.clip(width, 0, None) * np.clip(height, 0, None)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    return intersection / np.maximum(area_a[:, None] + area_b[None, :] - intersection, 1e-9)


def track_id_map(panoptic: np.ndarray, tracks: dict[int, int], label_divisor: int) -> np.ndarray:
    """The id map with thing ids replaced by class * label_divisor + track id (panoptic/track_image; int32).

    Stuff and void keep their ids; an untracked thing gets class * label_divisor. A track id of label_divisor
    or more wraps to (id - 1) % (label_divisor - 1) + 1, so the image still decodes (PanopticInstance.track_id
    carries the full id).
    """
    segments = np.fromiter(tracks, dtype=np.int64, count=len(tracks))
    track_ids = np.fromiter(tracks.values(), dtype=np.int64, count=len(tracks))
    wrapped = np.where(track_ids > 0, (track_ids - 1) % (label_divisor - 1) + 1, 0)
    return map_ids(panoptic, segments, segments // label_divisor * label_divisor + wrapped, None).astype(np.int32)
