"""Ideal network outputs built from a panoptic ground truth, to measure what a fusion loses by
itself: whatever it does not reproduce from ideal heads, no network can get back.

Panoptic SwiftNet's ideal heads are its training targets (training/targets/psn.py): a Gaussian
centre heatmap at each instance's centroid and offsets from each instance pixel to that centroid,
plus one-hot semantic logits. All at input resolution, as the network's heads are.
"""

from __future__ import annotations

import numpy as np
import torch

from panoptic_ros.classes import LabelSet
from panoptic_ros.pipeline_io import HEAD_CENTER, HEAD_OFFSET, HEAD_SEMANTIC
from panoptic_ros.training.targets.psn import psn_targets

IDEAL_LOGIT = 10.0  # logit of the true class; every other class has 0


def one_hot_logits(semantic: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) class ids -> (1, C, H, W) float32 logits, IDEAL_LOGIT at the true class."""
    return (IDEAL_LOGIT * (semantic[None] == np.arange(num_classes)[:, None, None]))[None].astype(np.float32)


def ideal_psn_heads(semantic: np.ndarray, instance: np.ndarray, label_set: LabelSet) -> dict[str, np.ndarray]:
    """Ground truth ((H, W) class ids, (H, W) instance ids, 0 = none) -> PSN heads {"semantic",
    "center", "offset"} as NumPy arrays of the network's layout (batch 1)."""
    targets = psn_targets(torch.from_numpy(semantic.astype(np.int64))[None],
                          torch.from_numpy(instance.astype(np.int64))[None], label_set.thing_ids)
    # The training targets of PSN's centre and offset heads carry the heads' names.
    return {HEAD_SEMANTIC: one_hot_logits(semantic, label_set.num_classes),
            HEAD_CENTER: targets[HEAD_CENTER].numpy(), HEAD_OFFSET: targets[HEAD_OFFSET].numpy()}
