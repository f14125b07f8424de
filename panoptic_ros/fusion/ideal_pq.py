"""PQ of PSN's static fusion on ideal heads (fusion/ideal_heads.py) of held-out synthetic frames:
what the fusion itself loses, whatever the network (`panoptic-ros bench fusion --ideal`)."""

from __future__ import annotations

import torch

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.fusion.base import RuntimeThresholds
from panoptic_ros.fusion.ideal_heads import ideal_psn_heads
from panoptic_ros.fusion.psn import PSNFusion
from panoptic_ros.pipeline_io import Thresholds

HELD_OUT_SEED = 10**9  # the first validation scene (data/synthetic.py's val split)
DIVISOR = 1000


def ideal_psn_pq(height: int, width: int, frames: int) -> tuple[float, float]:
    """(PQ, things PQ) of PSNFusion (K 100, nms_kernel 7, min_stuff_area 0) against the ground truth
    of `frames` held-out scenes, from ideal heads."""
    from panoptic_ros.data.synthetic import generate_scene
    from panoptic_ros.evaluation.pq import PQAccumulator

    fusion = PSNFusion(SYNTHETIC, 100, 7)
    thresholds = RuntimeThresholds.from_thresholds(Thresholds(min_stuff_area=0))
    accumulator = PQAccumulator.from_label_set(SYNTHETIC)
    for n in range(frames):
        scene = generate_scene(HELD_OUT_SEED + n, height, width)
        heads = {k: torch.from_numpy(v) for k, v in ideal_psn_heads(scene.semantic, scene.instance, SYNTHETIC).items()}
        with torch.no_grad():
            panoptic = fusion(heads, thresholds, torch.tensor(DIVISOR, dtype=torch.int32))[0].numpy()
        accumulator.add_id_maps(scene.panoptic(DIVISOR), panoptic, DIVISOR)
    metrics = accumulator.result()
    return metrics.all.pq, metrics.things.pq
