"""One camera's outputs: a frame in, every output message computed, then all of them published.

Everything that can fail (conversion, resizing, the model, mapping back, drawing) runs before the
first publish, so a frame gets either its whole set of outputs or a clear rejection, never half.

Outputs under `<prefix>`: id_image (32SC1), semantic (mono8 class ids), semantic_color (rgb8 class
colors, for RViz), overlay (rgb8), instances, camera_info (the driver's CameraInfo re-stamped with
the frame's header), and timing (PanopticTiming, last). Image outputs are computed only while
someone subscribes, straight into reusable buffers. With tracking on, the camera's tracker gives the
things track ids (instances' track_id), track_image (32SC1, class * label_divisor + track id) is
published, and the overlay is colored by track, so an object keeps its color.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

from rclpy.node import Node
from rclpy.qos import QoSProfile
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from panoptic_ros.imaging import Resampler, class_colors, overlay_image, segment_colors
from panoptic_ros.msg import PanopticInstanceArray, PanopticTiming
from panoptic_ros.pipeline_io import PanopticResult
from panoptic_ros.ros.image_conversion import ImageBuffer, compressed_to_rgb, image_to_rgb
from panoptic_ros.ros.outputs import instance_array_msg
from panoptic_ros.tracking.camera import CameraTracking
from panoptic_ros.tracking.tracker import TrackIds, track_id_map

IMAGE_TOPICS = {"id_image": "32SC1", "semantic": "mono8", "semantic_color": "rgb8", "overlay": "rgb8",
                "track_image": "32SC1"}


@dataclass(frozen=True)
class FrameTiming:
    """Milliseconds per stage of one frame (the fields of PanopticTiming) and the worker's CPU time outside the
    backend run."""

    queue_ms: float
    convert_ms: float
    resize_ms: float
    inference_ms: float
    tracking_ms: float
    publish_ms: float
    total_ms: float
    end_to_end_ms: float
    overhead_cpu_ms: float


class FrameOutputs:
    """The publishers of one camera and the per-frame work that feeds them."""

    def __init__(self, node: Node, prefix: str, qos: QoSProfile, track_ids: TrackIds,
                 clock: Callable[[], float] = time.perf_counter, cpu_clock: Callable[[], float] = time.thread_time
                 ) -> None:
        self._node = node
        self._clock, self._cpu_clock = clock, cpu_clock  # seconds: wall and this thread's CPU (tests set them)
        self.tracking = CameraTracking(track_ids)
        self.images = {topic: node.create_publisher(Image, prefix + topic, qos) for topic in IMAGE_TOPICS}
        self.instances = node.create_publisher(PanopticInstanceArray, prefix + "instances", qos)
        self.camera_info = node.create_publisher(CameraInfo, prefix + "camera_info", qos)
        self.timing = node.create_publisher(PanopticTiming, prefix + "timing", qos)
        self._resampler: Resampler | None = None
        self._buffers: dict[str, ImageBuffer] = {}  # topic -> reusable image of the camera's size

    def resampler(self, camera_hw: tuple[int, int], model_hw: tuple[int, int], mode: str) -> Resampler:
        """The resampler for this frame (kept while camera size, model size and mode stay the same)."""
        r = self._resampler
        if r is None or (r.camera_hw, r.model_hw, r.mode) != (camera_hw, model_hw, mode):
            self._resampler = Resampler(camera_hw, model_hw, mode)
        return self._resampler

    def buffer(self, topic: str, camera_hw: tuple[int, int]) -> ImageBuffer:
        """The reusable image of `topic` at the camera's size (reallocated only when the size changes)."""
        buffer = self._buffers.get(topic)
        if buffer is None or (buffer.height, buffer.width) != camera_hw:
            buffer = self._buffers[topic] = ImageBuffer(IMAGE_TOPICS[topic], *camera_hw)
        return buffer

    def _wanted(self, topic: str, enabled: bool) -> bool:
        return enabled and self.images[topic].get_subscription_count() > 0

    def process(self, msg: Image | CompressedImage, backend, thresholds, outputs, label_divisor: int,
                max_pixels: int, raw_input: bool, resize_mode: str, camera_info: CameraInfo | None,
                queue_ms: float, now: Callable[[], Time]) -> tuple[FrameTiming, PanopticResult]:
        """Convert, resize to the model, run, map back, build every message, publish; the frame's timing and the
        model's result. Raises ImageRejected (or whatever the backend raises) before anything is published."""
        cpu0 = self._cpu_clock()
        t0 = self._clock()
        rgb = image_to_rgb(msg, max_pixels) if raw_input else compressed_to_rgb(msg, max_pixels)
        t1 = self._clock()
        resampler = self.resampler(rgb.shape[:2], backend.input_hw, resize_mode)
        model_rgb = resampler.to_model(rgb)
        t2, cpu2 = self._clock(), self._cpu_clock()
        result = backend.run(model_rgb, thresholds, label_divisor)
        t3, cpu3 = self._clock(), self._cpu_clock()
        tracks = self.tracking.update(result, backend.label_set, outputs.tracking, outputs.track_max_age)
        t_tracked = self._clock()
        # Ids as the images show them: class * label_divisor + track id with tracking on, else the frame's ids.
        shown = track_id_map(result.panoptic, tracks, label_divisor) if tracks is not None else result.panoptic

        camera_hw = resampler.camera_hw
        want = {"id_image": self._wanted("id_image", outputs.publish_id_image),
                "semantic": self._wanted("semantic", outputs.publish_semantic),
                "semantic_color": self._wanted("semantic_color", outputs.publish_semantic_color),
                "overlay": self._wanted("overlay", outputs.publish_overlay),
                "track_image": self._wanted("track_image", tracks is not None)}
        filled: dict[str, ImageBuffer] = {}
        if want["id_image"]:
            filled["id_image"] = self.buffer("id_image", camera_hw)
            resampler.to_camera(result.panoptic, out=filled["id_image"].pixels)
        semantic = None
        if want["semantic"] or want["overlay"]:
            semantic = self.buffer("semantic", camera_hw)
            resampler.to_camera(result.semantic, out=semantic.pixels)
            if want["semantic"]:
                filled["semantic"] = semantic
        if want["semantic_color"]:
            filled["semantic_color"] = self.buffer("semantic_color", camera_hw)
            resampler.to_camera(class_colors(result.semantic, backend.label_set), out=filled["semantic_color"].pixels)
        if want["overlay"]:  # class colors at the model's size, enlarged into the overlay buffer, then blended
            overlay = filled["overlay"] = self.buffer("overlay", camera_hw)
            colors = segment_colors(shown, result.semantic, backend.label_set, label_divisor)
            resampler.to_camera(colors, out=overlay.pixels)
            overlay_image(rgb, overlay.pixels, semantic.pixels, outputs.overlay_alpha, out=overlay.pixels)
        if want["track_image"]:
            filled["track_image"] = self.buffer("track_image", camera_hw)
            resampler.to_camera(shown, out=filled["track_image"].pixels)
        header = msg.header
        instances = None
        if outputs.publish_instances:
            segments = resampler.segments_to_camera(result.valid_instances, result.panoptic)
            instances = instance_array_msg(segments, backend.label_set, header, camera_hw, label_divisor,
                                           backend.model_name, tracks)
        info = None
        if camera_info is not None and self.camera_info.get_subscription_count() > 0:
            info = copy.copy(camera_info)
            info.header = header
        t4 = self._clock()

        for topic, buffer in filled.items():
            self.images[topic].publish(buffer.message(header))
        if instances is not None:
            self.instances.publish(instances)
        if info is not None:
            self.camera_info.publish(info)
        t5, cpu5 = self._clock(), self._cpu_clock()
        published = now()
        end_to_end_ms = (published - Time.from_msg(header.stamp, clock_type=published.clock_type)).nanoseconds / 1e6

        timing = FrameTiming(queue_ms=queue_ms, convert_ms=(t1 - t0) * 1e3,
                             resize_ms=((t2 - t1) + (t4 - t_tracked)) * 1e3, inference_ms=(t3 - t2) * 1e3,
                             tracking_ms=(t_tracked - t3) * 1e3, publish_ms=(t5 - t4) * 1e3, total_ms=(t5 - t0) * 1e3,
                             end_to_end_ms=end_to_end_ms, overhead_cpu_ms=((cpu5 - cpu0) - (cpu3 - cpu2)) * 1e3)
        if outputs.publish_timing:
            self.timing.publish(timing_msg(timing, header))
        return timing, result

    def destroy(self) -> None:
        for publisher in (*self.images.values(), self.instances, self.camera_info, self.timing):
            self._node.destroy_publisher(publisher)


def timing_msg(timing: FrameTiming, header) -> PanopticTiming:
    fields = {name: getattr(timing, name) for name in PanopticTiming.get_fields_and_field_types() if name != "header"}
    return PanopticTiming(header=header, **fields)


def timing_ms(msg: PanopticTiming) -> dict[str, float]:
    """A PanopticTiming message as stage -> ms (queue, convert, resize, inference, publish, total, end_to_end)."""
    return {name.removesuffix("_ms"): float(getattr(msg, name)) for name in msg.get_fields_and_field_types()
            if name.endswith("_ms")}

