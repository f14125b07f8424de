"""Build a TensorRT engine from an exported pipeline ONNX file: parse, configure, build, check, write.

Beyond the TensorRT builder defaults:
- precision. A mixed-precision ONNX (`panoptic-ros export --precision fp16`: network in FP16,
  fusion and every index/score path in FP32) is built as a strongly typed network where the
  TensorRT has strong typing (10.x, 11, TensorRT for RTX): the file's types are the engine's.
  Otherwise (8.x, or an FP32 ONNX on 10.x) FP16/INT8 come from builder flags, and the fusion is
  pinned to FP32 (below). Without weak typing (11, RTX) and without a mixed-precision ONNX there
  is no way to get FP16, and the error says how to export one;
- FP32 pinning (weak typing only). The post-processing is every layer that no learned layer
  (convolution, deconvolution, matrix multiply with constant weights) depends on, plus everything
  downstream of a top-k/argmax selection: argmax, top-k, NMS, pixel counts (which overflow FP16
  at 65504), id arithmetic. Those layers get FP32 precision and FP32 float outputs (an index
  output keeps its integer type), and the builder is told to obey. Layers inside a loop (CumSum
  becomes one in parsers before TensorRT 10.8) take no precision and are left alone;
- when TensorRT refuses the file, the per-release audit (onnx_audit) names likely causes;
- a check of the parsed network's I/O against the ONNX contract (no GPU needed), and of the
  deserialized engine's I/O where a GPU is present;
- a timing cache (shared by all models of one TensorRT/GPU, written atomically) and a progress
  display, because a first build on a Jetson takes minutes.

Every API difference between TensorRT versions is decided by a feature test (backends.trt_api).
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TextIO

from panoptic_ros.runtime.atomic_files import atomic_write
from panoptic_ros.runtime.engine_cache import EngineKey, Sidecar, check_precision, file_sha256, write_engine

log = logging.getLogger(__name__)


# --- which layers keep FP32 (plain graph logic, tested on the ONNX graph without TensorRT) ---

@dataclass(frozen=True)
class LayerFacts:
    """A layer as the FP32 rule sees it."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    learned: bool  # convolution / deconvolution / matmul with constant weights
    float_outputs: tuple[bool, ...]  # per output: float32/float16 (TopK: values yes, indices no)
    settable: bool = True  # takes a precision (not a constant, a shape, or a layer inside a loop)
    selects: bool = False  # top-k / argmax: picks candidates, everything after it is post-processing


# Layers (ONNX nodes, and the TensorRT layers the parser names after them) of the fusion module.
FUSION_SCOPE = "/fusion/"


def is_learned(name: str, convolution: bool, constant_matmul: bool) -> bool:
    """Convolutions are learned layers wherever they are (FPSNet's panoptic head runs inside the
    fusion's scope); a matrix multiply by a constant is one only outside the fusion's scope: the
    fusion multiplies by constant 0/1 matrices (per-cell sums), arithmetic on counts and scores."""
    return convolution or (constant_matmul and not name.startswith(FUSION_SCOPE))


def layers_to_keep_fp32(layers: Sequence[LayerFacts]) -> list[str]:
    """Names of the settable, non-learned layers with a float output that are post-processing:
    those no learned layer depends on (after the heads), and those downstream of a top-k/argmax
    selection (boxes, NMS and masks that may feed a learned layer again, as FPSNet's attention
    masks do). The selections themselves are included: an FP16 ArgMin over distances may pick
    another candidate."""
    producer = {out: i for i, layer in enumerate(layers) for out in layer.outputs}
    consumers: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        for tensor in layer.inputs:
            consumers.setdefault(tensor, []).append(i)
    feeds_learned = _reach([i for i, layer in enumerate(layers) if layer.learned],
                           lambda i: (producer[t] for t in layers[i].inputs if t in producer))
    after_selection = _reach([i for i, layer in enumerate(layers) if layer.selects],
                             lambda i: (c for t in layers[i].outputs for c in consumers.get(t, ())))
    return [layer.name for i, layer in enumerate(layers)
            if layer.settable and any(layer.float_outputs) and not layer.learned
            and (i not in feeds_learned or i in after_selection)]


def _reach(start: list[int], neighbours) -> set[int]:
    """Every node reachable from `start` (included) through `neighbours(node)`."""
    seen: set[int] = set()
    stack = list(start)
    while stack:
        i = stack.pop()
        if i not in seen:
            seen.add(i)
            stack.extend(neighbours(i))
    return seen


def tensorrt_layer_facts(network, trt: ModuleType) -> list[LayerFacts]:
    """LayerFacts of a parsed INetworkDefinition."""
    float_types = (trt.float32, trt.float16)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    types = trt.LayerType
    constant_outputs = {layer.get_output(0).name for layer in layers if layer.type == types.CONSTANT}
    in_loop = _loop_layers(layers, trt)
    facts = []
    for index, layer in enumerate(layers):
        inputs = tuple(t.name for t in (layer.get_input(j) for j in range(layer.num_inputs)) if t is not None)
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        learned = is_learned(layer.name, layer.type in (types.CONVOLUTION, types.DECONVOLUTION),
                             layer.type == types.MATRIX_MULTIPLY and any(t in constant_outputs for t in inputs))
        settable = layer.type not in (types.CONSTANT, types.SHAPE) and index not in in_loop
        facts.append(LayerFacts(layer.name, inputs, tuple(t.name for t in outputs), learned,
                                tuple(t.dtype in float_types for t in outputs), settable,
                                selects=layer.type == types.TOPK))  # ONNX ArgMax/ArgMin become TopK
    return facts


def _loop_layers(layers: list, trt: ModuleType) -> set[int]:
    """Indices of the layers of loop bodies: reachable from a loop's recurrence, iterator or trip
    limit without passing its loop-output layer (TensorRT refuses precisions there)."""
    types = trt.LayerType
    starts = {getattr(types, name) for name in ("RECURRENCE", "ITERATOR", "TRIP_LIMIT") if hasattr(types, name)}
    ends = {getattr(types, name) for name in ("LOOP_OUTPUT",) if hasattr(types, name)}
    consumers: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        for j in range(layer.num_inputs):
            tensor = layer.get_input(j)
            if tensor is not None:
                consumers.setdefault(tensor.name, []).append(i)
    boundary = {i for i, layer in enumerate(layers) if layer.type in starts | ends}
    inside = _reach([i for i in boundary if layers[i].type in starts],
                    lambda i: () if layers[i].type in ends else
                    (c for j in range(layers[i].num_outputs) for c in consumers.get(layers[i].get_output(j).name, ())))
    return inside | boundary


def keep_fusion_fp32(network, config, trt: ModuleType) -> int:
    """Pin the post-processing layers to FP32 (weak typing only); returns how many."""
    from panoptic_ros.runtime.backends.trt_api import precision_constraint_flag

    names = set(layers_to_keep_fp32(tensorrt_layer_facts(network, trt)))
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name in names:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                if layer.get_output(j).dtype in (trt.float32, trt.float16):  # an index output keeps its type
                    layer.set_output_type(j, trt.float32)
    config.set_flag(precision_constraint_flag(trt))
    return len(names)


# --- progress display ---

class BuildProgress:
    """The text of a one-line progress display: elapsed time and the open builder phases with their steps."""

    def __init__(self, title: str, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.title = title
        self.clock = clock  # integer nanoseconds: whole seconds of elapsed time never round down by float error
        self.start_ns = clock()
        self.phases: dict[str, list[int]] = {}  # name -> [step, num_steps], in start order
        self._lock = threading.Lock()  # TensorRT reports from several threads

    def phase_start(self, name: str, num_steps: int) -> None:
        with self._lock:
            self.phases[name] = [0, num_steps]

    def step_complete(self, name: str, step: int) -> None:
        with self._lock:
            if name in self.phases:
                self.phases[name][0] = step + 1

    def phase_finish(self, name: str) -> None:
        with self._lock:
            self.phases.pop(name, None)

    def line(self) -> str:
        elapsed = (self.clock() - self.start_ns) // 1_000_000_000
        with self._lock:
            phases = " > ".join(f"{name} {step}/{total}" for name, (step, total) in self.phases.items())
        return f"{self.title} [{elapsed // 60:d}:{elapsed % 60:02d}]" + (f" {phases}" if phases else "")


class ProgressPrinter:
    """Shows a BuildProgress from a thread until stopped: one redrawn line on a terminal, a line
    every `log_interval` seconds elsewhere (a log file or a launch console)."""

    def __init__(self, progress: BuildProgress, stream: TextIO = sys.stderr, log_interval: float = 30.0) -> None:
        self.progress, self.stream = progress, stream
        self.tty = stream.isatty()
        self.interval = 1.0 if self.tty else log_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._draw()

    def _draw(self, last: bool = False) -> None:
        line = self.progress.line()
        if self.tty:
            line = f"\r{line[:150]:<150}" + ("\n" if last else "")
        else:
            line += "\n"
        self.stream.write(line)
        self.stream.flush()

    def __enter__(self) -> ProgressPrinter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._draw(last=True)


def tensorrt_progress_monitor(trt, progress: BuildProgress):
    """A trt.IProgressMonitor (TensorRT >= 10) feeding `progress`; None where the API is missing."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            progress.phase_start(phase_name, num_steps)

        def step_complete(self, phase_name, step):
            progress.step_complete(phase_name, step)
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            progress.phase_finish(phase_name)

    return Monitor()


# --- the build: parse, configure, build, check, write ---

@dataclass(frozen=True)
class PrecisionPlan:
    """How the requested precision is obtained from this TensorRT and this ONNX file."""

    strongly_typed: bool  # the ONNX file's tensor types decide (mixed-precision export)
    fp16_flag: bool  # weak typing: the builder may choose FP16 (and INT8) kernels
    int8: bool
    pin_fusion: bool  # weak typing with reduced precision: keep the post-processing FP32


def plan_precision(precision: str, trt: ModuleType, mixed_precision_onnx: bool) -> PrecisionPlan:
    """The build plan for `precision`, or a ValueError that says what to do instead."""
    from panoptic_ros.runtime.backends.trt_api import has_int8_calibrators, has_strong_typing, has_weak_typing

    check_precision(precision)
    library = f"{trt.__name__} {trt.__version__}"
    weak, strong = has_weak_typing(trt), has_strong_typing(trt)
    if mixed_precision_onnx and precision == "fp32":
        raise ValueError("this ONNX file is a mixed-precision (fp16) export: build it with --precision fp16, or "
                         "export again without --precision for an fp32 engine")
    if precision == "int8":
        if not (weak and has_int8_calibrators(trt)):
            raise ValueError(f"{library} has no INT8 calibration (TensorRT 11 and TensorRT for RTX removed it; "
                             "calibrated INT8 needs TensorRT 8.5 to 10.x): build fp16 instead")
        return PrecisionPlan(strongly_typed=False, fp16_flag=True, int8=True, pin_fusion=True)
    if mixed_precision_onnx and strong:
        return PrecisionPlan(strongly_typed=True, fp16_flag=False, int8=False, pin_fusion=False)
    if precision == "fp16":
        if not weak:
            raise ValueError(f"{library} has no weak typing (no BuilderFlag.FP16): an fp16 engine needs a "
                             "mixed-precision ONNX file; export one with `panoptic-ros export ... --precision fp16` "
                             "and build that")
        return PrecisionPlan(strongly_typed=False, fp16_flag=True, int8=False, pin_fusion=True)
    # fp32: weak typing's default, or a strongly typed network of the FP32 file where typing is only strong
    return PrecisionPlan(strongly_typed=strong and not weak, fp16_flag=False, int8=False, pin_fusion=False)


def onnx_is_mixed_precision(model) -> bool:
    """Whether an ONNX model carries FP16 tensors (a `--precision fp16` export)."""
    from onnx import TensorProto

    graph = model.graph
    return (any(t.data_type == TensorProto.FLOAT16 for t in graph.initializer)
            or any(v.type.tensor_type.elem_type == TensorProto.FLOAT16 for v in graph.value_info)
            or any(a.name == "to" and a.i == TensorProto.FLOAT16 for n in graph.node if n.op_type == "Cast"
                   for a in n.attribute))


@dataclass
class ParsedNetwork:
    builder: object
    network: object
    parser: object  # kept alive: the network refers to the parser's weights


def parse(onnx_path: Path, trt: ModuleType, strongly_typed: bool, explain: Callable[[], list[str]]) -> ParsedNetwork:
    """The ONNX file parsed into a TensorRT network; ValueError with the parser's errors (and
    `explain()`'s likely causes) when it refuses."""
    from panoptic_ros.runtime.backends.trt_api import network_flags, tensorrt_logger

    logger = tensorrt_logger(trt)
    builder = trt.Builder(logger)
    if builder is None:
        raise RuntimeError(f"{trt.__name__} could not create a builder (no usable CUDA GPU or driver?)")
    network = builder.create_network(network_flags(trt, strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ValueError(f"{trt.__name__} {trt.__version__}'s ONNX parser rejected {onnx_path}: "
                         + "; ".join(errors + explain()))
    return ParsedNetwork(builder, network, parser)


def check_network_io(parsed: ParsedNetwork, info, trt: ModuleType, onnx_path: Path) -> None:
    """The parsed network must have the ONNX file's contract I/O (names, shapes, dtypes)."""
    from panoptic_ros.runtime.backends.model_info import io_differences
    from panoptic_ros.runtime.backends.trt_api import network_io

    inputs, outputs = network_io(parsed.network, trt)
    mismatch = io_differences(info.inputs, inputs) + io_differences(info.outputs, outputs)
    if mismatch:
        raise RuntimeError(f"TensorRT parsed {onnx_path} with other I/O than the ONNX: {'; '.join(mismatch)}")


def configure(parsed: ParsedNetwork, trt: ModuleType, plan: PrecisionPlan, workspace_mb: int,
              timing_cache: Path | None, calibrator) -> tuple[object, int]:
    """The builder config for `plan`; returns (config, number of layers pinned to FP32)."""
    from panoptic_ros.runtime.backends.trt_api import set_workspace

    config = parsed.builder.create_builder_config()
    set_workspace(config, trt, workspace_mb)
    pinned = 0
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)  # INT8 layers fall back to FP16 rather than FP32
    if plan.pin_fusion:
        pinned = keep_fusion_fp32(parsed.network, config, trt)
    if plan.int8:
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
    if timing_cache is not None:
        _load_timing_cache(config, timing_cache)
    return config, pinned


def build_serialized(parsed: ParsedNetwork, config, trt: ModuleType, title: str, explain: Callable[[], list[str]]):
    """Run the builder with a progress display; (engine bytes, seconds)."""
    progress = BuildProgress(title)
    monitor = tensorrt_progress_monitor(trt, progress)
    if monitor is not None:
        config.progress_monitor = monitor
    start = time.monotonic()
    with ProgressPrinter(progress):
        serialized = parsed.builder.build_serialized_network(parsed.network, config)
    seconds = time.monotonic() - start
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {title} (see the TensorRT log above)"
                           + "".join(f"; {cause}" for cause in explain()))
    return bytes(serialized), seconds


def check_engine_io(engine_bytes: bytes, info, trt: ModuleType, onnx_path: Path) -> bool:
    """Deserialize the new engine and compare its I/O with the ONNX's, where a GPU can load it;
    returns whether it was checked (TensorRT for RTX builds on machines without one)."""
    import torch

    from panoptic_ros.runtime.backends.model_info import io_differences
    from panoptic_ros.runtime.backends.trt_api import deserialize, engine_io, tensorrt_logger

    if not torch.cuda.is_available():
        return False
    engine = deserialize(trt.Runtime(tensorrt_logger(trt)), engine_bytes, f"the engine just built from {onnx_path}")
    inputs, outputs = engine_io(engine, trt)
    mismatch = io_differences(info.inputs, inputs) + io_differences(info.outputs, outputs)
    if mismatch:
        raise RuntimeError(f"the engine built from {onnx_path} has other I/O than the ONNX: {'; '.join(mismatch)}")
    return True


def build_engine(onnx_path: str | Path, engine_path: str | Path, precision: str = "fp16", workspace_mb: int = 1024,
                 timing_cache: str | Path | None = None, calibrator=None, calibration: dict | None = None,
                 device_index: int = 0, trt: ModuleType | None = None,
                 gpu: tuple[str, str] | None = None) -> Sidecar:
    """Build `onnx_path` into `engine_path` (+ sidecar) on CUDA device `device_index`.

    `trt` is the TensorRT module (default: the installed one, see trt_api.import_tensorrt); `gpu`
    the (name, compute capability) the engine is for (default: the device's, which needs CUDA).
    INT8 needs `calibrator` (calibration.make_calibrator); `calibration` describes it for the
    sidecar. A calibrator's stored error (an unreadable frame) is raised after the build.
    """
    import onnx
    import torch

    from panoptic_ros.runtime.backends.model_info import read_onnx_info
    from panoptic_ros.runtime.backends.trt_api import gpu_identity, import_tensorrt
    from panoptic_ros.runtime.onnx_audit import audit_model

    check_precision(precision)
    if precision == "int8" and calibrator is None:
        raise ValueError("an int8 engine needs calibration images (--calib-images DIR or --calib-bag BAG)")
    trt = trt or import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    info = read_onnx_info(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    plan = plan_precision(precision, trt, onnx_is_mixed_precision(model))
    gpu_name, capability = gpu or gpu_identity(device_index)

    def explain() -> list[str]:  # likely causes from the per-release parser tables, named only when TensorRT fails
        problems = audit_model(model)
        more = [f"... {len(problems) - 10} more"] if len(problems) > 10 else []
        return [f"audit: {p}" for p in problems[:10]] + more

    cuda = torch.cuda.device(device_index) if torch.cuda.is_available() else nullcontext()
    with cuda:  # TensorRT works on the current device
        parsed = parse(onnx_path, trt, plan.strongly_typed, explain)
        check_network_io(parsed, info, trt, onnx_path)
        config, pinned = configure(parsed, trt, plan, workspace_mb, Path(timing_cache) if timing_cache else None,
                                   calibrator)
        engine_bytes, seconds = build_serialized(parsed, config, trt, f"{engine_path.name} ({precision})", explain)
        if calibrator is not None:
            calibrator.raise_stored_error()
        if timing_cache is not None:
            atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
        engine_checked = check_engine_io(engine_bytes, info, trt, onnx_path)
    key = EngineKey(file_sha256(onnx_path), trt.__name__, trt.__version__, gpu_name, capability, precision)
    sidecar = Sidecar(key, hashlib.sha256(engine_bytes).hexdigest(), info, build={
        "onnx_path": str(onnx_path.resolve()), "workspace_mb": workspace_mb, "strongly_typed": plan.strongly_typed,
        "fp32_layers": pinned, "engine_io_checked": engine_checked, "build_seconds": round(seconds, 1),
        "calibration": calibration})
    write_engine(engine_path, engine_bytes, sidecar)
    log.info("built %s in %.0f s (%s)", engine_path, seconds,
             "strongly typed" if plan.strongly_typed else f"{pinned} post-processing layers kept FP32")
    return sidecar


def _load_timing_cache(config, path: Path) -> None:
    """Attach the timing cache at `path` (empty when new, unreadable or unusable) to the builder config."""
    try:
        data = path.read_bytes()
    except OSError:  # missing or unreadable: start a new one (it is only a speed-up)
        data = b""
    if not config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False):
        log.warning("timing cache %s does not fit this TensorRT/GPU; starting a new one", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
