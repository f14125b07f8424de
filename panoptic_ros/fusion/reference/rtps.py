"""Reference RTPS fusion, following section 3.2 of Hou et al.:

"We first obtain a reduced set of bounding box proposals from B through NMS ... For each query box
B_j, we construct a global mask probability map M(x, y, j) = P_loc(x, y, j) * P_sem(x, y, c_j),
P_loc(x, y, j) = IoU(B(x, y), B_j) ... M_j(x, y) = M(x, y, j) > sigma. To produce a final panoptic
segmentation, we follow the conventional fusion strategy in [14]." B(x, y) is the box of the level
that the levelness arg-max names (eq. 14); NMS ranks boxes by confidence times centerness.
"""

from __future__ import annotations

import numpy as np

from panoptic_ros.classes import LabelSet
from panoptic_ros.fusion.reference.assemble import STRIDE, Thing, assemble_reference, stuff_map_from_semantic
from panoptic_ros.fusion.reference.common import box_iou, detect, fcos_boxes, locations, paste_by_confidence, sigmoid
from panoptic_ros.pipeline_io import PanopticResult, Thresholds


def rtps_reference(heads: dict, label_set: LabelSet, strides: tuple[int, ...], thresholds: Thresholds,
                   label_divisor: int, max_instances: int) -> PanopticResult:
    semantic = heads["semantic"][0].astype(np.float64)
    _, h, w = semantic.shape
    boxes = fcos_boxes(heads["box_reg"], strides, h * STRIDE, w * STRIDE)

    # Query boxes.
    class_prob = sigmoid(locations(heads["box_cls"]))
    confidence = class_prob.max(axis=1) * sigmoid(locations(heads["centerness"]))[:, 0]
    level = np.concatenate([np.full(b.shape[0] * b.shape[1], i) for i, b in enumerate(boxes)])
    queries = detect(np.concatenate([b.reshape(-1, 4) for b in boxes]), class_prob, confidence, level,
                     thresholds.score_threshold, thresholds.nms_iou, max_instances)

    # Masks M_j = IoU(B(x, y), B_j) * P_sem(x, y, c_j) > sigma.
    levelness = heads["levelness"][0].argmax(axis=0)
    probability = np.exp(semantic - semantic.max(axis=0)) / np.exp(semantic - semantic.max(axis=0)).sum(axis=0)
    masks = []
    for query in queries:
        class_id = label_set.thing_ids[query.thing]
        mask = np.zeros((h, w), dtype=bool)
        for i in range(h):
            for j in range(w):
                if levelness[i, j] == 0:
                    continue
                lv = levelness[i, j] - 1
                box = boxes[lv][i * STRIDE // strides[lv], j * STRIDE // strides[lv]]
                mask[i, j] = box_iou(box, query.box) * probability[class_id, i, j] > thresholds.mask_sigma
        masks.append(mask)

    # Conventional fusion: instances by confidence, then semantic stuff on the rest.
    owner, _ = paste_by_confidence(masks, thresholds.overlap_threshold)
    things = [Thing(label_set.thing_ids[q.thing], q.score, owner == k) for k, q in enumerate(queries)]
    stuff = stuff_map_from_semantic(semantic.argmax(axis=0), label_set)
    return assemble_reference(things, np.where(owner >= 0, -1, stuff), label_set, thresholds.min_stuff_area,
                              label_divisor, max_instances)
