"""Reference back half, at input resolution: thing masks and a stuff map -> PanopticResult.

Written from the output contract (pipeline_io, docs of the instance table), not from the graph:
- thing ids are class * label_divisor + n, n = 1, 2, ... within each class by descending score
  (Panoptic-DeepLab's and Cityscapes' per-class instance numbering); stuff ids class * label_divisor;
  void -1 in the id map and 255 in the semantic map,
- a stuff segment with fewer than min_stuff_area pixels becomes void (Panoptic FPN's and
  Panoptic-DeepLab's stuff area rule: a segment of exactly min_stuff_area pixels stays),
- table rows: things by descending score, then stuff by class id; boxes are inclusive pixel indices,
  area a pixel count, centroid the mean pixel index (x = column, y = row).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from panoptic_ros.classes import VOID_CLASS, VOID_ID, LabelSet
from panoptic_ros.fusion.reference.common import best_first
from panoptic_ros.pipeline_io import COL, INSTANCE_COLUMNS, PanopticResult


@dataclass
class Thing:
    """One instance: its class, score and (H, W) bool mask of input pixels."""

    class_id: int
    score: float
    mask: np.ndarray


@dataclass
class ReferenceResult:
    """A reference's outputs and how many valid candidates did not fit K."""

    result: PanopticResult
    candidates_dropped: int


def stuff_map_from_semantic(semantic: np.ndarray, label_set: LabelSet) -> np.ndarray:
    """Stuff class where the semantic class is stuff, -1 elsewhere."""
    is_stuff = ~np.array(label_set.thing)
    return np.where(is_stuff[semantic], semantic, -1)


def instance_numbers(things: list[Thing]) -> list[int]:
    """n of each thing (class * divisor + n): 1, 2, ... within its class, by descending score."""
    numbers = [0] * len(things)
    used: dict[int, int] = {}
    for i in best_first([t.score for t in things]):
        used[things[i].class_id] = used.get(things[i].class_id, 0) + 1
        numbers[i] = used[things[i].class_id]
    return numbers


def assemble(things: list[Thing], stuff_map: np.ndarray, label_set: LabelSet, min_stuff_area: float,
             label_divisor: int, max_instances: int, candidates_dropped: int) -> ReferenceResult:
    """Disjoint thing masks (at most max_instances with pixels) and stuff_map ((H, W) stuff class id,
    -1 elsewhere) -> the four outputs. Pixels in neither are void."""
    things = [t for t in things if t.mask.any()]  # a thing without pixels is no instance
    if len(things) > max_instances:
        raise ValueError(f"{len(things)} things do not fit max_instances {max_instances}: cap them first")
    numbers = instance_numbers(things)
    rows = [(t.class_id * label_divisor + numbers[i], t.class_id, t.score, t.mask)
            for i, t in ((i, things[i]) for i in best_first([t.score for t in things]))]
    for class_id in label_set.stuff_ids:
        mask = stuff_map == class_id
        if mask.any() and mask.sum() >= np.float32(min_stuff_area):
            rows.append((class_id * label_divisor, class_id, 1.0, mask))

    panoptic = np.full(stuff_map.shape, VOID_ID, dtype=np.int32)
    semantic = np.full(stuff_map.shape, VOID_CLASS, dtype=np.uint8)
    table = np.zeros((max_instances + len(label_set.stuff_ids), len(INSTANCE_COLUMNS)), dtype=np.float32)
    for r, (segment_id, class_id, score, mask) in enumerate(rows):
        panoptic[mask] = segment_id
        semantic[mask] = class_id
        ys, xs = np.nonzero(mask)
        values = {"valid": 1, "id": segment_id, "class_id": class_id, "score": score,
                  "x1": xs.min(), "y1": ys.min(), "x2": xs.max(), "y2": ys.max(), "area": len(xs),
                  "centroid_x": xs.mean(), "centroid_y": ys.mean()}
        for name, value in values.items():
            table[r, COL[name]] = value
    return ReferenceResult(PanopticResult(panoptic, semantic, table, len(rows)), candidates_dropped)
