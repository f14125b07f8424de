"""Reference SPINet fusion, following Hwang et al. (sections 3.2-3.4 and "Inference"):

"give the confidence threshold of 0.45 for the sampling of dynamic filters for instances.
Additional steps for the post-processing follows that of PanopticFPN, which marks down instances
first, and adds up the predictions of stuff classes to the non-instance regions." Filters sampled at
those locations (here: locations that are also a 3 x 3 local maximum of their class's confidence,
at most 2K, as in the static graph) are applied to the Panoptic-Feature by the single-shot
convolution; a mask is sigmoid > mask_sigma; duplicate masks of one class are removed by greedy
mask NMS; instances are pasted by confidence; stuff is the arg-max of the stuff filters' logits.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from panoptic_ros.classes import LabelSet
from panoptic_ros.fusion.reference.assemble import Thing, assemble_reference, rank_key
from panoptic_ros.fusion.reference.common import paste_by_confidence, sigmoid
from panoptic_ros.fusion.spinet import PEAK_WINDOW, SAMPLES_PER_INSTANCE
from panoptic_ros.pipeline_io import PanopticResult, Thresholds


def sampling_locations(class_logits: list[np.ndarray], threshold: float) -> list[tuple[float, int, int, int]]:
    """(confidence, thing index, level, location index) of every location above the threshold whose
    confidence is the maximum of its class's 3 x 3 neighbourhood, by level then row-major location."""
    radius = PEAK_WINDOW // 2
    found = []
    for level, logits in enumerate(class_logits):
        probability = sigmoid(logits[0])
        things, h, w = probability.shape
        for i in range(h):
            for j in range(w):
                best, best_thing = 0.0, 0
                for t in range(things):
                    window = probability[t, max(0, i - radius):i + radius + 1, max(0, j - radius):j + radius + 1]
                    if probability[t, i, j] == window.max() and probability[t, i, j] > best:
                        best, best_thing = probability[t, i, j], t
                if best > threshold:
                    found.append((float(best), best_thing, level, i * w + j))
    return found


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / max((a | b).sum(), 1)


def spinet_reference(heads: dict, network: nn.Module, label_set: LabelSet, thresholds: Thresholds,
                     label_divisor: int, max_instances: int) -> PanopticResult:
    feature = torch.from_numpy(heads["panoptic_feature"])
    candidates = sampling_locations(heads["class_logits"], thresholds.score_threshold)
    offsets = np.cumsum([0] + [m.shape[-2] * m.shape[-1] for m in heads["class_logits"]])
    candidates.sort(key=lambda c: rank_key(c[0], offsets[c[2]] + c[3]))
    candidates = candidates[:SAMPLES_PER_INSTANCE * max_instances]

    # Single-shot convolution with each sampled filter.
    masks = []
    for _, _, level, location in candidates:
        filters = heads["filters"][level][0].reshape(heads["filters"][level].shape[1], -1)[:, location]
        with torch.no_grad():
            logits = network.dynamic_mask_logits(feature, torch.from_numpy(filters)[None, None])[0, 0].numpy()
        masks.append(sigmoid(logits) > thresholds.mask_sigma)

    # Greedy mask NMS within each class, at most K instances.
    kept = []
    for n, (_, thing, _, _) in enumerate(candidates):
        if not masks[n].any():
            continue
        if any(candidates[m][1] == thing and mask_iou(masks[m], masks[n]) > thresholds.nms_iou for m in kept):
            continue
        kept.append(n)
    kept = kept[:max_instances]

    # Panoptic FPN merge: instances by confidence, stuff logits' arg-max on the rest.
    owner, _ = paste_by_confidence([masks[n] for n in kept], thresholds.overlap_threshold)
    things = [Thing(label_set.thing_ids[candidates[n][1]], candidates[n][0], owner == k) for k, n in enumerate(kept)]
    with torch.no_grad():
        stuff_logits = network.stuff_mask_logits(feature)[0].numpy()
    stuff = np.array(label_set.stuff_ids)[stuff_logits.argmax(axis=0)]
    return assemble_reference(things, np.where(owner >= 0, -1, stuff), label_set, thresholds.min_stuff_area,
                              label_divisor, max_instances)
