"""PQ of a model on frames with known ground truth, as training reports it at intervals and as
the model cards measure it (held-out synthetic seeds, never seen in training)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from panoptic_ros.classes import DEFAULT_LABEL_DIVISOR, LabelSet
from panoptic_ros.data.datasets import SYNTHETIC_SPLIT_SEEDS
from panoptic_ros.data.synthetic import SyntheticScene, generate_scene
from panoptic_ros.evaluation.pq import PQAccumulator, PQResult
from panoptic_ros.pipeline_io import PanopticResult


def validation_scenes(count: int, height: int, width: int, split: str = "val") -> list[SyntheticScene]:
    """The first `count` scenes of a held-out synthetic split (seeds disjoint from training's)."""
    first = SYNTHETIC_SPLIT_SEEDS[split]
    return [generate_scene(first + i, height, width) for i in range(count)]


def evaluate_frames(run: Callable[[np.ndarray], PanopticResult], frames: Iterable[tuple[np.ndarray, np.ndarray]],
                    label_set: LabelSet, label_divisor: int = DEFAULT_LABEL_DIVISOR) -> PQResult:
    """PQ/SQ/RQ and mIoU of `run` (image -> PanopticResult) over (image, ground-truth id map) pairs."""
    accumulator = PQAccumulator.from_label_set(label_set)
    for image, gt_ids in frames:
        accumulator.add_id_maps(gt_ids, run(image).panoptic, label_divisor)
    return accumulator.result()


def scene_frames(scenes: Iterable[SyntheticScene], label_divisor: int = DEFAULT_LABEL_DIVISOR):
    """(image, ground-truth id map) pairs of synthetic scenes."""
    return ((scene.image, scene.panoptic(label_divisor)) for scene in scenes)
