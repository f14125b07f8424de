"""Reference FPSNet fusion: section III-A ("Attention Mask Generation", "Panoptic Head") of de Geus et al.

FPSNet "does not require such rule-based merging" (sec. IV-A): the panoptic head's arg-max is the
output. Its K is the paper's own N_att.

Choices where the paper is silent (declared in models/README.md):
- detections are RetinaNet's ("trained in the usual fashion, as explained in [20]"), as in
  detections.py: best class per anchor above score_threshold, class-wise NMS, no pre-NMS top-N,
- attention masks are the network's (networks/fpsnet.py `gaussian_attention_masks`, the paper's
  f(X) on the stride-8 grid), so the head sees what it was trained on; masks are not shuffled at
  inference (shuffling is for training and only permutes the channels),
- a pixel whose arg-max is an instance channel without a detection (a zero mask) is void,
- min_stuff_area is applied like in the other methods; the paper's default is 0 (no merging rule),
- K = min(N_att, max_instances): "If there are more than N_att objects detected by the object
  detector, we pick the N_att bounding boxes with the highest class scores". Detections beyond K
  never reach the head, so they have no pixels; they are counted in candidates_dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from panoptic_ros.classes import LabelSet
from panoptic_ros.fusion.reference.assemble import ReferenceResult, Thing, assemble
from panoptic_ros.fusion.reference.common import cap, sigmoid, upsample_bilinear
from panoptic_ros.fusion.reference.detections import Detection, anchor_boxes, detect, per_location
from panoptic_ros.networks.fpsnet import FEATURE_STRIDE, gaussian_attention_masks
from panoptic_ros.pipeline_io import Thresholds


def detections(heads: dict, strides: Sequence[int], anchor_sizes: Sequence, anchor_ratios: Sequence, height: int,
               width: int, thresholds: Thresholds, pre_nms_top: int | None = None) -> list[Detection]:
    """RetinaNet's detections, best class score first."""
    num_anchors = len(anchor_sizes[0]) * len(anchor_ratios[0])
    boxes = anchor_boxes(heads["box_reg"], strides, anchor_sizes, anchor_ratios, height, width)
    class_prob = [sigmoid(per_location(c, num_anchors)) for c in heads["box_cls"]]
    return detect(boxes, class_prob, None, thresholds.score_threshold, thresholds.nms_iou, pre_nms_top)


def attention_argmax(network: nn.Module, features: np.ndarray, boxes: list[np.ndarray]) -> np.ndarray:
    """"The pixels for the nth output belong to the nth attention mask ... For each pixel, we get the
    final prediction by picking the instance or class with the highest score, i.e. applying argmax,
    after bilinearly upsampling the logits to the dimensions of the input image." -> (H, W) channel:
    n < N_att for attention mask n, N_att + s for the s-th stuff class. Masks after len(boxes) are
    "tensors filled with only zeros ... effectively applying no attention"."""
    n_att = network.num_attention
    att_boxes = np.zeros((n_att, 4), dtype=np.float32)
    for n, box in enumerate(boxes):
        att_boxes[n] = box
    valid = torch.arange(n_att) < len(boxes)
    h8, w8 = features.shape[-2:]
    with torch.no_grad():
        masks = gaussian_attention_masks(torch.from_numpy(att_boxes)[None], valid[None], (h8, w8), FEATURE_STRIDE,
                                         network.attention_scale)
        logits = network.panoptic_head(torch.from_numpy(features), masks)[0].numpy()
    return upsample_bilinear(logits, FEATURE_STRIDE).argmax(axis=0)


def fpsnet_reference(heads: dict, network: nn.Module, label_set: LabelSet, strides: Sequence[int],
                     anchor_sizes: Sequence, anchor_ratios: Sequence, thresholds: Thresholds, label_divisor: int,
                     max_instances: int, pre_nms_top: int | None = None) -> ReferenceResult:
    """heads: per level "box_cls", "box_reg" (RetinaNet deltas), and "features" (1, F, H/8, W/8)."""
    height, width = (FEATURE_STRIDE * n for n in heads["features"].shape[-2:])
    found = detections(heads, strides, anchor_sizes, anchor_ratios, height, width, thresholds, pre_nms_top)
    kept, dropped = cap(len(found), min(network.num_attention, max_instances))
    winner = attention_argmax(network, heads["features"], [d.box for d in found[:kept]])

    # "we have a class label for each individual predicted things instance"; stuff channels are classes.
    things = [Thing(label_set.thing_ids[d.thing], d.score, winner == n) for n, d in enumerate(found[:kept])]
    stuff_class = np.full(network.num_attention + len(label_set.stuff_ids), -1)
    stuff_class[network.num_attention:] = label_set.stuff_ids
    return assemble(things, stuff_class[winner], label_set, thresholds.min_stuff_area, label_divisor,
                    max_instances, dropped)
