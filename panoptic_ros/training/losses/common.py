"""Loss functions shared by the five methods."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from panoptic_ros.classes import VOID_CLASS
from panoptic_ros.networks.box_coding import box_iou

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


def resize_logits(logits: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinearly resize (B, C, h, w) logits to `size` (no-op if already there)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def hard_pixel_cross_entropy(logits: Tensor, target: Tensor, ratio: float = 1.0,
                             ignore_index: int = VOID_CLASS) -> Tensor:
    """Cross entropy averaged over the `ratio` fraction of labelled pixels with the largest loss.

    ratio 1.0 is the plain mean; 0.2 is PSN's hard-pixel mining, 0.3 RTPS's bootstrapping. Logits
    are resized to the target's resolution first.
    """
    loss = F.cross_entropy(resize_logits(logits, target.shape[-2:]), target, ignore_index=ignore_index,
                           reduction="none").flatten()
    valid = target.flatten() != ignore_index
    count = int(valid.sum())
    if count == 0:
        return logits.sum() * 0.0
    return loss[valid].topk(max(1, int(ratio * count))).values.mean()


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = FOCAL_ALPHA,
                       gamma: float = FOCAL_GAMMA) -> Tensor:
    """Element-wise sigmoid focal loss (Lin et al.); `targets` in [0, 1] may be soft."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t) ** gamma * ce


def dense_focal_loss(logits: Sequence[Tensor], labels: Sequence[Tensor], weights: Sequence[Tensor] | None = None,
                     normalizer: Tensor | None = None) -> Tensor:
    """Sigmoid focal classification loss summed over levels, divided by the number of positives.

    logits[l] (B, K, h, w) and labels[l] (B, h, w) class index in 0..K-1, or < 0 for background;
    weights[l] (B, h, w) zero out ignored cells. `normalizer` overrides the positive count.
    """
    total, positives = logits[0].new_zeros(()), logits[0].new_zeros(())
    for i, (x, y) in enumerate(zip(logits, labels, strict=True)):
        one_hot = F.one_hot(y.clamp(min=0), x.shape[1]).permute(0, 3, 1, 2).to(x.dtype) * (y >= 0)[:, None]
        loss = sigmoid_focal_loss(x, one_hot)
        if weights is not None:
            loss = loss * weights[i][:, None]
        total = total + loss.sum()
        positives = positives + (y >= 0).sum()
    return total / (normalizer if normalizer is not None else positives.clamp(min=1))


def iou_loss(pred_ltrb: Tensor, target_ltrb: Tensor) -> Tensor:
    """UnitBox IoU loss -ln((I + 1) / (U + 1)) of boxes given as distances (l, t, r, b) from the same point."""
    pred_area = (pred_ltrb[..., 0] + pred_ltrb[..., 2]) * (pred_ltrb[..., 1] + pred_ltrb[..., 3])
    target_area = (target_ltrb[..., 0] + target_ltrb[..., 2]) * (target_ltrb[..., 1] + target_ltrb[..., 3])
    lt = torch.minimum(pred_ltrb[..., :2], target_ltrb[..., :2])
    rb = torch.minimum(pred_ltrb[..., 2:], target_ltrb[..., 2:])
    inter = (lt[..., 0] + rb[..., 0]) * (lt[..., 1] + rb[..., 1])
    union = pred_area + target_area - inter
    return -torch.log((inter + 1.0) / (union + 1.0))


def positives_of(maps: Sequence[Tensor], positive: Sequence[Tensor]) -> Tensor:
    """Concatenate the positive cells of per-level maps (B, C, h, w) into (N, C)."""
    return torch.cat([m.permute(0, 2, 3, 1)[p] for m, p in zip(maps, positive, strict=True)])


def fcos_box_losses(box_reg: Sequence[Tensor], quality: Sequence[Tensor], targets: dict,
                    quality_key: str) -> tuple[Tensor, Tensor, Tensor]:
    """IoU loss and quality BCE (centerness / border-ness) over in-mask positives, each / N_fg; returns N_fg too."""
    pos = targets["pos"]
    count = sum(p.sum() for p in pos).clamp(min=1).to(box_reg[0].dtype)
    pred = positives_of(box_reg, pos)
    target = positives_of(targets["reg"], pos)
    quality_pred = positives_of(quality, pos)[:, 0]
    quality_target = torch.cat([q[p] for q, p in zip(targets[quality_key], pos, strict=True)])
    reg_loss = iou_loss(pred, target).sum() / count
    quality_loss = F.binary_cross_entropy_with_logits(quality_pred, quality_target, reduction="sum") / count
    return reg_loss, quality_loss, count


def dice_loss(probabilities: Tensor, targets: Tensor, weights: Tensor | None = None, eps: float = 1.0) -> Tensor:
    """V-Net dice loss 1 - (2 sum(p t) + eps) / (sum(p^2) + sum(t^2) + eps) per row of (N, P) inputs -> (N,)."""
    if weights is not None:
        probabilities, targets = probabilities * weights, targets * weights
    numerator = 2 * (probabilities * targets).sum(-1) + eps
    return 1 - numerator / ((probabilities ** 2).sum(-1) + (targets ** 2).sum(-1) + eps)


def greedy_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, max_keep: int) -> Tensor:
    """Indices of boxes kept by greedy non-maximum suppression, best first, at most `max_keep` (training use)."""
    order = scores.argsort(descending=True)
    keep: list[int] = []
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    iou = box_iou(boxes[order], boxes[order])
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) == max_keep:
            break
        suppressed |= iou[i] > iou_threshold
    return order[torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)]


def weighted_sum(terms: dict[str, Tensor], weights: dict[str, float]) -> tuple[Tensor, dict[str, Tensor]]:
    """(sum of weighted terms, the weighted terms by name)."""
    weighted = {name: weights.get(name, 1.0) * value for name, value in terms.items()}
    return sum(weighted.values()), weighted
