"""What every method's fusion has in common: the runtime thresholds it receives, the label-set
lookups, and the hand-over from its front half (`segments`) to the shared back half."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from panoptic_ros.classes import LabelSet
from panoptic_ros.fusion.core import FUSION_STRIDE, PanopticAssembler, Segments, SemanticLabels
from panoptic_ros.pipeline_io import Thresholds

Heads = dict[str, "Tensor | list[Tensor]"]


class RuntimeThresholds(NamedTuple):
    """The threshold graph inputs as 0-d float32 tensors, in pipeline_io.THRESHOLD_INPUTS order."""

    score_threshold: Tensor
    center_threshold: Tensor
    nms_iou: Tensor
    mask_sigma: Tensor
    overlap_threshold: Tensor
    min_stuff_area: Tensor

    @classmethod
    def from_thresholds(cls, thresholds: Thresholds, device: torch.device | str = "cpu") -> RuntimeThresholds:
        return cls(*(torch.tensor(float(getattr(thresholds, name)), dtype=torch.float32, device=device)
                     for name in cls._fields))


class Fusion(nn.Module):
    """Base class of the five fusions: `segments` (the method's front half) + PanopticAssembler.

    Subclasses set `num_candidates` (Kc, thing candidates per frame) and `label_stride` (input
    pixels per cell of their label map: 1 when every input pixel is decided) and implement `segments`.
    `segments` sees only the network's outputs; a fusion that runs part of the network itself
    (FPSNet's panoptic head, SPINet's mask convolution) is a NetworkFusion.
    """

    def __init__(self, label_set: LabelSet, num_candidates: int, max_instances: int,
                 label_stride: int = FUSION_STRIDE) -> None:
        super().__init__()
        if max_instances < 1:
            raise ValueError(f"max_instances must be >= 1, got {max_instances}")
        self.label_set = label_set
        self.num_candidates = num_candidates
        self.max_instances = max_instances
        self.semantic_labels = SemanticLabels(label_set, num_candidates)
        self.assembler = PanopticAssembler(label_set, num_candidates, max_instances, label_stride)
        self.register_buffer("thing_ids", torch.tensor(label_set.thing_ids, dtype=torch.int64), persistent=False)
        self.register_buffer("is_thing", torch.tensor(label_set.thing, dtype=torch.bool), persistent=False)

    @classmethod
    def for_network(cls, network: nn.Module, max_instances: int, nms_kernel: int) -> Fusion:
        """The fusion for `network`'s outputs (its label set, strides, anchors, ...)."""
        raise NotImplementedError

    def segments(self, heads: Heads, thresholds: RuntimeThresholds) -> Segments:
        raise NotImplementedError

    def forward(self, heads: Heads, thresholds: RuntimeThresholds,
                label_divisor: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """-> the pipeline_io.OUTPUT_NAMES: (panoptic, semantic, instances, num_instances, converged,
        candidates_dropped)."""
        segments = self.segments(heads, thresholds)
        maps = self.assembler(segments, thresholds.min_stuff_area, label_divisor)
        return (*maps, segments.converged.to(torch.int32), segments.candidates_dropped.to(torch.int32))


class NetworkFusion(Fusion):
    """A fusion that runs modules of the network on its own intermediate results: it holds the
    network (the same module as the pipeline's, so its weights are not duplicated)."""

    def __init__(self, network: nn.Module, label_set: LabelSet, num_candidates: int, max_instances: int,
                 label_stride: int = FUSION_STRIDE) -> None:
        super().__init__(label_set, num_candidates, max_instances, label_stride)
        self.network = network


class DenseBoxFusion(Fusion):
    """Base of the fusions over FCOS-style dense boxes (RTPS, LPSNet): K candidates from the
    network's pyramid levels at `strides`."""

    def __init__(self, label_set: LabelSet, strides: tuple[int, ...], max_instances: int = 100,
                 label_stride: int = FUSION_STRIDE) -> None:
        super().__init__(label_set, num_candidates=max_instances, max_instances=max_instances,
                         label_stride=label_stride)
        self.strides = tuple(strides)

    @classmethod
    def for_network(cls, network: nn.Module, max_instances: int, nms_kernel: int) -> DenseBoxFusion:
        return cls(network.label_set, network.strides, max_instances)
