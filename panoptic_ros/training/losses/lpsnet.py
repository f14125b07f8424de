"""LPSNet loss (sec. 3.2-3.5): box classes, IoU loss, border-ness BCE on in-mask positives, semantic CE.

The paper balances the terms to the same order of magnitude and weights the semantic loss 1.0
on Cityscapes; every weight here is 1. The box-class focal loss (our addition, FCOS-style) is
divided by the number of positives like the box terms.
"""

from __future__ import annotations

from torch import Tensor

from panoptic_ros.training.losses.common import (
    dense_focal_loss,
    fcos_box_losses,
    hard_pixel_cross_entropy,
    weighted_sum,
)

WEIGHTS = {"box_cls": 1.0, "box_reg": 1.0, "borderness": 1.0, "semantic": 1.0}


def lpsnet_loss(outputs: dict, targets: dict) -> tuple[Tensor, dict[str, Tensor]]:
    """(total, weighted terms "box_cls", "box_reg", "borderness", "semantic")."""
    box_reg, borderness, count = fcos_box_losses(outputs["box_reg"], outputs["borderness"], targets, "borderness")
    box_cls = dense_focal_loss(outputs["box_cls"], targets["cls"], targets["cls_weight"], normalizer=count)
    semantic = hard_pixel_cross_entropy(outputs["semantic"], targets["semantic"])
    return weighted_sum({"box_cls": box_cls, "box_reg": box_reg, "borderness": borderness, "semantic": semantic},
                        WEIGHTS)
