"""The node's input subscriptions keep only the newest frame, whatever input_qos says: frames that arrive
while the executor is busy elsewhere wait for it as one frame, the newest, never as a queue of old ones
(a depth-10 history handed the node frames ten frames old whenever its executor fell behind the camera).

Real rclpy and DDS in this process: a reliable publisher sends frames while nobody spins the subscriber's
node; once DDS has acknowledged every one (so all of them reached the subscription), spinning delivers
what the subscription kept. No clock or speed enters: the waits are for events, with generous bounds.
"""

import time

import pytest
import rclpy
from rclpy.context import Context
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from panoptic_ros.ros.parameters import INPUT_QOS_CHOICES, QOS_PRESET_NAMES
from panoptic_ros.ros.qos import QOS_PRESETS, InputSubscription, input_profile

pytestmark = pytest.mark.timeout(180)

BOUND_S = 60.0  # generous: discovery on a loaded machine


@pytest.fixture
def nodes():
    context = Context()
    rclpy.init(context=context)
    publisher_node = rclpy.create_node("input_qos_camera", context=context)
    subscriber_node = rclpy.create_node("input_qos_node", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(subscriber_node)
    yield publisher_node, subscriber_node, executor
    executor.shutdown()
    publisher_node.destroy_node()
    subscriber_node.destroy_node()
    rclpy.shutdown(context=context)


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {BOUND_S:.0f} s")
        time.sleep(0.05)


def frame(index: int) -> Image:
    msg = Image(height=1, width=1, encoding="rgb8", step=3, data=bytes(3))
    msg.header.stamp.sec = index
    return msg


def test_frames_sent_while_the_executor_is_busy_arrive_as_the_newest_one_only(nodes):
    publisher_node, subscriber_node, executor = nodes
    received = []
    subscription = InputSubscription(subscriber_node, Image, "camera/image", lambda msg: received.append(
        msg.header.stamp.sec), "DEFAULT", lambda problem: pytest.fail(problem))
    publisher = publisher_node.create_publisher(Image, "camera/image", QoSProfile(depth=10))  # a reliable camera
    wait_for(lambda: publisher.get_subscription_count() == 1 and subscription.publisher_count() == 1,
             "the camera and the subscription did not match")
    for index in range(1, 6):
        publisher.publish(frame(index))
    assert publisher.wait_for_all_acked(Duration(seconds=BOUND_S)), "the subscription did not acknowledge every frame"

    deadline = time.monotonic() + BOUND_S
    while not received and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=1.0)
    for _ in range(5):  # anything else the subscription kept is ready at once
        executor.spin_once(timeout_sec=0.0)
    assert received == [5]


@pytest.mark.parametrize("preset", QOS_PRESET_NAMES)
def test_every_preset_keeps_its_reliability_and_only_the_newest_message(preset):
    profile = input_profile(preset)
    assert (profile.history, profile.depth) == (HistoryPolicy.KEEP_LAST, 1)
    assert (profile.reliability, profile.durability) == (QOS_PRESETS[preset].reliability,
                                                         QOS_PRESETS[preset].durability)
    assert QOS_PRESETS["DEFAULT"].reliability == ReliabilityPolicy.RELIABLE  # what the test above relies on


@pytest.mark.parametrize("choice", INPUT_QOS_CHOICES)
def test_every_input_qos_subscribes_with_depth_one(nodes, choice):
    _, subscriber_node, _ = nodes
    subscription = InputSubscription(subscriber_node, Image, "camera/image", lambda msg: None, choice,
                                     lambda problem: None)
    assert (subscription.profile.history, subscription.profile.depth) == (HistoryPolicy.KEEP_LAST, 1)
