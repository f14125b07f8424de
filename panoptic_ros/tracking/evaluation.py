"""Tracking evaluation of a run, frame by frame (eval-bag --tracking, replay --tracking).

`SequenceTracking.track` gives each frame's thing segments their track ids: the tracker's, or with the
tracker off the segments' own per-frame instance numbers (the no-tracking baseline: an id then means
"the n-th instance of its class in this frame"). `score` adds a frame to STQ and identity switches
against ground truth whose instance ids are track ids (synth --sequence).
"""

from __future__ import annotations

import numpy as np

from panoptic_ros.classes import LabelSet
from panoptic_ros.data.formats import to_id_map
from panoptic_ros.evaluation.ground_truth import GroundTruthFrame
from panoptic_ros.pipeline_io import COL, PanopticResult
from panoptic_ros.tracking.config import TrackerConfig
from panoptic_ros.tracking.stq import STQAccumulator, STQResult, split_id_map
from panoptic_ros.tracking.tracker import Tracker, map_ids

TRACKER = "tracker"
PER_FRAME = "per-frame ids (tracker off)"


class SequenceTracking:
    def __init__(self, label_set: LabelSet, label_divisor: int, use_tracker: bool = True,
                 config: TrackerConfig | None = None) -> None:
        self.label_set, self.label_divisor = label_set, label_divisor
        self.tracker = Tracker(label_set.thing, config) if use_tracker else None
        self.accumulator = STQAccumulator(label_set.thing)
        self.frames_scored = 0
        self.frames_without_track_ids = 0  # folder ground truth whose annotation lists no track ids

    @property
    def mode(self) -> str:
        return TRACKER if self.tracker is not None else PER_FRAME

    @property
    def note(self) -> str:
        """What the report should say about frames left out of STQ (empty: none)."""
        if not self.frames_without_track_ids:
            return ""
        return (f"{self.frames_without_track_ids} frames not scored for tracking: their ground-truth annotation has "
                "no \"track_ids\" (synth --sequence --out writes them)")

    def score_frame(self, gt: GroundTruthFrame, prediction: np.ndarray, tracks: dict[int, int]) -> None:
        """`score` against a frame's ground truth from any source: a topic's id map (instance = track id), or a
        folder annotation with "track_ids"; one without is counted in `frames_without_track_ids`."""
        gt_id_map = ground_truth_tracks(gt, self.label_divisor, self.label_set)
        if gt_id_map is None:
            self.frames_without_track_ids += 1
            return
        self.score(gt_id_map, prediction, tracks)

    def track(self, result: PanopticResult) -> dict[int, int]:
        """Track id of each thing segment of one frame's pipeline result (at the model's size), in frame order."""
        if self.tracker is not None:
            return self.tracker.update(result.panoptic, result.valid_instances)
        ids = result.valid_instances[:, COL["id"]].astype(np.int64)
        thing = np.asarray(self.label_set.thing)[ids // self.label_divisor]
        return {int(i): int(i % self.label_divisor) for i in ids[thing]}

    def score(self, gt_id_map: np.ndarray, prediction: np.ndarray, tracks: dict[int, int]) -> None:
        """Add one frame: ground-truth id map (instance = track id) and predicted id map of the same size, with
        the predicted segments' track ids (`track`)."""
        gt_classes, gt_tracks = split_id_map(gt_id_map, self.label_divisor)
        predicted_classes, _ = split_id_map(prediction, self.label_divisor)
        self.accumulator.add(gt_classes, gt_tracks, predicted_classes, track_map(prediction, tracks))
        self.frames_scored += 1

    def result(self) -> STQResult | None:
        return self.accumulator.result() if self.frames_scored else None


def ground_truth_tracks(gt: GroundTruthFrame, label_divisor: int, label_set: LabelSet) -> np.ndarray | None:
    """The id map of a frame's ground truth with track ids as instance numbers, or None if it has none."""
    if gt.id_map is not None:
        return gt.id_map
    track_ids = gt.annotation.extra.get("track_ids")
    if not isinstance(track_ids, dict):
        return None
    segments = np.array([int(s) for s in track_ids], dtype=np.int64)
    classes = np.array([gt.annotation.segments[int(s)].category_id if int(s) in gt.annotation.segments else -1
                        for s in track_ids], dtype=np.int64)
    known = classes >= 0
    tracked = classes[known] * label_divisor + np.array(list(track_ids.values()), dtype=np.int64)[known]
    # Stuff, crowd and void as to_id_map gives them; tracked things by their track ids.
    id_map = to_id_map(gt.annotation, label_divisor, label_set).astype(np.int64)
    mapped = map_ids(gt.annotation.ids, segments[known], tracked, -2)
    return np.where(mapped != -2, mapped, id_map)


def track_map(panoptic: np.ndarray, tracks: dict[int, int]) -> np.ndarray:
    """Track id of every pixel of an id map (0: stuff, void, untracked), int64."""
    return map_ids(panoptic, np.fromiter(tracks, dtype=np.int64, count=len(tracks)),
                   np.fromiter(tracks.values(), dtype=np.int64, count=len(tracks)), 0)
