"""Feature Pyramid Network (Lin et al.) with the variations the five papers need.

- inputs at any strides (SPINet feeds a halved C2 at stride 8 next to C3);
- extra levels P6, P7 by stride-2 3x3 convs, from P5 (FCOS, LPSNet) or from C5 (RetinaNet);
- an optional context module on C5 whose output is added to C5's lateral (LPSNet's PPM).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panoptic_ros.networks.layers import FixedStatsBatchNorm2d, conv_bn_relu, upsample


class FPN(nn.Module):
    """Lateral 1x1 convs, nearest-neighbour top-down pathway, 3x3 output convs, optional P6/P7."""

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int], out_channels: int,
                 extra_levels: int = 0, extra_from: str = "p5", c5_context: nn.Module | None = None) -> None:
        super().__init__()
        if len(in_channels) != len(in_strides):
            raise ValueError("FPN: one stride per input feature expected")
        if extra_from not in ("p5", "c5"):
            raise ValueError(f"FPN extra_from must be 'p5' or 'c5', got {extra_from!r}")
        self.in_strides = tuple(in_strides)
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.c5_context = c5_context
        self.extra_from = extra_from
        extra_in = in_channels[-1] if extra_from == "c5" else out_channels
        self.extra = nn.ModuleList(
            nn.Conv2d(extra_in if i == 0 else out_channels, out_channels, 3, stride=2, padding=1)
            for i in range(extra_levels))
        self.strides = self.in_strides + tuple(self.in_strides[-1] * 2 ** (i + 1) for i in range(extra_levels))
        for conv in (*self.lateral, *self.output, *self.extra):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        inner = self.lateral[-1](features[-1])
        if self.c5_context is not None:
            inner = inner + self.c5_context(features[-1])
        outputs = [self.output[-1](inner)]
        for i in range(len(features) - 2, -1, -1):
            factor = self.in_strides[i + 1] // self.in_strides[i]
            inner = self.lateral[i](features[i]) + upsample(inner, factor, mode="nearest")
            outputs.insert(0, self.output[i](inner))
        x = features[-1] if self.extra_from == "c5" else outputs[-1]
        for i, conv in enumerate(self.extra):
            # RetinaNet applies ReLU between P6 and P7; FCOS does the same when building from P5.
            x = conv(x if i == 0 else F.relu(x))
            outputs.append(x)
        return outputs


class PyramidPooling(nn.Module):
    """PSPNet pyramid pooling on C5: pooled branches (1x1 conv-BN-ReLU), upsampled, concatenated with C5,
    fused by a 3x3 conv-BN-ReLU to `out_channels` (LPSNet adds this to FPN's P5 lateral).

    The branches' batch norms keep fixed statistics (`FixedStatsBatchNorm2d`; their affine trains):
    the 1-bin branch has one value per channel and image, so at one image per process batch
    statistics do not exist (bins 2 and 4 would have 4 and 16). Measured against group norm in
    models/README.md. The fuse convolution sees the whole C5 map and keeps a plain batch norm.

    Bins are (1, 2, 4) rather than PSPNet's (1, 2, 3, 6): adaptive pooling exports to a fixed ONNX
    AveragePool only when the bin count divides the map, and C5 of an input whose sides are
    multiples of 128 is divisible by 4 but not by 3.
    """

    def __init__(self, in_channels: int, out_channels: int, bins: Sequence[int] = (1, 2, 4)) -> None:
        super().__init__()
        self.bins = tuple(bins)
        self.branches = nn.ModuleList(conv_bn_relu(in_channels, out_channels, 1, FixedStatsBatchNorm2d)
                                      for _ in self.bins)
        self.fuse = conv_bn_relu(in_channels + len(self.bins) * out_channels, out_channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        pooled = []
        for bins, branch in zip(self.bins, self.branches, strict=True):
            if h % bins or w % bins:
                raise ValueError(f"PyramidPooling: C5 map {h}x{w} is not divisible by {bins} bins; "
                                 "use an input whose height and width are multiples of 128")
            y = branch(F.avg_pool2d(x, kernel_size=(h // bins, w // bins)))
            pooled.append(F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False))
        return self.fuse(torch.cat([x, *pooled], dim=1))
