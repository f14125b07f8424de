"""Newest-frame-only handoff from subscription callbacks to the inference worker.

A camera publishes faster than inference runs. Queuing frames would make every output later
than the one before; instead each camera has one slot that holds only its newest frame. A frame
that arrives while the slot is still full replaces the waiting one, and that replaced frame is
counted as dropped. `put` never blocks, so callbacks never wait on inference.

Several cameras share one worker (and so one loaded model): `take` serves the full slots
round-robin, so a fast camera cannot starve a slow one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


@dataclass
class SlotCounters:
    """What happened to one camera's frames since start."""

    received: int = 0  # frames put into the slot
    dropped: int = 0  # frames replaced by a newer one before the worker took them
    taken: int = 0  # frames handed to the worker


class NewestFrameSlots:
    """One single-frame slot per camera, with one condition variable for the worker to wait on."""

    def __init__(self, cameras: list[str]) -> None:
        if not cameras:
            raise ValueError("NewestFrameSlots needs at least one camera name")
        self._cameras = list(cameras)
        self._frames: list[Any | None] = [None] * len(cameras)
        self._counters = [SlotCounters() for _ in cameras]
        self._next = 0  # index where the next round-robin scan starts
        self._closed = False
        self._condition = threading.Condition()

    @property
    def cameras(self) -> list[str]:
        return list(self._cameras)

    def put(self, camera_index: int, frame: Any) -> bool:
        """Store `frame` as the newest of this camera. True when it replaced a waiting frame (a drop)."""
        with self._condition:
            counters = self._counters[camera_index]
            replaced = self._frames[camera_index] is not None
            counters.received += 1
            counters.dropped += int(replaced)
            self._frames[camera_index] = frame
            self._condition.notify()
        return replaced

    def take(self, timeout: float | None = None) -> tuple[int, Any] | None:
        """The next waiting frame as (camera index, frame), round-robin over cameras.

        Waits up to `timeout` seconds (forever with None); None when it timed out or the slots
        were closed.
        """
        with self._condition:
            if not self._condition.wait_for(lambda: self._closed or any(f is not None for f in self._frames),
                                            timeout):
                return None
            if self._closed:
                return None
            count = len(self._frames)
            for step in range(count):
                index = (self._next + step) % count
                frame = self._frames[index]
                if frame is not None:
                    self._frames[index] = None
                    self._counters[index].taken += 1
                    self._next = (index + 1) % count
                    return index, frame
        raise AssertionError("unreachable: wait_for returned with no frame waiting")

    def counters(self, camera_index: int) -> SlotCounters:
        """A copy of one camera's counters."""
        with self._condition:
            c = self._counters[camera_index]
            return SlotCounters(c.received, c.dropped, c.taken)

    def pending(self) -> int:
        """How many slots hold a frame the worker has not taken yet."""
        with self._condition:
            return sum(f is not None for f in self._frames)

    def close(self) -> None:
        """Wake the worker for good: every later `take` returns None at once."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
