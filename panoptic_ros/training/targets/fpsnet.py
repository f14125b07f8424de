"""FPSNet targets (de Geus et al. sec. III): RetinaNet anchor targets plus what the panoptic head needs.

RetinaNet (Lin et al.) assignment per level, anchors from `retinanet_anchors` in the layout of
the network's outputs (cell-major, then anchor): an anchor is positive for the box it overlaps
most if IoU >= 0.5, negative if its best IoU < 0.4, ignored in between; each ground-truth box
also claims the anchors it overlaps most (Detectron2's low-quality matches), so small objects
are never left without one.
- per level: "anchor_cls" (B, h*w*A) thing index, -1 negative, -2 ignored; "anchor_deltas"
  (B, h*w*A, 4) `encode_deltas` to the matched box (0 off positives);
- "gt_ids", "gt_classes", "gt_boxes", "gt_areas", "gt_valid": the instance table, matched to
  detections (or used directly) when the attention masks are built during training;
- "class_map", "instance_map": the ground truth itself, from which the panoptic target is made
  once the attention masks are matched (`panoptic_target`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from panoptic_ros.classes import VOID_CLASS
from panoptic_ros.networks.box_coding import box_iou, encode_deltas, retinanet_anchors
from panoptic_ros.training.targets.common import check_ground_truth, instance_pixels, instance_table

POSITIVE_IOU = 0.5
NEGATIVE_IOU = 0.4
NEGATIVE = -1
IGNORED = -2


def fpsnet_targets(class_map: Tensor, instance_map: Tensor, thing_ids: Sequence[int], strides: Sequence[int],
                   anchor_sizes: Sequence[Sequence[float]], anchor_ratios: Sequence[Sequence[float]]) -> dict:
    """Targets of FPSNet for a batch of panoptic ground truths (see module doc)."""
    check_ground_truth(class_map, instance_map, multiple=max(strides))
    table = instance_table(class_map, instance_map, thing_ids)
    b, h, w = class_map.shape
    anchors = [retinanet_anchors(h // s, w // s, s, sizes, ratios, device=class_map.device)
               for s, sizes, ratios in zip(strides, anchor_sizes, anchor_ratios, strict=True)]
    counts = [len(a) for a in anchors]
    all_anchors = torch.cat(anchors)
    iou = box_iou(all_anchors.expand(b, -1, -1), table.boxes) * table.valid[:, None, :]  # (B, A_all, M)
    best_iou, best_gt = iou.max(dim=2)
    labels = torch.full(best_iou.shape, IGNORED, dtype=torch.int64, device=class_map.device)
    labels[best_iou < NEGATIVE_IOU] = NEGATIVE
    positive = best_iou >= POSITIVE_IOU
    # Low-quality matches: every valid box keeps the anchors that overlap it most.
    gt_best = iou.max(dim=1, keepdim=True).values  # (B, 1, M)
    claimed = (iou == gt_best) & (gt_best > 0) & table.valid[:, None, :]
    positive |= claimed.any(dim=2)
    best_gt = torch.where(claimed.any(dim=2), claimed.float().argmax(dim=2), best_gt)
    labels = torch.where(positive, torch.gather(table.classes, 1, best_gt), labels)
    matched = torch.gather(table.boxes, 1, best_gt[..., None].expand(-1, -1, 4))
    deltas = encode_deltas(all_anchors.expand(b, -1, -1), matched) * positive[..., None]
    return {"anchor_cls": list(labels.split(counts, dim=1)), "anchor_deltas": list(deltas.split(counts, dim=1)),
            "class_map": class_map, "instance_map": instance_map, **table.as_dict()}


def panoptic_target(class_map: Tensor, instance_map: Tensor, thing_ids: Sequence[int], stuff_ids: Sequence[int],
                    slot_ids: Tensor, num_attention: int) -> Tensor:
    """The panoptic head's per-pixel target (B, H, W) once attention masks are matched to instances.

    slot_ids (B, N_att): the instance id whose attention mask sits in each channel (0 = none).
    Pixels of a matched instance -> its channel; stuff class stuff_ids[s] -> N_att + s; pixels of a
    thing instance no mask is matched to (and crowd) -> N_att + N_stuff; void -> N_att + N_stuff + 1.
    """
    n_stuff = len(stuff_ids)
    unmatched, unlabeled = num_attention + n_stuff, num_attention + n_stuff + 1
    stuff_lut = torch.full((256,), unmatched, dtype=torch.int64, device=class_map.device)
    stuff_lut[torch.as_tensor(stuff_ids, dtype=torch.int64, device=class_map.device)] = torch.arange(
        num_attention, num_attention + n_stuff, device=class_map.device)
    stuff_lut[VOID_CLASS] = unlabeled
    target = stuff_lut[class_map.clamp(0, 255)]
    inst = instance_pixels(class_map, instance_map, thing_ids)
    for n in range(slot_ids.shape[1]):
        slot = slot_ids[:, n, None, None]
        target = torch.where((inst == slot) & (slot > 0), n, target)
    return target
