"""One camera's tracking as panoptic_node runs it (ROS-free; the node's worker thread is its only caller).

The `tracking` and `track_max_age` parameters may change between frames: off drops the tracks (on again
starts afresh, ids still never reused), a new max age applies to the live tracks, and a model with another
label set starts afresh too (its classes are other classes).
"""

from __future__ import annotations

from panoptic_ros.classes import LabelSet
from panoptic_ros.pipeline_io import PanopticResult
from panoptic_ros.tracking.config import TrackerConfig
from panoptic_ros.tracking.tracker import Tracker, TrackIds


class CameraTracking:
    def __init__(self, ids: TrackIds) -> None:
        self._ids = ids  # the node's, shared by its cameras: track ids are unique per node run
        self._tracker: Tracker | None = None
        self._label_set: LabelSet | None = None

    def update(self, result: PanopticResult, label_set: LabelSet, enabled: bool, max_age: int) -> dict[int, int] | None:
        """Track ids of this frame's thing segments ({segment id: track id}), or None with tracking off."""
        if not enabled:
            self._tracker = None
            return None
        if self._tracker is None or label_set != self._label_set:
            self._tracker = Tracker(label_set.thing, TrackerConfig(max_age=max_age), self._ids)
            self._label_set = label_set
        elif self._tracker.config.max_age != max_age:
            self._tracker.config = TrackerConfig(max_age=max_age)  # the live tracks keep their ids
        return self._tracker.update(result.panoptic, result.valid_instances)
