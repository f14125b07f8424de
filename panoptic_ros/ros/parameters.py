"""Every parameter of panoptic_node in one table: type, default, range or choices, description,
whether it can change at runtime; and the validated settings snapshot the worker reads.

The table is the single source: the node declares from it, the set-parameters callback checks
against it, and the launch/config tests check that files name only parameters it declares.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from panoptic_ros.classes import DEFAULT_LABEL_DIVISOR
from panoptic_ros.fusion.reference.defaults import DEFAULT_SOURCES
from panoptic_ros.imaging import RESIZE_MODES
from panoptic_ros.pipeline_io import THRESHOLD_INPUTS, Thresholds
from panoptic_ros.runtime.choices import BACKENDS, MODEL_SUFFIXES, PRECISIONS
from panoptic_ros.runtime.model_thresholds import ThresholdsInForce, models_using

if TYPE_CHECKING:  # the table itself is plain data: eval-bag and replay read it without loading ROS
    from rcl_interfaces.msg import ParameterDescriptor

# Names of the QoS presets (ros.qos holds their profiles) and of the input QoS that follows the publishers.
QOS_PRESET_NAMES = ("SENSOR_DATA", "DEFAULT", "SYSTEM_DEFAULT")
AUTO_QOS = "auto"
INPUT_QOS_CHOICES = (AUTO_QOS, *QOS_PRESET_NAMES)

INPUT_TYPES = ("raw", "compressed")
# A change of any of these loads a new backend (in the background) and swaps it in.
MODEL_PARAMETERS = ("model", "backend", "engine_path", "device", "precision", "engine_cache_dir",
                    "allow_engine_build", "threads", "torch_input_height", "torch_input_width")


@dataclass(frozen=True)
class Unset:
    """The default of a parameter that has none (unset unless given): its rclpy Parameter.Type name."""

    type_name: str


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: Any  # a value, or Unset for a parameter with no default
    description: str
    read_only: bool = False  # fixed after start (e.g. it shapes subscriptions)
    bounds: tuple[float, float] | None = None  # inclusive numeric range
    choices: tuple[str, ...] | None = None  # allowed string values
    pattern: str | None = None  # regular expression a string value must match in full
    pattern_help: str = ""  # the pattern in words, for the refusal message
    unset: str = "unset"  # what a parameter with no default means while nobody sets it (README's table)

    def descriptor(self, constraints: str = "") -> ParameterDescriptor:
        """Its ParameterDescriptor; `constraints` (additional_constraints) says what the allowed values cannot."""
        from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

        descriptor = ParameterDescriptor(name=self.name, description=self.description, read_only=self.read_only,
                                         additional_constraints=constraints)
        if self.choices:
            descriptor.additional_constraints = f"one of: {', '.join(self.choices)}"
        if self.bounds is not None and (isinstance(self.default, float) or self.default == Unset("DOUBLE")):
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(self.bounds[0]),
                                                                  to_value=float(self.bounds[1]))]
        elif self.bounds is not None:
            descriptor.integer_range = [IntegerRange(from_value=int(self.bounds[0]), to_value=int(self.bounds[1]))]
        return descriptor


_THRESHOLD_HELP = {
    "score_threshold": "minimum instance / detection confidence",
    "center_threshold": "minimum center-heatmap peak",
    "nms_iou": "box NMS IoU",
    "mask_sigma": "RTPS: IoU x P_sem threshold; SPINet: mask probability",
    "overlap_threshold": "drop an instance whose overlap with the ones pasted before it exceeds this fraction",
    "min_stuff_area": "stuff segments smaller than this many model-input pixels become void",
}
# Fusion thresholds have no default of their own: unset, the loaded model's default applies (its file's
# metadata: its paper's value). ROS cannot tell a parameter set to its declared default from one left alone,
# so they are declared without a value; once a model is loaded the node sets the unset ones to the model's
# values (so `ros2 param get` shows what is in force) and they follow the model when it changes. A value
# from the command line, a params file or `ros2 param set` is an override and stays one.
THRESHOLDS_UNSET = "the model's"


def _threshold_description(name: str) -> str:
    used = models_using(name)
    unused = [model for model in DEFAULT_SOURCES if model not in used]
    return (f"{_THRESHOLD_HELP[name]}; used by {', '.join(used) or 'no model'}"
            + (f", not used by {', '.join(unused)}" if unused else "")
            + "; unset: the loaded model's default (from its file), set: an override")


PARAMETERS: tuple[ParameterSpec, ...] = (
    # Model and runtime (a change swaps the backend in the background).
    ParameterSpec("model", "", "shipped model name (models/<name>.onnx, or .pt for torch) or path to an .onnx, "
                  ".engine or .pt file"),
    ParameterSpec("backend", "onnxruntime", "inference runtime", choices=BACKENDS),
    ParameterSpec("engine_path", "", "tensorrt: a prebuilt .engine file to load instead of building/caching one "
                  "from the model's ONNX file"),
    ParameterSpec("device", "auto", "auto, cpu, cuda or cuda:N", pattern=r"auto|cpu|cuda(:\d+)?",
                  pattern_help="auto, cpu, cuda or cuda:N"),
    ParameterSpec("precision", "fp16", "tensorrt: engine precision when building from ONNX", choices=PRECISIONS),
    ParameterSpec("engine_cache_dir", "", "tensorrt: engine cache directory (empty: the backend's default)"),
    ParameterSpec("allow_engine_build", True, "tensorrt: build a missing or stale engine (minutes on a Jetson); "
                  "false refuses with a message saying how to build one"),
    ParameterSpec("threads", 0, "onnxruntime: intra-op threads (0: ONNX Runtime decides)", bounds=(0, 256)),
    ParameterSpec("torch_input_height", 0, "torch with a .pt checkpoint: input height in pixels", bounds=(0, 8192)),
    ParameterSpec("torch_input_width", 0, "torch with a .pt checkpoint: input width in pixels", bounds=(0, 8192)),
    # Fusion thresholds (graph inputs: they apply from the next frame, no rebuild).
    *(ParameterSpec(name, Unset("DOUBLE"), _threshold_description(name), bounds=Thresholds.RANGES[name],
                    unset=THRESHOLDS_UNSET) for name in THRESHOLD_INPUTS),
    ParameterSpec("label_divisor", DEFAULT_LABEL_DIVISOR, "panoptic id = class_id * label_divisor + instance; must "
                  "exceed the model's max instances", bounds=(1, 2**31 - 1)),
    # Outputs.
    ParameterSpec("publish_id_image", True, "publish panoptic/id_image (32SC1)"),
    ParameterSpec("publish_semantic", True, "publish panoptic/semantic (mono8 class ids, 255 void)"),
    ParameterSpec("publish_semantic_color", True, "publish panoptic/semantic_color (rgb8 class colors, for RViz; "
                  "computed only while subscribed)"),
    ParameterSpec("publish_overlay", True, "publish panoptic/overlay (rgb8; computed only while subscribed)"),
    ParameterSpec("publish_instances", True, "publish panoptic/instances (PanopticInstanceArray)"),
    ParameterSpec("publish_timing", True, "publish panoptic/timing (PanopticTiming: the frame's header, ms per "
                  "stage and end to end)"),
    ParameterSpec("overlay_alpha", 0.5, "weight of the class colors in panoptic/overlay", bounds=(0.0, 1.0)),
    # Tracking (tracking.tracker; both apply from the next frame).
    ParameterSpec("tracking", True, "give thing instances track ids that stay the same across frames "
                  "(PanopticInstance.track_id, panoptic/track_image, overlay colored by track); false: track_id 0"),
    ParameterSpec("track_max_age", 30, "frames a track may go unseen (occluded) and still keep its id",
                  bounds=(0, 100_000)),
    ParameterSpec("resize_mode", "stretch", "how a camera image fits the model input: stretch (fill, aspect "
                  "ratio changes) or letterbox (keep the aspect ratio, pad); outputs are at the camera's size",
                  choices=RESIZE_MODES),
    # Input and QoS (shape the subscriptions and publishers: fixed after start).
    ParameterSpec("input_type", "raw", "subscribe to image (sensor_msgs/Image) or image/compressed",
                  read_only=True, choices=INPUT_TYPES),
    ParameterSpec("input_qos", "auto", "QoS of the image and camera_info subscriptions: auto (reliable when the "
                  "publishers offer reliable, else best effort; re-decided as publishers change), SENSOR_DATA "
                  "(best effort), DEFAULT (reliable), SYSTEM_DEFAULT; each keeps only the newest message (keep "
                  "last 1: no backlog of old frames)",
                  read_only=True, choices=INPUT_QOS_CHOICES),
    ParameterSpec("output_qos", "DEFAULT", "QoS of the outputs (DEFAULT: reliable)", read_only=True,
                  choices=QOS_PRESET_NAMES),
    ParameterSpec("output_depth", 2, "history depth of the outputs: a reliable publisher keeps this many "
                  "images per topic for resending (memory: depth x image size)", read_only=True, bounds=(1, 100)),
    ParameterSpec("cameras", Unset("STRING_ARRAY"), "camera names; camera c reads c/image and publishes "
                  "c/panoptic/...; unset: one camera on image and panoptic/...", read_only=True),
    ParameterSpec("max_pixels", 4096 * 4096, "input images with more pixels are rejected", bounds=(1, 2**28)),
    ParameterSpec("diagnostics_period", 1.0, "seconds between /diagnostics messages", read_only=True,
                  bounds=(0.05, 60.0)),
    ParameterSpec("expected_rate", 0.0, "the cameras' frame rate in Hz: /diagnostics warns when the input runs "
                  "below 80% of it (0: no rate check)", read_only=True, bounds=(0.0, 1000.0)),
    ParameterSpec("autostart", True, "configure and activate at start (false: wait for a lifecycle manager, as "
                  "the launch file does)", read_only=True),
)
SPECS = {spec.name: spec for spec in PARAMETERS}
PARAMETER_NAMES = tuple(SPECS)


def declare_parameters(node) -> None:
    """Declare every parameter of the table on `node` (overrides from the command line or a params file apply)."""
    from rclpy.parameter import Parameter

    for spec in PARAMETERS:
        default = getattr(Parameter.Type, spec.default.type_name) if isinstance(spec.default, Unset) else spec.default
        constraints = UNLOADED_THRESHOLD if spec.name in THRESHOLD_INPUTS else ""
        node.declare_parameter(spec.name, default, spec.descriptor(constraints))


UNLOADED_THRESHOLD = "no model loaded yet: unset, the model's default will apply"
# After a deactivate: a threshold never set still shows the freed model's value.
FREED_THRESHOLD = "no model loaded: unless set, the next model's default will apply"


def threshold_descriptor(name: str, in_force: ThresholdsInForce | None) -> ParameterDescriptor:
    """`name`'s descriptor: with a model loaded (`in_force`), additional_constraints says whether the model
    uses it and where its value comes from; with none (None: freed), that the next model's default applies."""
    from rclpy.parameter import Parameter

    if in_force is None:
        state = FREED_THRESHOLD
    elif name in in_force.unused:
        state = f"not used by the loaded model {in_force.model}: setting it changes nothing for this model"
    else:
        state = f"in force for {in_force.model}: {getattr(in_force.thresholds, name):g} ({in_force.source(name)})"
    descriptor = SPECS[name].descriptor(state)
    descriptor.type = Parameter.Type.DOUBLE.value  # declare_parameter fills it in; a replacement must say it
    return descriptor


def check_value(name: str, value: Any) -> str | None:
    """Why `value` is not allowed for `name` (what the descriptor's type and range cannot express), or None."""
    spec = SPECS[name]
    if spec.choices and value not in spec.choices:
        return f"{name} must be one of {', '.join(spec.choices)}, got {value!r}"
    if spec.pattern and not re.fullmatch(spec.pattern, value):
        return f"{name} must be {spec.pattern_help}, got {value!r}"
    return None


@dataclass(frozen=True)
class ModelSettings:
    """What to load: one backend on one device with its options."""

    model: str
    backend: str
    engine_path: str
    device: str
    precision: str
    engine_cache_dir: str
    allow_engine_build: bool
    threads: int
    torch_input_height: int
    torch_input_width: int

    def model_file(self, models_dir: Path) -> Path:
        """The file the backend loads: the engine for tensorrt with engine_path, else the model (name or path)."""
        if self.backend == "tensorrt" and self.engine_path:
            return _existing_file(Path(self.engine_path).expanduser(), "engine_path")
        return find_model(self.model, self.backend, models_dir)

    def backend_options(self) -> dict[str, Any]:
        """Keyword options of create_backend for this backend."""
        if self.backend == "onnxruntime":
            return {"threads": self.threads}
        if self.backend == "torch":
            return ({"height": self.torch_input_height, "width": self.torch_input_width}
                    if self.torch_input_height and self.torch_input_width else {})
        options: dict[str, Any] = {"precision": self.precision, "allow_build": self.allow_engine_build}
        if self.engine_cache_dir:
            options["cache_dir"] = str(Path(self.engine_cache_dir).expanduser())
        return options


@dataclass(frozen=True)
class OutputSettings:
    """Which outputs to publish and how the overlay looks; the worker reads one snapshot per frame."""

    publish_id_image: bool
    publish_semantic: bool
    publish_semantic_color: bool
    publish_overlay: bool
    publish_instances: bool
    publish_timing: bool
    overlay_alpha: float
    tracking: bool
    track_max_age: int


def _existing_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file: {path}")
    return path


def default_models_dir() -> Path:
    """The shipped models: the checkout's models/ (source or editable install), else the installed share dir."""
    checkout = Path(__file__).resolve().parents[2] / "models"
    if checkout.is_dir():
        return checkout
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("panoptic_ros")) / "models"
    except (ImportError, LookupError):  # no ament index, or the package is not in it
        return checkout


def find_model(model: str, backend: str, models_dir: Path) -> Path:
    """`model` as a path if it names a file, else the shipped model `models_dir/<model><suffix of backend>`."""
    if not model:
        raise ValueError("parameter model is empty: give a shipped model name or a model file path")
    as_path = Path(model).expanduser()
    if as_path.is_file():
        return as_path
    if as_path.suffix or len(as_path.parts) > 1:
        raise FileNotFoundError(f"model: no such file: {as_path}")
    suffix = MODEL_SUFFIXES[backend][0]  # the form models/ ships
    shipped = models_dir / f"{model}{suffix}"
    if shipped.is_file():
        return shipped
    known = sorted(p.stem for p in models_dir.glob(f"*{suffix}")) if models_dir.is_dir() else []
    raise FileNotFoundError(f"model {model!r}: no file {shipped.name} in {models_dir}; shipped models for the "
                            f"{backend} backend: {', '.join(known) or 'none'}")


def _snapshot(cls, values: dict[str, Any]):
    return cls(**{f.name: values[f.name] for f in fields(cls)})


def model_settings(values: dict[str, Any]) -> ModelSettings:
    return _snapshot(ModelSettings, values)


def output_settings(values: dict[str, Any]) -> OutputSettings:
    return _snapshot(OutputSettings, values)



