"""Reference back half: thing masks and a stuff map on the fusion grid -> PanopticResult.

Written step by step from the output contract in panoptic_ros/fusion/core.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from panoptic_ros.classes import VOID_CLASS, VOID_ID, LabelSet
from panoptic_ros.fusion.static_ops import MAX_SCORE, SCORE_STEP
from panoptic_ros.pipeline_io import COL, INSTANCE_COLUMNS, PanopticResult

STRIDE = 4


@dataclass
class Thing:
    """One candidate instance on the fusion grid (candidates are listed in priority order)."""

    class_id: int
    score: float
    mask: np.ndarray  # (h, w) bool


def rank_key(score: float, index: int) -> tuple[int, int]:
    """Sort key of a candidate: score in steps of SCORE_STEP, best first, then the lower index."""
    return -math.floor(min(max(score, 0.0), MAX_SCORE) / SCORE_STEP), index


def block_mean(x: np.ndarray, stride: int = STRIDE) -> np.ndarray:
    """Mean of every stride x stride block of the last two axes."""
    *lead, h, w = x.shape
    return x.reshape(*lead, h // stride, stride, w // stride, stride).mean(axis=(-3, -1), dtype=np.float32)


def assemble_reference(things: list[Thing], stuff_map: np.ndarray, label_set: LabelSet, min_stuff_area: float,
                       label_divisor: int, max_instances: int, stride: int = STRIDE) -> PanopticResult:
    """Things (disjoint masks) and stuff_map ((h, w) stuff class id, -1 elsewhere) -> the four outputs."""
    # Things without cells are no instance; the rest by descending score, ties by candidate order.
    order = sorted((i for i, t in enumerate(things) if t.mask.any()), key=lambda i: rank_key(things[i].score, i))
    rows = [(things[i].class_id, things[i].score, things[i].mask, True) for i in order[:max_instances]]
    for class_id in label_set.stuff_ids:
        mask = stuff_map == class_id
        if mask.any() and mask.sum() * stride * stride >= min_stuff_area:
            rows.append((class_id, 1.0, mask, False))

    h, w = stuff_map.shape
    panoptic = np.full((h, w), VOID_ID, dtype=np.int64)
    semantic = np.full((h, w), VOID_CLASS, dtype=np.int64)
    table = np.zeros((max_instances + len(label_set.stuff_ids), len(INSTANCE_COLUMNS)), dtype=np.float32)
    for r, (class_id, score, mask, is_thing) in enumerate(rows):
        segment_id = class_id * label_divisor + (r + 1 if is_thing else 0)
        panoptic[mask] = segment_id
        semantic[mask] = class_id
        ys, xs = np.nonzero(mask)
        row = table[r]
        row[COL["valid"]], row[COL["id"]], row[COL["class_id"]], row[COL["score"]] = 1, segment_id, class_id, score
        row[COL["x1"]], row[COL["x2"]] = xs.min() * stride, xs.max() * stride + stride - 1
        row[COL["y1"]], row[COL["y2"]] = ys.min() * stride, ys.max() * stride + stride - 1
        row[COL["area"]] = len(xs) * stride * stride
        row[COL["centroid_x"]] = xs.mean() * stride + (stride - 1) / 2
        row[COL["centroid_y"]] = ys.mean() * stride + (stride - 1) / 2

    def upsample(grid: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(grid, stride, axis=0), stride, axis=1)

    return PanopticResult(panoptic=upsample(panoptic).astype(np.int32), semantic=upsample(semantic).astype(np.uint8),
                          instances=table, num_instances=len(rows))


def stuff_map_from_semantic(semantic: np.ndarray, label_set: LabelSet) -> np.ndarray:
    """Stuff class where the semantic class is stuff, -1 elsewhere."""
    stuff = np.array([not t for t in label_set.thing])
    return np.where(stuff[semantic], semantic, -1)
