"""Panoptic quality (PQ, SQ, RQ) and mIoU, computed the way COCO's panopticapi `pq_compute` and
Cityscapes' `evalPanopticSemanticLabeling` compute them, vectorised and accumulable over frames.

Per frame, one joint histogram of (ground-truth segment, predicted segment) pixel counts gives every
intersection and area. Then, as in the reference evaluators:
- a ground-truth and a predicted segment match when they have the same category, the ground truth is
  not crowd, and IoU > 0.5, with union = pred area + GT area - intersection - (pred pixels on void);
  with IoU > 0.5 and non-overlapping segments a match is unique, so no assignment step is needed;
- unmatched non-crowd ground-truth segments are false negatives; crowd segments never count;
- an unmatched prediction is a false positive unless more than half of its pixels lie on void or on
  the crowd region of its own category (the references keep one crowd segment per category per
  frame: the last one listed; we do the same so the numbers agree);
- a class with no TP, FP or FN is left out of the averages.

Void is segment id 0. Ground-truth pixels whose id is not listed in the segments (or whose segment's
category is not evaluated) are, as in the references, neither matched nor void. A prediction must
list exactly the ids in its map, with evaluated categories (the references reject it otherwise).

mIoU comes from a semantic confusion matrix accumulated from the same histogram: rows are
ground-truth categories (void and unlisted pixels left out, crowd pixels kept), columns are predicted
categories plus a last column for predicted void, which counts as a miss (Cityscapes' rule).

Counts are integers; IoU sums are float64 sums of exact fractions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from panoptic_ros.classes import LabelSet
    from panoptic_ros.data.formats import PanopticAnnotation, Segment

VOID = 0  # segment id of void pixels

# Pipeline segment ids below this are compacted with a presence count instead of a sort.
_PRESENCE_LIMIT = 1 << 20


@dataclass(frozen=True)
class Category:
    """An evaluated category: its dataset id, name and thing flag."""

    id: int
    name: str
    isthing: bool


def categories_from_coco(categories: Iterable[Mapping]) -> list[Category]:
    """Categories of a COCO panoptic JSON's "categories" list (id, name, isthing)."""
    result = []
    for entry in categories:
        try:
            result.append(Category(int(entry["id"]), str(entry.get("name", entry["id"])), bool(entry["isthing"])))
        except KeyError as error:
            raise ValueError(f"category {dict(entry)!r} lacks {error}; expected id, name, isthing") from None
    return result


def categories_from_label_set(label_set: LabelSet) -> list[Category]:
    """Categories of a label set: id = train id."""
    return [Category(i, name, thing)
            for i, (name, thing) in enumerate(zip(label_set.names, label_set.thing, strict=True))]


@dataclass(frozen=True)
class ClassMetrics:
    """One category's numbers, percentages on a 0-100 scale; None where the class is absent."""

    category: Category
    pq: float | None
    sq: float | None
    rq: float | None
    iou: float | None  # semantic IoU (None when neither GT nor prediction has the class)
    tp: int
    fp: int
    fn: int


@dataclass(frozen=True)
class Average:
    """PQ, SQ, RQ (0-100) averaged over `n` present classes; None when n is 0."""

    pq: float | None
    sq: float | None
    rq: float | None
    n: int


@dataclass(frozen=True)
class PQResult:
    """Per-class and averaged PQ/SQ/RQ, and mIoU, over `num_frames` frames."""

    per_class: list[ClassMetrics]
    all: Average
    things: Average
    stuff: Average
    miou: float | None
    num_frames: int

    def to_dict(self) -> dict:
        """A JSON-ready dict (None becomes null)."""

        def average(a: Average) -> dict:
            return {"pq": a.pq, "sq": a.sq, "rq": a.rq, "n": a.n}

        return {
            "num_frames": self.num_frames,
            "all": average(self.all),
            "things": average(self.things),
            "stuff": average(self.stuff),
            "miou": self.miou,
            "per_class": [{"id": c.category.id, "name": c.category.name, "isthing": c.category.isthing,
                           "pq": c.pq, "sq": c.sq, "rq": c.rq, "iou": c.iou, "tp": c.tp, "fp": c.fp, "fn": c.fn}
                          for c in self.per_class],
        }

    def format_table(self) -> str:
        """The per-class table and the averages, as printed by `panoptic-ros eval`."""

        def pct(value: float | None) -> str:
            return f"{value:6.1f}" if value is not None else "     -"

        width = max([14, *(len(c.category.name) for c in self.per_class)])
        lines = [f"{'class':{width}s} {'kind':5s} {'PQ':>6s} {'SQ':>6s} {'RQ':>6s} {'IoU':>6s} "
                 f"{'TP':>7s} {'FP':>7s} {'FN':>7s}"]
        for c in self.per_class:
            kind = "thing" if c.category.isthing else "stuff"
            lines.append(f"{c.category.name:{width}s} {kind:5s} {pct(c.pq)} {pct(c.sq)} {pct(c.rq)} {pct(c.iou)} "
                         f"{c.tp:7d} {c.fp:7d} {c.fn:7d}")
        lines.append("-" * len(lines[0]))
        lines.append(f"{'':{width}s} {'':5s} {'PQ':>6s} {'SQ':>6s} {'RQ':>6s} {'N':>6s}")
        for name, a in (("All", self.all), ("Things", self.things), ("Stuff", self.stuff)):
            lines.append(f"{name:{width}s} {'':5s} {pct(a.pq)} {pct(a.sq)} {pct(a.rq)} {a.n:6d}")
        lines.append(f"{'mIoU':{width}s} {'':5s} {pct(self.miou)}   ({self.num_frames} frames)")
        return "\n".join(lines)


@dataclass
class _SegmentTable:
    """A frame's segments as arrays, in listing order."""

    ids: np.ndarray  # int64 (S,)
    category_id: np.ndarray  # int64 (S,) dataset category id
    category: np.ndarray  # intp (S,) category index, -1 when the category is not evaluated
    crowd: np.ndarray  # bool (S,)


@dataclass
class FrameHistogram:
    """One frame pair, counted: its joint histogram (rows: void, GT segments, unlisted GT; columns: void,
    predicted segments) and both segment tables. Made without touching the accumulator's counts, so frames
    can be counted in parallel and added in order (`PQAccumulator.add_histogram`)."""

    counts: np.ndarray
    gt: _SegmentTable
    pred: _SegmentTable


class PQAccumulator:
    """Accumulates PQ counts and the semantic confusion matrix over frames.

    `add(gt, pred)` per frame pair (PanopticAnnotation, ids 0 = void), or `add_id_maps` for the
    pipeline's id maps; `merge(other)` combines two accumulators over the same categories; `result()`
    gives the metrics so far.
    """

    def __init__(self, categories: Sequence[Category]) -> None:
        if not categories:
            raise ValueError("need at least one category to evaluate")
        ids = [c.id for c in categories]
        if len(set(ids)) != len(ids):
            raise ValueError(f"category ids must be unique, got {ids}")
        self.categories = list(categories)
        self._index = {c.id: i for i, c in enumerate(self.categories)}
        n = len(self.categories)
        self.tp = np.zeros(n, dtype=np.int64)
        self.fp = np.zeros(n, dtype=np.int64)
        self.fn = np.zeros(n, dtype=np.int64)
        self.iou_sum = np.zeros(n, dtype=np.float64)
        # rows: GT category; columns: predicted category, then predicted void
        self.confusion = np.zeros((n, n + 1), dtype=np.int64)
        self.num_frames = 0

    @classmethod
    def from_coco(cls, categories: Iterable[Mapping]) -> PQAccumulator:
        return cls(categories_from_coco(categories))

    @classmethod
    def from_label_set(cls, label_set: LabelSet) -> PQAccumulator:
        return cls(categories_from_label_set(label_set))

    def add(self, gt: PanopticAnnotation, pred: PanopticAnnotation) -> None:
        """Add one frame: ground truth and prediction of the same size."""
        self.add_histogram(self.histogram(gt, pred))

    def add_maps(self, gt_ids: np.ndarray, gt_segments: Mapping[int, Segment],
                 pred_ids: np.ndarray, pred_segments: Mapping[int, Segment]) -> None:
        """Add one frame given as id maps (H, W) (0 = void) and their segments by id, in listing order."""
        self.add_histogram(self.histogram_maps(gt_ids, gt_segments, pred_ids, pred_segments))

    def add_id_maps(self, gt_panoptic: np.ndarray, pred_panoptic: np.ndarray, label_divisor: int) -> None:
        """Add one frame pair in the pipeline's layout: id = class * label_divisor + instance, -1 void, the
        classes being this accumulator's category ids (train ids). Thing pixels with instance 0 are crowd.

        Same numbers as `add(from_id_map(gt), from_id_map(pred))`, without computing segment boxes
        (several times faster on large frames).
        """
        self.add_histogram(self.histogram_id_maps(gt_panoptic, pred_panoptic, label_divisor))

    def histogram(self, gt: PanopticAnnotation, pred: PanopticAnnotation) -> FrameHistogram:
        """`add`'s counting of one frame, without adding it (thread-safe)."""
        return self.histogram_maps(gt.ids, gt.segments, pred.ids, pred.segments)

    def histogram_maps(self, gt_ids: np.ndarray, gt_segments: Mapping[int, Segment],
                       pred_ids: np.ndarray, pred_segments: Mapping[int, Segment]) -> FrameHistogram:
        """`add_maps`'s counting of one frame, without adding it (thread-safe)."""
        gt_ids, pred_ids = _id_map(gt_ids, "ground truth"), _id_map(pred_ids, "prediction")
        _check_same_size(gt_ids, pred_ids)
        gt, pred = self._table(gt_segments, "ground truth"), self._table(pred_segments, "prediction")
        unknown = np.unique(pred.category_id[pred.category < 0])
        if unknown.size:
            raise ValueError(f"prediction has segments of categories {unknown.tolist()}, which are not "
                             f"evaluated (known: {sorted(self._index)})")
        return FrameHistogram(_joint_histogram(gt_ids, gt.ids, pred_ids, pred.ids), gt, pred)

    def histogram_id_maps(self, gt_panoptic: np.ndarray, pred_panoptic: np.ndarray,
                          label_divisor: int) -> FrameHistogram:
        """`add_id_maps`'s counting of one frame pair, without adding it (thread-safe)."""
        if label_divisor <= 0:
            raise ValueError(f"label_divisor must be positive, got {label_divisor}")
        gt_ids, pred_ids = _id_map(gt_panoptic, "ground truth"), _id_map(pred_panoptic, "prediction")
        _check_same_size(gt_ids, pred_ids)
        counts, gt_present, pred_present = _pipeline_joint_histogram(gt_ids, pred_ids)
        gt = self._pipeline_segments(gt_present, label_divisor, "ground truth")
        pred = self._pipeline_segments(pred_present, label_divisor, "prediction")
        # An id map lists every id it has: no unlisted ground truth, an empty row where the matching expects it.
        counts = np.concatenate([counts, np.zeros((1, counts.shape[1]), dtype=counts.dtype)])
        return FrameHistogram(counts, gt, pred)

    def add_histogram(self, frame: FrameHistogram) -> None:
        """Add one counted frame (from `histogram`, `histogram_maps` or `histogram_id_maps` of this accumulator)."""
        self._add_counts(frame.counts, frame.gt, frame.pred)
        self.num_frames += 1

    def merge(self, other: PQAccumulator) -> PQAccumulator:
        """Add another accumulator's counts (same categories) to this one; returns self."""
        if other.categories != self.categories:
            raise ValueError("cannot merge accumulators over different categories")
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.iou_sum += other.iou_sum
        self.confusion += other.confusion
        self.num_frames += other.num_frames
        return self

    def result(self) -> PQResult:
        """Per-class and averaged metrics of everything added so far."""
        tp, fp, fn = self.tp, self.fp, self.fn
        present = (tp + fp + fn) > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            pq = self.iou_sum / (tp + 0.5 * fp + 0.5 * fn)
            sq = np.where(tp > 0, self.iou_sum / tp, 0.0)  # the references count SQ 0 for a class with no TP
            rq = tp / (tp + 0.5 * fp + 0.5 * fn)
            hits = np.diag(self.confusion[:, :-1])
            union = self.confusion.sum(1) + self.confusion[:, :-1].sum(0) - hits
            iou = hits / union
        per_class = [
            ClassMetrics(category=c, pq=_pct(pq[i]) if present[i] else None, sq=_pct(sq[i]) if present[i] else None,
                         rq=_pct(rq[i]) if present[i] else None, iou=_pct(iou[i]) if union[i] > 0 else None,
                         tp=int(tp[i]), fp=int(fp[i]), fn=int(fn[i]))
            for i, c in enumerate(self.categories)]
        thing = np.array([c.isthing for c in self.categories])

        def average(selected: np.ndarray) -> Average:
            keep = selected & present
            n = int(keep.sum())
            if n == 0:
                return Average(None, None, None, 0)
            return Average(_pct(pq[keep].sum() / n), _pct(sq[keep].sum() / n), _pct(rq[keep].sum() / n), n)

        miou = _pct(iou[union > 0].mean()) if (union > 0).any() else None
        return PQResult(per_class=per_class, all=average(np.ones_like(thing)), things=average(thing),
                        stuff=average(~thing), miou=miou, num_frames=self.num_frames)

    def _pipeline_segments(self, present: np.ndarray, label_divisor: int, name: str) -> _SegmentTable:
        """The segment table of a pipeline id map's segment ids (panoptic id + 1, void left out)."""
        category_id = (present - 1) // label_divisor
        category = np.array([self._index.get(int(c), -1) for c in category_id], dtype=np.intp)
        if (category < 0).any():
            raise ValueError(f"{name}: panoptic ids of classes {np.unique(category_id[category < 0]).tolist()}, "
                             f"which are not evaluated (known: {sorted(self._index)}; label_divisor {label_divisor})")
        isthing = np.array([c.isthing for c in self.categories], dtype=bool)
        crowd = isthing[category] & ((present - 1) % label_divisor == 0)
        return _SegmentTable(present.astype(np.int64), category_id, category, crowd)

    def _table(self, segments: Mapping[int, Segment], name: str) -> _SegmentTable:
        ids = np.fromiter((int(i) for i in segments), dtype=np.int64, count=len(segments))
        if (ids == VOID).any():
            raise ValueError(f"{name}: segment id {VOID} is reserved for void pixels")
        for segment_id, segment in segments.items():
            if int(segment.id) != int(segment_id):
                raise ValueError(f"{name}: segment listed under id {segment_id} has id {segment.id}")
        category_id = np.fromiter((int(s.category_id) for s in segments.values()), dtype=np.int64,
                                  count=len(segments))
        category = np.array([self._index.get(int(c), -1) for c in category_id], dtype=np.intp)
        crowd = np.fromiter((bool(s.iscrowd) for s in segments.values()), dtype=bool, count=len(segments))
        return _SegmentTable(ids, category_id, category, crowd)

    def _add_counts(self, counts: np.ndarray, gt: _SegmentTable, pred: _SegmentTable) -> None:
        """Match one frame's segments given its joint histogram (rows: void, GT segments, unlisted GT;
        columns: void, predicted segments)."""
        num_gt, num_pred, num_classes = len(gt.ids), len(pred.ids), len(self.categories)
        intersection = counts[1:num_gt + 1, 1:]  # (G, P)
        pred_area = counts[:, 1:].sum(0)
        gt_area = counts[1:num_gt + 1].sum(1)
        pred_on_void = counts[0, 1:]
        empty = pred.ids[pred_area == 0]
        if empty.size:
            raise ValueError(f"prediction lists segments {empty[:10].tolist()} that have no pixels in its id map")

        union = pred_area[None, :] + gt_area[:, None] - intersection - pred_on_void[None, :]
        gt_matchable = (gt.category >= 0) & ~gt.crowd
        same_class = gt.category[:, None] == pred.category[None, :]
        # IoU > 0.5 as exact integer arithmetic
        match = same_class & gt_matchable[:, None] & (2 * intersection > union)
        gt_index, pred_index = np.nonzero(match)
        match_class = gt.category[gt_index]
        self.tp += np.bincount(match_class, minlength=num_classes)
        match_iou = intersection[gt_index, pred_index] / union[gt_index, pred_index]
        self.iou_sum += np.bincount(match_class, weights=match_iou, minlength=num_classes)

        gt_matched = np.zeros(num_gt, dtype=bool)
        gt_matched[gt_index] = True
        self.fn += np.bincount(gt.category[gt_matchable & ~gt_matched], minlength=num_classes)

        # The crowd segment of each category: the last one listed, as in the references.
        crowd_row = np.full(num_classes, -1, dtype=np.intp)
        for row in np.flatnonzero(gt.crowd & (gt.category >= 0)):
            crowd_row[gt.category[row]] = row
        pred_crowd_row = crowd_row[pred.category]
        has_crowd = np.flatnonzero(pred_crowd_row >= 0)
        on_crowd = np.zeros(num_pred, dtype=np.int64)
        on_crowd[has_crowd] = intersection[pred_crowd_row[has_crowd], has_crowd]
        ignored = 2 * (pred_on_void + on_crowd) > pred_area  # more than half void or same-class crowd
        pred_matched = np.zeros(num_pred, dtype=bool)
        pred_matched[pred_index] = True
        self.fp += np.bincount(pred.category[~pred_matched & ~ignored], minlength=num_classes)

        # Semantic confusion from the same histogram: void and unlisted GT rows are left out.
        row_class = np.concatenate(([-1], gt.category, [-1]))
        column_class = np.concatenate(([num_classes], pred.category))
        rows, columns = np.nonzero(counts)
        keep = row_class[rows] >= 0
        rows, columns = rows[keep], columns[keep]
        np.add.at(self.confusion, (row_class[rows], column_class[columns]), counts[rows, columns])


def _id_map(ids: np.ndarray, name: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name}: expected an integer id map (H, W), got {ids.dtype} {ids.shape}")
    return ids


def _check_same_size(gt_ids: np.ndarray, pred_ids: np.ndarray) -> None:
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(f"ground truth is {gt_ids.shape[0]}x{gt_ids.shape[1]} but the prediction is "
                         f"{pred_ids.shape[0]}x{pred_ids.shape[1]}; they must have the same size")


def _pixel_runs(gt_ids: np.ndarray, pred_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two id maps of one size as runs of equal (gt id, pred id) pairs in row-major order: each run's two ids
    (int64) and its length in pixels. Segment maps are piecewise constant, so there are far fewer runs than
    pixels: this is the only pass over the pixels, and all counting after it works on the runs."""
    gt_flat, pred_flat = gt_ids.ravel(), pred_ids.ravel()
    if gt_flat.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.intp)
    change = gt_flat[1:] != gt_flat[:-1]
    change |= pred_flat[1:] != pred_flat[:-1]
    starts = np.concatenate(([0], np.flatnonzero(change) + 1))
    lengths = np.diff(starts, append=gt_flat.size)
    return gt_flat[starts].astype(np.int64), pred_flat[starts].astype(np.int64), lengths


def _pair_counts(rows: np.ndarray, columns: np.ndarray, lengths: np.ndarray, height: int,
                 width: int) -> np.ndarray:
    """Pixel counts (height, width) of runs by (row, column). A float64 sum of integer lengths is exact (far
    below 2^53), so the counts are exact integers."""
    counts = np.bincount(rows * width + columns, weights=lengths, minlength=height * width)
    return counts.astype(np.int64).reshape(height, width)


def _joint_histogram(gt_ids: np.ndarray, gt_segment_ids: np.ndarray, pred_ids: np.ndarray,
                     pred_segment_ids: np.ndarray) -> np.ndarray:
    """Pixel counts (G + 2, P + 1): rows void, GT segments in order, unlisted GT ids; columns void,
    predicted segments in order. Raises for predicted ids that are not listed."""
    num_gt, num_pred = len(gt_segment_ids), len(pred_segment_ids)
    gt_runs, pred_runs, lengths = _pixel_runs(gt_ids, pred_ids)
    gt_rows = _row_of_id(gt_runs, gt_segment_ids, unlisted=num_gt + 1, name="ground truth")
    pred_rows = _row_of_id(pred_runs, pred_segment_ids, unlisted=num_pred + 1, name="prediction")
    counts = _pair_counts(gt_rows, pred_rows, lengths, num_gt + 2, num_pred + 2)
    if counts[:, -1].any():
        unlisted = np.unique(pred_runs[pred_rows == num_pred + 1])
        raise ValueError(f"prediction id map has segment ids {unlisted[:10].tolist()} that its segments do not list")
    return counts[:, :-1]


def _row_of_id(ids: np.ndarray, segment_ids: np.ndarray, unlisted: int, name: str) -> np.ndarray:
    """Per id: 0 for void, 1 + the position of the id in `segment_ids`, or `unlisted`."""
    if ids.size and ids.min() < 0:
        raise ValueError(f"{name}: segment ids must be >= 0 (0 = void), got {int(ids.min())}")
    if not len(segment_ids):
        return np.where(ids == VOID, 0, unlisted)
    order = np.argsort(segment_ids)
    sorted_ids = segment_ids[order]
    position = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
    found = sorted_ids[position] == ids
    return np.where(ids == VOID, 0, np.where(found, order[position] + 1, unlisted))


def _pipeline_joint_histogram(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joint pixel counts of two pipeline id maps (-1 void) and the segment ids present in each (panoptic id + 1,
    sorted, void left out): counts (G + 1, P + 1), rows void then GT segments, columns void then predicted ones."""
    gt_runs, pred_runs, lengths = _pixel_runs(gt, pred)
    gt_present, rows = _compact(gt_runs, "ground truth")
    pred_present, columns = _compact(pred_runs, "prediction")
    return _pair_counts(rows, columns, lengths, gt_present.size + 1, pred_present.size + 1), gt_present, pred_present


def _compact(panoptic: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Of pipeline panoptic ids (-1 void): (segment ids present, i.e. panoptic id + 1, sorted, void left out;
    per id 0 for void, else 1 + the position of its segment id)."""
    if panoptic.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.intp)
    low, high = int(panoptic.min()), int(panoptic.max()) + 1
    if low < -1:
        raise ValueError(f"{name}: panoptic ids must be >= -1 (void), got {low}")
    segment_ids = panoptic + 1
    if high < _PRESENCE_LIMIT:  # a presence count is faster than sorting when ids are small
        present = np.flatnonzero(np.bincount(segment_ids))
        present = present[present != VOID]
        lookup = np.zeros(high + 1, dtype=np.intp)
        lookup[present] = np.arange(1, present.size + 1)
        return present, lookup[segment_ids]
    present, inverse = np.unique(segment_ids, return_inverse=True)
    if present[0] == VOID:
        return present[1:], inverse
    return present, inverse + 1


def _pct(value: float) -> float:
    return float(100.0 * value)
