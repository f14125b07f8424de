"""RTPS loss (Hou et al. eq. 19): L = L_box_reg + L_center + L_levelness + L_box_cls + l L_semantics + L_mask.

L_box_reg: IoU loss on in-mask positives / N_fg (eq. 11); L_center: centerness BCE / N_fg
(eq. 12); L_box_cls: sigmoid focal loss; L_levelness: cross entropy (eq. 13); L_semantics:
cross entropy bootstrapped to the worst 30% of pixels (eq. 15, l = 1 as on Cityscapes);
L_mask: the explicit mask loss of eq. 16-18 on query boxes chosen by NMS among the boxes
predicted at foreground locations, each against the ground-truth mask of its location's
instance, with the dense boxes B(x, y) assembled by the predicted levelness (eq. 14).

Deviation: the box-class focal loss is divided by N_fg, as in FCOS and RetinaNet; the paper's
text averages it over all locations, which shrinks it by the (large) background/foreground ratio.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from panoptic_ros.classes import VOID_CLASS
from panoptic_ros.networks.box_coding import box_iou, dense_level_boxes, level_points, ltrb_to_boxes
from panoptic_ros.training.losses.common import (
    dense_focal_loss,
    fcos_box_losses,
    greedy_nms,
    hard_pixel_cross_entropy,
    weighted_sum,
)

WEIGHTS = {"box_reg": 1.0, "centerness": 1.0, "levelness": 1.0, "box_cls": 1.0, "semantic": 1.0, "mask": 1.0}
BOOTSTRAP_RATIO = 0.3
OUTPUT_STRIDE = 4
MAX_QUERIES = 50
QUERY_NMS_IOU = 0.6


def _query_candidates(outputs: dict, targets: dict, strides: list[int], image: int) -> tuple[Tensor, Tensor, Tensor]:
    """Predicted boxes (N, 4), detached scores (N,) and instance ids (N,) at the foreground cells of one image."""
    boxes, scores, ids = [], [], []
    for level, stride in enumerate(strides):
        pos = targets["pos"][level][image]
        h, w = pos.shape
        points = level_points(h, w, stride, device=pos.device)[pos.flatten()]
        ltrb = outputs["box_reg"][level][image].reshape(4, -1).t()[pos.flatten()]
        boxes.append(ltrb_to_boxes(points, ltrb))
        cls = torch.sigmoid(outputs["box_cls"][level][image].reshape(-1, h * w).t()[pos.flatten()]).max(dim=1).values
        centerness = torch.sigmoid(outputs["centerness"][level][image].reshape(-1)[pos.flatten()])
        scores.append((cls * centerness).detach())
        ids.append(targets["instance"][level][image][pos])
    return torch.cat(boxes), torch.cat(scores), torch.cat(ids)


def explicit_mask_loss(outputs: dict, targets: dict, strides: list[int]) -> Tensor:
    """Eq. 16: mean over queries j of beta_j / N_j (E_FP_j + E_FN_j), at stride 4."""
    dense = dense_level_boxes(outputs["box_reg"], strides, OUTPUT_STRIDE)  # (B, L, 4, h, w)
    level = outputs["levelness"].argmax(dim=1)  # 0 = no instance: such pixels have no box
    b, num_levels, _, h, w = dense.shape
    picked = torch.gather(dense, 1, (level - 1).clamp(min=0)[:, None, None].expand(b, 1, 4, h, w))[:, 0]
    pixel_boxes = (picked * (level > 0)[:, None]).reshape(b, 4, h * w).transpose(1, 2)  # (B, h*w, 4)
    losses = []
    for i in range(b):
        boxes, scores, ids = _query_candidates(outputs, targets, strides, i)
        if len(boxes) == 0:
            continue
        keep = greedy_nms(boxes.detach(), scores, QUERY_NMS_IOU, MAX_QUERIES)
        queries, query_ids = boxes[keep], ids[keep]
        match = query_ids[:, None] == targets["gt_ids"][i][None, :]  # (Q, M)
        gt_boxes = targets["gt_boxes"][i][match.float().argmax(dim=1)]
        beta = box_iou(queries.detach()[:, None], gt_boxes[:, None])[:, 0, 0]
        in_mask = (targets["instance_s4"][i].reshape(1, -1) == query_ids[:, None]).to(queries.dtype)  # (Q, h*w)
        iou = box_iou(queries, pixel_boxes[i])  # (Q, h*w)
        false_positive = (iou * (1 - in_mask)).sum(dim=1)
        false_negative = ((1 - iou) * in_mask).sum(dim=1)
        losses.append(beta / in_mask.sum(dim=1).clamp(min=1) * (false_positive + false_negative))
    if not losses:
        return outputs["box_reg"][0].sum() * 0.0
    return torch.cat(losses).mean()


def rtps_loss(outputs: dict, targets: dict) -> tuple[Tensor, dict[str, Tensor]]:
    """(total, weighted terms "box_reg", "centerness", "levelness", "box_cls", "semantic", "mask")."""
    height = targets["semantic"].shape[-2]
    strides = [height // reg.shape[-2] for reg in outputs["box_reg"]]
    box_reg, centerness, count = fcos_box_losses(outputs["box_reg"], outputs["centerness"], targets, "centerness")
    terms = {
        "box_reg": box_reg,
        "centerness": centerness,
        "levelness": F.cross_entropy(outputs["levelness"], targets["levelness"], ignore_index=VOID_CLASS),
        "box_cls": dense_focal_loss(outputs["box_cls"], targets["cls"], targets["cls_weight"], normalizer=count),
        "semantic": hard_pixel_cross_entropy(outputs["semantic"], targets["semantic"], BOOTSTRAP_RATIO),
        "mask": explicit_mask_loss(outputs, targets, strides),
    }
    return weighted_sum(terms, WEIGHTS)
