"""The tracker's settings (apart from the tracker, so that command-line parsers can read the defaults cheaply)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrackerConfig:
    max_age: int = 30  # frames a track may go unseen (occluded) and still be continued
    high_score: float = 0.5  # detections at or above it are matched first and may start tracks
    mask_iou: float = 0.3  # least mask IoU with the previous frame's mask to continue a track
    box_iou: float = 0.3  # least box IoU (fallback) to continue a track

    def __post_init__(self) -> None:
        if isinstance(self.max_age, bool) or not isinstance(self.max_age, int) or self.max_age < 0:
            raise ValueError(f"track_max_age must be an integer >= 0 (frames), got {self.max_age!r}")
        for name in ("high_score", "mask_iou", "box_iou"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"tracker {name} must be in [0, 1], got {value!r}")
