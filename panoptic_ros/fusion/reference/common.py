"""Sequential building blocks of the reference fusions: dense detections with greedy NMS, and
pasting masks by confidence. Loops, as the papers describe them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from panoptic_ros.fusion.detections import PRE_NMS_TOP
from panoptic_ros.fusion.reference.assemble import rank_key
from panoptic_ros.networks.box_coding import level_points, ltrb_to_boxes


@dataclass
class Detection:
    box: np.ndarray  # (4,) x1 y1 x2 y2
    thing: int  # index into the label set's thing_ids
    score: float
    level: int


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def locations(maps: list[np.ndarray], per_location: int = 1) -> np.ndarray:
    """Per-level (1, A*C, h, w) maps -> (sum h*w*A, C) rows: level by level, row-major locations, then A."""
    rows = []
    for m in maps:
        channels = m.shape[1] // per_location
        rows.append(np.transpose(m[0], (1, 2, 0)).reshape(-1, channels))
    return np.concatenate(rows)


def clip(box: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.array([min(max(box[0], 0), width), min(max(box[1], 0), height),
                     min(max(box[2], 0), width), min(max(box[3], 0), height)], dtype=np.float32)


def fcos_boxes(box_reg: list[np.ndarray], strides: tuple[int, ...], height: int, width: int) -> list[np.ndarray]:
    """Per level, the (h, w, 4) boxes that the (l, t, r, b) distances at each location describe, clipped."""
    boxes = []
    for reg, stride in zip(box_reg, strides, strict=True):
        h, w = reg.shape[-2:]
        points = level_points(h, w, stride)
        decoded = ltrb_to_boxes(points, torch.from_numpy(locations([reg]))).numpy()
        boxes.append(np.stack([clip(b, height, width) for b in decoded]).reshape(h, w, 4))
    return boxes


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    intersection = width * height
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    return intersection / max(union - intersection, 1e-6)


def detect(boxes: np.ndarray, class_prob: np.ndarray, rank_score: np.ndarray, level: np.ndarray,
           score_threshold: float, nms_iou: float, k: int) -> list[Detection]:
    """Candidates whose best class probability exceeds the threshold, best rank first, greedy NMS
    within each class (a box is dropped when it overlaps a kept box of its class by more than
    nms_iou), at most k."""
    candidates = [i for i in range(len(boxes)) if class_prob[i].max() > score_threshold]
    candidates.sort(key=lambda i: rank_key(rank_score[i], i))
    kept: list[Detection] = []
    for i in candidates[:PRE_NMS_TOP]:
        thing = int(class_prob[i].argmax())
        if any(d.thing == thing and box_iou(d.box, boxes[i]) > nms_iou for d in kept):
            continue
        kept.append(Detection(boxes[i], thing, float(rank_score[i]), int(level[i])))
    return kept[:k]


def paste_by_confidence(masks: list[np.ndarray], overlap_threshold: float) -> tuple[np.ndarray, list[int]]:
    """Panoptic FPN's merge: masks in priority order; a mask is skipped when more than
    overlap_threshold of it is taken, otherwise it takes its free pixels. -> (owner map, -1 where
    free; indices of the pasted masks)."""
    owner = np.full(masks[0].shape, -1) if masks else np.zeros((0, 0), dtype=int)
    pasted = []
    for k, mask in enumerate(masks):
        area = mask.sum()
        if area == 0 or (mask & (owner >= 0)).sum() / area > overlap_threshold:
            continue
        owner[mask & (owner < 0)] = k
        pasted.append(k)
    return owner, pasted
