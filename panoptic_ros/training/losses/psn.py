"""Panoptic SwiftNet loss (sec. 2.3): L = l_sem L_SEM + l_cen L_CEN + l_BAOL L_BAOL.

L_SEM: cross entropy over the 20% hardest labelled pixels (the paper's Cityscapes setting);
L_CEN: mean squared error of the center heatmap (void and crowd pixels excluded);
L_BAOL (eq. 1): 1/(HW) sum_ij w_ij |O_ij - O_ij^GT| with the boundary weights {8, 4, 2, 1}
(0 on stuff). Weights: l_BAOL = 0.025 (the paper's value with the boundary-aware loss); the
paper gives no l_SEM, l_CEN, so we take Panoptic-DeepLab's 1 and 200, which PSN builds on.
"""

from __future__ import annotations

from torch import Tensor

from panoptic_ros.training.losses.common import hard_pixel_cross_entropy, weighted_sum

WEIGHTS = {"semantic": 1.0, "center": 200.0, "offset": 0.025}
HARD_PIXEL_RATIO = 0.2


def psn_loss(outputs: dict, targets: dict) -> tuple[Tensor, dict[str, Tensor]]:
    """(total, weighted terms "semantic", "center", "offset")."""
    semantic = hard_pixel_cross_entropy(outputs["semantic"], targets["semantic"], HARD_PIXEL_RATIO)
    center_weight = targets["center_weight"]
    center = ((outputs["center"] - targets["center"]) ** 2 * center_weight).sum() / center_weight.sum().clamp(min=1)
    offset_error = (outputs["offset"] - targets["offset"]).abs().sum(dim=1, keepdim=True)
    offset = (targets["offset_weight"] * offset_error).mean()
    return weighted_sum({"semantic": semantic, "center": center, "offset": offset}, WEIGHTS)
