"""One long bag evaluated as ranges of its frames on several workers, and the parts joined into the whole.

A range is the image topic's messages at positions [start, stop) (positions count every message,
undecodable ones included, as max_frames and index-matched ground truth do). A worker reads the messages
before its range without decoding them, so that damage there ends its run as it ends the whole bag's.

Stamp-matched ground truth serves each ground-truth message to one frame, the nearest within the
tolerance, so two frames whose header stamps are within twice the tolerance can compete for one message;
frames on either side of a range boundary must not. A boundary is therefore put at the first position, at
or after the asked one, whose stamp is more than twice the tolerance above every stamp before it (with
tolerance 0 and increasing stamps, the asked position itself). The boundary depends on the bag alone, so
the range ending there and the one starting there agree on it and together cover every message once. A
stamp inside a range that falls back within reach of the frames before the range ends that range's run
with an error, rather than give a result the whole bag would not.

evaluation.fleet runs the ranges as tasks and joins their evaluations back into the bag's. The PQ counts
join bit for bit: counts are integers, and the IoU sums, which floating-point addition makes depend on the
order they are added in, are kept per frame in a range (`FrameOrderAccumulator`) and added up again in
frame order (`join_accumulators`), exactly as the run over the whole bag adds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from panoptic_ros.data.rosbag_io import BagError
from panoptic_ros.evaluation.pq import FrameHistogram, PQAccumulator

BEFORE, INSIDE, AFTER = "before", "inside", "after"


@dataclass(frozen=True)
class FrameRange:
    """The image topic's messages at positions [start, stop); stop None: to the end."""

    start: int = 0
    stop: int | None = None

    def __post_init__(self) -> None:
        if self.start < 0 or (self.stop is not None and self.stop <= self.start):
            raise ValueError(f"a frame range needs 0 <= start < stop, got [{self.start}, {self.stop})")

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.stop is None


WHOLE_BAG = FrameRange()


def split_range(total: int, per_range: int) -> list[FrameRange]:
    """Ranges of `per_range` messages covering `total` (the last one open-ended); one whole range for total 0."""
    if per_range < 1:
        raise ValueError(f"frames per range must be >= 1, got {per_range}")
    starts = list(range(0, total, per_range)) or [0]
    return [FrameRange(start, next_start) for start, next_start in zip(starts, [*starts[1:], None], strict=True)]


class RangeError(BagError):
    """A range that cannot be evaluated as part of the whole bag (stamps going back across its boundary)."""


class RangeCut:
    """Says, message by message in topic order, whether each is before, inside or after a range.

    `gap_ns`: twice the ground truth's stamp tolerance, for stamp-matched ground truth (boundaries move to
    where stamps leave a wider gap, see the module doc); None where frames cannot compete (index matching,
    no ground truth): boundaries are the asked positions.
    """

    def __init__(self, frame_range: FrameRange, gap_ns: int | None) -> None:
        self.range, self.gap_ns = frame_range, gap_ns
        self._newest: int | None = None  # the highest stamp so far
        self._started = False
        self._floor: int | None = None  # the highest stamp before the range

    def place(self, position: int, stamp_ns: int) -> str:
        """BEFORE, INSIDE or AFTER; RangeError when a stamp inside falls back within reach of those before."""
        boundary = self._newest is None or self.gap_ns is None or stamp_ns > self._newest + self.gap_ns
        if boundary and self.range.stop is not None and position >= self.range.stop:
            return AFTER  # the first boundary at or after stop (if the start moved this far: an empty range)
        if not self._started and position >= self.range.start and boundary:
            self._started, self._floor = True, self._newest
        if self._started and self._floor is not None and self.gap_ns is not None \
                and stamp_ns <= self._floor + self.gap_ns:
            raise RangeError(f"header stamp {stamp_ns} falls back to within {self.gap_ns} ns of a frame before this "
                             f"frame range (range from message {self.range.start}); stamp-matched ground truth "
                             "needs increasing stamps to be split: evaluate this bag without --split-frames")
        self._newest = stamp_ns if self._newest is None else max(self._newest, stamp_ns)
        return INSIDE if self._started else BEFORE


class FrameOrderAccumulator(PQAccumulator):
    """A PQAccumulator that also keeps each frame's IoU sums (one float per class and frame), for join_accumulators.

    Each frame is counted into an accumulator of its own and merged: its IoU sums are then exactly what a plain
    accumulator adds to its own for that frame.
    """

    def __init__(self, categories) -> None:
        super().__init__(categories)
        self.frame_iou_sums: list[np.ndarray] = []

    def add_histogram(self, frame: FrameHistogram) -> None:
        single = PQAccumulator(self.categories)
        single.add_histogram(frame)
        self.merge(single)
        self.frame_iou_sums.append(single.iou_sum)


def join_accumulators(parts: Sequence[FrameOrderAccumulator]) -> PQAccumulator:
    """The accumulator of all the parts' frames, in order, as one accumulator adding them one by one would have it."""
    joined = PQAccumulator(parts[0].categories)
    for part in parts:
        iou_sum = joined.iou_sum.copy()
        for frame in part.frame_iou_sums:
            iou_sum += frame
        joined.merge(part)  # the integer counts; the IoU sums are those added above
        joined.iou_sum = iou_sum
    return joined
