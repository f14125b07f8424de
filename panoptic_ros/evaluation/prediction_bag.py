"""eval-bag --output-bag: what panoptic_node would have published for every frame, into a new rosbag2.

The messages are built by the node's own builders (rclpy types) and carried into the bag's rosbags
types through their CDR bytes. The ROS message code is imported only when a frame is written, so the rest
of evaluation runs without ROS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from panoptic_ros.classes import LabelSet
from panoptic_ros.data.rosbag_io import IMAGE_TYPE, BagWriter, ImageFrame, typestore
from panoptic_ros.imaging import Resampler, overlay_image, segment_colors
from panoptic_ros.pipeline_io import PanopticResult

INSTANCE_ARRAY_TYPE = "panoptic_ros/msg/PanopticInstanceArray"
CLASS_MAP_TYPE = "panoptic_ros/msg/PanopticClassMap"
OVERLAY_ALPHA = 0.5


def prediction_namespace(image_topic: str) -> str:
    """Where the node would publish for this camera: the image topic's parent ("/camera/image_raw" -> "/camera")."""
    return image_topic.rstrip("/").rpartition("/")[0]


class PredictionBagWriter:
    """Writes per frame what panoptic_node publishes, into a rosbag2 (.db3: sqlite3, else mcap).

    Topics: <namespace>/panoptic/{id_image, semantic, overlay, instances, class_map}, each message with
    the source frame's header (stamp, frame_id) and written at the source frame's bag time.
    """

    def __init__(self, path: str | Path, namespace: str, label_set: LabelSet, label_divisor: int,
                 model_name: str) -> None:
        path = Path(path)
        self._bag = BagWriter(path, "sqlite3" if path.suffix == ".db3" else "mcap")
        self._prefix = f"{namespace}/panoptic/"
        self.label_set, self.label_divisor, self.model_name = label_set, label_divisor, model_name
        self._class_map_written = False

    def __enter__(self) -> PredictionBagWriter:
        self._bag.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._bag.__exit__(*exc)

    def write(self, frame: ImageFrame, result: PanopticResult, resampler: Resampler, panoptic: np.ndarray) -> None:
        """One frame's outputs; `panoptic` is the id map already at the camera's size."""
        from builtin_interfaces.msg import Time
        from rclpy.serialization import serialize_message
        from std_msgs.msg import Header

        from panoptic_ros.ros.image_conversion import to_image_msg
        from panoptic_ros.ros.outputs import class_map_msg, instance_array_msg

        header = Header(stamp=Time(sec=frame.stamp_ns // 1_000_000_000, nanosec=frame.stamp_ns % 1_000_000_000),
                        frame_id=frame.frame_id)
        semantic = resampler.to_camera(result.semantic)
        colors = resampler.to_camera(segment_colors(result.panoptic, result.semantic, self.label_set,
                                                    self.label_divisor))
        segments = resampler.segments_to_camera(result.valid_instances)
        messages = [
            ("id_image", IMAGE_TYPE, to_image_msg(panoptic, "32SC1", header)),
            ("semantic", IMAGE_TYPE, to_image_msg(semantic, "mono8", header)),
            ("overlay", IMAGE_TYPE, to_image_msg(overlay_image(frame.pixels, colors, semantic, OVERLAY_ALPHA), "rgb8",
                                                 header)),
            ("instances", INSTANCE_ARRAY_TYPE, instance_array_msg(segments, self.label_set, header,
                                                                  resampler.camera_hw, self.label_divisor,
                                                                  self.model_name)),
        ]
        if not self._class_map_written:  # latched in the node; once, with the first frame, here
            messages.append(("class_map", CLASS_MAP_TYPE, class_map_msg(self.label_set, header, self.label_divisor,
                                                                        self.model_name)))
            self._class_map_written = True
        for name, msgtype, msg in messages:
            # rclpy message -> CDR bytes -> the bag's (rosbags) type: the node's builders define every message.
            converted = typestore().deserialize_cdr(serialize_message(msg), msgtype)
            self._bag.write(self._prefix + name, msgtype, frame.bag_time_ns, converted)
