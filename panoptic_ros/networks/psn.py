"""Panoptic SwiftNet (Saric, Orsic, Segvic 2022): pyramidal fusion of a shared ResNet on a 3-level image pyramid.

The backbone runs on the image at scales 1, 1/2 and 1/4. Every residual stage output is projected
by a 1x1 convolution (one per stage, shared across scales) and added to the other projections
at the same absolute resolution. Starting from the coarsest map (stride 128 for three levels),
five upsampling modules (bilinear 2x, add the skip, 3x3 conv) reach stride 4, where three heads
(1x1 conv, then 4x bilinear) predict semantic logits, the center heatmap and offsets.
Convolutions in the upsampling path are BN-ReLU-Conv, as in the paper.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from panoptic_ros.classes import LabelSet
from panoptic_ros.networks.base import PanopticNetwork
from panoptic_ros.networks.layers import scale_channels, upsample


def bn_relu_conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Pre-activation convolution (BN, ReLU, conv) that the paper calls simply 'a convolution'."""
    return nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
                         nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False))


class UpsampleModule(nn.Module):
    """Fuse the previous stage (upsampled 2x) with a skip by addition and one 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.blend = bn_relu_conv(channels, channels, 3)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.blend(upsample(x, 2) + skip)


class PanopticSwiftNet(PanopticNetwork):
    """Outputs {"semantic": (B,C,H,W), "center": (B,1,H,W), "offset": (B,2,H,W) as (dy, dx) in pixels}."""

    model_name = "psn"
    default_backbone = "resnet18"

    def __init__(self, label_set: LabelSet, width: float = 1.0, backbone: str | None = None,
                 pyramid_levels: int = 3) -> None:
        super().__init__(label_set, width, backbone)
        channels = scale_channels(256, width)
        self.pyramid_levels = pyramid_levels
        self.projections = nn.ModuleList(bn_relu_conv(c, channels, 1) for c in self.backbone.out_channels)
        # Distinct absolute strides: 4..32 from the full image plus one coarser octave per extra level.
        self.skip_strides = tuple(4 * 2 ** i for i in range(4 + pyramid_levels - 1))
        self.upsample_modules = nn.ModuleList(UpsampleModule(channels) for _ in self.skip_strides[:-1])
        self.semantic_head = bn_relu_conv(channels, self.num_classes, 1)
        self.center_head = bn_relu_conv(channels, 1, 1)
        self.offset_head = bn_relu_conv(channels, 2, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self.check_input(x)
        skips: dict[int, Tensor] = {}
        for level in range(self.pyramid_levels):
            # Average pooling is an exact box-filter 2x/4x downsampling and the plainest op for every runtime
            # (the authors' code resizes bicubically; the network is trained on whichever is used).
            image = x if level == 0 else F.avg_pool2d(x, 2 ** level)
            for stage, (feature, project) in enumerate(zip(self.backbone(image), self.projections, strict=True)):
                stride = 4 * 2 ** (stage + level)
                skips[stride] = project(feature) if stride not in skips else skips[stride] + project(feature)
        y = skips[self.skip_strides[-1]]
        for module, stride in zip(self.upsample_modules, reversed(self.skip_strides[:-1]), strict=True):
            y = module(y, skips[stride])
        return {"semantic": upsample(self.semantic_head(y), 4),
                "center": upsample(self.center_head(y), 4),
                "offset": upsample(self.offset_head(y), 4)}
