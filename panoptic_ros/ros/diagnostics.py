"""Per-camera statistics of the node and their /diagnostics form.

The worker records each frame's stage latencies and what the fusion reported (whether its unrolled
sequential rules converged, how many valid candidates did not fit the model's K slots); callbacks
record arrivals and rejected frames; a timer turns a snapshot into one DiagnosticStatus per camera
(input health, rate, latency per stage, frame counters, fusion counters, the thresholds in force with
their sources, and which backend, model and engine are running).

Fusion rule: a status is at least WARN when, since the previous status, a frame did not converge (its
ids may differ from the papers' sequential NMS / pasting) or a candidate was dropped (an object beyond
K: its pixels are void). The counters since start stay in the values; the WARN lasts one period.

Silence is an alarm: `InputMonitor` judges a camera's input from arrival times and the number of
matched publishers. Its clock is injected, so every level can be tested without waiting.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from panoptic_ros.pipeline_io import THRESHOLD_INPUTS
from panoptic_ros.ros.frame_slot import SlotCounters
from panoptic_ros.runtime.model_thresholds import ThresholdsInForce

# Stages of one frame, in order. "resize" covers both directions (image down to the model,
# outputs back up to the camera); "publish" is message building, the overlay, and publishing.
STAGES = ("convert", "resize", "inference", "publish")
TOTAL = "total"

# DiagnosticStatus levels as ints (the message's constants are bytes, which do not compare).
OK, WARN, ERROR = (ord(level) for level in (DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR))
SILENCE_S = 3.0  # no frame for this long: WARN (publishers matched, never a frame) or ERROR (frames stopped)
RATE_WINDOW_S = 5.0  # input rate over the arrivals of this many seconds
RATE_TOLERANCE = 0.8  # WARN below this fraction of expected_rate
LARGE_DATA_FIX = "large images over best-effort DDS need config/fastdds_large_data.xml, see README"

Clock = Callable[[], float]  # monotonic seconds


@dataclass(frozen=True)
class InputHealth:
    level: int  # DiagnosticStatus OK, WARN or ERROR (as int)
    message: str
    values: dict[str, str]


class InputMonitor:
    """One camera topic's arrivals and matched publishers, judged against silence and `expected_rate`
    (Hz; 0: no rate check)."""

    def __init__(self, topic: str, expected_rate: float = 0.0, clock: Clock = time.monotonic) -> None:
        self.topic, self.expected_rate, self._clock = topic, float(expected_rate), clock
        self._lock = threading.Lock()
        self._arrivals: deque[float] = deque()
        self._streak_start: float | None = None  # first arrival since frames last stopped
        self._last: float | None = None
        self._matched_since: float | None = None  # when publishers were first seen (reset when they all leave)

    def record_arrival(self) -> None:
        """A frame arrived (called from the subscription callback, before any check of the frame)."""
        with self._lock:
            now = self._clock()
            if self._last is None or now - self._last > SILENCE_S:
                self._streak_start = now
            self._last = now
            self._arrivals.append(now)
            self._forget_before(now - RATE_WINDOW_S)

    def _forget_before(self, oldest: float) -> None:
        while self._arrivals and self._arrivals[0] < oldest:
            self._arrivals.popleft()

    def rate_hz(self, now: float) -> float:
        self._forget_before(now - RATE_WINDOW_S)
        times = self._arrivals
        if len(times) < 2 or times[-1] == times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def assess(self, publishers: int) -> InputHealth:
        """The input's level and message now, given how many publishers are matched."""
        with self._lock:
            now = self._clock()
            if publishers == 0:
                self._matched_since = None
            elif self._matched_since is None:
                self._matched_since = now
            rate = self.rate_hz(now)
            since_last = None if self._last is None else now - self._last
            values = {"topic": self.topic, "publishers": str(publishers),
                      "seconds_since_last_frame": "never" if since_last is None else f"{since_last:.1f}",
                      "input_rate_hz": f"{rate:.2f}", "expected_rate_hz": f"{self.expected_rate:g}"}
            if since_last is not None and since_last <= SILENCE_S:
                streak = now - self._streak_start
                if self.expected_rate > 0 and streak >= RATE_WINDOW_S and rate < RATE_TOLERANCE * self.expected_rate:
                    return InputHealth(WARN, f"input rate {rate:.1f} Hz on {self.topic} is below expected_rate "
                                             f"{self.expected_rate:g} Hz (a slow camera, or frames lost: "
                                             f"{LARGE_DATA_FIX})", values)
                return InputHealth(OK, f"{rate:.2f} Hz", values)
            if since_last is not None:
                return InputHealth(ERROR, f"frames stopped: none on {self.topic} for {since_last:.0f} s "
                                          f"({publishers} publishers)", values)
            if publishers == 0:
                return InputHealth(WARN, f"no publishers on {self.topic}", values)
            if now - self._matched_since >= SILENCE_S:
                return InputHealth(WARN, f"publishers on {self.topic} but no frames: {LARGE_DATA_FIX}", values)
            return InputHealth(OK, f"publishers on {self.topic}, waiting for the first frame", values)


class CameraStats:
    """Latencies of the last `window` processed frames and counters since start, for one camera."""

    def __init__(self, window: int = 100, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._latencies = {stage: deque(maxlen=window) for stage in (*STAGES, TOTAL)}
        self._overhead_cpu: deque[float] = deque(maxlen=window)
        self._done_times: deque[float] = deque(maxlen=window)
        self.processed = 0
        self.rejected = 0
        self.failed = 0
        self.last_problem = ""
        self._qos_problem = ""
        self._problems_reported = 0  # rejected + failed at the last status
        self.not_converged = 0  # frames whose unrolled NMS / pasting did not reach its fixed point
        self.candidates_dropped = 0  # valid candidates that did not fit K, summed over frames
        self.frames_with_drops = 0
        self._fusion_reported = (0, 0, 0)  # the three fusion counters at the last status

    def record_frame(self, latencies_ms: dict[str, float], overhead_cpu_ms: float, converged: bool = True,
                     candidates_dropped: int = 0) -> None:
        """One processed frame: wall-clock ms per stage, the worker's CPU ms outside the backend run, and the
        fusion's converged and candidates_dropped outputs."""
        with self._lock:
            self.not_converged += not converged
            self.candidates_dropped += candidates_dropped
            self.frames_with_drops += candidates_dropped > 0
            for stage, value in latencies_ms.items():
                self._latencies[stage].append(value)
            self._overhead_cpu.append(overhead_cpu_ms)
            self._done_times.append(self._clock())
            self.processed += 1
            self._qos_problem = ""

    def record_rejected(self, reason: str) -> None:
        with self._lock:
            self.rejected += 1
            self.last_problem = f"rejected: {reason}"

    def record_qos_problem(self, problem: str) -> None:
        """An incompatible-QoS event of the input subscription; reported until a frame is processed."""
        with self._lock:
            self._qos_problem = problem

    def qos_problem(self) -> str:
        with self._lock:
            return self._qos_problem

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

    def fusion_counts(self) -> tuple[int, int, int]:
        """(frames not converged, candidates dropped, frames with drops) since start."""
        with self._lock:
            return self.not_converged, self.candidates_dropped, self.frames_with_drops

    def new_fusion_counts(self) -> tuple[int, int, int]:
        """The fusion counts since the previous call (a status warns only about recent frames)."""
        with self._lock:
            now = (self.not_converged, self.candidates_dropped, self.frames_with_drops)
            new = tuple(a - b for a, b in zip(now, self._fusion_reported, strict=True))
            self._fusion_reported = now
            return new

    def new_problems(self) -> int:
        """Frames rejected or failed since the previous call (a status warns only about recent trouble)."""
        with self._lock:
            total = self.rejected + self.failed
            new, self._problems_reported = total - self._problems_reported, total
            return new


def fusion_problems(not_converged: int, dropped: int, frames_with_drops: int, max_instances: object) -> list[str]:
    """What the fusion counters since the previous status warn about (nothing when both are 0)."""
    problems = []
    if not_converged:
        problems.append(f"{not_converged} frames since last report did not converge (NMS / pasting stopped at the "
                        "graph's sweep bound: ids may differ from the sequential rule)")
    if dropped:
        problems.append(f"{dropped} candidates dropped in {frames_with_drops} frames since last report (more valid "
                        f"objects than the model's K = {max_instances} slots: their pixels are void)")
    return problems


def camera_status(name: str, hardware_id: str, stats: CameraStats, slot: SlotCounters, backend: dict,
                  model_state: str, health: InputHealth | None,
                  thresholds: ThresholdsInForce | None = None) -> DiagnosticStatus:
    """One camera's DiagnosticStatus. The input's health sets the level (`health` None: not subscribed, the
    node is inactive); frames rejected or failed since the previous status, frames that did not converge or
    dropped candidates since then (module doc), an incompatible-QoS event or a failed model switch raise it to
    at least WARN. `thresholds`: the running model's, each shown as "value (source)"."""
    processed, rejected, failed, last_problem = stats.counts()
    not_converged, dropped, frames_with_drops = stats.fusion_counts()
    values = dict(health.values) if health else {}
    values.update({
        "rate_hz": f"{stats.rate_hz():.2f}",
        "received": str(slot.received),
        "processed": str(processed),
        "dropped": str(slot.dropped),
        "rejected": str(rejected),
        "failed": str(failed),
        "last_problem": last_problem,
        "not_converged": str(not_converged),
        "candidates_dropped": str(dropped),
        "frames_with_dropped_candidates": str(frames_with_drops),
    })
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
    if thresholds is not None:
        values.update({name: f"{getattr(thresholds.thresholds, name):g} ({thresholds.source(name)})"
                       for name in THRESHOLD_INPUTS})
    level = health.level if health else OK
    messages = [health.message if health else "inactive: not subscribed to the camera"]
    problems = []
    if new_problems := stats.new_problems():
        problems.append(f"{new_problems} bad frames since last report, last {last_problem}")
    problems += fusion_problems(*stats.new_fusion_counts(), backend.get("max_instances", "?"))
    if qos_problem := stats.qos_problem():
        problems.append(qos_problem)
    if model_state.startswith("failed"):
        problems.append(model_state)
    if problems:
        level = max(level, WARN)
        messages = (messages if level > WARN or health is None or health.level > OK else []) + problems
    return DiagnosticStatus(level=bytes([level]), name=name, message="; ".join(messages), hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=v) for k, v in values.items()])


def status_values(status: DiagnosticStatus) -> dict[str, str]:
    """A DiagnosticStatus's key/values as a dict (for consumers and tests)."""
    return {kv.key: kv.value for kv in status.values}
