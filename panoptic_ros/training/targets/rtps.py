"""RTPS targets (Hou et al. sec. 4.1-4.3): FCOS targets with in-mask foreground, levelness, semantics, masks.

- per level (lists over P3-P7): "cls", "cls_weight", "reg", "pos", "instance" from
  `fcos_level_targets`, and "centerness" (B, h, w) = sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b));
- "levelness" (B, H/4, W/4): 0 outside instances, 1 + the level whose size range holds
  max(l, t, r, b) of the pixel's instance box, VOID_CLASS at void and crowd pixels;
- "semantic" (B, H, W): the class map;
- "instance_s4" (B, H/4, W/4): instance ids at stride 4, for the explicit mask loss;
- "gt_ids", "gt_classes", "gt_boxes", "gt_areas", "gt_valid": the instance table.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from panoptic_ros.classes import VOID_CLASS
from panoptic_ros.training.targets.common import (
    FCOS_SIZE_RANGES,
    box_distances,
    check_ground_truth,
    fcos_level_targets,
    ignored_pixels,
    instance_pixels,
    instance_table,
    level_of_size,
    ratio_quality,
    sample_at_stride,
)

OUTPUT_STRIDE = 4


def rtps_targets(class_map: Tensor, instance_map: Tensor, thing_ids: Sequence[int], strides: Sequence[int],
                 size_ranges: Sequence[tuple[float, float]] = FCOS_SIZE_RANGES) -> dict:
    """Targets of RTPS for a batch of panoptic ground truths (see module doc)."""
    check_ground_truth(class_map, instance_map, multiple=max(strides))
    table = instance_table(class_map, instance_map, thing_ids)
    targets: dict = fcos_level_targets(class_map, instance_map, thing_ids, strides, size_ranges, table)
    targets["centerness"] = [ratio_quality(reg.permute(0, 2, 3, 1)) * pos
                             for reg, pos in zip(targets["reg"], targets["pos"], strict=True)]
    ids = sample_at_stride(instance_pixels(class_map, instance_map, thing_ids), OUTPUT_STRIDE)
    level = level_of_size(box_distances(ids, table, OUTPUT_STRIDE).max(dim=-1).values, size_ranges)
    levelness = torch.where(ids > 0, level + 1, 0)
    ignored = sample_at_stride(ignored_pixels(class_map, instance_map, thing_ids), OUTPUT_STRIDE)
    targets["levelness"] = torch.where(ignored, VOID_CLASS, levelness)
    targets["semantic"] = class_map
    targets["instance_s4"] = ids
    targets.update(table.as_dict())
    return targets
