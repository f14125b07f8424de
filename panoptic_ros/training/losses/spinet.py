"""SPINet training step and loss (Hwang et al. eq. 1-7):
L = l0 L_cls + l1 L_s + l2 L_t + l3 L_inter + l4 L_intra with Cityscapes' (1, 1, 5, 20, 1).

`spinet_training_forward` runs the network (in training mode, so the contour head runs) and adds
what the losses need from the network:
- thing masks: filters sampled uniformly from foreground cells of all levels (up to
  `samples_per_image`), applied by the single-shot convolution to the Panoptic-Feature;
- stuff masks: the learned stuff filters through the same convolution;
- triplet representations: for every instance (stride 4) a random straight line through its
  centroid splits its mask into M_k and M'_k (eq. 3); the averages of the Panoptic-Feature over
  them (eq. 4) pass the training-only FC layer. Anchor V_k and positive V'_k come from one
  instance, the negative from another instance of the same class.

L_cls: sigmoid focal loss / number of foreground cells; L_t: dice (sigmoid) per sampled filter
against its instance's stride-4 mask, averaged over samples (eq. 1); L_s: cross entropy over the
20% hardest stuff pixels plus the multi-class dice (softmax over stuff classes) averaged over the
stuff classes (eq. 2), thing and void pixels excluded; L_inter: focal loss of the contour logits
against the soft contours, averaged over pixels (eq. 6); L_intra: -log(e^dp / (e^dp + e^dn)) with
d = -L2 distance, averaged over triplets (eq. 5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from panoptic_ros.classes import VOID_CLASS
from panoptic_ros.networks.spinet import SPINet
from panoptic_ros.training.losses.common import (
    dense_focal_loss,
    dice_loss,
    hard_pixel_cross_entropy,
    sigmoid_focal_loss,
    weighted_sum,
)

WEIGHTS = {"cls": 1.0, "stuff": 1.0, "thing": 5.0, "contour": 20.0, "triplet": 1.0}
BOOTSTRAP_RATIO = 0.2
SAMPLES_PER_IMAGE = 64


def sample_filters(outputs: dict, targets: dict, samples: int) -> tuple[Tensor, Tensor, Tensor]:
    """Filters (B, K, D) sampled uniformly from foreground cells, their instance ids (B, K) and valid flags (B, K)."""
    b = outputs["filters"][0].shape[0]
    d = outputs["filters"][0].shape[1]
    filters = outputs["filters"][0].new_zeros(b, samples, d)
    ids = torch.zeros(b, samples, dtype=torch.int64, device=filters.device)
    for i in range(b):
        pool = torch.cat([f[i].reshape(d, -1).t() for f in outputs["filters"]])  # (all cells, D)
        pool_ids = torch.cat([inst[i].reshape(-1) for inst in targets["instance"]])
        foreground = torch.nonzero(pool_ids > 0).flatten()
        chosen = foreground[torch.randperm(len(foreground), device=foreground.device)[:samples]]
        filters[i, :len(chosen)] = pool[chosen]
        ids[i, :len(chosen)] = pool_ids[chosen]
    return filters, ids, ids > 0


def split_masks(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Split a (h, w) bool mask by a random line through its centroid (the paper's random mask m_r)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    angle = torch.rand(()) * 2 * math.pi
    side = (xs - xs.float().mean()) * torch.cos(angle) + (ys - ys.float().mean()) * torch.sin(angle) >= 0
    first, second = torch.zeros_like(mask), torch.zeros_like(mask)
    first[ys[side], xs[side]] = True
    second[ys[~side], xs[~side]] = True
    return first, second


def triplet_representations(network: SPINet, feature: Tensor, targets: dict) -> tuple[Tensor, Tensor, Tensor]:
    """(anchors, positives, negatives) each (N_triplets, F) of the intra-class triplet loss."""
    anchors, positives, negatives = [], [], []
    for i in range(feature.shape[0]):
        halves, classes = [], []
        for instance_id, thing in zip(targets["gt_ids"][i], targets["gt_classes"][i], strict=True):
            mask = targets["instance_s4"][i] == instance_id
            if instance_id <= 0 or mask.sum() < 2:
                continue
            first, second = split_masks(mask)
            if not first.any() or not second.any():
                continue
            halves.append(torch.stack([(feature[i] * m).sum((1, 2)) / m.sum() for m in (first, second)]))
            classes.append(int(thing))
        if len(halves) < 2:
            continue
        vectors = network.triplet_embedding(torch.stack(halves))  # (K, 2, F)
        for k, ck in enumerate(classes):
            for j, cj in enumerate(classes):
                if j != k and cj == ck:
                    anchors.append(vectors[k, 0])
                    positives.append(vectors[k, 1])
                    negatives.append(vectors[j, 0])
    if not anchors:
        empty = feature.new_zeros(0, feature.shape[1])
        return empty, empty, empty
    return torch.stack(anchors), torch.stack(positives), torch.stack(negatives)


def spinet_training_forward(network: SPINet, images: Tensor, targets: dict,
                            samples_per_image: int = SAMPLES_PER_IMAGE) -> dict:
    """Network outputs plus thing/stuff mask logits, sampled instance ids and triplet representations."""
    if not network.training:
        raise ValueError("spinet training_forward needs network.train(): the contour head runs in training mode only")
    outputs = network(images)
    feature = outputs["panoptic_feature"]
    filters, ids, valid = sample_filters(outputs, targets, samples_per_image)
    outputs["thing_logits"] = network.dynamic_mask_logits(feature, filters)
    outputs["thing_ids"], outputs["thing_valid"] = ids, valid
    outputs["stuff_logits"] = network.stuff_mask_logits(feature)
    outputs["triplet_anchor"], outputs["triplet_positive"], outputs["triplet_negative"] = triplet_representations(
        network, feature, targets)
    return outputs


def _stuff_loss(stuff_logits: Tensor, stuff_target: Tensor) -> Tensor:
    ce = hard_pixel_cross_entropy(stuff_logits, stuff_target, BOOTSTRAP_RATIO)
    n_stuff = stuff_logits.shape[1]
    valid = (stuff_target != VOID_CLASS).flatten(1).float()  # (B, P)
    probabilities = stuff_logits.softmax(dim=1).flatten(2)  # (B, S, P)
    one_hot = F.one_hot(stuff_target.clamp(max=n_stuff - 1).flatten(1), n_stuff).permute(0, 2, 1).float()
    dice = dice_loss(probabilities.transpose(0, 1).reshape(n_stuff, -1), one_hot.transpose(0, 1).reshape(n_stuff, -1),
                     weights=valid.reshape(1, -1))
    return ce + dice.mean()


def spinet_loss(outputs: dict, targets: dict) -> tuple[Tensor, dict[str, Tensor]]:
    """(total, weighted terms "cls", "stuff", "thing", "contour", "triplet"); outputs from `spinet_training_forward`."""
    if "thing_logits" not in outputs or "contour" not in outputs:
        raise ValueError("spinet loss needs sampled masks and contours: produce outputs with training_forward")
    cls = dense_focal_loss(outputs["class_logits"], targets["cls"], targets["cls_weight"])
    valid = outputs["thing_valid"]
    if valid.any():
        instance_s4 = targets["instance_s4"]
        masks = (instance_s4[:, None] == outputs["thing_ids"][:, :, None, None]).float()  # (B, K, h, w)
        thing = dice_loss(torch.sigmoid(outputs["thing_logits"]).flatten(2)[valid], masks.flatten(2)[valid]).mean()
    else:
        thing = outputs["thing_logits"].sum() * 0.0
    contour = sigmoid_focal_loss(outputs["contour"], targets["contour"]).mean()
    anchor, positive, negative = outputs["triplet_anchor"], outputs["triplet_positive"], outputs["triplet_negative"]
    if len(anchor):
        # -log(e^dp / (e^dp + e^dn)) with d = -distance equals softplus(dist_p - dist_n).
        triplet = F.softplus((anchor - positive).norm(dim=1) - (anchor - negative).norm(dim=1)).mean()
    else:
        triplet = outputs["panoptic_feature"].sum() * 0.0  # no two instances of one class in the batch
    terms = {"cls": cls, "stuff": _stuff_loss(outputs["stuff_logits"], targets["stuff_s4"]), "thing": thing,
             "contour": contour, "triplet": triplet}
    return weighted_sum(terms, WEIGHTS)
