"""The node's per-camera frame counters as read from its /diagnostics values (no ROS import, so
evaluation code can use it at module level). Used by `bench node` and `replay`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class NodeCounters:
    """Frames one camera of the node has received, and what became of them."""

    received: int = 0
    processed: int = 0
    dropped: int = 0  # replaced in the newest-frame slot by a newer one
    rejected: int = 0  # refused by the checks (bad image)
    failed: int = 0  # an error while processing

    @classmethod
    def from_status(cls, values: dict[str, str]) -> NodeCounters:
        """From a camera's /diagnostics key/values."""
        return cls(**{f.name: int(values[f.name]) for f in fields(cls)})

    @property
    def settled(self) -> bool:
        """Every received frame was processed, dropped, rejected or failed (none is waiting or in work)."""
        return self.received == self.processed + self.dropped + self.rejected + self.failed

    def __sub__(self, other: NodeCounters) -> NodeCounters:
        return NodeCounters(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
