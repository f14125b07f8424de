"""The node's judgement of its input without a running node: silence and rate alarms on an injected
clock, how a camera's /diagnostics status is composed, the QoS that `input_qos: auto` picks, and
the frame counters bench and replay read."""

import pytest
from rclpy.qos import ReliabilityPolicy

from panoptic_ros.ros.diagnostics import (
    ERROR,
    LARGE_DATA_FIX,
    OK,
    RATE_WINDOW_S,
    SILENCE_S,
    WARN,
    CameraStats,
    InputMonitor,
    camera_status,
    status_values,
)
from panoptic_ros.ros.frame_slot import SlotCounters
from panoptic_ros.ros.node_counters import NodeCounters
from panoptic_ros.ros.qos import auto_profile, auto_reliability

TOPIC = "/cam/image_raw"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def level_and_message(monitor: InputMonitor, publishers: int) -> tuple[int, str]:
    health = monitor.assess(publishers)
    return health.level, health.message


def test_no_publishers_is_a_warning(clock):
    monitor = InputMonitor(TOPIC, clock=clock)
    assert level_and_message(monitor, 0) == (WARN, f"no publishers on {TOPIC}")
    assert monitor.assess(0).values["seconds_since_last_frame"] == "never"


def test_publishers_without_frames_warn_after_exactly_the_silence_time_with_the_fix(clock):
    monitor = InputMonitor(TOPIC, clock=clock)
    assert monitor.assess(1).level == OK  # matched just now: frames may be on their way
    clock.now += SILENCE_S - 0.01
    assert level_and_message(monitor, 1) == (OK, f"publishers on {TOPIC}, waiting for the first frame")
    clock.now += 0.01
    assert level_and_message(monitor, 1) == (WARN, f"publishers on {TOPIC} but no frames: {LARGE_DATA_FIX}")
    assert "config/fastdds_large_data.xml" in LARGE_DATA_FIX and "README" in LARGE_DATA_FIX


def test_the_silence_clock_restarts_when_publishers_leave_and_come_back(clock):
    monitor = InputMonitor(TOPIC, clock=clock)
    monitor.assess(1)
    clock.now += SILENCE_S
    assert monitor.assess(0).level == WARN
    monitor.assess(1)  # a new publisher: a fresh 3 s for its first frame
    clock.now += SILENCE_S - 0.5
    assert monitor.assess(1).level == OK


def test_frames_that_stop_are_an_error_and_ok_again_when_they_come_back(clock):
    monitor = InputMonitor(TOPIC, clock=clock)
    monitor.record_arrival()
    clock.now += SILENCE_S
    assert monitor.assess(1).level == OK  # exactly at the limit: still fresh
    clock.now += 0.1
    level, message = level_and_message(monitor, 1)
    assert level == ERROR and message == f"frames stopped: none on {TOPIC} for 3 s (1 publishers)"
    assert monitor.assess(1).values["seconds_since_last_frame"] == "3.1"
    assert monitor.assess(0).level == ERROR  # the camera went away: still an error, not "no publishers"
    monitor.record_arrival()
    assert monitor.assess(1).level == OK


def arrive(monitor: InputMonitor, clock: FakeClock, rate_hz: float, seconds: float) -> None:
    for _ in range(round(rate_hz * seconds)):
        clock.now += 1.0 / rate_hz
        monitor.record_arrival()


@pytest.mark.parametrize(("rate_hz", "level"), [(8.0, OK), (7.9, WARN), (10.0, OK), (30.0, OK)])
def test_rate_below_80_percent_of_expected_rate_warns(clock, rate_hz, level):
    monitor = InputMonitor(TOPIC, expected_rate=10.0, clock=clock)
    monitor.record_arrival()
    arrive(monitor, clock, rate_hz, RATE_WINDOW_S + 1)
    health = monitor.assess(1)
    assert health.level == level, health.message
    assert float(health.values["input_rate_hz"]) == pytest.approx(rate_hz, rel=1e-6)
    if level == WARN:
        assert health.message == (f"input rate 7.9 Hz on {TOPIC} is below expected_rate 10 Hz (a slow camera, or "
                                  f"frames lost: {LARGE_DATA_FIX})")


def test_rate_is_not_judged_before_a_full_window(clock):
    monitor = InputMonitor(TOPIC, expected_rate=30.0, clock=clock)
    monitor.record_arrival()
    arrive(monitor, clock, 2.0, RATE_WINDOW_S - 1)  # a slow start (or a camera warming up)
    assert monitor.assess(1).level == OK
    arrive(monitor, clock, 2.0, 1)
    assert monitor.assess(1).level == WARN


def test_no_rate_check_without_expected_rate(clock):
    monitor = InputMonitor(TOPIC, clock=clock)
    monitor.record_arrival()
    arrive(monitor, clock, 1.0, 2 * RATE_WINDOW_S)
    assert monitor.assess(1).level == OK


BACKEND = {"backend": "onnxruntime", "model_name": "psn", "model_path": "psn.onnx", "device": "cpu",
           "input_hw": [256, 512], "max_instances": 100}


def status(stats: CameraStats, health, model_state: str = "ok"):
    return camera_status("panoptic_node: image", "/panoptic_node", stats, SlotCounters(3, 1, 2), BACKEND,
                         model_state, health)


def level_of(diagnostic) -> int:
    return ord(diagnostic.level) if isinstance(diagnostic.level, bytes) else diagnostic.level


def test_camera_status_takes_the_input_level_and_its_values(clock):
    monitor = InputMonitor(TOPIC, clock=clock)
    monitor.record_arrival()
    clock.now += SILENCE_S + 1
    diagnostic = status(CameraStats(clock=clock), monitor.assess(1))
    values = status_values(diagnostic)
    assert level_of(diagnostic) == ERROR and diagnostic.message.startswith("frames stopped")
    assert (values["topic"], values["publishers"], values["received"], values["dropped"]) == (TOPIC, "1", "3", "1")
    assert values["seconds_since_last_frame"] == "4.0" and values["model"] == "psn"


@pytest.mark.parametrize(("record", "reason"), [("record_rejected", "unsupported encoding 'hsv8'"),
                                               ("record_failed", "backend: out of memory")])
def test_problems_raise_an_ok_input_to_warn_and_keep_an_error(clock, record, reason):
    monitor = InputMonitor(TOPIC, clock=clock)
    monitor.record_arrival()
    stats = CameraStats(clock=clock)
    getattr(stats, record)(reason)
    diagnostic = status(stats, monitor.assess(1))
    assert level_of(diagnostic) == WARN
    kind = record.removeprefix("record_")
    assert diagnostic.message == f"1 bad frames since last report, last {kind}: {reason}"
    assert level_of(status(stats, monitor.assess(1))) == OK  # reported once, then the input is fine again

    failed = "failed: /m/corrupt.onnx (onnxruntime, cpu): not an ONNX file"
    clock.now += SILENCE_S + 1
    diagnostic = status(stats, monitor.assess(1), model_state=failed)
    assert level_of(diagnostic) == ERROR
    assert diagnostic.message == f"frames stopped: none on {TOPIC} for 4 s (1 publishers); {failed}"


def test_a_failed_model_switch_warns_even_before_any_frame(clock):
    diagnostic = status(CameraStats(clock=clock), InputMonitor(TOPIC, clock=clock).assess(1),
                        model_state="failed: psn (onnxruntime, cuda:0): CUDA is not available")
    assert level_of(diagnostic) == WARN and diagnostic.message.endswith("CUDA is not available")


def test_incompatible_qos_warns_until_a_frame_is_processed(clock):
    stats = CameraStats(clock=clock)
    stats.record_qos_problem("a publisher on /cam has QoS incompatible with this subscription (RELIABILITY; ...)")
    monitor = InputMonitor(TOPIC, clock=clock)
    diagnostic = status(stats, monitor.assess(1))
    assert level_of(diagnostic) == WARN and "RELIABILITY" in diagnostic.message
    stats.record_frame({"total": 1.0}, overhead_cpu_ms=0.5)
    monitor.record_arrival()
    assert level_of(status(stats, monitor.assess(1))) == OK


def test_fusion_overflow_and_non_convergence_warn_for_the_period_that_saw_them(clock):
    monitor = InputMonitor(TOPIC, clock=clock)
    monitor.record_arrival()
    stats = CameraStats(clock=clock)
    stats.record_frame({"total": 1.0}, overhead_cpu_ms=0.5, converged=True, candidates_dropped=0)
    diagnostic = status(stats, monitor.assess(1))  # exactly at the rule's edge: nothing dropped, converged
    assert level_of(diagnostic) == OK
    assert (status_values(diagnostic)["not_converged"], status_values(diagnostic)["candidates_dropped"]) == ("0", "0")

    stats.record_frame({"total": 1.0}, overhead_cpu_ms=0.5, converged=True, candidates_dropped=1)  # one past K
    stats.record_frame({"total": 1.0}, overhead_cpu_ms=0.5, converged=False, candidates_dropped=4)
    diagnostic = status(stats, monitor.assess(1))
    assert level_of(diagnostic) == WARN
    assert diagnostic.message == ("1 frames since last report did not converge (NMS / pasting stopped at the graph's "
                                  "sweep bound: ids may differ from the sequential rule); 5 candidates dropped in 2 "
                                  "frames since last report (more valid objects than the model's K = 100 slots: "
                                  "their pixels are void)")
    values = status_values(diagnostic)
    assert (values["not_converged"], values["candidates_dropped"], values["frames_with_dropped_candidates"]) == (
        "1", "5", "2")
    diagnostic = status(stats, monitor.assess(1))  # no new frame: OK again, the counters since start stay
    assert level_of(diagnostic) == OK and status_values(diagnostic)["candidates_dropped"] == "5"


def test_inactive_node_reports_ok_and_says_it_is_not_subscribed(clock):
    diagnostic = status(CameraStats(clock=clock), None)
    assert level_of(diagnostic) == OK and diagnostic.message == "inactive: not subscribed to the camera"


def test_processed_rate_uses_the_injected_clock(clock):
    stats = CameraStats(clock=clock)
    for _ in range(11):
        stats.record_frame({"total": 1.0}, overhead_cpu_ms=0.5)
        clock.now += 0.1
    assert stats.rate_hz() == pytest.approx(10.0)


# ---- QoS ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("offered", "chosen"), [
    ([], None),
    ([ReliabilityPolicy.RELIABLE], ReliabilityPolicy.RELIABLE),
    ([ReliabilityPolicy.BEST_EFFORT], ReliabilityPolicy.BEST_EFFORT),
    ([ReliabilityPolicy.RELIABLE, ReliabilityPolicy.RELIABLE], ReliabilityPolicy.RELIABLE),
    ([ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT], ReliabilityPolicy.BEST_EFFORT),
])
def test_auto_reliability_matches_every_publisher(offered, chosen):
    assert auto_reliability(offered) == chosen


def test_auto_profile_keeps_only_the_newest_frame():
    profile = auto_profile(ReliabilityPolicy.RELIABLE)
    assert (profile.depth, profile.reliability) == (1, ReliabilityPolicy.RELIABLE)


# ---- counters -------------------------------------------------------------------------------


def test_node_counters_read_subtract_and_settle():
    values = {"received": "10", "processed": "6", "dropped": "2", "rejected": "1", "failed": "1", "rate_hz": "3"}
    after = NodeCounters.from_status(values)
    assert after.settled
    assert not NodeCounters.from_status({**values, "received": "11"}).settled  # one frame still in work
    delta = after - NodeCounters(received=4, processed=3)
    assert delta.as_dict() == {"received": 6, "processed": 3, "dropped": 2, "rejected": 1, "failed": 1}
