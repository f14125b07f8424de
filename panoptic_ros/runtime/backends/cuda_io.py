"""Frame transfer for the CUDA backends (torch on CUDA, TensorRT): one CUDA stream, pinned host
buffers for the image upload and the result download, device buffers as torch CUDA tensors.

All buffers are allocated once. torch owns the CUDA context and the stream, which is why no pycuda:
TensorRT only needs raw device pointers (tensor.data_ptr()) and a stream handle.
"""

from __future__ import annotations

import numpy as np

from panoptic_ros.pipeline_io import IMAGE_INPUT, PanopticResult, Thresholds
from panoptic_ros.runtime.backends.base import result_from_outputs
from panoptic_ros.runtime.backends.model_info import ModelInfo, TensorSpec


def torch_dtype(spec: TensorSpec):
    import torch

    return getattr(torch, spec.dtype)


def allocate(specs: tuple[TensorSpec, ...], **where) -> dict:
    """One torch tensor per spec; `where` is device=... or pin_memory=True."""
    import torch

    return {s.name: torch.empty(s.shape, dtype=torch_dtype(s), **where) for s in specs}


class CudaFrameIO:
    """Pinned host <-> device buffers for one model's inputs and outputs, on one stream."""

    def __init__(self, info: ModelInfo, device: str) -> None:
        import torch

        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device)
        self.device_inputs = allocate(info.inputs, device=self.device)
        self.host_inputs = allocate(info.inputs, pin_memory=True)
        self.host_outputs = allocate(info.outputs, pin_memory=True)
        self._scalar_key: tuple | None = None

    def upload(self, image: np.ndarray, thresholds: Thresholds, label_divisor: int) -> None:
        """Enqueue the copy of the frame (and of changed thresholds) to the device buffers."""
        import torch

        # The previous frame's download synchronised the stream, so the pinned buffers are free to reuse.
        names = [IMAGE_INPUT]
        np.copyto(self.host_inputs[IMAGE_INPUT].numpy(), image)
        key = (thresholds, label_divisor)
        if key != self._scalar_key:
            for name, value in thresholds.as_inputs(label_divisor).items():
                self.host_inputs[name].numpy()[...] = value
                names.append(name)
            self._scalar_key = key
        with torch.cuda.stream(self.stream):
            for name in names:
                self.device_inputs[name].copy_(self.host_inputs[name], non_blocking=True)

    def download(self, device_outputs: dict) -> PanopticResult:
        """Copy the outputs (torch CUDA tensors written on this stream) to the host and wait for them."""
        import torch

        with torch.cuda.stream(self.stream):
            for name, host in self.host_outputs.items():
                host.copy_(device_outputs[name], non_blocking=True)
        self.stream.synchronize()
        # Copies: the pinned buffers are overwritten by the next frame, the caller may keep this result.
        return result_from_outputs({name: host.numpy().copy() for name, host in self.host_outputs.items()})
