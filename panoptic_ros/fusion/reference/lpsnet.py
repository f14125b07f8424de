"""Reference LPSNet fusion, following section 3.4 of Hong et al.:

"we iteratively 'paste' each box to the semantic segmentation prediction by confidence from high to
low ... For a given bounding box of class C, the pixels within it are either of class C or not, and
we consider those pixels of class C as the mask of this box. If the intersection between the
current mask and those already existing is larger than a threshold (0.3 in our experiments), we
discard this mask. Otherwise we keep the non-intersecting part. ... two (or more) boxes of the same
class are overlapping, and some pixels in the overlapping area also have the same class. In this
case, we compute the border-ness of those pixels to all competing boxes, and assign the pixel to the
box whose computed border-ness is the closest to the predicted border-ness."
Box confidence is the class probability times the predicted border-ness (section 3.2).
"""

from __future__ import annotations

import math

import numpy as np

from panoptic_ros.classes import LabelSet
from panoptic_ros.fusion.reference.assemble import STRIDE, Thing, assemble_reference, stuff_map_from_semantic
from panoptic_ros.fusion.reference.common import Detection, detect, fcos_boxes, locations, sigmoid
from panoptic_ros.pipeline_io import PanopticResult, Thresholds


def borderness(x: float, y: float, box: np.ndarray) -> float:
    """Eq. (1) from the distances of (x, y) to the box sides."""
    left, top, right, bottom = (max(v, 0.0) for v in (x - box[0], y - box[1], box[2] - x, box[3] - y))
    return math.sqrt(min(left, right) / max(left, right, 1e-6) * min(top, bottom) / max(top, bottom, 1e-6))


def lpsnet_reference(heads: dict, label_set: LabelSet, strides: tuple[int, ...], thresholds: Thresholds,
                     label_divisor: int, max_instances: int) -> PanopticResult:
    semantic = heads["semantic"][0].argmax(axis=0)
    h, w = semantic.shape
    boxes = fcos_boxes(heads["box_reg"], strides, h * STRIDE, w * STRIDE)
    class_prob = sigmoid(locations(heads["box_cls"]))
    confidence = class_prob.max(axis=1) * sigmoid(locations(heads["borderness"]))[:, 0]
    level = np.concatenate([np.full(b.shape[0] * b.shape[1], i) for i, b in enumerate(boxes)])
    detections = detect(np.concatenate([b.reshape(-1, 4) for b in boxes]), class_prob, confidence, level,
                        thresholds.score_threshold, thresholds.nms_iou, max_instances)
    predicted = [sigmoid(b[0, 0]) for b in heads["borderness"]]

    def mismatch(i: int, j: int, detection: Detection) -> float:
        """|computed - predicted| border-ness of cell (i, j) for the box (predicted at the box's level)."""
        x, y = j * STRIDE + (STRIDE - 1) / 2, i * STRIDE + (STRIDE - 1) / 2
        stride = strides[detection.level]
        expected = predicted[detection.level][i * STRIDE // stride, j * STRIDE // stride]
        return abs(borderness(x, y, detection.box) - expected)

    owner = np.full((h, w), -1)
    for k, detection in enumerate(detections):
        class_id = label_set.thing_ids[detection.thing]
        mask = np.zeros((h, w), dtype=bool)
        for i in range(h):
            for j in range(w):
                x, y = j * STRIDE + (STRIDE - 1) / 2, i * STRIDE + (STRIDE - 1) / 2
                inside = detection.box[0] <= x <= detection.box[2] and detection.box[1] <= y <= detection.box[3]
                mask[i, j] = inside and semantic[i, j] == class_id
        area = mask.sum()
        if area == 0 or (mask & (owner >= 0)).sum() / area > thresholds.overlap_threshold:
            continue
        for i, j in zip(*np.nonzero(mask), strict=True):
            if owner[i, j] < 0 or mismatch(i, j, detection) < mismatch(i, j, detections[owner[i, j]]):
                owner[i, j] = k

    things = [Thing(label_set.thing_ids[d.thing], d.score, owner == k) for k, d in enumerate(detections)]
    stuff = stuff_map_from_semantic(semantic, label_set)
    return assemble_reference(things, np.where(owner >= 0, -1, stuff), label_set, thresholds.min_stuff_area,
                              label_divisor, max_instances)
