"""Runtimes for the pipeline graph, chosen by name: onnxruntime, torch, tensorrt.

    backend = create_backend("onnxruntime", "models/psn.onnx")
    result = backend.run(image, Thresholds(), label_divisor=1000)

Each backend imports its library only when it is chosen, so the package works where torch's CUDA
build or TensorRT is missing.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from panoptic_ros.runtime.backends.base import Backend
from panoptic_ros.runtime.backends.model_info import ModelInfo, TensorSpec, read_onnx_info
from panoptic_ros.runtime.choices import BACKENDS, MODEL_SUFFIXES

# backend name -> (module, class)
_CLASSES = {
    "onnxruntime": ("panoptic_ros.runtime.backends.onnxruntime_backend", "OnnxRuntimeBackend"),
    "torch": ("panoptic_ros.runtime.backends.torch_backend", "TorchBackend"),
    "tensorrt": ("panoptic_ros.runtime.backends.tensorrt_backend", "TensorRTBackend"),
}
assert tuple(_CLASSES) == BACKENDS


def create_backend(name: str, model_path: str | Path, device: str = "auto", **options) -> Backend:
    """Load `model_path` into the backend called `name` on `device` ('auto', 'cpu', 'cuda', 'cuda:N').

    Options per backend:
      onnxruntime: threads=0
      torch:       height, width (required for a checkpoint), max_instances=100
      tensorrt:    precision='fp16', cache_dir=None, allow_build=True, workspace_mb=1024 (for an .onnx)
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    module_name, class_name = _CLASSES[name]
    suffixes = MODEL_SUFFIXES[name]
    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"model file not found: {model_path}")
    if model_path.suffix not in suffixes:
        raise ValueError(f"the {name} backend loads {' or '.join(suffixes)} files, got {model_path}")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    return backend_class(model_path, device=device, **options)


__all__ = ["BACKENDS", "Backend", "ModelInfo", "TensorSpec", "create_backend", "read_onnx_info"]
