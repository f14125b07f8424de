"""Build a TensorRT engine from an exported pipeline ONNX file.

Three things beyond the TensorRT builder defaults:
- the fusion stays FP32 in FP16/INT8 engines. The post-processing is every layer that no learned
  layer (convolution, deconvolution, matrix multiply with constant weights) depends on, plus
  everything downstream of a top-k/argmax selection: argmax, top-k, NMS, pixel counts (which
  overflow FP16 at 65504), id arithmetic. Those layers get FP32 precision and outputs, and the
  builder is told to obey;
- TensorRT 8.x converts uint8 only to and from float32/float16, so the graph is checked for other
  uint8 conversions before parsing, with a message that names the node;
- a timing cache (shared by all models of one TensorRT/GPU) and a progress display, because a first
  build on a Jetson takes minutes.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

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
    float_output: bool  # all outputs are float32/float16 (precision is meaningless otherwise)
    selects: bool = False  # top-k / argmax: picks candidates, everything after it is post-processing


def layers_to_keep_fp32(layers: Sequence[LayerFacts]) -> list[str]:
    """Names of the float, non-learned layers that are post-processing: those no learned layer
    depends on (after the heads), and those downstream of a top-k/argmax selection (boxes, NMS
    and masks that may feed a learned layer again, as FPSNet's attention masks do)."""
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
            if layer.float_output and not layer.learned and (i not in feeds_learned or i in after_selection)]


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


def tensorrt_layer_facts(network, trt) -> list[LayerFacts]:
    """LayerFacts of a parsed INetworkDefinition."""
    float_types = (trt.float32, trt.float16)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    constant_outputs = {layer.get_output(0).name for layer in layers if layer.type == trt.LayerType.CONSTANT}
    facts = []
    for layer in layers:
        inputs = tuple(t.name for t in (layer.get_input(j) for j in range(layer.num_inputs)) if t is not None)
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        learned = layer.type in (trt.LayerType.CONVOLUTION, trt.LayerType.DECONVOLUTION) or (
            layer.type == trt.LayerType.MATRIX_MULTIPLY and any(t in constant_outputs for t in inputs))
        settable = layer.type not in (trt.LayerType.CONSTANT, trt.LayerType.SHAPE)
        facts.append(LayerFacts(layer.name, inputs, tuple(t.name for t in outputs), learned,
                                settable and all(t.dtype in float_types for t in outputs),
                                selects=layer.type == trt.LayerType.TOPK))  # ONNX ArgMax/ArgMin become TopK
    return facts


def keep_fusion_fp32(network, config, trt) -> int:
    """Pin the post-processing layers to FP32; returns how many."""
    from panoptic_ros.runtime.backends.trt_api import precision_constraint_flag

    names = set(layers_to_keep_fp32(tensorrt_layer_facts(network, trt)))
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name in names:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
    config.set_flag(precision_constraint_flag(trt))
    return len(names)


# --- uint8 conversions TensorRT 8.x cannot do (checked on the ONNX graph) ---

def uint8_conversion_problems(model, tensorrt_major: int) -> list[str]:
    """Nodes that read or write uint8 other than as a Cast to or from float32/float16, for TensorRT 8.x.

    Before TensorRT 10, UINT8 exists only for network I/O, converted from/to float32 or float16
    ("uint8 conversions are not supported for {int8, int32, bool}", TensorRT 8.6 DataType docs);
    an int32 class map cast straight to uint8 fails the build with an obscure message. TensorRT
    10's ICastLayer converts between all its types, so there is nothing to check.
    """
    import onnx
    from onnx import TensorProto

    if tensorrt_major >= 10:
        return []
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    problems = []
    for node in graph.node:
        tensors = [t for t in (*node.input, *node.output) if t]
        if not any(types.get(t) == TensorProto.UINT8 for t in tensors):
            continue
        if node.op_type == "Cast" and (types.get(node.input[0]) in floats or types.get(node.output[0]) in floats):
            continue
        names = ", ".join(f"{t}: {TensorProto.DataType.Name(types[t]).lower()}" for t in tensors if t in types)
        problems.append(f"{node.op_type} node {node.name!r} ({names}): TensorRT {tensorrt_major} converts uint8 "
                        "only by a Cast from/to float32 or float16")
    return problems


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


# --- the build ---

def build_engine(onnx_path: str | Path, engine_path: str | Path, precision: str = "fp16", workspace_mb: int = 1024,
                 timing_cache: str | Path | None = None, calibrator=None, calibration: dict | None = None,
                 device_index: int = 0) -> Sidecar:
    """Build `onnx_path` into `engine_path` (+ sidecar) on CUDA device `device_index`.

    INT8 needs `calibrator` (calibration.make_calibrator); `calibration` describes it for the sidecar.
    """
    import onnx
    import torch

    from panoptic_ros.runtime.backends.model_info import io_differences, read_onnx_info
    from panoptic_ros.runtime.backends.trt_api import (
        deserialize,
        engine_io,
        gpu_identity,
        import_tensorrt,
        major_version,
        network_flags,
        set_workspace,
        tensorrt_logger,
    )

    check_precision(precision)
    if precision == "int8" and calibrator is None:
        raise ValueError("an int8 engine needs calibration images (--calib-images DIR or --calib-bag BAG)")
    trt = import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    info = read_onnx_info(onnx_path)
    problems = uint8_conversion_problems(onnx.load(str(onnx_path)), major_version(trt.__version__))
    if problems:
        raise ValueError(f"{onnx_path} cannot be built by TensorRT: " + "; ".join(problems))
    if not torch.cuda.is_available():
        raise RuntimeError("building a TensorRT engine needs a CUDA GPU; none is available")
    torch.cuda.init()
    with torch.cuda.device(device_index):
        logger = tensorrt_logger()
        builder = trt.Builder(logger)
        network = builder.create_network(network_flags(trt))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ValueError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
        config = builder.create_builder_config()
        set_workspace(config, trt, workspace_mb)
        kept = 0
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)  # INT8 layers fall back to FP16 rather than FP32
            kept = keep_fusion_fp32(network, config, trt)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = calibrator
        _load_timing_cache(config, timing_cache)
        progress = BuildProgress(f"building {engine_path.name} ({precision})")
        monitor = tensorrt_progress_monitor(trt, progress)
        if monitor is not None:
            config.progress_monitor = monitor
        start = time.monotonic()
        with ProgressPrinter(progress):
            serialized = builder.build_serialized_network(network, config)
        seconds = time.monotonic() - start
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build {onnx_path} (see the TensorRT log above)")
        if timing_cache is not None:
            _save_timing_cache(config, Path(timing_cache))
        engine_bytes = bytes(serialized)
        engine = deserialize(trt.Runtime(logger), engine_bytes, f"the engine just built from {onnx_path}")
        inputs, outputs = engine_io(engine)
        mismatch = io_differences(info.inputs, inputs) + io_differences(info.outputs, outputs)
        if mismatch:
            raise RuntimeError(f"the engine built from {onnx_path} has other I/O than the ONNX: {'; '.join(mismatch)}")
        gpu_name, capability = gpu_identity(device_index)
    key = EngineKey(file_sha256(onnx_path), trt.__version__, gpu_name, capability, precision)
    sidecar = Sidecar(key, hashlib.sha256(engine_bytes).hexdigest(), info, build={
        "onnx_path": str(onnx_path.resolve()), "workspace_mb": workspace_mb, "fp32_layers": kept,
        "build_seconds": round(seconds, 1), "calibration": calibration})
    write_engine(engine_path, engine_bytes, sidecar)
    log.info("built %s in %.0f s (%d post-processing layers kept FP32)", engine_path, seconds, kept)
    return sidecar


def _load_timing_cache(config, path: str | Path | None) -> None:
    """Attach the timing cache at `path` (empty when new or unusable) to the builder config."""
    if path is None:
        return
    path = Path(path)
    data = path.read_bytes() if path.is_file() else b""
    if not config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False):
        log.warning("timing cache %s does not fit this TensorRT/GPU; starting a new one", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _save_timing_cache(config, path: Path) -> None:
    updated = config.get_timing_cache()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(updated.serialize()))
