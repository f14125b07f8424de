"""The camera's frame_id, read from its first camera_info or image message (for RViz's fixed frame,
so that the images need no TF at all)."""

from __future__ import annotations

import threading
import time

FALLBACK_FRAME = "camera"


def first_frame_id(image_topic: str, timeout: float = 5.0) -> str:
    """header.frame_id of the first CameraInfo beside `image_topic` or Image on it (whichever comes first);
    FALLBACK_FRAME when neither arrives within `timeout` seconds."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    from panoptic_ros.ros.node import camera_info_topic

    context = Context()
    rclpy.init(context=context)
    found: list[str] = []
    done = threading.Event()

    def take(msg) -> None:
        if not done.is_set():
            found.append(msg.header.frame_id)
            done.set()

    node = rclpy.create_node("panoptic_frame_probe", context=context)
    try:
        # Best effort matches every publisher; camera_info is small, so it arrives where a large image may not.
        node.create_subscription(CameraInfo, camera_info_topic(image_topic), take, qos_profile_sensor_data)
        node.create_subscription(Image, image_topic, take, qos_profile_sensor_data)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        deadline = time.monotonic() + timeout
        while not done.is_set() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    return found[0] if found and found[0] else FALLBACK_FRAME

