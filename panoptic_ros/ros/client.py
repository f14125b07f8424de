"""The other end of a running panoptic_node, in this process: start the node, publish images to it,
collect what it publishes, change its parameters through its parameter services.

Used by the cross-process tests, the load test / benchmark (`panoptic-ros bench node`) and the
replay tools. Waiting is always on discovery or on a message arriving, bounded by a timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rcl_interfaces.srv import DescribeParameters, GetParameters, SetParameters
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from panoptic_ros.msg import PanopticClassMap, PanopticInstanceArray, PanopticTiming
from panoptic_ros.ros.diagnostics import status_values
from panoptic_ros.ros.frame_output import timing_ms

NODE_NAME = "panoptic_node"
OUTPUT_TYPES = {"id_image": Image, "semantic": Image, "semantic_color": Image, "overlay": Image, "track_image": Image,
                "instances": PanopticInstanceArray, "camera_info": CameraInfo, "timing": PanopticTiming}
KEEP_PER_TOPIC = 64  # outputs kept per topic for lookup by stamp (bounded: long runs keep no history)
# Bounds, not expectations: an answer takes milliseconds, but the node's executor shares the GIL with its worker
# and the machine may be loaded; a generous bound costs nothing when the answer comes.
QUERY_TIMEOUT = 30.0  # s: parameter and lifecycle-state services
RESEND_PERIOD = 2.0  # s between repeats of a query whose request may have been lost (PanopticClient._call)

StampKey = tuple[int, int]


def stamp_key(msg: Any) -> StampKey:
    return msg.header.stamp.sec, msg.header.stamp.nanosec


def start_node(ros_args: list[str], env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen:
    """Start panoptic_node in its own process with `--ros-args` followed by `ros_args`."""
    command = [sys.executable, "-m", "panoptic_ros.ros.node", "--ros-args", *ros_args]
    return subprocess.Popen(command, env={**os.environ, **(env or {})}, **popen)


def stop_node(process: subprocess.Popen, timeout: float = 30.0) -> int:
    """Ask the node to stop (SIGINT, as Ctrl-C would), kill it if it does not; its exit code."""
    if process.poll() is None:
        process.send_signal(2)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class PanopticClient:
    """Publishes images to a panoptic_node and collects its outputs for the given cameras."""

    def __init__(self, namespace: str = "", cameras: tuple[str, ...] = ("",), input_type: str = "raw",
                 outputs: tuple[str, ...] = ("id_image", "semantic", "overlay", "instances"),
                 timing: bool = False, on_output: Callable[[str, str, Any], None] | None = None,
                 resend_period: float = RESEND_PERIOD) -> None:
        """`on_output(camera, topic, msg)`, if given, is called for every output as it arrives (spin thread).
        With `timing`, every frame's PanopticTiming goes into `latencies[(camera, stage)]` (ms). Queries that
        change nothing are asked again every `resend_period` seconds until answered (see `_call`)."""
        self.resend_period = resend_period
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("panoptic_client", namespace=namespace or "/", context=self.context)
        self.namespace = namespace
        self.cameras = cameras
        self._on_output = on_output
        self._lock = threading.Condition()
        self._outputs: dict[tuple[str, str], OrderedDict[StampKey, Any]] = {}
        self.class_maps: dict[str, list[PanopticClassMap]] = {camera: [] for camera in cameras}
        self.latencies: dict[tuple[str, str], list[float]] = {}
        self.diagnostics: list[DiagnosticArray] = []
        reliable = QoSProfile(depth=10)
        image_type = CompressedImage if input_type == "compressed" else Image
        image_topic = "image/compressed" if input_type == "compressed" else "image"
        self.publishers = {camera: self.node.create_publisher(image_type, _name(camera, image_topic), reliable)
                           for camera in cameras}
        self.subscriptions = []
        for camera in cameras:
            for topic in outputs:
                self._outputs[(camera, topic)] = OrderedDict()
                self.subscriptions.append(self.node.create_subscription(
                    OUTPUT_TYPES[topic], _name(camera, f"panoptic/{topic}"),
                    lambda msg, c=camera, t=topic: self._store(c, t, msg), reliable))
            self.subscriptions.append(self.node.create_subscription(
                PanopticClassMap, _name(camera, "panoptic/class_map"), lambda msg, c=camera: self._class_map(c, msg),
                QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                           reliability=ReliabilityPolicy.RELIABLE)))
            if timing:
                self.latencies.update({(camera, stage): [] for stage in timing_ms(PanopticTiming())})
                self.node.create_subscription(PanopticTiming, _name(camera, "panoptic/timing"),
                                              lambda msg, c=camera: self._timing(c, msg), reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._diagnostics, 10)
        service = f"{namespace.rstrip('/')}/{NODE_NAME}"
        # The node's fully qualified name: its statuses carry it as hardware_id, so statuses of other
        # panoptic_node processes on the same /diagnostics are never taken for this one's.
        self.node_fqn = "/" + "/".join(part for part in (namespace.strip("/"), NODE_NAME) if part)
        self._set_client = self.node.create_client(SetParameters, f"{service}/set_parameters")
        self._get_client = self.node.create_client(GetParameters, f"{service}/get_parameters")
        self._describe_client = self.node.create_client(DescribeParameters, f"{service}/describe_parameters")
        self._change_state_client = self.node.create_client(ChangeState, f"{service}/change_state")
        self._get_state_client = self.node.create_client(GetState, f"{service}/get_state")
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._spinner = threading.Thread(target=self._spin, name="panoptic_client_spin", daemon=True)
        self._spinner.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self._executor.spin_once(timeout_sec=0.1)
            except Exception:  # shutting down
                if self.context.ok():
                    raise
                return

    # ---- receiving --------------------------------------------------------------------------

    def _store(self, camera: str, topic: str, msg: Any) -> None:
        with self._lock:
            kept = self._outputs[(camera, topic)]
            kept[stamp_key(msg)] = msg
            while len(kept) > KEEP_PER_TOPIC:
                kept.popitem(last=False)
            self._lock.notify_all()
        if self._on_output:
            self._on_output(camera, topic, msg)

    def _class_map(self, camera: str, msg: PanopticClassMap) -> None:
        with self._lock:
            self.class_maps[camera].append(msg)
            self._lock.notify_all()

    def _timing(self, camera: str, msg: PanopticTiming) -> None:
        with self._lock:
            for stage, ms in timing_ms(msg).items():
                self.latencies[(camera, stage)].append(ms)
            self._lock.notify_all()

    def reset_latencies(self) -> None:
        """Forget the latency values received so far (start of a measured run)."""
        with self._lock:
            for values in self.latencies.values():
                values.clear()

    def _diagnostics(self, msg: DiagnosticArray) -> None:
        with self._lock:
            self.diagnostics.append(msg)
            del self.diagnostics[:-20]
            self._lock.notify_all()

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Wait until predicate() (evaluated under the lock, re-checked on every arrival) is truthy; its value.
        The predicate reads what was received; one that asks the node (a service call) goes to `wait_until`:
        under the lock its answer could not arrive (the spin thread would wait for the lock to store a message)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not (value := predicate()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
                self._lock.wait(min(remaining, 0.1))
            return value

    def wait_until(self, condition: Callable[[], Any], timeout: float, what: str, period: float = 0.05) -> Any:
        """Wait until condition() is truthy, asking it again every `period` seconds; its value. Evaluated without
        the lock, so a condition may query the node (get_parameters, lifecycle_state)."""
        deadline = time.monotonic() + timeout
        while not (value := condition()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(period)
        return value

    def outputs(self, camera: str, stamp: StampKey, topics: tuple[str, ...], timeout: float = 20.0) -> dict[str, Any]:
        """The outputs on `topics` for the frame with `stamp`, waiting until all have arrived."""
        def ready():
            found = {t: self._outputs[(camera, t)].get(stamp) for t in topics}
            return found if all(m is not None for m in found.values()) else None
        return self.wait_for(ready, timeout, f"{', '.join(topics)} of frame {stamp} on camera {camera or 'image'}")

    def camera_status(self, camera: str, predicate: Callable[[dict[str, str]], bool] = lambda v: True,
                      timeout: float = 20.0) -> dict[str, Any]:
        """Key/values of the newest /diagnostics status of `camera`, waiting until it satisfies `predicate`."""
        suffix = f": {camera or 'image'}"

        def find():
            for array in reversed(self.diagnostics):
                for status in array.status:
                    if status.hardware_id == self.node_fqn and status.name.endswith(suffix):
                        level = status.level if isinstance(status.level, int) else ord(status.level)
                        values = {**status_values(status), "level": level, "message": status.message}
                        return values if predicate(values) else None
            return None
        return self.wait_for(find, timeout, f"a matching /diagnostics status of camera {camera or 'image'}")

    # ---- sending ----------------------------------------------------------------------------

    def wait_for_node(self, timeout: float = 30.0) -> None:
        """Wait until the node's subscription and every output have matched, and its parameter services answer."""
        deadline = time.monotonic() + timeout

        def matched() -> bool:
            return (all(p.get_subscription_count() > 0 for p in self.publishers.values())
                    and all(s.get_publisher_count() > 0 for s in self.subscriptions))
        while not matched():
            if time.monotonic() > deadline:
                raise TimeoutError(f"panoptic_node did not appear within {timeout:.0f} s")
            time.sleep(0.05)
        for client in (self._set_client, self._get_client):
            if not client.wait_for_service(timeout_sec=max(0.1, deadline - time.monotonic())):
                raise TimeoutError(f"parameter service {client.service_name} did not appear within {timeout:.0f} s")

    def publish(self, camera: str, msg: Image | CompressedImage) -> None:
        self.publishers[camera].publish(msg)

    # ---- parameters -------------------------------------------------------------------------

    def set_parameters(self, values: dict[str, Any], timeout: float = QUERY_TIMEOUT) -> list[SetParametersResult]:
        """Set parameters of the node (one result per parameter, in order)."""
        request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()
                                                    for name, value in values.items()])
        return self._call(self._set_client, request, timeout).results

    def get_parameters(self, names: list[str], timeout: float = QUERY_TIMEOUT) -> dict[str, Any]:
        response = self._call(self._get_client, GetParameters.Request(names=names), timeout, resend=True)
        return {name: parameter_value_to_python(value) for name, value in zip(names, response.values, strict=True)}

    def describe_parameters(self, names: list[str], timeout: float = QUERY_TIMEOUT) -> dict[str, ParameterDescriptor]:
        """What `ros2 param describe` shows for each of `names`."""
        response = self._call(self._describe_client, DescribeParameters.Request(names=names), timeout, resend=True)
        return dict(zip(names, response.descriptors, strict=True))

    # ---- lifecycle --------------------------------------------------------------------------

    def lifecycle_state(self, timeout: float = QUERY_TIMEOUT) -> str:
        """The node's lifecycle state label: unconfigured, inactive, active or finalized."""
        self._wait_for_service(self._get_state_client, timeout)
        return self._call(self._get_state_client, GetState.Request(), timeout, resend=True).current_state.label

    def change_state(self, transition: str, timeout: float = 60.0) -> bool:
        """Ask for a lifecycle transition by label (configure, activate, deactivate, cleanup, shutdown); whether it
        succeeded. Configure and activate load the model, so they can take a while."""
        self._wait_for_service(self._change_state_client, timeout)
        request = ChangeState.Request(transition=Transition(label=transition))
        return self._call(self._change_state_client, request, timeout).success

    @staticmethod
    def _wait_for_service(client, timeout: float) -> None:
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {client.service_name} did not appear within {timeout:.0f} s")

    def _call(self, client, request, timeout: float, resend: bool = False):
        """The service's answer. A request sent just after discovery can be lost (the server may not
        yet know the client's reply reader); `resend`, for queries that change nothing, asks again
        every `resend_period` seconds until `timeout`."""
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        next_send = time.monotonic() + self.resend_period
        while not future.done():
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"no answer from {client.service_name} within {timeout:.0f} s")
            if resend and now > next_send:
                client.remove_pending_request(future)
                future = client.call_async(request)
                next_send = now + self.resend_period
            time.sleep(0.01)
        return future.result()

    def close(self) -> None:
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._spinner.join(timeout=5.0)


def _name(camera: str, topic: str) -> str:
    return f"{camera}/{topic}" if camera else topic

