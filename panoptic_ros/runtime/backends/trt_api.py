"""The TensorRT Python API across the libraries and versions we support: TensorRT 8.5/8.6
(JetPack 5.1/6.0), 10.x (JetPack 6.1+), 11, and TensorRT for RTX (`tensorrt_rtx_bindings`).

Feature tests, never version numbers, pick every path:
- the tensor-name API (num_io_tensors, execute_async_v3; TensorRT >= 8.5) or the binding-index
  API (num_bindings, execute_async_v2; gone in 10.0);
- EXPLICIT_BATCH where the creation flag still exists (8.x needs it; 10.x ignores it; 11 and RTX
  have no such flag);
- weak typing (BuilderFlag.FP16, per-layer precision; deprecated in 10.12, removed in 11 and
  RTX) or strong typing (NetworkDefinitionCreationFlag.STRONGLY_TYPED; 10.x, 11, RTX);
- INT8 calibrators (IInt8EntropyCalibrator2; 8.x-10.x, removed in 11 and RTX).
The facts that do not need the library (dtype names, GPU identity) are plain functions.
"""

from __future__ import annotations

import importlib
from functools import cache
from types import ModuleType

from panoptic_ros.runtime.backends.model_info import TensorSpec

# The Python modules of TensorRT-family libraries, in the order they are tried.
TENSORRT_MODULES = ("tensorrt", "tensorrt_rtx_bindings")
# TensorRT DataType member names -> NumPy dtype names, for the types a pipeline's I/O can have.
TRT_TO_NUMPY = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "INT64": "int64",
                "BOOL": "bool", "UINT8": "uint8"}


def import_tensorrt(module: str | None = None) -> ModuleType:
    """The TensorRT module named `module`, else the first of TENSORRT_MODULES installed; a
    RuntimeError that says where they come from when none is."""
    if module is not None and module not in TENSORRT_MODULES:
        raise ValueError(f"unknown TensorRT module {module!r}; valid: {', '.join(TENSORRT_MODULES)}")
    for name in (module,) if module else TENSORRT_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise RuntimeError(f"TensorRT is not installed ({module or ' or '.join(TENSORRT_MODULES)}): on a Jetson it "
                       "comes with JetPack (the python3-libnvinfer package); elsewhere `pip install tensorrt`, or "
                       "TensorRT for RTX (tensorrt-rtx-cu12-bindings)") from None


@cache
def tensorrt_logger(trt: ModuleType):
    """One logger per TensorRT module for every builder and runtime (TensorRT warns when they differ)."""
    return trt.Logger(trt.Logger.WARNING)


def has_weak_typing(trt: ModuleType) -> bool:
    """Whether the builder takes precision flags and per-layer precisions (TensorRT <= 10.x)."""
    return hasattr(trt.BuilderFlag, "FP16")


def has_strong_typing(trt: ModuleType) -> bool:
    """Whether networks can be strongly typed (tensor types from the ONNX file decide precision)."""
    return hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


def has_int8_calibrators(trt: ModuleType) -> bool:
    return hasattr(trt, "IInt8EntropyCalibrator2") and hasattr(trt.BuilderFlag, "INT8")


def numpy_dtype(trt_dtype_name: str) -> str:
    """NumPy dtype name of a TensorRT DataType member name ('FLOAT' -> 'float32')."""
    try:
        return TRT_TO_NUMPY[trt_dtype_name]
    except KeyError:
        raise ValueError(f"TensorRT data type {trt_dtype_name} has no NumPy equivalent for pipeline I/O") from None


def compute_capability(major: int, minor: int) -> str:
    return f"{major}.{minor}"


def gpu_identity(device_index: int) -> tuple[str, str]:
    """(GPU name, compute capability) of a CUDA device, as torch reports them."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT engines need a CUDA GPU, and torch sees none (on a Jetson, install "
                           "NVIDIA's torch wheel for JetPack, not the PyPI CPU build)")
    return (torch.cuda.get_device_name(device_index),
            compute_capability(*torch.cuda.get_device_capability(device_index)))


def engine_io(engine, trt: ModuleType) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of a deserialized ICudaEngine, by either API."""
    inputs, outputs = [], []
    if hasattr(engine, "num_io_tensors"):  # TensorRT >= 8.5
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = numpy_dtype(engine.get_tensor_dtype(name).name)
            spec = TensorSpec(name, tuple(engine.get_tensor_shape(name)), dtype)
            (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
    else:
        for i in range(engine.num_bindings):
            name = engine.get_binding_name(i)
            spec = TensorSpec(name, tuple(engine.get_binding_shape(i)), numpy_dtype(engine.get_binding_dtype(i).name))
            (inputs if engine.binding_is_input(i) else outputs).append(spec)
    return tuple(inputs), tuple(outputs)


def network_io(network, trt: ModuleType) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of a parsed INetworkDefinition (no GPU needed)."""
    def spec(tensor) -> TensorSpec:
        return TensorSpec(tensor.name, tuple(tensor.shape), numpy_dtype(tensor.dtype.name))

    return (tuple(spec(network.get_input(i)) for i in range(network.num_inputs)),
            tuple(spec(network.get_output(i)) for i in range(network.num_outputs)))


def network_flags(trt: ModuleType, strongly_typed: bool) -> int:
    """create_network flags: EXPLICIT_BATCH where the flag exists (required by 8.x, ignored by 10.x),
    STRONGLY_TYPED when asked (the caller checks has_strong_typing)."""
    flags = trt.NetworkDefinitionCreationFlag
    value = 1 << int(flags.EXPLICIT_BATCH) if hasattr(flags, "EXPLICIT_BATCH") and not strongly_typed else 0
    if strongly_typed:
        value |= 1 << int(flags.STRONGLY_TYPED)
    return value


def set_workspace(config, trt: ModuleType, workspace_mb: int) -> None:
    if hasattr(config, "set_memory_pool_limit"):  # TensorRT >= 8.4
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    else:
        config.max_workspace_size = int(workspace_mb) << 20


def precision_constraint_flag(trt: ModuleType):
    """The builder flag that makes per-layer precisions binding (STRICT_TYPES before 8.2)."""
    flags = trt.BuilderFlag
    return flags.OBEY_PRECISION_CONSTRAINTS if hasattr(flags, "OBEY_PRECISION_CONSTRAINTS") else flags.STRICT_TYPES


def deserialize(runtime, engine_bytes: bytes, source: str):
    """An ICudaEngine from bytes; TensorRT returns None (and logs why) for corrupt or foreign engines."""
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise ValueError(f"TensorRT could not deserialize {source}: the file is corrupt or was built by another "
                         "TensorRT version or GPU (see the TensorRT log above)")
    return engine
