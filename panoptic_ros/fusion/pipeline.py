"""The whole per-frame computation as one static-shape module:

    uint8 image (H, W, 3) + runtime thresholds -> normalise -> network -> fusion
        -> panoptic (H, W) int32, semantic (H, W) uint8, instances (K + N_stuff, 11) float32, num_instances int32,
           converged int32, candidates_dropped int32

Inputs and outputs are those of panoptic_ros.pipeline_io. The same module runs eagerly (CPU or
CUDA), exports to ONNX (panoptic_ros.runtime.export) and builds into one TensorRT engine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from panoptic_ros.classes import DEFAULT_LABEL_DIVISOR, LabelSet
from panoptic_ros.fusion.base import Fusion, RuntimeThresholds
from panoptic_ros.fusion.fpsnet import FPSNetFusion
from panoptic_ros.fusion.lpsnet import LPSNetFusion
from panoptic_ros.fusion.psn import PSNFusion
from panoptic_ros.fusion.rtps import RTPSFusion
from panoptic_ros.fusion.spinet import SPINetFusion
from panoptic_ros.pipeline_io import (
    IMAGE_INPUT,
    INPUT_NAMES,
    LABEL_DIVISOR_INPUT,
    THRESHOLD_INPUTS,
    PanopticResult,
    Thresholds,
    check_label_divisor,
)

FUSIONS: dict[str, type[Fusion]] = {
    "psn": PSNFusion, "rtps": RTPSFusion, "lpsnet": LPSNetFusion, "fpsnet": FPSNetFusion, "spinet": SPINetFusion}
MODEL_NAMES = tuple(FUSIONS)


class PanopticPipeline(nn.Module):
    """forward(image, score_threshold, center_threshold, nms_iou, mask_sigma, overlap_threshold,
    min_stuff_area, label_divisor) -> (panoptic, semantic, instances, num_instances, converged,
    candidates_dropped).

    Eager calls check their inputs first (`check_inputs`); traced/exported graphs do not (the
    runtime checks names, shapes and dtypes against the graph's, and Thresholds validates values).
    """

    def __init__(self, model: str, network: nn.Module, fusion: Fusion, height: int, width: int) -> None:
        super().__init__()
        from panoptic_ros.networks import IMAGENET_MEAN, IMAGENET_STD

        self.model = model
        self.label_set: LabelSet = fusion.label_set
        self.height, self.width = height, width
        self.network = network
        self.fusion = fusion
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32)
        # (x / 255 - mean) / std folded into one multiply-add.
        self.register_buffer("pixel_scale", (1.0 / (255.0 * std)).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_shift", (-torch.tensor(IMAGENET_MEAN) / std).reshape(1, 3, 1, 1),
                             persistent=False)

    @property
    def max_instances(self) -> int:
        return self.fusion.max_instances

    def normalize(self, image: Tensor) -> Tensor:
        """uint8 (H, W, 3) RGB -> normalised float (1, 3, H, W)."""
        # Cast first: TensorRT takes uint8 only as a network input, not into Transpose.
        return image.to(torch.float32).permute(2, 0, 1)[None] * self.pixel_scale + self.pixel_shift

    def forward(self, image: Tensor, score_threshold: Tensor, center_threshold: Tensor, nms_iou: Tensor,
                mask_sigma: Tensor, overlap_threshold: Tensor, min_stuff_area: Tensor,
                label_divisor: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        thresholds = RuntimeThresholds(score_threshold, center_threshold, nms_iou, mask_sigma, overlap_threshold,
                                       min_stuff_area)
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()):
            self.check_inputs(image, *thresholds, label_divisor)
        heads = self.network(self.normalize(image))
        panoptic, semantic, instances, num_instances, converged, dropped = self.fusion(heads, thresholds,
                                                                                     label_divisor)
        # Every method ignores some thresholds, and exporters drop inputs nothing consumes; a zero
        # term keeps all of them graph inputs, so every model has the same interface.
        unused = (torch.stack(thresholds).sum() * 0).to(torch.int32)
        return panoptic, semantic, instances, num_instances + unused, converged, dropped

    def check_inputs(self, image: Tensor, *scalars: Tensor) -> None:
        """Raise ValueError naming what was expected unless the inputs fit this pipeline."""
        expected = f"a uint8 tensor of shape ({self.height}, {self.width}, 3) (RGB)"
        if not isinstance(image, Tensor):
            raise ValueError(f"{IMAGE_INPUT} must be {expected}, got {type(image).__name__}")
        if image.dtype != torch.uint8:
            raise ValueError(f"{IMAGE_INPUT} must be {expected}, got dtype {image.dtype}")
        if image.dim() != 3:
            raise ValueError(f"{IMAGE_INPUT} must be {expected}, got rank {image.dim()} shape {tuple(image.shape)}")
        if image.shape[2] != 3:
            raise ValueError(f"{IMAGE_INPUT} must be {expected}, got {image.shape[2]} channels")
        if tuple(image.shape[:2]) != (self.height, self.width):
            raise ValueError(f"{IMAGE_INPUT} must be {expected} (the size this pipeline was built for), "
                             f"got {image.shape[0]}x{image.shape[1]}")
        if len(scalars) != len(THRESHOLD_INPUTS) + 1:
            raise ValueError(f"expected {len(INPUT_NAMES)} inputs {INPUT_NAMES}, got {1 + len(scalars)}")
        values = {}
        for name, value in zip(THRESHOLD_INPUTS, scalars, strict=False):
            if not isinstance(value, Tensor) or value.dim() != 0 or value.dtype != torch.float32:
                raise ValueError(f"{name} must be a 0-d float32 tensor, got {_describe(value)}")
            values[name] = value.item()
        Thresholds(**values)  # range check with the contract's messages
        divisor = scalars[-1]
        if not isinstance(divisor, Tensor) or divisor.dim() != 0 or divisor.dtype != torch.int32:
            raise ValueError(f"{LABEL_DIVISOR_INPUT} must be a 0-d int32 tensor, got {_describe(divisor)}")
        check_label_divisor(int(divisor.item()), self.max_instances, self.label_set.num_classes)

    def example_inputs(self, thresholds: Thresholds | None = None,
                       label_divisor: int = DEFAULT_LABEL_DIVISOR) -> tuple[Tensor, ...]:
        """A black image and the given (default) thresholds, on the pipeline's device."""
        image = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        return self.make_inputs(image, thresholds or Thresholds(), label_divisor)

    def make_inputs(self, image: np.ndarray, thresholds: Thresholds,
                    label_divisor: int = DEFAULT_LABEL_DIVISOR) -> tuple[Tensor, ...]:
        """Graph inputs, in INPUT_NAMES order, from a NumPy image and Thresholds."""
        device = self.pixel_scale.device
        scalars = thresholds.as_inputs(label_divisor)
        pixels = np.ascontiguousarray(image)
        if not pixels.flags.writeable:  # decoded message buffers are read-only; torch wants its own
            pixels = pixels.copy()
        return (torch.from_numpy(pixels).to(device),
                *(torch.from_numpy(scalars[name]).to(device) for name in INPUT_NAMES[1:]))

    @torch.no_grad()
    def run(self, image: np.ndarray, thresholds: Thresholds | None = None,
            label_divisor: int = DEFAULT_LABEL_DIVISOR) -> PanopticResult:
        """One frame, NumPy in and out (eager PyTorch)."""
        outputs = self(*self.make_inputs(image, thresholds or Thresholds(), label_divisor))
        return result_from_tensors(outputs)


def result_from_tensors(outputs: tuple[Tensor, ...]) -> PanopticResult:
    """A PanopticResult from the pipeline's outputs (OUTPUT_NAMES order)."""
    panoptic, semantic, instances, num, converged, dropped = (t.cpu() for t in outputs)
    return PanopticResult(panoptic.numpy(), semantic.numpy(), instances.numpy(), int(num), bool(converged),
                          int(dropped))


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def build_pipeline(model: str, label_set: LabelSet, height: int, width: int, network: nn.Module | None = None,
                   width_mult: float = 1.0, max_instances: int = 100, nms_kernel: int = 7) -> PanopticPipeline:
    """The pipeline of `model` (one of MODEL_NAMES) for images of height x width, in eval mode.

    `network` defaults to a freshly initialised build_network(model, label_set, width_mult).
    max_instances (K) and nms_kernel (PSN's centre NMS window, pixels) are build-time settings.
    """
    from panoptic_ros.networks import INPUT_MULTIPLE, build_network

    if model not in FUSIONS:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODEL_NAMES)}")
    if height <= 0 or width <= 0 or height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
        raise ValueError(f"height and width must be positive multiples of {INPUT_MULTIPLE}, got {height}x{width}")
    if network is None:
        network = build_network(model, label_set, width=width_mult)
    if getattr(network, "model_name", model) != model:
        raise ValueError(f"network is a {network.model_name!r} network, not {model!r}")
    if network.label_set != label_set:
        raise ValueError(f"network was built for label set {network.label_set.name!r}, not {label_set.name!r}")
    fusion = FUSIONS[model].for_network(network, max_instances=max_instances, nms_kernel=nms_kernel)
    return PanopticPipeline(model, network, fusion, height, width).eval()


def pipeline_from_checkpoint(path: str | Path, height: int, width: int, max_instances: int = 100,
                             nms_kernel: int = 7) -> PanopticPipeline:
    """The pipeline of the network stored in checkpoint `path` (panoptic_ros.networks.checkpoint)."""
    from panoptic_ros.networks.checkpoint import load_network

    network, info = load_network(path)
    return build_pipeline(info["model"], network.label_set, height, width, network=network,
                          max_instances=max_instances, nms_kernel=nms_kernel)
