"""A straightforward full-resolution Panoptic-DeepLab post-processing in eager PyTorch, the yardstick
`panoptic-ros bench fusion --versus-deeplab` times PSN's static fusion against (issue #12 item 8).

It does what detectron2's `projects/Panoptic-DeepLab/.../post_processing.py` does, the usual way:
threshold + max-pool NMS of the centre heatmap and a top-k, the distance of every pixel's target to
every centre at once ((P, H*W)), then a Python loop over instances (majority class by `torch.mode`)
and over stuff classes (area filter). One change makes it faster, not slower, than detectron2's:
squared distances per coordinate ((P, 1) against (1, H*W)) instead of `torch.norm` of a
(P, H*W, 2) difference (the same arg-min). Data-dependent shapes and loops: eager only, never exported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def find_instance_center(center: Tensor, threshold: float, nms_kernel: int, top_k: int) -> Tensor:
    """(H, W) heatmap -> (P, 2) int64 (y, x) of the centres: window maxima above threshold, best top_k."""
    heatmap = F.threshold(center, threshold, -1.0)
    pooled = F.max_pool2d(heatmap[None, None], nms_kernel, stride=1, padding=nms_kernel // 2)[0, 0]
    heatmap = torch.where(heatmap == pooled, heatmap, torch.full_like(heatmap, -1.0))
    top = torch.topk(heatmap.flatten(), min(top_k, heatmap.numel())).values[-1].clamp(min=0)
    return torch.nonzero(heatmap > top)


def group_pixels(centres: Tensor, offset: Tensor) -> Tensor:
    """(H, W) int64: 1 + the index of the centre closest to each pixel's position + offset."""
    height, width = offset.shape[1:]
    ys, xs = torch.meshgrid(torch.arange(height, dtype=offset.dtype), torch.arange(width, dtype=offset.dtype),
                            indexing="ij")
    target_y, target_x = (ys + offset[0]).reshape(1, -1), (xs + offset[1]).reshape(1, -1)
    centre_y, centre_x = (c.to(offset.dtype)[:, None] for c in centres.unbind(dim=1))
    distance = (target_y - centre_y) ** 2 + (target_x - centre_x) ** 2  # (P, H*W)
    return torch.argmin(distance, dim=0).reshape(height, width) + 1


def panoptic_deeplab(semantic_logits: Tensor, center: Tensor, offset: Tensor, thing_ids: list[int],
                     label_divisor: int, stuff_area: int, threshold: float, nms_kernel: int, top_k: int) -> Tensor:
    """(C, H, W) logits, (H, W) heatmap, (2, H, W) offsets -> (H, W) int64 panoptic ids (void -1)."""
    semantic = semantic_logits.argmax(dim=0)
    thing = torch.zeros_like(semantic, dtype=torch.bool)
    for class_id in thing_ids:
        thing |= semantic == class_id
    centres = find_instance_center(center, threshold, nms_kernel, top_k)
    instance = group_pixels(centres, offset) * thing if len(centres) else torch.zeros_like(semantic)
    panoptic = torch.full_like(semantic, -1)
    numbers: dict[int, int] = {}
    for instance_id in torch.unique(instance).tolist():
        if instance_id == 0:
            continue
        mask = instance == instance_id
        class_id = int(torch.mode(semantic[mask]).values)
        numbers[class_id] = numbers.get(class_id, 0) + 1
        panoptic[mask] = class_id * label_divisor + numbers[class_id]
    for class_id in torch.unique(semantic).tolist():
        if class_id in thing_ids:
            continue
        mask = (semantic == class_id) & (instance == 0)
        if int(mask.sum()) >= stuff_area:
            panoptic[mask] = class_id * label_divisor
    return panoptic
