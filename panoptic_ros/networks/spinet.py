"""SPINet: single-shot path integrated panoptic segmentation (Hwang, Oh, Kim, WACV 2021).

ResNet-FPN over P2-P5, where P2 sums a 2x-downsampled C2 lateral with P3 (so P2 and P3 are both
at stride 8). The filter sampling module (shared over levels) has a class head (four conv +
GroupNorm + ReLU, then the thing-class logits) and a filter head of the same structure whose
input also carries absolute coordinates (CoordConv); it predicts a D-dimensional filter at
every location. The Panoptic-Feature generator merges P2-P5 at stride 8 as Panoptic FPN's
semantic branch does, appends coordinates, applies two convs and a 2x deconvolution to a
256-channel stride-4 Panoptic-Feature. Sampled thing filters and learned stuff filters pass one
fully connected layer and are applied to the Panoptic-Feature in a single 1x1 convolution
(`dynamic_mask_logits`). The inter-class contour head (1x1 conv to 16 channels + pixel shuffle)
and the triplet embedding exist for training only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panoptic_ros.classes import LabelSet
from panoptic_ros.networks.base import PanopticNetwork
from panoptic_ros.networks.fpn import FPN
from panoptic_ros.networks.layers import (
    FOCAL_PRIOR,
    conv_gn_relu,
    init_head_conv,
    init_tower,
    scale_channels,
    tower,
    with_coordinates,
)

FEATURE_STRIDE = 4


def merge_branch(in_channels: int, channels: int, octaves: int) -> nn.Sequential:
    """Panoptic FPN semantic-branch path of one level: `octaves` x (3x3 conv-GN-ReLU, 2x bilinear up), or one conv."""
    layers: list[nn.Module] = [conv_gn_relu(in_channels, channels)]
    for i in range(octaves):
        if i > 0:
            layers.append(conv_gn_relu(channels, channels))
        layers.append(nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False))
    return nn.Sequential(*layers)


class SPINet(PanopticNetwork):
    """forward -> {"class_logits": [(B,T,h,w)], "filters": [(B,D,h,w)], "panoptic_feature": (B,F,H/4,W/4)}
    (+ "contour": (B,1,H,W) logits in training mode); `dynamic_mask_logits(feature, filters)` -> masks."""

    model_name = "spinet"
    default_backbone = "resnet50"
    strides = (8, 8, 16, 32)

    def __init__(self, label_set: LabelSet, width: float = 1.0, backbone: str | None = None) -> None:
        super().__init__(label_set, width, backbone)
        channels = scale_channels(256, width)
        branch_channels = scale_channels(128, width)
        self.feature_dim = scale_channels(256, width)
        self.filter_dim = scale_channels(128, width)
        self.fpn = FPN(self.backbone.out_channels, self.strides, channels)
        self.class_tower = tower(channels, channels, 4, "gn")
        self.class_out = nn.Conv2d(channels, self.num_things, 3, padding=1)
        self.filter_tower = tower(channels + 2, channels, 4, "gn")
        self.filter_out = nn.Conv2d(channels, self.filter_dim, 3, padding=1)
        init_tower(self.class_tower)
        init_tower(self.filter_tower)
        init_head_conv(self.class_out, prior=FOCAL_PRIOR)
        init_head_conv(self.filter_out)
        # Panoptic FPN-style merge to stride 8: one conv at stride 8, else conv + 2x up per octave above 8.
        self.level_branches = nn.ModuleList(merge_branch(channels, branch_channels, (s // 8).bit_length() - 1)
                                            for s in self.strides)
        self.generator = nn.Sequential(conv_gn_relu(branch_channels + 2, branch_channels),
                                       conv_gn_relu(branch_channels, branch_channels))
        self.deconv = nn.ConvTranspose2d(branch_channels, self.feature_dim, 2, stride=2)
        # One FC turns a D-dim sampled filter into the 1x1 kernel over the Panoptic-Feature.
        self.filter_fc = nn.Linear(self.filter_dim, self.feature_dim, bias=False)
        self.stuff_filters = nn.Parameter(torch.randn(len(self.stuff_ids), self.filter_dim) * 0.01)
        self.contour_head = nn.Conv2d(self.feature_dim, FEATURE_STRIDE ** 2, 1)  # training only
        self.triplet_fc = nn.Linear(self.feature_dim, self.feature_dim)  # training only

    def forward(self, x: Tensor) -> dict[str, Tensor | list[Tensor]]:
        self.check_input(x)
        c2, c3, c4, c5 = self.backbone(x)
        levels = self.fpn([F.avg_pool2d(c2, 2), c3, c4, c5])
        class_logits, filters = [], []
        for p in levels:
            class_logits.append(self.class_out(self.class_tower(p)))
            filters.append(self.filter_out(self.filter_tower(with_coordinates(p))))
        merged = self.level_branches[0](levels[0])
        for p, branch in zip(levels[1:], self.level_branches[1:], strict=True):
            merged = merged + branch(p)
        feature = self.deconv(self.generator(with_coordinates(merged)))
        outputs: dict[str, Tensor | list[Tensor]] = {"class_logits": class_logits, "filters": filters,
                                                     "panoptic_feature": feature}
        if self.training:
            outputs["contour"] = F.pixel_shuffle(self.contour_head(feature), FEATURE_STRIDE)
        return outputs

    def dynamic_mask_logits(self, panoptic_feature: Tensor, filters: Tensor) -> Tensor:
        """The single-shot 1x1 convolution: (B,F,h,w) feature, (B,N,D) filters -> (B,N,h,w) mask logits.

        Thing filters come from the filter head at sampled locations, stuff filters from
        `stuff_filters`; both pass `filter_fc` (D -> F) first. No coordinates are added here:
        the Panoptic-Feature already carries them (CoordConv in the generator).
        """
        b, f, h, w = panoptic_feature.shape
        kernels = self.filter_fc(filters)  # (B, N, F)
        return torch.bmm(kernels, panoptic_feature.reshape(b, f, h * w)).reshape(b, -1, h, w)

    def stuff_mask_logits(self, panoptic_feature: Tensor) -> Tensor:
        """Stuff logits (B, N_stuff, h, w): channel s is stuff class stuff_ids[s]."""
        filters = self.stuff_filters.unsqueeze(0).expand(panoptic_feature.shape[0], -1, -1)
        return self.dynamic_mask_logits(panoptic_feature, filters)

    def triplet_embedding(self, pooled: Tensor) -> Tensor:
        """FC of mask-averaged Panoptic-Feature vectors (..., F) for the intra-class triplet loss (training only)."""
        return self.triplet_fc(pooled)
