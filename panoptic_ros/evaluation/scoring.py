"""Scoring of one frame at a time against a ground-truth source, with the rules for leaving frames out.

A frame is left out of the metrics, never silently, with a reason counted in the report: no ground
truth, ground truth of another size than the image, ground truth with unknown classes, an
undecodable image.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from panoptic_ros.classes import DEFAULT_LABEL_DIVISOR, LabelSet
from panoptic_ros.evaluation.ground_truth import GroundTruthFrame, GroundTruthSource
from panoptic_ros.evaluation.pq import PQAccumulator, PQResult

# Reasons a frame is left out of the metrics.
NO_GROUND_TRUTH = "no ground truth"
SIZE_MISMATCH = "size mismatch"
INVALID_GROUND_TRUTH = "invalid ground truth"
UNDECODABLE_IMAGE = "undecodable image"


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
