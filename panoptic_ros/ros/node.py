"""panoptic_node: camera images in, panoptic segmentation out. A ROS 2 managed (lifecycle) node.

Lifecycle:
- construction declares the parameters (so they can be set and described before configure);
- configure checks them, loads (or builds) the model, creates the publishers and the diagnostics;
- activate subscribes to the cameras and starts the worker (loading the model again if deactivate freed it);
- deactivate unsubscribes, stops the worker and frees the model (and PyTorch's CUDA cache);
- cleanup and shutdown release everything.
With `autostart` (default true) the node configures and activates itself at start, so `ros2 run` and the demo
need no lifecycle manager; the launch file starts it with autostart false and drives the transitions.

Threads:
- the executor thread runs subscription callbacks (cheap checks, then the frame goes into its
  camera's newest-frame slot), parameter callbacks, lifecycle transitions and the timers;
- one worker thread takes frames from the slots round-robin, runs the backend, and publishes;
- a loader thread, only while a new model loads; the worker keeps using the old backend until
  the new one is ready, then the reference is swapped (one assignment, so it is atomic).

Model changes: the set-parameters call checks synchronously that the backend is known and the
model file exists (refused with a reason otherwise) and succeeds; loading then runs in the
background, and /diagnostics shows model_state "loading ...", then "ok". If loading fails, the old
model keeps running, the reason is logged at ERROR and /diagnostics reports WARN at once (model_state
"failed: ..."), and the model parameters are set back to the running model's values.

Fusion thresholds: the loaded model's defaults (its file's metadata) unless a parameter overrides them
(parameters.py says why they are declared without a value). Each load logs the value in force of every
threshold and where it comes from (model default or override), and the ones the model does not use;
`ros2 param describe` says the same (additional_constraints), /diagnostics shows each value with its source,
and setting a threshold the running model does not use logs a warning.
"""

from __future__ import annotations

import copy
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from panoptic_ros.msg import PanopticClassMap
from panoptic_ros.pipeline_io import THRESHOLD_INPUTS
from panoptic_ros.ros import parameters as params
from panoptic_ros.ros.diagnostics import STAGES, TOTAL, CameraStats, InputMonitor, camera_status
from panoptic_ros.ros.frame_output import FrameOutputs
from panoptic_ros.ros.frame_slot import NewestFrameSlots, SlotCounters
from panoptic_ros.ros.image_conversion import ImageRejected, check_image
from panoptic_ros.ros.outputs import class_map_msg
from panoptic_ros.ros.qos import QOS_PRESETS, InputSubscription
from panoptic_ros.runtime import model_thresholds
from panoptic_ros.tracking.tracker import TrackIds

# Late subscribers (RViz, loggers) still get the class map of the running model.
CLASS_MAP_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
LOG_THROTTLE_S = 2.0
QOS_REFRESH_S = 1.0  # how often input_qos auto looks at the publishers again


def camera_info_topic(image_topic: str) -> str:
    """image_transport's rule: the camera_info beside an image topic (/cam/image_raw -> /cam/camera_info)."""
    base = image_topic.removesuffix("/compressed")
    return f"{base.rsplit('/', 1)[0]}/camera_info"


class Camera:
    """One camera: its publishers (configure), its subscriptions (activate), statistics and output buffers."""

    def __init__(self, node: PanopticNode, name: str, index: int, output_qos: QoSProfile, expected_rate: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.index = index
        self.label = name or "image"
        self.prefix = f"{name}/" if name else ""
        self.stats = CameraStats(clock=clock)
        self.monitor = InputMonitor("", expected_rate, clock)
        self.outputs = FrameOutputs(node, f"{self.prefix}panoptic/", output_qos, node.track_ids)
        self.class_map = node.create_publisher(PanopticClassMap, f"{self.prefix}panoptic/class_map", CLASS_MAP_QOS)
        self.image: InputSubscription | None = None
        self.info: InputSubscription | None = None
        self.camera_info: CameraInfo | None = None  # the newest one from the driver

    def subscribe(self, node: PanopticNode, input_type: str, input_qos: str) -> None:
        msg_type, topic = (CompressedImage, "image/compressed") if input_type == "compressed" else (Image, "image")
        self.image = InputSubscription(node, msg_type, self.prefix + topic, lambda msg: node.on_image(self, msg),
                                       input_qos, lambda problem: node.on_qos_problem(self, problem))
        self.monitor.topic = self.image.topic
        self.info = InputSubscription(node, CameraInfo, camera_info_topic(self.image.topic), self._on_camera_info,
                                      input_qos, lambda problem: node.on_qos_problem(self, problem))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self.camera_info = msg

    def refresh_qos(self) -> None:
        for subscription in (self.image, self.info):
            if subscription is not None:
                subscription.refresh()

    def unsubscribe(self) -> None:
        for subscription in (self.image, self.info):
            if subscription is not None:
                subscription.destroy()
        self.image = self.info = None

    def destroy(self, node: PanopticNode) -> None:
        self.unsubscribe()
        self.outputs.destroy()
        node.destroy_publisher(self.class_map)


class PanopticNode(LifecycleNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("panoptic_node", **kwargs)
        # Set first: destroy_node must work whatever state the node is in.
        self._running = False
        self._worker: threading.Thread | None = None
        self._loaders: list[threading.Thread] = []
        self._cameras: list[Camera] = []
        self._slots: NewestFrameSlots | None = None
        self._timers: list[Any] = []
        self._diagnostics = None
        self._backend = None
        self._model_state = "not loaded"
        self.failure = ""  # why the last configure or activate failed
        self._load_generation = 0
        self._revert_to: params.ModelSettings | None = None
        self._own_change = False  # the node itself sets parameters (a revert, the model's thresholds)
        # The backend and the settings it was loaded from always change together, under this lock.
        self._model_lock = threading.Lock()
        self._models_dir = params.default_models_dir()
        self.track_ids = TrackIds()  # one counter for all cameras and the node's whole run: ids never repeat
        params.declare_parameters(self)
        # Thresholds given at start (command line, params file); replaced, never mutated, when one is set.
        self._overrides = {name: value for name in THRESHOLD_INPUTS if (value := self._value(name)) is not None}
        self._in_force: tuple | None = None  # (backend, overrides, ThresholdsInForce) of the last frame
        self._revert_guard = self.create_guard_condition(self._revert_model_parameters)
        self._thresholds_guard = self.create_guard_condition(self._show_thresholds)
        self._threshold_parameters_guard = self.create_guard_condition(self._sync_threshold_parameters)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

    # ---- lifecycle --------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Check the parameters, load the model, create publishers and diagnostics."""
        try:
            values = self._values()
            for name in params.PARAMETER_NAMES:
                if reason := params.check_value(name, values[name]):
                    raise ValueError(reason)
            names = list(values["cameras"] or [""])
            if len(set(names)) != len(names):
                raise ValueError(f"cameras must be distinct names, got {names}")
            self._take_values(values)
            self._model_settings = params.model_settings(values)
            self._backend = self._load_backend(self._model_settings)
            self._check_label_divisor(self._label_divisor, self._backend)
            self._model_state = "ok"
            self._show_thresholds()
            output_qos = copy.copy(QOS_PRESETS[values["output_qos"]])
            output_qos.depth = values["output_depth"]
            self._input_type, self._input_qos = values["input_type"], values["input_qos"]
            self._raw_input = self._input_type == "raw"
            self._cameras = [Camera(self, name, i, output_qos, values["expected_rate"]) for i, name in enumerate(names)]
            self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self._timers = [self.create_timer(values["diagnostics_period"], self._publish_diagnostics),
                            self.create_timer(QOS_REFRESH_S, self._refresh_qos)]
        except (ValueError, FileNotFoundError, RuntimeError, ImportError) as error:
            self.failure = str(error)
            self.get_logger().error(f"configure failed: {error}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        self._publish_class_maps()
        self._publish_diagnostics()
        self.get_logger().info(f"configured {', '.join(c.label for c in self._cameras)} with "
                               f"{self._describe_backend()}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model if deactivate freed it, subscribe, start the worker."""
        try:
            if self._backend is None:
                with self._model_lock:
                    self._model_settings = params.model_settings(self._values())
                self._backend = self._load_backend(self._model_settings)
                self._model_state = "ok"
                self._publish_class_maps()
                self._show_thresholds()
        except Exception as error:  # any load failure: stay inactive and say why
            self.failure = f"cannot load the model: {error}"
            self.get_logger().error(f"activate failed: {self.failure}")
            self._model_state = f"failed: {error}"
            return TransitionCallbackReturn.FAILURE
        self._slots = NewestFrameSlots([c.name for c in self._cameras])
        for camera in self._cameras:
            camera.subscribe(self, self._input_type, self._input_qos)
        self._running = True
        self._worker = threading.Thread(target=self._work, name="panoptic_worker", daemon=True)
        self._worker.start()
        self._publish_diagnostics()
        self.get_logger().info(f"active: serving {', '.join(c.image.topic for c in self._cameras)}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe, stop the worker, free the model."""
        self._stop_worker()
        self._free_model()
        self._publish_diagnostics()
        self.get_logger().info("inactive: unsubscribed, model freed")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in state {state.label}: releasing everything")
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_worker(self) -> None:
        for camera in self._cameras:
            camera.unsubscribe()
        self._running = False
        if self._slots is not None:
            self._slots.close()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
            self._worker = None

    def _free_model(self) -> None:
        self._join_loaders()
        with self._model_lock:
            self._load_generation += 1  # a load still finishing must not bring the model back
            self._backend = None
            self._model_state = "not loaded (inactive)"
        for name in THRESHOLD_INPUTS:  # no descriptor may still speak of the freed model
            self.set_descriptor(name, params.threshold_descriptor(name, None))
        torch = sys.modules.get("torch")  # only if a backend imported it: never import torch just to free it
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _release(self) -> None:
        """Back to unconfigured: no worker, no model, no publishers or timers."""
        self._stop_worker()
        self._free_model()
        for camera in self._cameras:
            camera.destroy(self)
        self._cameras = []
        for timer in self._timers:
            self.destroy_timer(timer)
        self._timers = []
        if self._diagnostics is not None:
            self.destroy_publisher(self._diagnostics)
            self._diagnostics = None

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

    def _take_values(self, values: dict[str, Any]) -> None:
        """The settings the worker reads per frame (each one assignment: a frame sees old or new, never half)."""
        self._outputs = params.output_settings(values)
        self._resize_mode = values["resize_mode"]
        self._label_divisor = int(values["label_divisor"])
        self._max_pixels = int(values["max_pixels"])

    def _check_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        """Refuse invalid values with a reason. A model change is accepted when its file exists; it loads
        afterwards (rclpy drops the reason of a successful result, so /diagnostics model_state tells the outcome)."""
        if self._own_change:
            return SetParametersResult(successful=True)
        values = self._values(changes)
        changed = {p.name for p in changes}
        try:
            for name in changed & set(params.PARAMETER_NAMES):
                if reason := params.check_value(name, values[name]):
                    raise ValueError(reason)
            model_thresholds.check_overrides(self._overrides_with(changes))
            if changed & set(params.MODEL_PARAMETERS):
                params.model_settings(values).model_file(self._models_dir)
            backend = self._backend
            if "label_divisor" in changed and backend is not None:  # the running model uses it until a new one
                self._check_label_divisor(values["label_divisor"], backend)
        except (ValueError, FileNotFoundError) as error:
            return SetParametersResult(successful=False, reason=str(error))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, changes: list[Parameter]) -> None:
        """Take accepted values into use: the next frame sees them (model changes start a background load).
        Before configure nothing is in use yet: configure reads every value (thresholds set are overrides from now)."""
        if self._own_change:
            return
        overrides = self._overrides_with(changes)
        if overrides != self._overrides:
            self._overrides = overrides
            self._log_threshold_changes(changes)
        if not self._cameras:
            return
        values = self._values()
        changed = {p.name for p in changes}
        self._take_values(values)
        if "label_divisor" in changed:
            self._publish_class_maps()
        if changed & set(params.MODEL_PARAMETERS) and self._backend is not None:
            self._start_model_load(params.model_settings(values))

    def _overrides_with(self, changes: list[Parameter]) -> dict[str, float]:
        """The threshold overrides once `changes` apply (every threshold a user sets is an override)."""
        return {**self._overrides, **{p.name: p.value for p in changes if p.name in THRESHOLD_INPUTS}}

    def _thresholds_for(self, backend) -> model_thresholds.ThresholdsInForce:
        """The thresholds `backend`'s model runs with now (worked out again only when the model or an override
        changes; one tuple, so a frame never pairs one model with another's thresholds)."""
        cached, overrides = self._in_force, self._overrides
        if cached is None or cached[0] is not backend or cached[1] is not overrides:
            cached = self._in_force = (backend, overrides, model_thresholds.thresholds_in_force(backend.info,
                                                                                                 overrides))
        return cached[2]

    def _show_thresholds(self) -> None:
        """Log the thresholds in force for the loaded model, set the unset ones to the model's values (so
        `ros2 param get` shows what is in force) and say in each descriptor whether the model uses it
        (executor thread)."""
        backend = self._backend
        if backend is None:
            return
        in_force = self._thresholds_for(backend)
        self.get_logger().info(in_force.describe())
        for warning in in_force.warnings():
            self.get_logger().warning(warning)
        self._sync_threshold_parameters()

    def _sync_threshold_parameters(self) -> None:
        """The threshold parameters as the loaded model runs them: unset ones hold the model's values, and
        each descriptor says whether the model uses it and where its value comes from (executor thread)."""
        backend = self._backend
        if backend is None:
            return
        in_force = self._thresholds_for(backend)
        self._own_change = True
        try:
            self.set_parameters([Parameter(name, value=float(getattr(in_force.thresholds, name)))
                                 for name in THRESHOLD_INPUTS if name not in self._overrides])
            for name in THRESHOLD_INPUTS:
                self.set_descriptor(name, params.threshold_descriptor(name, in_force))
        finally:
            self._own_change = False

    def _log_threshold_changes(self, changes: list[Parameter]) -> None:
        """A line per threshold set: the override and the model's default, or that the model does not use it."""
        backend = self._backend
        if backend is None:
            return
        in_force = self._thresholds_for(backend)
        defaults, _ = model_thresholds.model_default_thresholds(backend.info)
        for name in sorted({p.name for p in changes} & set(THRESHOLD_INPUTS)):
            value = getattr(in_force.thresholds, name)
            if name in in_force.unused:
                self.get_logger().warning(f"{name} set to {value:g}, but the loaded model {in_force.model} does not "
                                          f"use {name}: it changes nothing for this model (it stays an override "
                                          "for a model that uses it)")
            else:
                self.get_logger().info(f"{name} set to {value:g} (override; {in_force.model}'s default is "
                                       f"{getattr(defaults, name):g})")
        self._threshold_parameters_guard.trigger()  # descriptors change after this set, not inside it

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
                    return  # a newer request (or deactivate) superseded this one
                self._model_state = f"failed: {settings.model or settings.engine_path} ({settings.backend}, " \
                                    f"{settings.device}): {error}"
                self._revert_to = self._model_settings
            self.get_logger().error(f"model switch failed, keeping {self._describe_backend()}: {error}")
            self._publish_diagnostics()  # the WARN now, not at the next period
            self._revert_guard.trigger()
            return
        with self._model_lock:
            if generation != self._load_generation:
                return
            self._backend, self._model_settings = backend, settings
            self._model_state = "ok"
        self.get_logger().info(f"switched to {self._describe_backend()}")
        self._publish_class_maps()
        self._thresholds_guard.trigger()

    def _join_loaders(self) -> None:
        for loader in self._loaders:  # a model half-loaded at interpreter exit can abort the process
            loader.join(timeout=60.0)
        self._loaders = []

    def _revert_model_parameters(self) -> None:
        """After a failed switch, make the model parameters say again what is running (executor thread)."""
        with self._model_lock:
            settings, self._revert_to = self._revert_to, None
        if settings is None:
            return
        self._own_change = True
        try:
            self.set_parameters([Parameter(name, value=getattr(settings, name)) for name in params.MODEL_PARAMETERS])
        finally:
            self._own_change = False

    def _describe_backend(self) -> str:
        backend = self._backend
        if backend is None:
            return "no model"
        info = backend.describe()
        return f"{info['model_name']} from {info['model_path']} on {info['backend']} ({info['device']})"

    # ---- frames -----------------------------------------------------------------------------

    def on_image(self, camera: Camera, msg: Image | CompressedImage) -> None:
        """Subscription callback: cheap checks only, then the frame replaces the camera's waiting one."""
        camera.monitor.record_arrival()
        if self._raw_input:
            try:
                check_image(msg, self._max_pixels)
            except ImageRejected as error:
                self._reject(camera, error)
                return
        self._slots.put(camera.index, (msg, time.perf_counter()))

    def on_qos_problem(self, camera: Camera, problem: str) -> None:
        camera.stats.record_qos_problem(problem)
        self.get_logger().warning(problem, throttle_duration_sec=LOG_THROTTLE_S)

    def _reject(self, camera: Camera, error: Exception) -> None:
        camera.stats.record_rejected(str(error))
        self.get_logger().warning(f"{camera.label}: rejected frame: {error}", throttle_duration_sec=LOG_THROTTLE_S)

    def _work(self) -> None:
        slots = self._slots
        while self._running:
            taken = slots.take(timeout=0.5)
            if taken is None:
                continue
            index, (msg, arrived) = taken
            camera = self._cameras[index]
            backend = self._backend  # one read: a swap during this frame takes effect on the next
            if backend is None:
                continue
            try:
                thresholds = self._thresholds_for(backend).thresholds
                timing, result = camera.outputs.process(
                    msg, backend, thresholds, self._outputs, self._label_divisor, self._max_pixels,
                    self._raw_input, self._resize_mode, camera.camera_info, queue_ms=(time.perf_counter() - arrived)
                    * 1e3, now=self.get_clock().now)
            except ImageRejected as error:
                self._reject(camera, error)
                continue
            except Exception as error:  # one bad frame or backend hiccup must not stop the node
                camera.stats.record_failed(f"{type(error).__name__}: {error}")
                self.get_logger().error(f"{camera.label}: frame failed: {type(error).__name__}: {error}",
                                        throttle_duration_sec=LOG_THROTTLE_S)
                continue
            camera.stats.record_frame({stage: getattr(timing, f"{stage}_ms") for stage in (*STAGES, TOTAL)},
                                      overhead_cpu_ms=timing.overhead_cpu_ms, converged=result.converged,
                                      candidates_dropped=result.candidates_dropped)

    # ---- class map and diagnostics ----------------------------------------------------------

    def _publish_class_maps(self) -> None:
        backend, label_divisor = self._backend, self._label_divisor
        if backend is None:
            return
        header = Header(stamp=self.get_clock().now().to_msg())
        for camera in self._cameras:
            camera.class_map.publish(class_map_msg(backend.label_set, header, label_divisor, backend.model_name))

    def _refresh_qos(self) -> None:
        for camera in self._cameras:
            camera.refresh_qos()

    def _publish_diagnostics(self) -> None:
        publisher = self._diagnostics
        if publisher is None:
            return
        backend = self._backend
        described = backend.describe() if backend is not None else {}
        thresholds = self._thresholds_for(backend) if backend is not None else None
        with self._model_lock:
            model_state = self._model_state
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        slots = self._slots
        statuses = []
        for camera in self._cameras:
            image = camera.image
            health = camera.monitor.assess(image.publisher_count()) if image is not None else None
            counters = slots.counters(camera.index) if slots is not None else SlotCounters()
            statuses.append(camera_status(f"{self.get_name()}: {camera.label}", self.get_fully_qualified_name(),
                                          camera.stats, counters, described, model_state, health, thresholds))
        array.status = statuses
        publisher.publish(array)

    def destroy_node(self) -> None:
        self._stop_worker()
        self._join_loaders()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = PanopticNode()
    try:
        if node.get_parameter("autostart").value:
            for transition in (node.trigger_configure, node.trigger_activate):
                if transition() != TransitionCallbackReturn.SUCCESS:
                    node.get_logger().fatal(f"cannot start: {node.failure}")
                    return 2
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
