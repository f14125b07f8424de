"""ONNX Runtime: the CPU default (and what CI runs); CUDA execution provider where it is installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from panoptic_ros.pipeline_io import IMAGE_INPUT, OUTPUT_NAMES, PanopticResult, Thresholds
from panoptic_ros.runtime.backends.base import Backend, resolve_device, result_from_outputs
from panoptic_ros.runtime.backends.model_info import read_onnx_info

CUDA_PROVIDER = "CUDAExecutionProvider"


class OnnxRuntimeBackend(Backend):
    """An exported pipeline .onnx file in one InferenceSession, created once."""

    name = "onnxruntime"

    def __init__(self, model_path: str | Path, device: str = "auto", threads: int = 0) -> None:
        """`threads`: intra-op threads (0 lets ONNX Runtime choose)."""
        import onnxruntime as ort

        model_path = Path(model_path)
        info = read_onnx_info(model_path)
        has_cuda = CUDA_PROVIDER in ort.get_available_providers()
        resolved = resolve_device(device, has_cuda)
        super().__init__(info, model_path, resolved, precision="fp32")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        providers = ["CPUExecutionProvider"]
        if resolved != "cpu":
            providers.insert(0, (CUDA_PROVIDER, {"device_id": int(resolved.split(":")[1])}))
        try:
            self._session = ort.InferenceSession(str(model_path), options, providers=providers)
        except Exception as error:  # ONNX Runtime raises its own exception types for bad graphs
            raise ValueError(f"ONNX Runtime cannot load {model_path}: {error}") from None
        self._scalar_key: tuple | None = None
        self._feeds: dict[str, np.ndarray] = {}

    def _run(self, image: np.ndarray, thresholds: Thresholds, label_divisor: int) -> PanopticResult:
        # The scalar inputs change only when someone retunes a threshold: build them then, not per frame.
        key = (thresholds, label_divisor)
        if key != self._scalar_key:
            self._feeds = thresholds.as_inputs(label_divisor)
            self._scalar_key = key
        self._feeds[IMAGE_INPUT] = np.ascontiguousarray(image)
        values = self._session.run(list(OUTPUT_NAMES), self._feeds)
        return result_from_outputs(dict(zip(OUTPUT_NAMES, values, strict=True)))

    def describe(self) -> dict:
        return {**super().describe(), "providers": self._session.get_providers()}
