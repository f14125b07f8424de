"""Reference RTPS fusion: section 3.2 ("Parameter-Free Mask Construction") and eq. 14 of Hou et al.

Choices where the paper is silent (declared in models/README.md):
- the stride-4 semantic and levelness logits are bilinearly upsampled to input pixels (softmax /
  arg-max after upsampling); the box B(x, y) a pixel takes from level i is the box of the level-i
  location whose stride cell contains the pixel,
- detections as in detections.py (best class per location above score_threshold, class-wise NMS,
  no pre-NMS top-N); the NMS and paste order is the box confidence times the centerness (sec. 4.1),
- "the conventional fusion strategy in [14]" is Panoptic FPN's merge (common.paste_by_confidence),
  with overlap_threshold, then semantic stuff on the free pixels with min_stuff_area,
- the paper has no K: `max_instances` is only there to compare with the graph. A candidate is a
  query box; queries beyond K are pasted last and their pixels become void.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from panoptic_ros.classes import LabelSet
from panoptic_ros.fusion.reference.assemble import ReferenceResult, Thing, assemble, stuff_map_from_semantic
from panoptic_ros.fusion.reference.common import (
    as_threshold,
    cap,
    paste_by_confidence,
    softmax,
    upsample_bilinear,
)
from panoptic_ros.fusion.reference.detections import Detection, fcos_boxes, fcos_detections
from panoptic_ros.pipeline_io import Thresholds

HEAD_STRIDE = 4  # semantic and levelness logits


def query_boxes(heads: dict, strides: Sequence[int], height: int, width: int, thresholds: Thresholds,
                pre_nms_top: int | None = None) -> list[Detection]:
    """Eq. 4, "We first obtain a reduced set of bounding box proposals from B through NMS"; "During
    NMS, we multiply the bounding box confidence with predicted centerness" (sec. 4.1)."""
    return fcos_detections(heads, "centerness", strides, height, width, thresholds.score_threshold,
                           thresholds.nms_iou, pre_nms_top)


def pixel_boxes(heads: dict, strides: Sequence[int], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 14, "Levelness tells us which b_xy^(i) to include in our global set of dense bounding box
    predictions B: B(x, y) = b_xy^(argmax I(x, y))". -> ((H, W, 4) boxes, (H, W) bool: has a box,
    i.e. the levelness arg-max is not 0, "reserved for background pixels")."""
    level = upsample_bilinear(heads["levelness"][0], HEAD_STRIDE).argmax(axis=0)
    per_level = fcos_boxes(heads["box_reg"], strides, height, width)
    ys, xs = np.mgrid[0:height, 0:width]
    boxes = np.zeros((height, width, 4))
    for i, (level_boxes, stride) in enumerate(zip(per_level, strides, strict=True)):
        here = level == i + 1
        rows = np.minimum(ys[here] // stride, level_boxes.shape[0] - 1)
        cols = np.minimum(xs[here] // stride, level_boxes.shape[1] - 1)
        boxes[here] = level_boxes[rows, cols]
    return boxes, level > 0


def iou_with(boxes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """IoU of every box of (..., 4) with one query box (0 where the union is empty)."""
    width = np.clip(np.minimum(boxes[..., 2], query[2]) - np.maximum(boxes[..., 0], query[0]), 0, None)
    height = np.clip(np.minimum(boxes[..., 3], query[3]) - np.maximum(boxes[..., 1], query[1]), 0, None)
    intersection = width * height
    area = np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)
    union = area + max(query[2] - query[0], 0) * max(query[3] - query[1], 0) - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)


def instance_masks(queries: list[Detection], boxes: np.ndarray, has_box: np.ndarray, probability: np.ndarray,
                   thing_ids: Sequence[int], sigma: float) -> list[np.ndarray]:
    """Eqs. 5-7: "M(x, y, j) = P_loc(x, y, j) * P_sem(x, y, c_j)", "P_loc(x, y, j) = IoU(B(x, y), B_j)",
    "M_j(x, y) = M(x, y, j) > sigma"."""
    masks = []
    for query in queries:
        p_loc = np.where(has_box, iou_with(boxes, query.box), 0.0)
        masks.append(np.float32(p_loc * probability[thing_ids[query.thing]]) > as_threshold(sigma))
    return masks


def rtps_reference(heads: dict, label_set: LabelSet, strides: Sequence[int], thresholds: Thresholds,
                   label_divisor: int, max_instances: int, pre_nms_top: int | None = None) -> ReferenceResult:
    """heads: "semantic" and "levelness" (1, C, H/4, W/4) logits; per level "box_cls", "box_reg"
    (l, t, r, b in pixels), "centerness"."""
    height, width = (HEAD_STRIDE * n for n in heads["semantic"].shape[-2:])
    logits = upsample_bilinear(heads["semantic"][0], HEAD_STRIDE)
    queries = query_boxes(heads, strides, height, width, thresholds, pre_nms_top)
    boxes, has_box = pixel_boxes(heads, strides, height, width)
    masks = instance_masks(queries, boxes, has_box, softmax(logits), label_set.thing_ids, thresholds.mask_sigma)

    # "To produce a final panoptic segmentation, we follow the conventional fusion strategy in [14]."
    owner, _ = paste_by_confidence(masks, thresholds.overlap_threshold, (height, width))
    kept, dropped = cap(len(queries), max_instances)
    things = [Thing(label_set.thing_ids[q.thing], q.score, owner == k) for k, q in enumerate(queries[:kept])]
    stuff = np.where(owner >= 0, -1, stuff_map_from_semantic(logits.argmax(axis=0), label_set))
    return assemble(things, stuff, label_set, thresholds.min_stuff_area, label_divisor, max_instances, dropped)
