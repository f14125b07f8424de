"""PyTorch, eager, CPU or CUDA: the development and parity path (same module that is exported)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from panoptic_ros.pipeline_io import INPUT_NAMES, OUTPUT_NAMES, PanopticResult, Thresholds
from panoptic_ros.runtime.backends.base import Backend, resolve_device, result_from_outputs
from panoptic_ros.runtime.backends.model_info import ModelInfo, contract_specs


def pipeline_info(pipeline) -> ModelInfo:
    """The ModelInfo of an in-memory PanopticPipeline (with the default thresholds its export would carry)."""
    from panoptic_ros.fusion.model_defaults import model_defaults

    rows = pipeline.max_instances + len(pipeline.label_set.stuff_ids)
    inputs, outputs = contract_specs(pipeline.height, pipeline.width, rows)
    return ModelInfo(pipeline.model, pipeline.label_set, pipeline.max_instances, inputs, outputs,
                     model_defaults(pipeline.model))


class TorchBackend(Backend):
    """A checkpoint (.pt) built into a PanopticPipeline of a given input size, run eagerly."""

    name = "torch"

    def __init__(self, model_path: str | Path, device: str = "auto", height: int | None = None,
                 width: int | None = None, max_instances: int = 100) -> None:
        from panoptic_ros.fusion.pipeline import pipeline_from_checkpoint

        if height is None or width is None:
            raise ValueError(f"the torch backend builds the pipeline from checkpoint {model_path}: "
                             "give height= and width= (the input size, multiples of 128)")
        pipeline = pipeline_from_checkpoint(model_path, height, width, max_instances=max_instances)
        self._setup(pipeline, Path(model_path), device)

    @classmethod
    def from_pipeline(cls, pipeline, device: str = "auto") -> TorchBackend:
        """A backend around an in-memory PanopticPipeline (training evaluation, tests)."""
        backend = cls.__new__(cls)
        backend._setup(pipeline, Path(f"<{pipeline.model} pipeline in memory>"), device)
        return backend

    def _setup(self, pipeline, model_path: Path, device: str) -> None:
        import torch

        resolved = resolve_device(device, torch.cuda.is_available())
        super().__init__(pipeline_info(pipeline), model_path, resolved, precision="fp32")
        self._pipeline = pipeline.to(resolved).eval()
        self._io = None
        if resolved != "cpu":
            from panoptic_ros.runtime.backends.cuda_io import CudaFrameIO

            self._io = CudaFrameIO(self.info, resolved)
        self._device_outputs: dict = {}

    def _run(self, image: np.ndarray, thresholds: Thresholds, label_divisor: int) -> PanopticResult:
        import torch

        with torch.inference_mode():
            if self._io is None:
                inputs = self._pipeline.make_inputs(image, thresholds, label_divisor)
                outputs = dict(zip(OUTPUT_NAMES, self._pipeline(*inputs), strict=True))
                return result_from_outputs({name: t.numpy() for name, t in outputs.items()})
            self._io.upload(image, thresholds, label_divisor)
            with torch.cuda.stream(self._io.stream):
                outputs = self._pipeline(*(self._io.device_inputs[name] for name in INPUT_NAMES))
            self._device_outputs = dict(zip(OUTPUT_NAMES, outputs, strict=True))
            return self._io.download(self._device_outputs)

    @property
    def device_outputs(self) -> dict:
        """On CUDA: the last frame's outputs as torch CUDA tensors (for GPU consumers)."""
        return self._device_outputs
