"""Reference SPINet fusion: sections 3.2 and 3.4 and "Inference" (section 4) of Hwang et al.

"During inference, we preserve the full resolution of images from all datasets. We forward the input
image through the network and give the confidence threshold of 0.45 for the sampling of dynamic
filters for instances. Additional steps for the post-processing follows that of PanopticFPN [14],
which marks down instances first, and adds up the predictions of stuff classes to the non-instance
regions."

Choices where the paper is silent (declared in models/README.md):
- every location of every level whose best class confidence exceeds score_threshold is sampled
  (no local-maximum test, no cap on samples, no mask NMS: Panoptic FPN's merge removes the
  duplicate masks of one object, each being mostly covered by the first),
- the stride-4 mask and stuff logits are bilinearly upsampled to input pixels; a thing mask is
  sigmoid > mask_sigma (the paper trains masks with a sigmoid, eq. 1); stuff is the arg-max of the
  stuff logits (softmax across stuff classes, eq. 2, keeps the arg-max),
- the merge is common.paste_by_confidence by sample confidence with overlap_threshold, then
  stuff on the free pixels with min_stuff_area,
- the paper has no K: `max_instances` is only there to compare with the graph. A candidate is a
  pasted instance; those beyond K (by confidence) become void. `max_samples` (None: the paper)
  only compares with a graph that samples at most that many locations, best first.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from panoptic_ros.classes import LabelSet
from panoptic_ros.fusion.reference.assemble import ReferenceResult, Thing, assemble
from panoptic_ros.fusion.reference.common import (
    as_threshold,
    best_first,
    cap,
    paste_by_confidence,
    sigmoid,
    upsample_bilinear,
)
from panoptic_ros.pipeline_io import Thresholds

FEATURE_STRIDE = 4  # the Panoptic-Feature's stride


def sampling_locations(class_logits: list[np.ndarray], threshold: float,
                       max_samples: int | None = None) -> list[tuple[float, int, int, int, int]]:
    """"for the inference, the positions to be sampled are selected by the confidence score above a
    threshold, measured by C": (confidence, thing index, level, row, column), best first (ties:
    level, then row-major)."""
    found = []
    for level, logits in enumerate(class_logits):
        probability = sigmoid(logits[0])
        best, thing = probability.max(axis=0), probability.argmax(axis=0)
        for i, j in zip(*np.nonzero(best.astype(np.float32) > as_threshold(threshold)), strict=True):
            found.append((float(best[i, j]), int(thing[i, j]), level, int(i), int(j)))
    return [found[n] for n in best_first([f[0] for f in found])][:max_samples]


def instance_mask(network: nn.Module, feature: torch.Tensor, filters: np.ndarray, mask_sigma: float) -> np.ndarray:
    """"single-shot convolution with dynamic filters for things ... applied to Panoptic-Feature":
    the (H, W) mask of one sampled filter."""
    with torch.no_grad():
        logits = network.dynamic_mask_logits(feature, torch.from_numpy(filters.astype(np.float32))[None, None])
    return np.float32(sigmoid(upsample_bilinear(logits[0].numpy(), FEATURE_STRIDE)[0])) > as_threshold(mask_sigma)


def spinet_reference(heads: dict, network: nn.Module, label_set: LabelSet, thresholds: Thresholds,
                     label_divisor: int, max_instances: int, max_samples: int | None = None) -> ReferenceResult:
    """heads: per level "class_logits" (1, T, h, w) and "filters" (1, D, h, w); "panoptic_feature"
    (1, F, H/4, W/4)."""
    feature = torch.from_numpy(heads["panoptic_feature"])
    samples = sampling_locations(heads["class_logits"], thresholds.score_threshold, max_samples)
    masks = [instance_mask(network, feature, heads["filters"][level][0, :, i, j], thresholds.mask_sigma)
             for _, _, level, i, j in samples]

    # Panoptic FPN's merge: instances first, by confidence.
    shape = (FEATURE_STRIDE * feature.shape[-2], FEATURE_STRIDE * feature.shape[-1])
    owner, pasted = paste_by_confidence(masks, thresholds.overlap_threshold, shape)
    kept, dropped = cap(len(pasted), max_instances)
    things = [Thing(label_set.thing_ids[samples[n][1]], samples[n][0], owner == n) for n in pasted[:kept]]

    # "adds up the predictions of stuff classes to the non-instance regions"
    with torch.no_grad():
        stuff_logits = network.stuff_mask_logits(feature)[0].numpy()
    stuff = np.array(label_set.stuff_ids)[upsample_bilinear(stuff_logits, FEATURE_STRIDE).argmax(axis=0)]
    stuff = np.where(owner >= 0, -1, stuff)
    return assemble(things, stuff, label_set, thresholds.min_stuff_area, label_divisor, max_instances, dropped)
