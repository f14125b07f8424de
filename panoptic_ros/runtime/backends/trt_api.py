"""The TensorRT Python API across the versions we support: 8.6 (JetPack 5) and 10.x (JetPack 6).

TensorRT 8.5 introduced the tensor-name API (num_io_tensors, get_tensor_name, set_tensor_address,
execute_async_v3) and 10.0 removed the binding-index API (num_bindings, get_binding_name,
execute_async_v2). Feature tests (not version numbers) pick the path, so a JetPack 4 TensorRT 8.2
still loads engines through bindings. The facts that do not need the library (dtype names,
versions, GPU identity) are plain functions, tested without TensorRT.
"""

from __future__ import annotations

from functools import cache
from types import ModuleType

from panoptic_ros.runtime.backends.model_info import TensorSpec

# TensorRT DataType member names -> NumPy dtype names, for the types a pipeline's I/O can have.
TRT_TO_NUMPY = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "INT64": "int64",
                "BOOL": "bool", "UINT8": "uint8"}


def import_tensorrt() -> ModuleType:
    """The tensorrt module, or a RuntimeError that says where it comes from."""
    try:
        import tensorrt
    except ImportError:
        raise RuntimeError("TensorRT is not installed: on a Jetson it comes with JetPack (the python3-libnvinfer "
                           "package); elsewhere `pip install tensorrt` on a machine with an NVIDIA GPU") from None
    return tensorrt


@cache
def tensorrt_logger():
    """One logger for every builder and runtime (TensorRT warns when they differ)."""
    trt = import_tensorrt()
    return trt.Logger(trt.Logger.WARNING)


def numpy_dtype(trt_dtype_name: str) -> str:
    """NumPy dtype name of a TensorRT DataType member name ('FLOAT' -> 'float32')."""
    try:
        return TRT_TO_NUMPY[trt_dtype_name]
    except KeyError:
        raise ValueError(f"TensorRT data type {trt_dtype_name} has no NumPy equivalent for pipeline I/O") from None


def major_version(version: str) -> int:
    """'8.6.1.6' -> 8."""
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise ValueError(f"not a TensorRT version: {version!r}") from None


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


def engine_io(engine) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of a deserialized ICudaEngine, by either API."""
    import tensorrt as trt

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


def network_flags(trt: ModuleType) -> int:
    """create_network flags: explicit batch before TensorRT 10 (where it is the only mode and the flag is gone)."""
    if major_version(trt.__version__) >= 10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


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
