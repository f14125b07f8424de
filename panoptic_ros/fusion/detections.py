"""Dense per-level detections -> the K best boxes after class-aware greedy NMS (RTPS, LPSNet, FPSNet).

Every location (or anchor) of every level predicts one box; its class is the arg-max of the class
probabilities, it is a candidate when that probability exceeds score_threshold, and candidates
are ranked by a method-specific score (class probability times centerness / border-ness, or the
probability alone). The best PRE_NMS_TOP go through NMS, the best K survivors are returned.
Boxes are clipped to the image first, as FCOS and RetinaNet do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from panoptic_ros.fusion.static_ops import greedy_nms, index_op_input, pairwise_box_iou, top_candidates
from panoptic_ros.networks.box_coding import level_points, ltrb_to_boxes
from panoptic_ros.pipeline_io import HEAD_BOX_CLS, HEAD_BOX_REG

if TYPE_CHECKING:  # (base imports the assembler; only the types are needed here)
    from panoptic_ros.fusion.base import Heads, RuntimeThresholds

PRE_NMS_TOP = 1000  # candidates entering NMS (FCOS keeps 1000 per level; one pool is enough here)


class Detections(NamedTuple):
    """K boxes best first: boxes (K, 4) x1y1x2y2 pixels, thing index (K,) into thing_ids, score (K,),
    valid (K,) bool, level (K,) int64 index of the level the box came from; converged (0-d bool)
    NMS reached its fixed point; dropped (0-d int64) NMS survivors beyond K."""

    boxes: Tensor
    thing: Tensor
    score: Tensor
    valid: Tensor
    level: Tensor
    converged: Tensor
    dropped: Tensor


def flatten_locations(maps: list[Tensor]) -> Tensor:
    """Per-level maps (1, C, h, w) -> (sum of h*w, C): row-major locations, levels concatenated."""
    return torch.cat([m[0].permute(1, 2, 0).reshape(-1, m.shape[1]) for m in maps], dim=0)


def level_index(sizes: list[int], device: torch.device) -> Tensor:
    """(sum of sizes,) int64: the level each flattened row belongs to."""
    return torch.cat([torch.full((n,), i, dtype=torch.int64, device=device) for i, n in enumerate(sizes)])


def clip_boxes(boxes: Tensor, height: int, width: int) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(dim=-1)
    return torch.stack((x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width), y2.clamp(0, height)), dim=-1)


def level_boxes(box_reg: list[Tensor], strides: tuple[int, ...], image_size: tuple[int, int]) -> list[Tensor]:
    """Per-level (1, 4, h, w) (l, t, r, b) distances -> per-level (h*w, 4) x1y1x2y2 boxes clipped to the image."""
    boxes = []
    for reg, stride in zip(box_reg, strides, strict=True):
        h, w = reg.shape[-2:]
        points = level_points(h, w, stride, device=reg.device)
        boxes.append(clip_boxes(ltrb_to_boxes(points, flatten_locations([reg])), *image_size))
    return boxes


def select_detections(boxes: Tensor, class_prob: Tensor, rank_score: Tensor, level: Tensor, score_threshold: Tensor,
                      nms_iou: Tensor, k: int) -> Detections:
    """boxes (N, 4) clipped, class_prob (N, T), rank_score (N,) >= 0, level (N,) -> the K best after NMS."""
    probability, thing = index_op_input(class_prob).max(dim=1)
    pre_nms = min(PRE_NMS_TOP, boxes.shape[0])
    index, score, valid = top_candidates(rank_score, probability > score_threshold, pre_nms)
    boxes = boxes[index]
    thing = thing[index]
    same_class = thing[:, None] == thing[None, :]
    keep, converged = greedy_nms(pairwise_box_iou(boxes, boxes) * same_class.to(boxes.dtype), valid, nms_iou)
    slots = min(k, pre_nms)
    best, _, kept = top_candidates(score, keep, slots)
    dropped = torch.maximum(keep.to(torch.int64).sum() - slots, torch.zeros((), dtype=torch.int64))
    detections = Detections(boxes[best], thing[best], score[best], kept, level[index][best], converged, dropped)
    return _pad(detections, k) if best.shape[0] < k else detections


def _pad(detections: Detections, k: int) -> Detections:
    """Fewer locations than K (tiny images): append invalid all-zero rows."""
    missing = k - detections.valid.shape[0]
    padded = (torch.cat((t, torch.zeros((missing, *t.shape[1:]), dtype=t.dtype, device=t.device)))
              for t in detections[:5])
    return Detections(*padded, detections.converged, detections.dropped)


def quality_ranked_detections(heads: Heads, quality_head: str, strides: tuple[int, ...], image_size: tuple[int, int],
                              thresholds: RuntimeThresholds, k: int) -> Detections:
    """FCOS-style dense boxes of every level ranked by the best class probability times the sigmoid of a
    per-location quality head (RTPS' centerness, LPSNet's border-ness), then NMS: the k best."""
    per_level = level_boxes(heads[HEAD_BOX_REG], strides, image_size)
    class_prob = torch.sigmoid(flatten_locations(heads[HEAD_BOX_CLS]))
    quality = torch.sigmoid(flatten_locations(heads[quality_head]))[:, 0]
    levels = level_index([b.shape[0] for b in per_level], class_prob.device)
    return select_detections(torch.cat(per_level), class_prob, class_prob.amax(dim=1) * quality, levels,
                             thresholds.score_threshold, thresholds.nms_iou, k)
