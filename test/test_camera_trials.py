"""Camera drivers in processes of their own, as on a robot: a reliable and a best-effort driver at
640x480, 1280x720 and 2048x1024 into one panoptic_node (input_qos auto), and a driver that matches
but sends nothing. Few frames each: this is about transport and alarms, not speed."""

import subprocess

import pytest

from panoptic_ros.ros import camera_trial
from panoptic_ros.ros.client import stop_node
from panoptic_ros.ros.diagnostics import LARGE_DATA_FIX

pytestmark = pytest.mark.timeout(300)

NAMESPACE = "/camera_trials"
FRAMES = 3


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """The node with the Fast DDS profile, as the launch file starts it."""
    log = (tmp_path_factory.mktemp("trials") / "node.log").open("w")
    # expected_rate 5: the drivers' warning trials send at 5 Hz.
    process = camera_trial.start_node(NAMESPACE, ("sized", "stuck", "lossy"), profile=True, expected_rate=5.0,
                                      stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        code = stop_node(process)
        log.close()
    assert code == 0, f"node exited with {code}"


@pytest.mark.parametrize("size", camera_trial.SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize(("qos", "profile"), [("reliable", False), ("best_effort", True)],
                         ids=["reliable-no-setup", "best-effort-with-profile"])
def test_every_frame_after_the_first_is_answered(node, size, qos, profile):
    # Reliable drivers need no DDS set-up; best-effort ones need the profile in the driver's process too.
    # Generous bounds: every frame here arrives (the lossy case is camera_trial --table's), however loaded the machine.
    result = camera_trial.driver_process(NAMESPACE, "sized", size, qos, profile=profile, frames=FRAMES,
                                         answer_timeout=60.0, timeout=280.0)
    assert result["sent"] == FRAMES and result["every_frame_after_the_first"], result


def test_a_matched_driver_that_sends_nothing_is_a_warning_with_the_fix(node):
    result = camera_trial.driver_process(NAMESPACE, "stuck", (640, 480), "best_effort", profile=False,
                                         expect_warn=20.0, mute=True)
    assert result["sent"] == 0 and result["warn_after_match_s"] is not None, result
    assert result["warn_message"] == f"publishers on {NAMESPACE}/stuck/image but no frames: {LARGE_DATA_FIX}"


def test_profile_variables_name_both_fast_dds_generations():
    env = camera_trial.profile_environment(camera_trial.PROFILE)
    assert env == {"FASTRTPS_DEFAULT_PROFILES_FILE": str(camera_trial.PROFILE),
                   "FASTDDS_DEFAULT_PROFILES_FILE": str(camera_trial.PROFILE)}
    assert camera_trial.PROFILE.is_file()
