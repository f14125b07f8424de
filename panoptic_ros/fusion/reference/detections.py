"""Dense detections for the box-based references (RTPS, LPSNet, FPSNet): decode each level's boxes,
keep locations whose best class probability exceeds the score threshold, greedy NMS.

Box decoding is the network's own parameterisation (networks/box_coding.py: FCOS distances from
the location's pixel, RetinaNet deltas from anchors); boxes are clipped to the image, as FCOS' and
RetinaNet's post-processing do (the panoptic papers are silent on it).

Choices where the papers are silent (declared in models/README.md):
- one candidate per location (anchor for RetinaNet): its best thing class, kept when that class's
  probability exceeds score_threshold (FCOS and RetinaNet threshold the class probability before
  any quality factor),
- NMS within each class,
- no pre-NMS top-N (a cost saving of FCOS' and RetinaNet's code, not in the panoptic papers):
  `pre_nms_top` is only there to compare with a graph that keeps the best N over all levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from panoptic_ros.fusion.reference.common import as_threshold, best_first, greedy_nms, sigmoid
from panoptic_ros.networks.box_coding import decode_deltas, level_points, ltrb_to_boxes, retinanet_anchors


@dataclass
class Detection:
    box: np.ndarray  # (4,) x1 y1 x2 y2 in input pixels
    thing: int  # index into the label set's thing_ids
    score: float  # the ranking score (class probability, times a quality where the paper says so)
    level: int


def per_location(head: np.ndarray, num_anchors: int = 1) -> np.ndarray:
    """(1, A*K, h, w) -> (h*w*A, K): locations row-major, then anchors (channel a*K + k is value k
    of anchor a, the networks' layout)."""
    _, channels, h, w = head.shape
    return head[0].reshape(num_anchors, channels // num_anchors, h, w).transpose(2, 3, 0, 1).reshape(
        -1, channels // num_anchors)


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.stack([boxes[:, 0].clip(0, width), boxes[:, 1].clip(0, height),
                     boxes[:, 2].clip(0, width), boxes[:, 3].clip(0, height)], axis=1)


def fcos_boxes(box_reg: Sequence[np.ndarray], strides: Sequence[int], height: int, width: int) -> list[np.ndarray]:
    """Per level, the (h, w, 4) boxes that the (l, t, r, b) distances from each location describe."""
    boxes = []
    for reg, stride in zip(box_reg, strides, strict=True):
        h, w = reg.shape[-2:]
        ltrb = torch.from_numpy(reg[0].reshape(4, -1).T.copy())
        decoded = ltrb_to_boxes(level_points(h, w, stride), ltrb).numpy().astype(np.float64)
        boxes.append(clip_boxes(decoded, height, width).reshape(h, w, 4))
    return boxes


def anchor_boxes(box_reg: Sequence[np.ndarray], strides: Sequence[int], sizes: Sequence[Sequence[float]],
                 ratios: Sequence[Sequence[float]], height: int, width: int) -> list[np.ndarray]:
    """Per level, the (h*w*A, 4) boxes decoded from the RetinaNet deltas of each anchor."""
    boxes = []
    for reg, stride, size, ratio in zip(box_reg, strides, sizes, ratios, strict=True):
        h, w = reg.shape[-2:]
        anchors = retinanet_anchors(h, w, stride, size, ratio)
        deltas = torch.from_numpy(per_location(reg, len(size) * len(ratio)).copy())
        boxes.append(clip_boxes(decode_deltas(anchors, deltas).numpy().astype(np.float64), height, width))
    return boxes


def detect(boxes: Sequence[np.ndarray], class_prob: Sequence[np.ndarray], quality: Sequence[np.ndarray] | None,
           score_threshold: float, nms_iou: float, pre_nms_top: int | None = None) -> list[Detection]:
    """Per level: boxes (n, 4), class probabilities (n, T) and quality (n,) (or None) of its n
    candidates. -> the NMS survivors, best score first (score = class probability x quality)."""
    candidates: list[Detection] = []
    threshold = as_threshold(score_threshold)
    for level, (level_boxes, prob) in enumerate(zip(boxes, class_prob, strict=True)):
        for n in range(len(level_boxes)):
            thing = int(prob[n].argmax())
            if not np.float32(prob[n, thing]) > threshold:
                continue
            score = prob[n, thing] * (quality[level][n] if quality is not None else 1.0)
            candidates.append(Detection(level_boxes[n], thing, float(score), level))
    if pre_nms_top is not None:
        candidates = [candidates[i] for i in best_first([c.score for c in candidates])[:pre_nms_top]]
    kept = greedy_nms(np.array([c.box for c in candidates]), [c.score for c in candidates],
                      [c.thing for c in candidates], nms_iou)
    return [candidates[i] for i in kept]


def fcos_detections(heads: dict, quality: str, strides: Sequence[int], height: int, width: int,
                    score_threshold: float, nms_iou: float, pre_nms_top: int | None = None) -> list[Detection]:
    """Detections of FCOS-style heads ("box_cls", "box_reg" distances, and the `quality` head, whose
    sigmoid multiplies the class probability)."""
    boxes = [b.reshape(-1, 4) for b in fcos_boxes(heads["box_reg"], strides, height, width)]
    class_prob = [sigmoid(per_location(c)) for c in heads["box_cls"]]
    factor = [sigmoid(per_location(q))[:, 0] for q in heads[quality]]
    return detect(boxes, class_prob, factor, score_threshold, nms_iou, pre_nms_top)
