"""SPINet targets (Hwang et al. sec. 3-5): filter-sampling labels, stride-4 masks, soft inter-class contours.

- per level (lists over the network's levels): "cls" (B, h, w) thing index or -1, "cls_weight",
  "instance" (B, h, w) id of the instance whose mask holds the cell's sample pixel (0 = none).
  Every level is assigned every instance (the paper states no size ranges);
- "instance_s4", "class_s4" (B, H/4, W/4): instance ids and classes at stride 4, where the
  Panoptic-Feature and its mask losses live;
- "stuff_s4" (B, H/4, W/4): index s of stuff class stuff_ids[s], VOID_CLASS at thing and void pixels;
- "contour" (B, 1, H, W): soft inter-class contours, exp(-d^2 / 2) of the distance d (pixels)
  to the nearest pixel whose right or lower neighbour has another (non-void) class;
- "gt_ids", "gt_classes", "gt_boxes", "gt_areas", "gt_valid": the instance table.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from panoptic_ros.classes import VOID_CLASS
from panoptic_ros.training.targets.common import (
    check_ground_truth,
    fcos_level_targets,
    instance_pixels,
    instance_table,
    sample_at_stride,
)

FEATURE_STRIDE = 4
CONTOUR_SIGMA = 1.0


def class_boundaries(class_map: Tensor) -> Tensor:
    """(B, H, W) bool: pixels whose right or lower neighbour has a different class, neither being void."""
    boundary = torch.zeros_like(class_map, dtype=torch.bool)
    valid = class_map != VOID_CLASS
    horizontal = (class_map[..., :, 1:] != class_map[..., :, :-1]) & valid[..., :, 1:] & valid[..., :, :-1]
    vertical = (class_map[..., 1:, :] != class_map[..., :-1, :]) & valid[..., 1:, :] & valid[..., :-1, :]
    boundary[..., :, :-1] |= horizontal
    boundary[..., :, 1:] |= horizontal
    boundary[..., :-1, :] |= vertical
    boundary[..., 1:, :] |= vertical
    return boundary


def soft_contours(class_map: Tensor, sigma: float = CONTOUR_SIGMA) -> Tensor:
    """(B, 1, H, W) soft contour target: exp(-d^2 / (2 sigma^2)) of the distance d to `class_boundaries`."""
    boundary = class_boundaries(class_map).cpu().numpy()
    soft = np.zeros(boundary.shape, np.float32)
    for i, b in enumerate(boundary):
        if b.any():
            distance = cv2.distanceTransform((~b).astype(np.uint8), cv2.DIST_L2, 5)
            soft[i] = np.exp(-distance ** 2 / (2 * sigma ** 2))
    return torch.from_numpy(soft).unsqueeze(1).to(class_map.device)


def spinet_targets(class_map: Tensor, instance_map: Tensor, thing_ids: Sequence[int], stuff_ids: Sequence[int],
                   strides: Sequence[int]) -> dict:
    """Targets of SPINet for a batch of panoptic ground truths (see module doc)."""
    check_ground_truth(class_map, instance_map, multiple=max(strides))
    table = instance_table(class_map, instance_map, thing_ids)
    everything = [(0.0, float("inf"))] * len(strides)
    levels = fcos_level_targets(class_map, instance_map, thing_ids, strides, everything, table)
    stuff_lut = torch.full((256,), VOID_CLASS, dtype=torch.int64, device=class_map.device)
    stuff_lut[torch.as_tensor(stuff_ids, dtype=torch.int64, device=class_map.device)] = torch.arange(
        len(stuff_ids), device=class_map.device)
    class_s4 = sample_at_stride(class_map, FEATURE_STRIDE)
    return {"cls": levels["cls"], "cls_weight": levels["cls_weight"], "instance": levels["instance"],
            "instance_s4": sample_at_stride(instance_pixels(class_map, instance_map, thing_ids), FEATURE_STRIDE),
            "class_s4": class_s4, "stuff_s4": stuff_lut[class_s4.clamp(0, 255)],
            "contour": soft_contours(class_map), **table.as_dict()}
