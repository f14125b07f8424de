"""Reference PSN fusion, following section 2.3 of the Panoptic SwiftNet paper:

"First, a discrete set of instance centers is recovered by non-maximal suppression of the centers
heatmap. Second, each thing pixel is assigned the closest instance center by taking into account
the corresponding displacement from the offset map. Third, each instance is assigned a semantic
class by taking arg-max over instance-specific semantic histograms. Finally, the panoptic map is
constructed by associating instance indices from step 2 and smoothed semantic indices from step 3."
"""

from __future__ import annotations

import numpy as np

from panoptic_ros.classes import LabelSet
from panoptic_ros.fusion.reference.assemble import (
    STRIDE,
    Thing,
    assemble_reference,
    block_mean,
    rank_key,
    stuff_map_from_semantic,
)
from panoptic_ros.pipeline_io import PanopticResult, Thresholds


def find_centres(heatmap: np.ndarray, threshold: float, kernel: int, top_k: int) -> list[tuple[float, int, int]]:
    """(score, y, x) of the heatmap's local maxima above threshold, best first, at most top_k; of
    the pixels of a flat-topped peak (equal values within one window) only the first counts."""
    radius = kernel // 2
    height, width = heatmap.shape
    centres = []
    for y in range(height):
        for x in range(width):
            value = heatmap[y, x]
            if value <= threshold:
                continue
            window = heatmap[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1]
            if value == window.max():
                centres.append((float(value), y, x))
    centres.sort(key=lambda c: rank_key(c[0], c[1] * width + c[2]))
    centres = centres[:top_k]
    return [c for n, c in enumerate(centres)
            if not any(e[0] == c[0] and abs(e[1] - c[1]) <= radius and abs(e[2] - c[2]) <= radius
                       for e in centres[:n])]


def psn_reference(heads: dict[str, np.ndarray], label_set: LabelSet, thresholds: Thresholds, label_divisor: int,
                  max_instances: int, nms_kernel: int) -> PanopticResult:
    heatmap = heads["center"][0, 0].astype(np.float32)
    semantic = block_mean(heads["semantic"][0].astype(np.float32)).argmax(axis=0)
    offset = block_mean(heads["offset"][0].astype(np.float32))
    h, w = semantic.shape

    # Step 1: centres.
    centres = find_centres(heatmap, thresholds.center_threshold, nms_kernel, max_instances)

    # Step 2: every thing cell joins the closest centre (cell position + its offset).
    owner = np.full((h, w), -1)
    for i in range(h):
        for j in range(w):
            if not label_set.thing[semantic[i, j]] or not centres:
                continue
            target_y = np.float32(i * STRIDE + (STRIDE - 1) / 2) + offset[0, i, j]
            target_x = np.float32(j * STRIDE + (STRIDE - 1) / 2) + offset[1, i, j]
            distances = [(target_y - np.float32(cy)) ** 2 + (target_x - np.float32(cx)) ** 2 for _, cy, cx in centres]
            owner[i, j] = int(np.argmin(distances))

    # Step 3: the class of each instance is the arg-max of its semantic histogram.
    things = []
    for k, (score, _, _) in enumerate(centres):
        mask = owner == k
        histogram = [np.count_nonzero(semantic[mask] == c) for c in label_set.thing_ids]
        things.append(Thing(label_set.thing_ids[int(np.argmax(histogram))], score, mask))

    # Step 4: instances with their voted class, stuff from the semantic map (unclaimed thing cells: void).
    return assemble_reference(things, stuff_map_from_semantic(semantic, label_set), label_set,
                              thresholds.min_stuff_area, label_divisor, max_instances)
