"""Reference LPSNet fusion: section 3.4 ("Panoptic Head") of Hong et al., with the box confidence of
section 3.2 and the inference of section 4 ("our post-processing procedure on bounding boxes is also
the same with [31]", FCOS).

Choices where the paper is silent (declared in models/README.md):
- the stride-4 semantic logits are bilinearly upsampled to input pixels before the arg-max,
- detections as in detections.py; box classes come from the box head's class logits (the network's
  declared deviation: the paper infers them from the semantic head),
- pixel (i, j) is inside a box when x1 <= j < x2 and y1 <= i < y2 (the training targets' convention,
  l* = j - x1), and its computed border-ness uses l = j - x1, r = x2 - j, t = i - y1, b = y2 - i,
- the "predicted border-ness" of a pixel for a competing box is the border-ness head of that box's
  level at the location whose stride cell contains the pixel; equal distances keep the earlier box,
- "the intersection ... is larger than a threshold" is a fraction of the current mask's pixels,
- the paper has no K: `max_instances` is only there to compare with the graph. A candidate is a
  box after NMS; boxes beyond K are pasted last and their pixels become void.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from panoptic_ros.classes import LabelSet
from panoptic_ros.fusion.reference.assemble import ReferenceResult, Thing, assemble, stuff_map_from_semantic
from panoptic_ros.fusion.reference.common import cap, mostly_taken, sigmoid, upsample_bilinear
from panoptic_ros.fusion.reference.detections import Detection, fcos_detections
from panoptic_ros.pipeline_io import Thresholds

HEAD_STRIDE = 4  # semantic logits


def lpsnet_boxes(heads: dict, strides: Sequence[int], height: int, width: int, thresholds: Thresholds,
                 pre_nms_top: int | None = None) -> list[Detection]:
    """"In inference stage, we multiply the predicted border-ness with the confidence score of the
    detected bounding boxes ... We expect the following non-maximum suppression (NMS) can filter out
    these low-quality bounding boxes" (sec. 3.2)."""
    return fcos_detections(heads, "borderness", strides, height, width, thresholds.score_threshold,
                           thresholds.nms_iou, pre_nms_top)


def box_mask(box: np.ndarray, class_id: int, semantic: np.ndarray) -> np.ndarray:
    """"For a given bounding box of class C, the pixels within it are either of class C or not, and we
    consider those pixels of class C as the mask of this box.\""""
    ys, xs = np.mgrid[0:semantic.shape[0], 0:semantic.shape[1]]
    inside = (box[0] <= xs) & (xs < box[2]) & (box[1] <= ys) & (ys < box[3])
    return inside & (semantic == class_id)


def computed_borderness(box: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Eq. 1, sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)), of pixels to the box's sides."""
    left, right, top, bottom = xs - box[0], box[2] - xs, ys - box[1], box[3] - ys

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        low, high = np.minimum(a, b), np.maximum(a, b)
        return np.where(high > 0, np.clip(low, 0, None) / np.where(high > 0, high, 1.0), 0.0)

    return np.sqrt(ratio(left, right) * ratio(top, bottom))


def mismatch(heads: dict, detection: Detection, strides: Sequence[int], ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """|computed - predicted| border-ness of pixels for a box; the predicted one is the border-ness head
    of the box's level at the locations whose cells contain the pixels."""
    level = sigmoid(heads["borderness"][detection.level][0, 0])
    stride = strides[detection.level]
    predicted = level[np.minimum(ys // stride, level.shape[0] - 1), np.minimum(xs // stride, level.shape[1] - 1)]
    return np.abs(computed_borderness(detection.box, ys, xs) - predicted)


def paste_with_borderness(detections: list[Detection], masks: list[np.ndarray], heads: dict,
                          strides: Sequence[int], overlap_threshold: float, shape: tuple[int, int]) -> np.ndarray:
    """"we iteratively 'paste' each box to the semantic segmentation prediction by confidence from high
    to low ... If the intersection between the current mask and those already existing is larger than
    a threshold (0.3 in our experiments), we discard this mask. Otherwise we keep the non-intersecting
    part." -> `shape` owner map: detection index or -1."""
    owner = np.full(shape, -1, dtype=np.int64)
    for k, (detection, mask) in enumerate(zip(detections, masks, strict=True)):
        if mostly_taken(mask, owner, overlap_threshold):
            continue
        taken = mask & (owner >= 0)
        owner[mask & (owner < 0)] = k
        # "two (or more) boxes of the same class are overlapping, and some pixels in the overlapping area
        # also have the same class. In this case, we compute the border-ness of those pixels to all
        # competing boxes, and assign the pixel to the box whose computed border-ness is the closest to
        # the predicted border-ness." (A mask holds pixels of its class only, so every taken pixel is such
        # a pixel; comparing with the current holder, box by box, gives the closest of all competitors.)
        ys, xs = np.nonzero(taken)
        holders = owner[ys, xs]
        theirs = np.empty(len(ys))
        for holder in np.unique(holders):
            at = holders == holder
            theirs[at] = mismatch(heads, detections[holder], strides, ys[at], xs[at])
        closer = mismatch(heads, detection, strides, ys, xs) < theirs
        owner[ys[closer], xs[closer]] = k
    return owner


def lpsnet_reference(heads: dict, label_set: LabelSet, strides: Sequence[int], thresholds: Thresholds,
                     label_divisor: int, max_instances: int, pre_nms_top: int | None = None) -> ReferenceResult:
    """heads: "semantic" (1, C, H/4, W/4) logits; per level "box_cls", "box_reg" (l, t, r, b in
    pixels), "borderness"."""
    height, width = (HEAD_STRIDE * n for n in heads["semantic"].shape[-2:])
    semantic = upsample_bilinear(heads["semantic"][0], HEAD_STRIDE).argmax(axis=0)
    detections = lpsnet_boxes(heads, strides, height, width, thresholds, pre_nms_top)
    masks = [box_mask(d.box, label_set.thing_ids[d.thing], semantic) for d in detections]
    owner = paste_with_borderness(detections, masks, heads, strides, thresholds.overlap_threshold, semantic.shape)

    kept, dropped = cap(len(detections), max_instances)
    things = [Thing(label_set.thing_ids[d.thing], d.score, owner == k) for k, d in enumerate(detections[:kept])]
    stuff = np.where(owner >= 0, -1, stuff_map_from_semantic(semantic, label_set))
    return assemble(things, stuff, label_set, thresholds.min_stuff_area, label_divisor, max_instances, dropped)
