"""A frame's stage times: which clock readings each PanopticTiming field is made of, with injected clocks
(a real rclpy node and a real ONNX Runtime session on the shipped PSN model; no timing depends on the machine)."""

import array
from pathlib import Path

import numpy as np
import pytest
import rclpy
from rclpy.qos import QoSProfile
from rclpy.time import Time
from sensor_msgs.msg import Image

from panoptic_ros.pipeline_io import Thresholds
from panoptic_ros.ros.frame_output import FrameOutputs
from panoptic_ros.ros.parameters import OutputSettings
from panoptic_ros.runtime.backends import create_backend
from panoptic_ros.tracking.tracker import TrackIds

SHIPPED_PSN = Path(__file__).resolve().parents[1] / "models" / "psn.onnx"


def readings(*seconds: float):
    """A clock that returns these readings in turn (and fails the test when read once more)."""
    values = iter(seconds)
    return lambda: next(values)


@pytest.fixture
def ros_node():
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("frame_timing_test", context=context)
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


def test_stage_times_are_the_intervals_between_the_stage_boundaries(ros_node):
    # Wall readings at the stage boundaries: start, converted, resized, inferred, tracked, mapped back, published.
    # Interval n is 2^n s, so each field's sum of intervals is unique. CPU readings: start, before and after the
    # backend run, end.
    wall = readings(0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 63.0)
    cpu = readings(0.0, 0.25, 1.25, 1.5)
    outputs = FrameOutputs(ros_node, "timing_test/panoptic/", QoSProfile(depth=1), TrackIds(), clock=wall,
                           cpu_clock=cpu)
    backend = create_backend("onnxruntime", SHIPPED_PSN, "cpu", threads=1)
    pixels = np.random.default_rng(0).integers(0, 255, (64, 128, 3), dtype=np.uint8)
    msg = Image(height=64, width=128, encoding="rgb8", step=128 * 3, data=array.array("B", pixels.tobytes()))
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1000, 500
    published = Time(seconds=1000, nanoseconds=500 + 250_000_000)  # 250 ms after the camera's stamp
    settings = OutputSettings(publish_id_image=True, publish_semantic=True, publish_semantic_color=True,
                              publish_overlay=True, publish_instances=True, publish_timing=True, overlay_alpha=0.5,
                              tracking=False, track_max_age=5)
    timing, _ = outputs.process(msg, backend, Thresholds(), settings, 1000, 10**7, True, "stretch", None,
                                queue_ms=3.5, now=lambda: published)
    assert timing.queue_ms == 3.5
    assert (timing.convert_ms, timing.inference_ms, timing.tracking_ms, timing.publish_ms) == (1e3, 4e3, 8e3, 32e3)
    assert timing.resize_ms == (2 + 16) * 1e3  # to the model's size, and the outputs back to the camera's
    assert timing.total_ms == 63e3
    assert timing.end_to_end_ms == 250.0
    assert timing.overhead_cpu_ms == (1.5 - 1.0) * 1e3  # the thread's CPU time outside the backend run
    outputs.destroy()
