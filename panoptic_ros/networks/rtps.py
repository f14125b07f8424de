"""Real-time panoptic segmentation from dense detections (Hou et al., CVPR 2020).

ResNet-FPN with levels P3-P7 (strides 8-128). A unified panoptic head runs two towers, each four
conv + GroupNorm + ReLU blocks shared across levels: the localisation tower predicts per-level box
distances (l, t, r, b) and centerness, the semantics tower per-level box classes. The tower
features of all levels, upsampled to stride 4 and concatenated, give the global levelness
(which level's box each pixel uses; 0 = no instance) and the semantic logits.
"""

from __future__ import annotations

from torch import Tensor, nn

from panoptic_ros.classes import LabelSet
from panoptic_ros.networks.base import PanopticNetwork
from panoptic_ros.networks.fpn import FPN
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

OUTPUT_STRIDE = 4  # stride of the global predictions (semantic, levelness)


class RTPSNet(PanopticNetwork):
    """Outputs semantic (B,C,H/4,W/4), levelness (B,L+1,H/4,W/4) and per-level box_cls (B,T,h,w),
    box_reg (B,4,h,w) distances in pixels and centerness (B,1,h,w) logits."""

    model_name = "rtps"
    default_backbone = "resnet50"
    strides = (8, 16, 32, 64, 128)

    def __init__(self, label_set: LabelSet, width: float = 1.0, backbone: str | None = None) -> None:
        super().__init__(label_set, width, backbone)
        channels = scale_channels(256, width)
        self.fpn = FPN(self.backbone.out_channels[1:], (8, 16, 32), channels, extra_levels=2, extra_from="p5")
        self.loc_tower = tower(channels, channels, 4, "gn")
        self.sem_tower = tower(channels, channels, 4, "gn")
        self.box_reg = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        self.box_cls = nn.Conv2d(channels, self.num_things, 3, padding=1)
        self.scales = nn.ModuleList(LevelScale() for _ in self.strides)
        factors = [s // OUTPUT_STRIDE for s in self.strides]
        # The paper's single conv over the concatenated, upsampled towers (1x1 here; see ConcatUpsampledConv1x1).
        self.levelness = ConcatUpsampledConv1x1([channels] * len(self.strides), len(self.strides) + 1, factors)
        self.semantic = ConcatUpsampledConv1x1([channels] * len(self.strides), self.num_classes, factors)
        init_tower(self.loc_tower)
        init_tower(self.sem_tower)
        init_head_conv(self.box_reg)
        init_head_conv(self.centerness)
        init_head_conv(self.box_cls, prior=FOCAL_PRIOR)

    def forward(self, x: Tensor) -> dict[str, Tensor | list[Tensor]]:
        self.check_input(x)
        levels = self.fpn(self.backbone(x)[1:])
        loc_features, sem_features = [], []
        box_cls, box_reg, centerness = [], [], []
        for p, stride, scale in zip(levels, self.strides, self.scales, strict=True):
            f_loc, f_sem = self.loc_tower(p), self.sem_tower(p)
            loc_features.append(f_loc)
            sem_features.append(f_sem)
            box_reg.append(distances_from_logits(scale(self.box_reg(f_loc)), stride))
            centerness.append(self.centerness(f_loc))
            box_cls.append(self.box_cls(f_sem))
        return {"semantic": self.semantic(sem_features), "levelness": self.levelness(loc_features),
                "box_cls": box_cls, "box_reg": box_reg, "centerness": centerness}
