"""LPSNet targets (Hong et al. sec. 3.2-3.3): in-mask positives, box distances, border-ness, semantics.

- per level (lists over P3-P7): "cls", "cls_weight", "reg", "pos", "instance" from
  `fcos_level_targets` (FCOS size ranges, which LPSNet inherits from FCOS);
- "borderness" per level (B, h, w): sqrt(min(l*,r*)/max(l*,r*) * min(t*,b*)/max(t*,b*)) where
  l*, t*, r*, b* are the distances from the cell's sample point to the instance MASK's border
  along its row and column (eq. 1), 0 off positives;
- "semantic" (B, H, W): the class map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from panoptic_ros.training.targets.common import (
    FCOS_SIZE_RANGES,
    check_ground_truth,
    fcos_level_targets,
    instance_pixels,
    instance_table,
    ratio_quality,
    sample_at_stride,
)


def _run_starts(labels: Tensor) -> Tensor:
    """For each pixel of (B, H, W), the column where its run of equal labels along the row starts."""
    w = labels.shape[-1]
    cols = torch.arange(w, device=labels.device).expand_as(labels)
    change = torch.ones_like(labels, dtype=torch.bool)
    change[..., 1:] = labels[..., 1:] != labels[..., :-1]
    return torch.cummax(torch.where(change, cols, 0), dim=-1).values


def mask_border_distances(instance_ids: Tensor) -> Tensor:
    """(B, H, W, 4) distances l*, t*, r*, b* from each pixel to the border of its region of equal id.

    Pixel (i, j) is the point (x, y) = (j, i) as in `level_points`; its run along the row spans
    columns [start, end], so l* = j - start and r* = end + 1 - j (likewise t*, b* along the column):
    for a rectangle these equal the distances to its box.
    """
    h, w = instance_ids.shape[-2:]
    left = torch.arange(w, device=instance_ids.device) - _run_starts(instance_ids)
    right = torch.arange(w, device=instance_ids.device).flip(0) - _run_starts(instance_ids.flip(-1)).flip(-1) + 1
    rows = instance_ids.transpose(-1, -2)
    top = (torch.arange(h, device=instance_ids.device) - _run_starts(rows)).transpose(-1, -2)
    bottom = (torch.arange(h, device=instance_ids.device).flip(0) - _run_starts(rows.flip(-1)).flip(-1) + 1)
    return torch.stack((left, top, right, bottom.transpose(-1, -2)), dim=-1).float()


def lpsnet_targets(class_map: Tensor, instance_map: Tensor, thing_ids: Sequence[int], strides: Sequence[int],
                   size_ranges: Sequence[tuple[float, float]] = FCOS_SIZE_RANGES) -> dict:
    """Targets of LPSNet for a batch of panoptic ground truths (see module doc)."""
    check_ground_truth(class_map, instance_map, multiple=max(strides))
    table = instance_table(class_map, instance_map, thing_ids)
    targets: dict = fcos_level_targets(class_map, instance_map, thing_ids, strides, size_ranges, table)
    inst = instance_pixels(class_map, instance_map, thing_ids)
    # Border distances at full resolution, then read at each level's sample pixels.
    quality = ratio_quality(mask_border_distances(inst))
    targets["borderness"] = [sample_at_stride(quality, s) * pos for s, pos in zip(strides, targets["pos"], strict=True)]
    targets["semantic"] = class_map
    return targets
