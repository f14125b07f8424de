"""Panoptic SwiftNet targets (sec. 2.2-2.3): semantic labels, Gaussian center heatmap, offsets, offset weights.

All at input resolution (the heads are upsampled 4x to it):
- "semantic" (B, H, W): the class map (VOID_CLASS ignored by the loss);
- "center" (B, 1, H, W): max over instances of a Gaussian (sigma 10 px) at each instance's center
  of mass, as Panoptic-DeepLab crafts it;
- "center_weight" (B, 1, H, W): 0 on void and crowd pixels, else 1;
- "offset" (B, 2, H, W): (dy, dx) from each instance pixel to its center, 0 elsewhere;
- "offset_weight" (B, 1, H, W): the boundary-aware weights {8, 4, 2, 1} by distance to the
  instance's boundary in the bands [0, 4), [4, 16), [16, 64), [64, inf) pixels (the band edges
  of the authors' SwiftNet boundary-aware loss); 0 on stuff, void and crowd pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from panoptic_ros.training.targets.common import check_ground_truth, ignored_pixels, instance_pixels

CENTER_SIGMA = 10.0
BAND_EDGES = (4.0, 16.0, 64.0)
BAND_WEIGHTS = (8.0, 4.0, 2.0, 1.0)


def boundary_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (cv2, 5x5 mask) of each pixel of a boolean mask to the nearest pixel outside it."""
    return cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)


def band_weights(distance: np.ndarray, edges: Sequence[float] = BAND_EDGES,
                 weights: Sequence[float] = BAND_WEIGHTS) -> np.ndarray:
    """Weight of the distance band each pixel falls in (np.digitize on `edges`)."""
    return np.asarray(weights, dtype=np.float32)[np.digitize(distance, edges)]


def psn_targets(class_map: Tensor, instance_map: Tensor, thing_ids: Sequence[int], sigma: float = CENTER_SIGMA,
                band_edges: Sequence[float] = BAND_EDGES) -> dict[str, Tensor]:
    """Targets of Panoptic SwiftNet for a batch of panoptic ground truths (see module doc)."""
    check_ground_truth(class_map, instance_map)
    inst = instance_pixels(class_map, instance_map, thing_ids).cpu().numpy()
    b, h, w = inst.shape
    center = np.zeros((b, 1, h, w), np.float32)
    offset = np.zeros((b, 2, h, w), np.float32)
    offset_weight = np.zeros((b, 1, h, w), np.float32)
    radius = int(3 * sigma)  # the Gaussian is < 0.012 beyond 3 sigma
    for i in range(b):
        for instance_id in np.unique(inst[i]):
            if instance_id <= 0:
                continue
            ys, xs = np.nonzero(inst[i] == instance_id)
            cy, cx = int(np.floor(ys.mean() + 0.5)), int(np.floor(xs.mean() + 0.5))  # round half up
            y0, y1, x0, x1 = max(0, cy - radius), min(h, cy + radius + 1), max(0, cx - radius), min(w, cx + radius + 1)
            gy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
            gx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
            gaussian = np.exp(-(gy ** 2 + gx ** 2) / (2 * sigma ** 2))
            center[i, 0, y0:y1, x0:x1] = np.maximum(center[i, 0, y0:y1, x0:x1], gaussian)
            offset[i, 0, ys, xs] = cy - ys
            offset[i, 1, ys, xs] = cx - xs
            # Distance transform on the instance's bounding box plus a 1-pixel margin (same result, less work).
            top, left = max(0, ys.min() - 1), max(0, xs.min() - 1)
            crop = inst[i, top:ys.max() + 2, left:xs.max() + 2] == instance_id
            distance = boundary_distance(crop)
            offset_weight[i, 0, ys, xs] = band_weights(distance[ys - top, xs - left], band_edges)
    device = class_map.device
    ignored = ignored_pixels(class_map, instance_map, thing_ids)
    return {"semantic": class_map,
            "center": torch.from_numpy(center).to(device),
            "center_weight": (~ignored).float().unsqueeze(1),
            "offset": torch.from_numpy(offset).to(device),
            "offset_weight": torch.from_numpy(offset_weight).to(device)}
