"""TensorRT: the production path on the Jetson. One engine, one execution context, one stream.

The model is either an .engine built by `panoptic-ros build-engine` (used as is, after checking
its sidecar against the running TensorRT and GPU) or an .onnx file, whose engine comes from the
engine cache (built there on first use, or refused when building is disabled).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from panoptic_ros.pipeline_io import PanopticResult, Thresholds
from panoptic_ros.runtime.backends.base import Backend, resolve_device
from panoptic_ros.runtime.backends.cuda_io import CudaFrameIO, allocate
from panoptic_ros.runtime.backends.model_info import io_differences
from panoptic_ros.runtime.backends.trt_api import (
    deserialize,
    engine_io,
    gpu_identity,
    import_tensorrt,
    tensorrt_logger,
)
from panoptic_ros.runtime.choices import PRECISIONS


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, model_path: str | Path, device: str = "auto", precision: str = "fp16",
                 cache_dir: str | Path | None = None, allow_build: bool = True, workspace_mb: int = 1024,
                 tensorrt_module: str | None = None) -> None:
        """`precision`, `cache_dir`, `allow_build` and `workspace_mb` apply to an .onnx model (the cache);
        `tensorrt_module` picks the library (default: the first installed, see trt_api.TENSORRT_MODULES)."""
        import torch

        from panoptic_ros.runtime import engine_cache
        from panoptic_ros.runtime.engine_builder import build_engine

        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        self._trt = trt = import_tensorrt(tensorrt_module)
        resolved = resolve_device(device, torch.cuda.is_available())
        if resolved == "cpu":
            raise ValueError("the tensorrt backend runs on a CUDA device, not 'cpu'")
        device_index = torch.device(resolved).index
        torch.cuda.init()  # torch creates the CUDA context TensorRT then shares
        model_path = Path(model_path)
        self._runtime = trt.Runtime(tensorrt_logger(trt))
        with torch.cuda.device(device_index):  # TensorRT works on the current device
            if model_path.suffix == ".onnx":
                key = engine_cache.running_key(engine_cache.file_sha256(model_path), precision, device_index, trt)

                def build(engine_path: Path, timing_cache: Path) -> None:
                    build_engine(model_path, engine_path, precision, workspace_mb=workspace_mb,
                                 timing_cache=timing_cache, device_index=device_index, trt=trt)

                engine_path, sidecar, self._engine = engine_cache.load_or_build(
                    model_path, key, self._load, build if allow_build else None, cache_dir=cache_dir)
            else:
                entry = engine_cache.check_prebuilt_engine(model_path, lambda built: engine_cache.running_key(
                    built.onnx_sha256, built.precision, device_index, trt))
                engine_path, sidecar = model_path, entry.sidecar
                self._engine = self._load(entry.engine_bytes, engine_path)
            super().__init__(sidecar.info, model_path, resolved, sidecar.key.precision)
            self.engine_path = engine_path
            inputs, outputs = engine_io(self._engine, trt)
            problems = io_differences(sidecar.info.inputs, inputs) + io_differences(sidecar.info.outputs, outputs)
            if problems:
                raise ValueError(f"{engine_path}: engine I/O differs from its sidecar: {'; '.join(problems)}")
            self._context = self._engine.create_execution_context()
            self._io = CudaFrameIO(self.info, resolved)
            self._device_outputs = allocate(self.info.outputs, device=resolved)
            self._bind()

    def _load(self, engine_bytes: bytes, engine_path: Path):
        return deserialize(self._runtime, engine_bytes, str(engine_path))

    def _bind(self) -> None:
        """Point the context at our buffers once; they are never reallocated."""
        buffers = {**self._io.device_inputs, **self._device_outputs}
        if hasattr(self._context, "execute_async_v3"):  # TensorRT >= 8.5
            for name, tensor in buffers.items():
                if self._engine.is_shape_inference_io(name):
                    raise ValueError(f"{self.engine_path}: input {name!r} feeds a shape computation; pipeline "
                                     "thresholds must be data inputs (re-export the model)")
                self._context.set_tensor_address(name, tensor.data_ptr())
            self._bindings = None
        else:  # binding-index API (TensorRT < 8.5)
            self._bindings = [buffers[self._engine.get_binding_name(i)].data_ptr()
                              for i in range(self._engine.num_bindings)]

    def _run(self, image: np.ndarray, thresholds: Thresholds, label_divisor: int) -> PanopticResult:
        import torch

        self._io.upload(image, thresholds, label_divisor)
        handle = self._io.stream.cuda_stream
        with torch.cuda.device(self._io.device):
            if self._bindings is None:
                ok = self._context.execute_async_v3(handle)
            else:
                ok = self._context.execute_async_v2(self._bindings, handle)
        if not ok:
            raise RuntimeError(f"TensorRT failed to run {self.engine_path} (see the TensorRT log)")
        return self._io.download(self._device_outputs)

    @property
    def device_outputs(self) -> dict:
        """The last frame's outputs as torch CUDA tensors (zero-copy for GPU consumers; valid until the next run)."""
        return self._device_outputs

    def describe(self) -> dict:
        name, capability = gpu_identity(self._io.device.index)
        return {**super().describe(), "engine_path": str(self.engine_path), "tensorrt_module": self._trt.__name__,
                "tensorrt_version": self._trt.__version__, "gpu": name, "compute_capability": capability}
