"""FPSNet: fast panoptic segmentation network (de Geus, Meletis, Dubbelman, RA-L 2020).

A RetinaNet detector (ResNet-FPN P3-P7, P6 from C5; classification and box subnets of four
3x3 conv + ReLU) provides boxes. P3, P4, P5 are merged into one stride-8 feature map
S = S3 + S4 + S5 (each step a 3x3 conv + ReLU, then 2x bilinear upsampling). Detected boxes
become soft attention masks (`gaussian_attention_masks`), are concatenated to S, and the
panoptic head (3x3 merge conv and four 3x3 convs with BN + ReLU, then a 1x1 conv) predicts
N_att instance channels and N_stuff stuff channels. Training adds two channels: ground-truth
instances matched to no attention mask, and unlabeled pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from panoptic_ros.classes import LabelSet
from panoptic_ros.networks.base import PanopticNetwork
from panoptic_ros.networks.box_coding import level_points
from panoptic_ros.networks.fpn import FPN
from panoptic_ros.networks.layers import (
    FOCAL_PRIOR,
    conv_bn_relu,
    init_head_conv,
    init_tower,
    scale_channels,
    tower,
    upsample,
)

FEATURE_STRIDE = 8
NUM_EXTRA_CHANNELS = 2  # training only: "unmatched thing instance" and "unlabeled"


def gaussian_attention_masks(boxes: Tensor, valid: Tensor, out_hw: tuple[int, int], stride: int,
                             scale: float = 50.0) -> Tensor:
    """Soft attention masks of FPSNet: (B, N, h, w) from boxes (B, N, 4) x1y1x2y2 in input pixels.

    Inside a box the mask is exp(-1/2 (X-C) S^-1 (X-C)^T) with C the box centre and standard
    deviations w/4 and h/4 (1 at the centre, exp(-2) at the middle of each side); outside it is
    0. Boxes thinner than one cell count as one cell wide so that each marks at least its own
    cell. Masks of boxes with valid == 0 are all zero. Values are multiplied by `scale` (C_att).
    Cells are sampled at their centres (`level_points`).
    """
    h, w = out_hw
    points = level_points(h, w, stride, device=boxes.device).to(boxes.dtype)
    px = points[:, 0].reshape(1, 1, h, w)
    py = points[:, 1].reshape(1, 1, h, w)
    x1, y1, x2, y2 = (boxes[..., i, None, None] for i in range(4))
    cx, cy = (x1 + x2) * 0.5, (y1 + y2) * 0.5
    half_w = ((x2 - x1) * 0.5).clamp(min=stride * 0.5)
    half_h = ((y2 - y1) * 0.5).clamp(min=stride * 0.5)
    dx, dy = (px - cx) / (half_w * 0.5), (py - cy) / (half_h * 0.5)
    inside = ((px - cx).abs() <= half_w) & ((py - cy).abs() <= half_h)
    masks = torch.exp(-0.5 * (dx * dx + dy * dy)) * inside.to(boxes.dtype)
    return masks * (valid.to(boxes.dtype) * scale)[..., None, None]


def flatten_anchor_predictions(x: Tensor, per_anchor: int) -> Tensor:
    """(B, A*K, h, w) head output -> (B, h*w*A, K), the row order of `retinanet_anchors` (cell-major, then anchor).

    Channel a*K + k of the head is value k of anchor a.
    """
    b, _, h, w = x.shape
    return x.reshape(b, -1, per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, per_anchor)


class FPSNet(PanopticNetwork):
    """forward -> {"box_cls": [(B,A*T,h,w)], "box_reg": [(B,A*4,h,w)] anchor deltas, "features": (B,F,H/8,W/8)}
    (channel a*T + t: anchor a, class t; see `flatten_anchor_predictions`);
    `panoptic_head(features, attention_masks)` -> (B, N_att + N_stuff, H/8, W/8) logits."""

    model_name = "fpsnet"
    default_backbone = "resnet50"
    strides = (8, 16, 32, 64, 128)
    anchor_ratios = tuple((0.5, 1.0, 2.0) for _ in strides)  # height / width
    # RetinaNet: areas 32^2 .. 512^2 on P3..P7, three octave scales per level.
    anchor_sizes = tuple(tuple(32.0 * 2 ** i * 2 ** (k / 3) for k in range(3)) for i in range(len(strides)))

    def __init__(self, label_set: LabelSet, width: float = 1.0, backbone: str | None = None,
                 num_attention: int = 50, attention_scale: float = 50.0) -> None:
        super().__init__(label_set, width, backbone)
        channels = scale_channels(256, width)
        feature_channels = scale_channels(128, width)
        self.num_attention = num_attention
        self.attention_scale = attention_scale
        self.num_anchors = len(self.anchor_sizes[0]) * len(self.anchor_ratios[0])
        self.fpn = FPN(self.backbone.out_channels[1:], (8, 16, 32), channels, extra_levels=2, extra_from="c5")
        self.cls_subnet = tower(channels, channels, 4, "none")
        self.box_subnet = tower(channels, channels, 4, "none")
        self.cls_score = nn.Conv2d(channels, self.num_anchors * self.num_things, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, self.num_anchors * 4, 3, padding=1)
        init_tower(self.cls_subnet)
        init_tower(self.box_subnet)
        init_head_conv(self.cls_score, prior=FOCAL_PRIOR)
        init_head_conv(self.bbox_pred)
        # S3 = conv(P3); S4 = up(conv(P4)); S5 = up(conv(up(conv(P5)))); every conv 3x3 + ReLU.
        self.s3 = nn.Sequential(nn.Conv2d(channels, feature_channels, 3, padding=1), nn.ReLU(inplace=True))
        self.s4 = nn.Sequential(nn.Conv2d(channels, feature_channels, 3, padding=1), nn.ReLU(inplace=True))
        self.s5 = nn.ModuleList([
            nn.Sequential(nn.Conv2d(channels, feature_channels, 3, padding=1), nn.ReLU(inplace=True)),
            nn.Sequential(nn.Conv2d(feature_channels, feature_channels, 3, padding=1), nn.ReLU(inplace=True))])
        self.merge = conv_bn_relu(feature_channels + num_attention, feature_channels)
        self.head = nn.Sequential(*(conv_bn_relu(feature_channels, feature_channels) for _ in range(4)))
        self.num_outputs = num_attention + len(self.stuff_ids)
        self.classifier = nn.Conv2d(feature_channels, self.num_outputs + NUM_EXTRA_CHANNELS, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor | list[Tensor]]:
        self.check_input(x)
        p3, p4, p5, p6, p7 = self.fpn(self.backbone(x)[1:])
        box_cls, box_reg = [], []
        for p in (p3, p4, p5, p6, p7):
            box_cls.append(self.cls_score(self.cls_subnet(p)))
            box_reg.append(self.bbox_pred(self.box_subnet(p)))
        s5 = upsample(self.s5[1](upsample(self.s5[0](p5), 2)), 2)
        features = self.s3(p3) + upsample(self.s4(p4), 2) + s5
        return {"box_cls": box_cls, "box_reg": box_reg, "features": features}

    def panoptic_head(self, features: Tensor, attention_masks: Tensor, include_extra: bool = False) -> Tensor:
        """Panoptic logits at stride 8 from S (B,F,h,w) and attention masks (B,N_att,h,w) already scaled by C_att.

        Channel n < N_att belongs to attention mask n; channel N_att + s to stuff class stuff_ids[s].
        With include_extra (training), two more channels follow: unmatched instances, unlabeled.
        """
        if attention_masks.shape[1] != self.num_attention or attention_masks.shape[-2:] != features.shape[-2:]:
            raise ValueError(f"fpsnet: attention masks must be (B, {self.num_attention}, "
                             f"{features.shape[-2]}, {features.shape[-1]}), got {tuple(attention_masks.shape)}")
        logits = self.classifier(self.head(self.merge(torch.cat((features, attention_masks), dim=1))))
        return logits if include_extra else logits[:, :self.num_outputs]
