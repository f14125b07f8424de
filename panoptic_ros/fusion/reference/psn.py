"""Reference PSN fusion: section 2.3 ("Panoptic inference") of Saric et al., Panoptic SwiftNet.

Heads: "Each head consists of a single 1 x 1 convolution and 4x bilinear upsampling" (section 2.1),
so the network's heads already come at input resolution and every step below runs on input pixels.

Where the paper is silent (it defers to Panoptic-DeepLab [3] for the instance branch), this follows
Panoptic-DeepLab's post-processing, and chooses:
- NMS of the heatmap: a pixel is a centre when its value exceeds center_threshold and is the
  maximum of its nms_kernel x nms_kernel window (Panoptic-DeepLab's max-pooling NMS); of equal
  maxima within one window (a flat-topped peak) only the first in raster order is a centre, so a
  plateau yields one instance, not several,
- distance: squared Euclidean between the pixel's position plus its offset and the centre's pixel;
  equal distances go to the better centre,
- the histogram vote's ties go to the lower class id,
- stuff segments below min_stuff_area pixels become void (Panoptic-DeepLab's stuff_area rule),
- the paper has no K: `max_instances` is only there to compare with the graph. Centres are
  ranked by heatmap value; the ones beyond K are dropped after grouping, so their pixels become
  void instead of joining another instance.
"""

from __future__ import annotations

import numpy as np

from panoptic_ros.classes import LabelSet
from panoptic_ros.fusion.reference.assemble import ReferenceResult, Thing, assemble, stuff_map_from_semantic
from panoptic_ros.fusion.reference.common import as_threshold, best_first, cap
from panoptic_ros.pipeline_io import Thresholds

Centre = tuple[float, int, int]  # (heatmap value, y, x)


def find_centres(heatmap: np.ndarray, threshold: float, kernel: int) -> list[Centre]:
    """Step 1, "a discrete set of instance centers is recovered by non-maximal suppression of the
    centers heatmap": (value, y, x) of every centre, best first (ties: raster order)."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    radius = kernel // 2
    height, width = heatmap.shape
    padded = np.pad(heatmap, radius, constant_values=-np.inf)
    is_centre = heatmap > as_threshold(threshold)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            neighbour = padded[radius + dy:radius + dy + height, radius + dx:radius + dx + width]
            is_centre &= heatmap >= neighbour
            if (dy, dx) < (0, 0):  # an earlier pixel of the window with the same value owns the peak
                is_centre &= heatmap != neighbour
    ys, xs = np.nonzero(is_centre)
    values = heatmap[ys, xs]
    return [(float(values[n]), int(ys[n]), int(xs[n])) for n in best_first(values)]


def group_pixels(thing: np.ndarray, offset: np.ndarray, centres: list[Centre]) -> np.ndarray:
    """Step 2, "each thing pixel is assigned the closest instance center by taking into account the
    corresponding displacement from the offset map": (H, W) centre index, -1 off thing pixels."""
    height, width = thing.shape
    ys, xs = np.mgrid[0:height, 0:width]
    target_y = ys + offset[0].astype(np.float64)
    target_x = xs + offset[1].astype(np.float64)
    owner = np.full((height, width), -1, dtype=np.int64)
    best = np.full((height, width), np.inf)
    for k, (_, cy, cx) in enumerate(centres):
        distance = (target_y - cy) ** 2 + (target_x - cx) ** 2
        closer = thing & (distance < best)
        owner[closer], best[closer] = k, distance[closer]
    return owner


def vote_classes(semantic: np.ndarray, owner: np.ndarray, count: int, num_classes: int) -> list[int]:
    """Step 3, "each instance is assigned a semantic class by taking arg-max over instance-specific
    semantic histograms": the class of each of `count` instances."""
    return [int(np.argmax(np.bincount(semantic[owner == k], minlength=num_classes))) for k in range(count)]


def psn_reference(heads: dict[str, np.ndarray], label_set: LabelSet, thresholds: Thresholds, label_divisor: int,
                  max_instances: int, nms_kernel: int) -> ReferenceResult:
    """heads: "semantic" (1, C, H, W) logits, "center" (1, 1, H, W), "offset" (1, 2, H, W) as (dy, dx).
    A candidate is a centre."""
    semantic = heads["semantic"][0].argmax(axis=0)
    thing = np.array(label_set.thing)[semantic]
    centres = find_centres(heads["center"][0, 0], thresholds.center_threshold, nms_kernel)
    owner = group_pixels(thing, heads["offset"][0], centres)
    classes = vote_classes(semantic, owner, len(centres), label_set.num_classes)

    # Step 4, "the panoptic map is constructed by associating instance indices from step 2 and
    # smoothed semantic indices from step 3"; thing pixels of no kept instance stay void.
    kept, dropped = cap(len(centres), max_instances)
    things = [Thing(classes[k], centres[k][0], owner == k) for k in range(kept)]
    return assemble(things, stuff_map_from_semantic(semantic, label_set), label_set, thresholds.min_stuff_area,
                    label_divisor, max_instances, dropped)
