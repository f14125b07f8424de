"""Per-camera statistics of the node and their /diagnostics form.

The worker records each frame's stage latencies; callbacks record rejected frames; a timer turns
a snapshot into one DiagnosticStatus per camera (rate, latency per stage, frame counters, and
which backend, model and engine are running).
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from panoptic_ros.ros.frame_slot import SlotCounters

# Stages of one frame, in order. "resize" covers both directions (image down to the model,
# outputs back up to the camera); "publish" is message building, the overlay, and publishing.
STAGES = ("convert", "resize", "inference", "publish")
TOTAL = "total"


class CameraStats:
    """Latencies of the last `window` processed frames and counters since start, for one camera."""

    def __init__(self, window: int = 100) -> None:
        self._lock = threading.Lock()
        self._latencies = {stage: deque(maxlen=window) for stage in (*STAGES, TOTAL)}
        self._overhead_cpu: deque[float] = deque(maxlen=window)
        self._done_times: deque[float] = deque(maxlen=window)
        self.processed = 0
        self.rejected = 0
        self.failed = 0
        self.last_problem = ""
        self._problems_reported = 0  # rejected + failed at the last status

    def record_frame(self, latencies_ms: dict[str, float], overhead_cpu_ms: float) -> None:
        """One processed frame: wall-clock ms per stage, and the worker's CPU ms outside the backend run."""
        with self._lock:
            for stage, value in latencies_ms.items():
                self._latencies[stage].append(value)
            self._overhead_cpu.append(overhead_cpu_ms)
            self._done_times.append(time.monotonic())
            self.processed += 1

    def record_rejected(self, reason: str) -> None:
        with self._lock:
            self.rejected += 1
            self.last_problem = f"rejected: {reason}"

    def record_failed(self, reason: str) -> None:
        with self._lock:
            self.failed += 1
            self.last_problem = f"failed: {reason}"

    def rate_hz(self) -> float:
        """Processed frames per second over the recorded window (0 with fewer than two frames)."""
        with self._lock:
            times = list(self._done_times)
        if len(times) < 2 or times[-1] == times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def latency_summary(self) -> dict[str, tuple[float, float]]:
        """stage -> (mean, max) in ms over the window (stages with no frame yet are left out)."""
        with self._lock:
            return {stage: (float(np.mean(values)), float(np.max(values)))
                    for stage, values in self._latencies.items() if values}

    def overhead_cpu_ms(self) -> float | None:
        """Median CPU time per frame that the worker spends outside the backend run (immune to waiting for a
        busy CPU, unlike the wall-clock stages); None before the first frame."""
        with self._lock:
            return float(np.median(self._overhead_cpu)) if self._overhead_cpu else None

    def counts(self) -> tuple[int, int, int, str]:
        with self._lock:
            return self.processed, self.rejected, self.failed, self.last_problem

    def new_problems(self) -> int:
        """Frames rejected or failed since the previous call (a status warns only about recent trouble)."""
        with self._lock:
            total = self.rejected + self.failed
            new, self._problems_reported = total - self._problems_reported, total
            return new


def camera_status(name: str, hardware_id: str, stats: CameraStats, slot: SlotCounters, backend: dict,
                  model_state: str) -> DiagnosticStatus:
    """One camera's DiagnosticStatus: WARN when frames were rejected or failed since the previous status, or the
    last model switch failed."""
    processed, rejected, failed, last_problem = stats.counts()
    values = {
        "rate_hz": f"{stats.rate_hz():.2f}",
        "received": str(slot.received),
        "processed": str(processed),
        "dropped": str(slot.dropped),
        "rejected": str(rejected),
        "failed": str(failed),
        "last_problem": last_problem,
    }
    for stage, (mean, peak) in stats.latency_summary().items():
        values[f"latency_{stage}_ms"] = f"{mean:.3f}"
        values[f"latency_{stage}_max_ms"] = f"{peak:.3f}"
    if (overhead_cpu := stats.overhead_cpu_ms()) is not None:
        values["overhead_cpu_ms"] = f"{overhead_cpu:.3f}"
    values.update({
        "backend": str(backend.get("backend", "")),
        "model": str(backend.get("model_name", "")),
        "model_path": str(backend.get("model_path", "")),
        "engine": str(backend.get("engine_path") or ""),
        "device": str(backend.get("device", "")),
        "precision": str(backend.get("precision", "")),
        "input_hw": "x".join(str(v) for v in backend.get("input_hw", [])),
        "model_state": model_state,
    })
    problems = []
    new_problems = stats.new_problems()
    if new_problems:
        problems.append(f"{new_problems} bad frames since last report, last {last_problem}")
    if model_state.startswith("failed"):
        problems.append(model_state)
    level = DiagnosticStatus.WARN if problems else DiagnosticStatus.OK
    message = "; ".join(problems) if problems else f"{values['rate_hz']} Hz"
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=v) for k, v in values.items()])


def status_values(status: DiagnosticStatus) -> dict[str, str]:
    """A DiagnosticStatus's key/values as a dict (for consumers and tests)."""
    return {kv.key: kv.value for kv in status.values}
