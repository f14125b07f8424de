"""panoptic_node: camera images in, panoptic segmentation out.

Threads:
- the executor thread runs subscription callbacks (cheap checks, then the frame goes into its
  camera's newest-frame slot), parameter callbacks and the diagnostics timer;
- one worker thread takes frames from the slots round-robin, runs the backend, and publishes;
- a loader thread, only while a new model loads; the worker keeps using the old backend until
  the new one is ready, then the reference is swapped (one assignment, so it is atomic).

Model changes: the set-parameters call checks synchronously that the backend is known and the
model file exists (refused with a reason otherwise) and succeeds; loading then runs in the
background, and /diagnostics shows model_state "loading ...", then "ok". If loading fails, the old
model keeps running, the reason is logged and shown in /diagnostics (model_state "failed: ..."),
and the model parameters are set back to the running model's values.
"""

from __future__ import annotations

import copy
import sys
import threading
import time
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
    qos_profile_system_default,
)
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64, Header

from panoptic_ros.imaging import Resampler, overlay_image, segment_colors
from panoptic_ros.msg import PanopticClassMap, PanopticInstanceArray
from panoptic_ros.ros import parameters as params
from panoptic_ros.ros.diagnostics import STAGES, TOTAL, CameraStats, camera_status
from panoptic_ros.ros.frame_slot import NewestFrameSlots
from panoptic_ros.ros.image_conversion import (
    ImageBuffer,
    ImageRejected,
    check_image,
    compressed_to_rgb,
    image_to_rgb,
)
from panoptic_ros.ros.outputs import class_map_msg, instance_array_msg

QOS_PRESETS = {
    "SENSOR_DATA": qos_profile_sensor_data,
    "DEFAULT": QoSProfile(depth=10),
    "SYSTEM_DEFAULT": qos_profile_system_default,
}
# Late subscribers (RViz, loggers) still get the class map of the running model.
CLASS_MAP_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
LOG_THROTTLE_S = 2.0


class Camera:
    """One camera's subscription, publishers, statistics and resampling (names under `prefix`)."""

    def __init__(self, node: Node, name: str, index: int, input_type: str, input_qos: QoSProfile,
                 output_qos: QoSProfile) -> None:
        self.name = name
        self.index = index
        prefix = f"{name}/" if name else ""
        self.stats = CameraStats()
        self._resampler: Resampler | None = None
        self._buffers: dict[str, ImageBuffer] = {}  # output encoding -> reusable image of the camera's size
        if input_type == "compressed":
            self.subscription = node.create_subscription(CompressedImage, f"{prefix}image/compressed",
                                                         lambda msg: node.on_image(self, msg), input_qos)
        else:
            self.subscription = node.create_subscription(Image, f"{prefix}image", lambda msg: node.on_image(self, msg),
                                                         input_qos)
        out = f"{prefix}panoptic/"
        self.id_image = node.create_publisher(Image, out + "id_image", output_qos)
        self.semantic = node.create_publisher(Image, out + "semantic", output_qos)
        self.overlay = node.create_publisher(Image, out + "overlay", output_qos)
        self.instances = node.create_publisher(PanopticInstanceArray, out + "instances", output_qos)
        self.class_map = node.create_publisher(PanopticClassMap, out + "class_map", CLASS_MAP_QOS)
        self.latency = {stage: node.create_publisher(Float64, f"{out}latency/{stage}", output_qos)
                        for stage in (*STAGES, TOTAL)}

    def resampler(self, camera_hw: tuple[int, int], model_hw: tuple[int, int]) -> Resampler:
        """The resampler for this frame's size (kept while camera and model sizes stay the same)."""
        if self._resampler is None or (self._resampler.camera_hw, self._resampler.model_hw) != (camera_hw, model_hw):
            self._resampler = Resampler(camera_hw, model_hw)
        return self._resampler

    def buffer(self, encoding: str, camera_hw: tuple[int, int]) -> ImageBuffer:
        """The reusable output image of `encoding` at the camera's size (reallocated only when the size changes)."""
        buffer = self._buffers.get(encoding)
        if buffer is None or (buffer.height, buffer.width) != camera_hw:
            buffer = self._buffers[encoding] = ImageBuffer(encoding, *camera_hw)
        return buffer


class PanopticNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("panoptic_node", **kwargs)
        # Set first: destroy_node must work even when construction fails half-way.
        self._running = False
        self._worker: threading.Thread | None = None
        self._slots: NewestFrameSlots | None = None
        self._loaders: list[threading.Thread] = []
        params.declare_parameters(self)
        values = self._values()
        for name in params.PARAMETER_NAMES:
            if reason := params.check_value(name, values[name]):
                raise ValueError(reason)
        self._thresholds = params.thresholds(values)
        self._outputs = params.output_settings(values)
        self._label_divisor = int(values["label_divisor"])
        self._max_pixels = int(values["max_pixels"])
        self._models_dir = params.default_models_dir()

        # The backend and the settings it was loaded from always change together, under this lock.
        self._model_lock = threading.Lock()
        self._model_settings = params.model_settings(values)
        self._backend = self._load_backend(self._model_settings)
        self._check_label_divisor(self._label_divisor, self._backend)
        self._model_state = "ok"
        self._load_generation = 0
        self._revert_to: params.ModelSettings | None = None
        self._reverting = False
        self._revert_guard = self.create_guard_condition(self._revert_model_parameters)

        names = list(values["cameras"] or [""])
        if len(set(names)) != len(names):
            raise ValueError(f"cameras must be distinct names, got {names}")
        input_qos = QOS_PRESETS[values["input_qos"]]
        output_qos = copy.copy(QOS_PRESETS[values["output_qos"]])
        output_qos.depth = values["output_depth"]
        self._raw_input = values["input_type"] == "raw"
        self._cameras = [Camera(self, name, i, values["input_type"], input_qos, output_qos)
                         for i, name in enumerate(names)]
        self._slots = NewestFrameSlots(names)
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_timer = self.create_timer(values["diagnostics_period"], self._publish_diagnostics)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._publish_class_maps()

        self._running = True
        self._worker = threading.Thread(target=self._work, name="panoptic_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(f"serving {', '.join(c.name or 'image' for c in self._cameras)} with "
                               f"{self._describe_backend()}")

    # ---- parameters -------------------------------------------------------------------------

    def _values(self, changes: list[Parameter] | None = None) -> dict[str, Any]:
        """Current parameter values, with `changes` applied on top."""
        values = {name: self._value(name) for name in params.PARAMETER_NAMES}
        values.update({p.name: p.value for p in changes or []})
        return values

    def _value(self, name: str) -> Any:
        """A parameter's value; None for a typed parameter nobody set (e.g. `cameras`)."""
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:
            return None

    def _check_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        """Refuse invalid values with a reason. A model change is accepted when its file exists; it loads
        afterwards (rclpy drops the reason of a successful result, so /diagnostics model_state tells the outcome)."""
        if self._reverting:
            return SetParametersResult(successful=True)
        values = self._values(changes)
        changed = {p.name for p in changes}
        try:
            for name in changed & set(params.PARAMETER_NAMES):
                if reason := params.check_value(name, values[name]):
                    raise ValueError(reason)
            params.thresholds(values)
            if changed & set(params.MODEL_PARAMETERS):
                params.model_settings(values).model_file(self._models_dir)
            if "label_divisor" in changed:  # the running model uses it until a new one is loaded
                self._check_label_divisor(values["label_divisor"], self._backend)
        except (ValueError, FileNotFoundError) as error:
            return SetParametersResult(successful=False, reason=str(error))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, changes: list[Parameter]) -> None:
        """Take accepted values into use: the next frame sees them (model changes start a background load)."""
        if self._reverting:
            return
        values = self._values()
        changed = {p.name for p in changes}
        self._thresholds = params.thresholds(values)
        self._outputs = params.output_settings(values)
        self._max_pixels = int(values["max_pixels"])
        if "label_divisor" in changed:
            self._label_divisor = int(values["label_divisor"])
            self._publish_class_maps()
        if changed & set(params.MODEL_PARAMETERS):
            self._start_model_load(params.model_settings(values))

    @staticmethod
    def _check_label_divisor(label_divisor: int, backend) -> None:
        from panoptic_ros.pipeline_io import check_label_divisor

        check_label_divisor(int(label_divisor), backend.max_instances, backend.label_set.num_classes)

    # ---- model loading ----------------------------------------------------------------------

    def _load_backend(self, settings: params.ModelSettings):
        from panoptic_ros.runtime.backends import create_backend

        path = settings.model_file(self._models_dir)
        return create_backend(settings.backend, path, device=settings.device, **settings.backend_options())

    def _start_model_load(self, settings: params.ModelSettings) -> None:
        with self._model_lock:
            self._load_generation += 1
            generation = self._load_generation
            self._model_state = f"loading {settings.model or settings.engine_path} ({settings.backend})"
        loader = threading.Thread(target=self._load_in_background, args=(settings, generation),
                                  name="panoptic_loader", daemon=True)
        self._loaders = [t for t in self._loaders if t.is_alive()] + [loader]
        loader.start()

    def _load_in_background(self, settings: params.ModelSettings, generation: int) -> None:
        try:
            backend = self._load_backend(settings)
            self._check_label_divisor(self._label_divisor, backend)
        except Exception as error:  # any load failure leaves the running model in place
            with self._model_lock:
                if generation != self._load_generation:
                    return  # a newer request superseded this one
                self._model_state = f"failed: {settings.model or settings.engine_path} ({settings.backend}): {error}"
                self._revert_to = self._model_settings
            self.get_logger().error(f"model switch failed, keeping {self._describe_backend()}: {error}")
            self._revert_guard.trigger()
            return
        with self._model_lock:
            if generation != self._load_generation:
                return
            self._backend, self._model_settings = backend, settings
            self._model_state = "ok"
        self.get_logger().info(f"switched to {self._describe_backend()}")
        self._publish_class_maps()

    def _revert_model_parameters(self) -> None:
        """After a failed switch, make the model parameters say again what is running (executor thread)."""
        with self._model_lock:
            settings, self._revert_to = self._revert_to, None
        if settings is None:
            return
        self._reverting = True
        try:
            self.set_parameters([Parameter(name, value=getattr(settings, name)) for name in params.MODEL_PARAMETERS])
        finally:
            self._reverting = False

    def _describe_backend(self) -> str:
        info = self._backend.describe()
        return f"{info['model_name']} from {info['model_path']} on {info['backend']} ({info['device']})"

    # ---- frames -----------------------------------------------------------------------------

    def on_image(self, camera: Camera, msg: Image | CompressedImage) -> None:
        """Subscription callback: cheap checks only, then the frame replaces the camera's waiting one."""
        if self._raw_input:
            try:
                check_image(msg, self._max_pixels)
            except ImageRejected as error:
                self._reject(camera, error)
                return
        self._slots.put(camera.index, msg)

    def _reject(self, camera: Camera, error: Exception) -> None:
        camera.stats.record_rejected(str(error))
        self.get_logger().warning(f"{camera.name or 'image'}: rejected frame: {error}",
                                  throttle_duration_sec=LOG_THROTTLE_S)

    def _work(self) -> None:
        while self._running:
            taken = self._slots.take(timeout=0.5)
            if taken is None:
                continue
            index, msg = taken
            camera = self._cameras[index]
            try:
                self._process(camera, msg)
            except ImageRejected as error:
                self._reject(camera, error)
            except Exception as error:  # one bad frame or backend hiccup must not stop the node
                camera.stats.record_failed(f"{type(error).__name__}: {error}")
                self.get_logger().error(f"{camera.name or 'image'}: frame failed: {type(error).__name__}: {error}",
                                        throttle_duration_sec=LOG_THROTTLE_S)

    def _process(self, camera: Camera, msg: Image | CompressedImage) -> None:
        """One frame: convert, resize to the model, run, map back to the camera, publish. Records stage times."""
        backend = self._backend  # one read: a swap during this frame takes effect on the next
        thresholds, outputs, label_divisor = self._thresholds, self._outputs, self._label_divisor
        cpu0 = time.thread_time()
        t0 = time.perf_counter()
        rgb = image_to_rgb(msg, self._max_pixels) if self._raw_input else compressed_to_rgb(msg, self._max_pixels)
        t1 = time.perf_counter()
        resampler = camera.resampler(rgb.shape[:2], backend.input_hw)
        model_rgb = resampler.to_model(rgb)
        t2, cpu2 = time.perf_counter(), time.thread_time()
        result = backend.run(model_rgb, thresholds, label_divisor)
        t3, cpu3 = time.perf_counter(), time.thread_time()

        # Image outputs are computed only for topics someone subscribes to, straight into reusable buffers.
        want_ids = outputs.publish_id_image and camera.id_image.get_subscription_count() > 0
        want_semantic = outputs.publish_semantic and camera.semantic.get_subscription_count() > 0
        want_overlay = outputs.publish_overlay and camera.overlay.get_subscription_count() > 0
        ids = camera.buffer("32SC1", resampler.camera_hw) if want_ids else None
        semantic = camera.buffer("mono8", resampler.camera_hw) if want_semantic or want_overlay else None
        overlay = camera.buffer("rgb8", resampler.camera_hw) if want_overlay else None
        if ids is not None:
            resampler.to_camera(result.panoptic, out=ids.pixels)
        if semantic is not None:
            resampler.to_camera(result.semantic, out=semantic.pixels)
        if overlay is not None:  # class colors at the model's size, then enlarged into the overlay buffer
            colors = segment_colors(result.panoptic, result.semantic, backend.label_set, label_divisor)
            resampler.to_camera(colors, out=overlay.pixels)
        segments = resampler.segments_to_camera(result.valid_instances) if outputs.publish_instances else None
        t4 = time.perf_counter()

        header = msg.header
        if ids is not None:
            camera.id_image.publish(ids.message(header))
        if want_semantic:
            camera.semantic.publish(semantic.message(header))
        if overlay is not None:
            overlay_image(rgb, overlay.pixels, semantic.pixels, outputs.overlay_alpha, out=overlay.pixels)
            camera.overlay.publish(overlay.message(header))
        if segments is not None:
            camera.instances.publish(instance_array_msg(segments, backend.label_set, header, resampler.camera_hw,
                                                        label_divisor, backend.model_name))
        t5, cpu5 = time.perf_counter(), time.thread_time()

        latencies = {"convert": t1 - t0, "resize": (t2 - t1) + (t4 - t3), "inference": t3 - t2,
                     "publish": t5 - t4, TOTAL: t5 - t0}
        latencies = {stage: seconds * 1e3 for stage, seconds in latencies.items()}
        camera.stats.record_frame(latencies, overhead_cpu_ms=((cpu5 - cpu0) - (cpu3 - cpu2)) * 1e3)
        if outputs.publish_latency:
            for stage, ms in latencies.items():
                camera.latency[stage].publish(Float64(data=ms))

    # ---- class map and diagnostics ----------------------------------------------------------

    def _publish_class_maps(self) -> None:
        backend, label_divisor = self._backend, self._label_divisor
        header = Header(stamp=self.get_clock().now().to_msg())
        for camera in self._cameras:
            camera.class_map.publish(class_map_msg(backend.label_set, header, label_divisor, backend.model_name))

    def _publish_diagnostics(self) -> None:
        backend = self._backend.describe()
        with self._model_lock:
            model_state = self._model_state
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [camera_status(f"{self.get_name()}: {camera.name or 'image'}", self.get_fully_qualified_name(),
                                      camera.stats, self._slots.counters(camera.index), backend, model_state)
                        for camera in self._cameras]
        self._diagnostics.publish(array)

    def destroy_node(self) -> None:
        self._running = False
        if self._slots is not None:
            self._slots.close()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
        for loader in self._loaders:  # a model half-loaded at interpreter exit can abort the process
            loader.join(timeout=60.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    try:
        node = PanopticNode()
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as error:
        rclpy.logging.get_logger("panoptic_node").fatal(f"cannot start: {error}")
        rclpy.try_shutdown()
        return 2
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
