"""Segmentation and Tracking Quality (STQ, Weber et al. 2021, "STEP: Segmenting and Tracking Every Pixel"),
accumulated frame by frame over one sequence, and identity switches.

    STQ = sqrt(AQ x SQ)
    AQ  = 1 / |gt tracks| * sum over gt tracks g of  1 / |g| * sum over predicted tracks p meeting g of
          TPA(p, g) * IoU_id(p, g),   IoU_id = TPA / (TPA + FPA + FNA)
    SQ  = mIoU over the classes, over all pixels of the sequence

A track is the set of pixels, over the whole sequence, with one (class, track id); TPA(p, g) = |p & g|,
FPA = |p - g|, FNA = |g - p|. Association is class-agnostic (only thing pixels take part; whether classes
agree is SQ's business). As in the official implementation, ground-truth thing pixels without a track id
(crowd) are left out of the association, ground-truth tracks and predictions alike; void ground truth is
left out of SQ (a predicted void pixel is a miss of its ground-truth class). Predicted thing pixels without
a track (track id 0, e.g. untracked detections) form one track per class.

Identity switches (CLEAR MOT): in each frame a ground-truth track is matched to the predicted track whose
pixels overlap it with IoU > 0.5 (unique when it exists); a switch is a match to another predicted track
than at the track's previous match.

`STQAccumulator` is the fast implementation (per-frame counts); `stq_reference` follows the words above pixel
set by pixel set, and the two are proven equal on random sequences.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from panoptic_ros.classes import VOID_CLASS

MATCH_IOU = 0.5
_TRACK_BITS = 32  # a track key is class << 32 | track id
_DENSE_LIMIT = 1 << 24  # largest key span counted densely


@dataclass
class STQResult:
    stq: float
    aq: float
    sq: float  # mIoU
    aq_per_class: dict[int, float]  # over the ground-truth tracks of each thing class that has some
    iou_per_class: dict[int, float]  # classes present in the ground truth or the prediction
    switches_per_frame: list[int]
    gt_tracks: int
    predicted_tracks: int
    num_frames: int

    @property
    def id_switches(self) -> int:
        return sum(self.switches_per_frame)

    def to_dict(self, names: tuple[str, ...] | None = None) -> dict:
        def name(c: int) -> str | int:
            return names[c] if names is not None and c < len(names) else c
        return {"STQ": self.stq, "AQ": self.aq, "SQ": self.sq, "id_switches": self.id_switches,
                "gt_tracks": self.gt_tracks, "predicted_tracks": self.predicted_tracks, "frames": self.num_frames,
                "AQ_per_class": {name(c): v for c, v in self.aq_per_class.items()},
                "IoU_per_class": {name(c): v for c, v in self.iou_per_class.items()},
                "switches_per_frame": list(self.switches_per_frame)}


@dataclass
class STQAccumulator:
    """STQ and identity switches of one sequence; `add` each frame in order."""

    thing: tuple[bool, ...]  # per class id
    confusion: np.ndarray = field(init=False)  # (C, C + 1): ground truth x prediction (last column: void)
    gt_sizes: Counter = field(default_factory=Counter)  # track key -> pixels
    predicted_sizes: Counter = field(default_factory=Counter)
    intersections: Counter = field(default_factory=Counter)  # (gt key, predicted key) -> pixels
    switches_per_frame: list[int] = field(default_factory=list)
    _last_match: dict[int, int] = field(default_factory=dict)  # gt key -> predicted key

    def __post_init__(self) -> None:
        self.thing = tuple(bool(t) for t in self.thing)
        classes = len(self.thing)
        self.confusion = np.zeros((classes, classes + 1), dtype=np.int64)

    def add(self, gt_classes: np.ndarray, gt_tracks: np.ndarray, predicted_classes: np.ndarray,
            predicted_tracks: np.ndarray) -> None:
        """One frame: class maps (VOID_CLASS for void) and track-id maps (0: no track), all (H, W)."""
        gt_classes, predicted_classes = _classes(gt_classes, self.thing), _classes(predicted_classes, self.thing)
        gt_tracks, predicted_tracks = np.asarray(gt_tracks, np.int64), np.asarray(predicted_tracks, np.int64)
        if not gt_classes.shape == gt_tracks.shape == predicted_classes.shape == predicted_tracks.shape:
            raise ValueError(f"STQ needs maps of one size, got {gt_classes.shape}, {gt_tracks.shape}, "
                             f"{predicted_classes.shape}, {predicted_tracks.shape}")
        classes = len(self.thing)
        valid = gt_classes != VOID_CLASS
        predicted = np.where(predicted_classes == VOID_CLASS, classes, predicted_classes)
        self.confusion += np.bincount(gt_classes[valid] * (classes + 1) + predicted[valid],
                                      minlength=classes * (classes + 1)).reshape(classes, classes + 1)

        thing = np.zeros(classes + 1, dtype=bool)
        thing[:classes] = self.thing
        gt_thing = thing[np.minimum(gt_classes, classes)]
        crowd = gt_thing & (gt_tracks == 0)
        in_gt = gt_thing & ~crowd
        in_predicted = thing[np.minimum(predicted_classes, classes)] & ~crowd
        gt_unique, gt_index = _compact(gt_classes[in_gt], gt_tracks[in_gt])
        predicted_unique, predicted_index = _compact(predicted_classes[in_predicted], predicted_tracks[in_predicted])
        gt_count = np.bincount(gt_index, minlength=gt_unique.size)
        predicted_count = np.bincount(predicted_index, minlength=predicted_unique.size)
        self.gt_sizes.update(dict(zip(gt_unique.tolist(), gt_count.tolist(), strict=True)))
        self.predicted_sizes.update(dict(zip(predicted_unique.tolist(), predicted_count.tolist(), strict=True)))

        # Intersections: pixels in both; indices into this frame's unique keys.
        both = in_gt & in_predicted
        g = np.zeros(both.shape, dtype=np.int64)
        g[in_gt] = gt_index
        p = np.zeros(both.shape, dtype=np.int64)
        p[in_predicted] = predicted_index
        pairs = np.bincount(g[both] * predicted_unique.size + p[both],
                            minlength=gt_unique.size * predicted_unique.size)
        pairs = pairs.reshape(gt_unique.size, predicted_unique.size)
        gi, pi = np.nonzero(pairs)
        self.intersections.update({(int(gt_unique[a]), int(predicted_unique[b])): int(pairs[a, b])
                                   for a, b in zip(gi, pi, strict=True)})

        switches = 0
        for a, b in zip(gi, pi, strict=True):
            if pairs[a, b] / (gt_count[a] + predicted_count[b] - pairs[a, b]) > MATCH_IOU:
                gt_key, predicted_key = int(gt_unique[a]), int(predicted_unique[b])
                switches += self._last_match.get(gt_key, predicted_key) != predicted_key
                self._last_match[gt_key] = predicted_key
        self.switches_per_frame.append(switches)

    def result(self) -> STQResult:
        per_track = {}
        for (gt_key, predicted_key), tpa in self.intersections.items():
            union = self.gt_sizes[gt_key] + self.predicted_sizes[predicted_key] - tpa
            per_track[gt_key] = per_track.get(gt_key, 0.0) + tpa * (tpa / union)
        aq_of = {key: per_track.get(key, 0.0) / size for key, size in self.gt_sizes.items()}
        by_class: dict[int, list[float]] = {}
        for key, value in aq_of.items():
            by_class.setdefault(key >> _TRACK_BITS, []).append(value)
        aq = sum(aq_of.values()) / len(aq_of) if aq_of else 0.0

        tp = np.diag(self.confusion[:, :-1])
        union = self.confusion.sum(axis=1) + self.confusion[:, :-1].sum(axis=0) - tp
        iou_per_class = {c: float(tp[c] / union[c]) for c in np.flatnonzero(union > 0).tolist()}
        sq = float(np.mean(list(iou_per_class.values()))) if iou_per_class else 0.0
        return STQResult(stq=math.sqrt(aq * sq), aq=aq, sq=sq,
                         aq_per_class={c: sum(v) / len(v) for c, v in sorted(by_class.items())},
                         iou_per_class=iou_per_class, switches_per_frame=list(self.switches_per_frame),
                         gt_tracks=len(self.gt_sizes), predicted_tracks=len(self.predicted_sizes),
                         num_frames=len(self.switches_per_frame))


def _compact(classes: np.ndarray, tracks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct track keys (class << 32 | track id, sorted) of some pixels, and each pixel's index into them.

    Like np.unique(keys, return_inverse=True), without its sort where the ids allow a dense count (ids of a
    frame are small numbers): a frame of a 256x512 sequence costs a few ms instead of tens."""
    if tracks.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    span = int(tracks.max()) + 1
    if span * (int(classes.max()) + 1) > _DENSE_LIMIT:
        keys, index = np.unique(classes << _TRACK_BITS | tracks, return_inverse=True)
        return keys, index.ravel()
    flat = classes * span + tracks
    present = np.flatnonzero(np.bincount(flat))
    lookup = np.zeros(present[-1] + 1, dtype=np.int64)
    lookup[present] = np.arange(present.size)
    return (present // span) << _TRACK_BITS | present % span, lookup[flat]


def _classes(classes: np.ndarray, thing: tuple[bool, ...]) -> np.ndarray:
    classes = np.asarray(classes)
    if classes.size and not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"class maps must be integer, got {classes.dtype}")
    classes = classes.astype(np.int64)
    bad = (classes < 0) | ((classes >= len(thing)) & (classes != VOID_CLASS))
    if bad.any():
        raise ValueError(f"class {classes[bad][0]} is not one of the {len(thing)} classes (or void {VOID_CLASS})")
    return classes


def split_id_map(ids: np.ndarray, label_divisor: int) -> tuple[np.ndarray, np.ndarray]:
    """Class map (VOID_CLASS for void) and instance map of a pipeline id map (class * divisor + n, -1 void)."""
    ids = np.asarray(ids, dtype=np.int64)
    void = ids < 0
    return np.where(void, VOID_CLASS, ids // label_divisor), np.where(void, 0, ids % label_divisor)
