"""The foundation is real: messages serialize, cross processes, and the package imports bare."""

import subprocess
import sys
import textwrap
import time

import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import RegionOfInterest

from panoptic_ros.msg import PanopticClass, PanopticClassMap, PanopticInstance, PanopticInstanceArray


def _instance(segment_id: int, class_id: int, name: str, is_thing: bool) -> PanopticInstance:
    return PanopticInstance(
        id=segment_id, class_id=class_id, class_name=name, is_thing=is_thing, score=0.75 if is_thing else 1.0,
        bbox=RegionOfInterest(x_offset=10, y_offset=20, width=30, height=40), area=1234,
        centroid_x=25.5, centroid_y=40.25, track_id=7 if is_thing else 0)


def _array() -> PanopticInstanceArray:
    msg = PanopticInstanceArray(width=512, height=256, label_divisor=1000, model_name="psn")
    msg.header.frame_id = "camera_front"
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1700000000, 123456789
    msg.segments = [_instance(6001, 6, "car", True), _instance(0, 0, "road", False)]
    return msg


def test_instance_array_round_trips_through_serialization():
    msg = _array()
    back = deserialize_message(serialize_message(msg), PanopticInstanceArray)
    assert back == msg
    assert back.segments[0].id == 6001 and back.segments[0].bbox.height == 40
    assert back.segments[1].score == 1.0 and not back.segments[1].is_thing
    assert PanopticInstanceArray.VOID_ID == -1


def test_instance_round_trips_and_keeps_every_field():
    msg = _instance(13002, 13, "car", True)
    back = deserialize_message(serialize_message(msg), PanopticInstance)
    for field in ("id", "class_id", "class_name", "is_thing", "score", "area", "centroid_x", "centroid_y", "track_id"):
        assert getattr(back, field) == getattr(msg, field), field


def test_class_map_round_trips():
    msg = PanopticClassMap(model_name="psn", label_divisor=1000)
    msg.classes = [PanopticClass(id=0, name="road", is_thing=False), PanopticClass(id=6, name="car", is_thing=True)]
    msg.classes[1].color.r = 1.0
    assert deserialize_message(serialize_message(msg), PanopticClassMap) == msg
    assert PanopticClassMap.VOID_CLASS == 255


PUBLISHER = textwrap.dedent("""
    import time, rclpy
    from panoptic_ros.msg import PanopticInstanceArray, PanopticInstance
    rclpy.init()
    node = rclpy.create_node("foundation_publisher")
    pub = node.create_publisher(PanopticInstanceArray, "panoptic/instances", 10)
    deadline = time.monotonic() + 20
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    msg = PanopticInstanceArray(width=64, height=32, label_divisor=1000, model_name="psn")
    msg.header.frame_id = "cam"
    msg.segments = [PanopticInstance(id=5001, class_id=5, class_name="person", is_thing=True, score=0.9)]
    for _ in range(100):
        pub.publish(msg)
        time.sleep(0.05)
    rclpy.shutdown()
""")


def test_instance_array_crosses_processes():
    import rclpy

    rclpy.init()
    node = rclpy.create_node("foundation_subscriber")
    received: list[PanopticInstanceArray] = []
    node.create_subscription(PanopticInstanceArray, "panoptic/instances", received.append, 10)
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER])
    try:
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        publisher.kill()
        publisher.wait()
        node.destroy_node()
        rclpy.shutdown()
    assert received, "no PanopticInstanceArray arrived from the publisher process"
    msg = received[0]
    assert msg.header.frame_id == "cam" and msg.model_name == "psn"
    assert [s.id for s in msg.segments] == [5001] and msg.segments[0].class_name == "person"


BARE_IMPORT = textwrap.dedent("""
    import sys
    # Make CUDA-only and TensorRT imports fail, as on a machine without them.
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorrt", "pycuda", "cupy"):
                raise ImportError(f"{name} blocked for this test")
    sys.meta_path.insert(0, Block())
    import panoptic_ros, panoptic_ros.cli, panoptic_ros.pipeline_io, panoptic_ros.classes
    from panoptic_ros.msg import PanopticInstanceArray
    panoptic_ros.cli.build_parser()  # every subcommand registered, none of their heavy libraries loaded
    assert "tensorrt" not in sys.modules and "torch" not in sys.modules
    print("ok", panoptic_ros.__version__)
""")


def test_package_imports_without_cuda_or_tensorrt():
    out = subprocess.run([sys.executable, "-c", BARE_IMPORT], capture_output=True, text=True,
                         env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_cli_answers_help_and_version(flag):
    out = subprocess.run([sys.executable, "-m", "panoptic_ros.cli", flag], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "panoptic-ros" in out.stdout
