"""LPSNet: a lightweight solution for fast panoptic segmentation (Hong et al., CVPR 2021).

ResNet-FPN whose P5 lateral is augmented by a Pyramid Pooling Module on res5, with P6/P7 by
stride-2 convs from P5. A box head (four conv + GroupNorm + ReLU, shared over P3-P7) regresses
per location the distances (l, t, r, b) and the border-ness. A semantic head processes P2-P5,
upsamples them to stride 4, concatenates and classifies with a 1x1 convolution.

Deviations (see models/README.md): the semantic head's deformable convolutions are plain 3x3
convolutions (TensorRT's ONNX parser has no deformable convolution); the box head also predicts
box class logits (FCOS-style), which the fusion needs for box scores and classes.
"""

from __future__ import annotations

from torch import Tensor, nn

from panoptic_ros.classes import LabelSet
from panoptic_ros.networks.base import PanopticNetwork
from panoptic_ros.networks.fpn import FPN, PyramidPooling
from panoptic_ros.networks.layers import (
    FOCAL_PRIOR,
    ConcatUpsampledConv1x1,
    LevelScale,
    distances_from_logits,
    init_head_conv,
    init_tower,
    scale_channels,
    tower,
)

OUTPUT_STRIDE = 4


class LPSNet(PanopticNetwork):
    """Outputs semantic (B,C,H/4,W/4) and per-level (P3-P7) box_cls (B,T,h,w), box_reg (B,4,h,w) pixel
    distances and borderness (B,1,h,w) logits."""

    model_name = "lpsnet"
    default_backbone = "resnet50"
    strides = (8, 16, 32, 64, 128)
    semantic_strides = (4, 8, 16, 32)

    def __init__(self, label_set: LabelSet, width: float = 1.0, backbone: str | None = None) -> None:
        super().__init__(label_set, width, backbone)
        channels = scale_channels(256, width)
        semantic_channels = scale_channels(128, width)
        c5 = self.backbone.out_channels[-1]
        self.fpn = FPN(self.backbone.out_channels, (4, 8, 16, 32), channels, extra_levels=2, extra_from="p5",
                       c5_context=PyramidPooling(c5, channels))
        self.box_tower = tower(channels, channels, 4, "gn")
        self.box_reg = nn.Conv2d(channels, 4, 3, padding=1)
        self.borderness = nn.Conv2d(channels, 1, 3, padding=1)
        self.box_cls = nn.Conv2d(channels, self.num_things, 3, padding=1)
        self.scales = nn.ModuleList(LevelScale() for _ in self.strides)
        # Shared by P2-P5; plain convs in place of the paper's deformable ones.
        self.semantic_subnet = tower(channels, semantic_channels, 2, "gn")
        self.semantic = ConcatUpsampledConv1x1([semantic_channels] * 4, self.num_classes,
                                               [s // OUTPUT_STRIDE for s in self.semantic_strides])
        init_tower(self.box_tower)
        init_head_conv(self.box_reg)
        init_head_conv(self.borderness)
        init_head_conv(self.box_cls, prior=FOCAL_PRIOR)

    def forward(self, x: Tensor) -> dict[str, Tensor | list[Tensor]]:
        self.check_input(x)
        pyramid = self.fpn(self.backbone(x))  # P2..P7
        semantic = self.semantic([self.semantic_subnet(p) for p in pyramid[:4]])
        box_cls, box_reg, borderness = [], [], []
        for p, stride, scale in zip(pyramid[1:], self.strides, self.scales, strict=True):
            f = self.box_tower(p)
            box_reg.append(distances_from_logits(scale(self.box_reg(f)), stride))
            borderness.append(self.borderness(f))
            box_cls.append(self.box_cls(f))
        return {"semantic": semantic, "box_cls": box_cls, "box_reg": box_reg, "borderness": borderness}
