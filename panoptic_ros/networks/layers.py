"""Small building blocks shared by the five networks.

Everything here is static-shape: sizes come from Python ints or from tensor shapes that are
constant once the input size is fixed, so export to ONNX folds them into constants.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Initial probability of "object" for sigmoid classifiers trained with focal loss (RetinaNet):
# starting near 0.01 keeps the loss of the many background locations from swamping training.
FOCAL_PRIOR = 0.01

# Box distances are stride * exp(x). Clamping x at 6 keeps them below FP16's 65504 even at
# stride 128 (128 * e^6 = 51640), so FP16 TensorRT engines cannot overflow to inf.
MAX_LOG_DISTANCE = 6.0


def scale_channels(channels: int, width: float) -> int:
    """Channel count `channels` scaled by the width multiplier, rounded to a multiple of 8 (at least 8)."""
    return max(8, int(round(channels * width / 8)) * 8)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups at full width and at least 4 channels per group when narrow."""
    return nn.GroupNorm(math.gcd(32, max(1, channels // 4)), channels)


def conv_gn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    """Conv + GroupNorm + ReLU, the block of FCOS-style towers."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
                         group_norm(out_channels), nn.ReLU(inplace=True))


class FixedStatsBatchNorm2d(nn.BatchNorm2d):
    """Batch norm that normalises with its running statistics in training too and never updates them.

    It stays in eval mode whatever `.train()` says, so it works at one value per channel (batch 1 of
    a pooled 1x1 map), where batch statistics do not exist. Its state_dict is BatchNorm2d's, and in
    eval mode it computes exactly what BatchNorm2d does.
    """

    def train(self, mode: bool = True) -> FixedStatsBatchNorm2d:
        return super().train(False)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3,
                 batch_norm: type[nn.BatchNorm2d] = nn.BatchNorm2d) -> nn.Sequential:
    """Conv + BatchNorm (`batch_norm`: nn.BatchNorm2d or FixedStatsBatchNorm2d) + ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
                         batch_norm(out_channels), nn.ReLU(inplace=True))


def tower(in_channels: int, channels: int, num_convs: int = 4, norm: str = "gn") -> nn.Sequential:
    """`num_convs` 3x3 conv blocks (norm "gn": conv-GN-ReLU as FCOS; "none": conv-ReLU as RetinaNet)."""
    layers: list[nn.Module] = []
    for i in range(num_convs):
        c_in = in_channels if i == 0 else channels
        if norm == "gn":
            layers.append(conv_gn_relu(c_in, channels))
        elif norm == "none":
            layers += [nn.Conv2d(c_in, channels, 3, padding=1), nn.ReLU(inplace=True)]
        else:
            raise ValueError(f"tower norm must be 'gn' or 'none', got {norm!r}")
    return nn.Sequential(*layers)


def init_head_conv(conv: nn.Conv2d, prior: float | None = None) -> None:
    """Normal(0, 0.01) weights as RetinaNet/FCOS heads; bias 0, or the focal-loss prior logit if `prior` is given."""
    nn.init.normal_(conv.weight, std=0.01)
    bias = -math.log((1 - prior) / prior) if prior is not None else 0.0
    nn.init.constant_(conv.bias, bias)


def init_tower(module: nn.Module) -> None:
    """Normal(0, 0.01) weights and zero bias for every conv of a head tower."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class LevelScale(nn.Module):
    """Learnable scalar per pyramid level (FCOS), so one shared head can regress sizes of every level."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def distances_from_logits(x: Tensor, stride: int) -> Tensor:
    """Non-negative box distances in input pixels: stride * exp(x), with x clamped (see MAX_LOG_DISTANCE)."""
    return torch.exp(x.clamp(max=MAX_LOG_DISTANCE)) * float(stride)


def upsample(x: Tensor, factor: int, mode: str = "bilinear") -> Tensor:
    """Upsample by an integer factor (identity for 1). Bilinear uses align_corners=False, which TensorRT supports."""
    if factor == 1:
        return x
    if mode == "nearest":
        return F.interpolate(x, scale_factor=float(factor), mode="nearest")
    return F.interpolate(x, scale_factor=float(factor), mode="bilinear", align_corners=False)


def coordinate_channels(x: Tensor) -> Tensor:
    """Two channels of absolute (x, y) coordinates in [-1, 1] for a (B, C, H, W) map (CoordConv)."""
    b, _, h, w = x.shape
    # arange rather than linspace: the TorchScript ONNX exporter emits linspace in double precision.
    xs = torch.arange(w, dtype=x.dtype, device=x.device) * (2.0 / max(w - 1, 1)) - 1.0
    ys = torch.arange(h, dtype=x.dtype, device=x.device) * (2.0 / max(h - 1, 1)) - 1.0
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y)).unsqueeze(0).expand(b, 2, h, w)


def with_coordinates(x: Tensor) -> Tensor:
    """`x` with the two CoordConv channels appended."""
    return torch.cat((x, coordinate_channels(x)), dim=1)


class ConcatUpsampledConv1x1(nn.Module):
    """A 1x1 convolution over the channel concatenation of maps upsampled by `factors` to one stride.

    Computed as the sum of per-map 1x1 convolutions, each upsampled: the same function (both
    steps are linear, and only the first conv carries the bias) without materialising the wide
    concatenation at high resolution.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, factors: Sequence[int]) -> None:
        super().__init__()
        if len(in_channels) != len(factors):
            raise ValueError("ConcatUpsampledConv1x1: one upsampling factor per input map expected")
        self.factors = tuple(factors)
        self.convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1, bias=i == 0) for i, c in enumerate(in_channels))

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        out = upsample(self.convs[0](maps[0]), self.factors[0])
        for conv, x, factor in zip(self.convs[1:], maps[1:], self.factors[1:], strict=True):
            out = out + upsample(conv(x), factor)
        return out
