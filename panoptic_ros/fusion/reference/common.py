"""Building blocks the reference fusions share, written as the papers describe them: bilinear
upsampling of heads to input pixels, greedy NMS as a plain loop, pasting masks by confidence one by
one, and the cap of K candidates.

Conventions (those of the training targets, training/targets/common.py): pixel (i, j) is the point
x = j, y = i and covers [j, j+1) x [i, i+1); a box is (x1, y1, x2, y2) with x2 one past its last
column. Scores order candidates best first; equal scores keep the lower candidate index first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def softmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    e = np.exp(np.asarray(x, dtype=np.float64) - np.max(x, axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def as_threshold(value: float) -> np.float32:
    """Thresholds reach the graph as float32 inputs; the references compare against the same value."""
    return np.float32(value)


def _source_index(size: int, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling of `size` cells at `factor` x: output pixel o reads source coordinate
    (o + 0.5) / factor - 0.5 (half-pixel centres), clamped to the edge cells."""
    source = np.clip((np.arange(size * factor) + 0.5) / factor - 0.5, 0.0, size - 1)
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, size - 1)
    return low, high, source - low


def upsample_bilinear(x: np.ndarray, factor: int) -> np.ndarray:
    """(C, h, w) -> (C, h * factor, w * factor) float64, bilinear with half-pixel centres and edges
    clamped (PyTorch's align_corners=False)."""
    x = np.asarray(x, dtype=np.float64)
    if factor == 1:
        return x
    low, high, frac = _source_index(x.shape[1], factor)
    rows = x[:, low] * (1.0 - frac)[None, :, None] + x[:, high] * frac[None, :, None]
    low, high, frac = _source_index(x.shape[2], factor)
    return rows[:, :, low] * (1.0 - frac)[None, None, :] + rows[:, :, high] * frac[None, None, :]


def best_first(scores: Sequence[float]) -> list[int]:
    """Candidate indices by descending score; equal scores keep the lower index first."""
    return sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes (0 when both are empty)."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    intersection = width * height
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union -= intersection
    return float(intersection / union) if union > 0 else 0.0


def greedy_nms(boxes: np.ndarray, scores: Sequence[float], classes: Sequence[int], iou_threshold: float) -> list[int]:
    """Greedy NMS within each class: visit the boxes best first, keep a box unless it overlaps an
    already kept box of its class by IoU > iou_threshold. -> kept indices, best first."""
    threshold = as_threshold(iou_threshold)
    kept: list[int] = []
    for i in best_first(scores):
        if not any(classes[k] == classes[i] and np.float32(box_iou(boxes[k], boxes[i])) > threshold for k in kept):
            kept.append(i)
    return kept


def mostly_taken(mask: np.ndarray, owner: np.ndarray, overlap_threshold: float) -> bool:
    """A mask without pixels, or with more than overlap_threshold of them already owned (owner >= 0)."""
    area = np.count_nonzero(mask)
    return area == 0 or np.float32(np.count_nonzero(mask & (owner >= 0)) / area) > as_threshold(overlap_threshold)


def paste_by_confidence(masks: Sequence[np.ndarray], overlap_threshold: float,
                        shape: tuple[int, int] | None = None) -> tuple[np.ndarray, list[int]]:
    """Panoptic FPN's merge (Kirillov et al.), one mask at a time in the given (confidence) order: a
    mask is discarded when more than overlap_threshold of its pixels are already taken, otherwise it
    takes its free pixels. -> (owner map of `shape` (default: the masks'): mask index or -1, indices
    of the pasted masks)."""
    owner = np.full(shape or masks[0].shape, -1, dtype=np.int64)
    pasted = []
    for k, mask in enumerate(masks):
        if mostly_taken(mask, owner, overlap_threshold):
            continue
        owner[mask & (owner < 0)] = k
        pasted.append(k)
    return owner, pasted


def cap(count: int, max_instances: int) -> tuple[int, int]:
    """Of `count` ranked candidates the first K are kept: -> (kept, dropped)."""
    kept = min(count, max_instances)
    return kept, count - kept
