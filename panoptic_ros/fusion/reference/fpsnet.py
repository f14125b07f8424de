"""Reference FPSNet fusion, following section III-A of de Geus et al.:

"If there are more than N_att objects detected by the object detector, we pick the N_att bounding
boxes with the highest class scores. If there are less, we use tensors filled with only zeros for
the remaining masks ... The pixels for the nth output belong to the nth attention mask ... and its
corresponding class. For each pixel, we get the final prediction by picking the instance or class
with the highest score, i.e. applying argmax, after bilinearly upsampling the logits". Detections
are RetinaNet's: decoded anchors, class-wise NMS. The logits are upsampled to the stride-4 grid.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from panoptic_ros.classes import LabelSet
from panoptic_ros.fusion.reference.assemble import STRIDE, Thing, assemble_reference
from panoptic_ros.fusion.reference.common import clip, detect, locations, sigmoid
from panoptic_ros.networks.box_coding import decode_deltas, retinanet_anchors
from panoptic_ros.networks.fpsnet import FEATURE_STRIDE, gaussian_attention_masks
from panoptic_ros.pipeline_io import PanopticResult, Thresholds


def upsample_bilinear(x: np.ndarray, factor: int) -> np.ndarray:
    """(C, h, w) -> (C, h*factor, w*factor), half-pixel centres, edges clamped."""
    _, h, w = x.shape
    out = np.zeros((x.shape[0], h * factor, w * factor), dtype=np.float64)
    for i in range(h * factor):
        sy = min(max((i + 0.5) / factor - 0.5, 0.0), h - 1)
        y0 = int(sy)
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for j in range(w * factor):
            sx = min(max((j + 0.5) / factor - 0.5, 0.0), w - 1)
            x0 = int(sx)
            x1, fx = min(x0 + 1, w - 1), sx - x0
            out[:, i, j] = ((1 - fy) * ((1 - fx) * x[:, y0, x0] + fx * x[:, y0, x1])
                            + fy * ((1 - fx) * x[:, y1, x0] + fx * x[:, y1, x1]))
    return out


def fpsnet_reference(heads: dict, network: nn.Module, label_set: LabelSet, strides: tuple[int, ...],
                     anchor_sizes: tuple, anchor_ratios: tuple, thresholds: Thresholds, label_divisor: int,
                     max_instances: int) -> PanopticResult:
    features = heads["features"]
    h8, w8 = features.shape[-2:]
    num_anchors = len(anchor_sizes[0]) * len(anchor_ratios[0])
    anchors = torch.cat([retinanet_anchors(m.shape[-2], m.shape[-1], s, sizes, ratios)
                         for m, s, sizes, ratios in zip(heads["box_reg"], strides, anchor_sizes, anchor_ratios,
                                                        strict=True)])
    decoded = decode_deltas(anchors, torch.from_numpy(locations(heads["box_reg"], num_anchors))).numpy()
    boxes = np.stack([clip(b, h8 * FEATURE_STRIDE, w8 * FEATURE_STRIDE) for b in decoded])
    class_prob = sigmoid(locations(heads["box_cls"], num_anchors))
    level = np.concatenate([np.full(m.shape[-2] * m.shape[-1] * num_anchors, i)
                            for i, m in enumerate(heads["box_reg"])])
    num_attention = network.num_attention
    detections = detect(boxes, class_prob, class_prob.max(axis=1), level, thresholds.score_threshold,
                        thresholds.nms_iou, min(max_instances, num_attention))

    # Attention masks of the detections (zeros for the rest) -> the network's panoptic head.
    att_boxes = np.zeros((num_attention, 4), dtype=np.float32)
    att_valid = np.zeros(num_attention, dtype=bool)
    for n, detection in enumerate(detections):
        att_boxes[n], att_valid[n] = detection.box, True
    with torch.no_grad():
        masks = gaussian_attention_masks(torch.from_numpy(att_boxes)[None], torch.from_numpy(att_valid)[None],
                                         (h8, w8), FEATURE_STRIDE, network.attention_scale)
        logits = network.panoptic_head(torch.from_numpy(features), masks)[0].numpy()

    # Arg-max of the upsampled logits: instance channel n -> detection n, then the stuff channels.
    winner = upsample_bilinear(logits, FEATURE_STRIDE // STRIDE).argmax(axis=0)
    things = [Thing(label_set.thing_ids[d.thing], d.score, winner == n) for n, d in enumerate(detections)]
    stuff = np.full(winner.shape, -1)
    for s, class_id in enumerate(label_set.stuff_ids):
        stuff[winner == num_attention + s] = class_id
    return assemble_reference(things, stuff, label_set, thresholds.min_stuff_area, label_divisor, max_instances)
