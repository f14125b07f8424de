"""PQ of a network checkpoint's heads through its literal reference fusion, on held-out synthetic
frames: what the paper's post-processing gives with this network, to compare the graph with.

    python -m panoptic_ros.fusion.reference.heldout models/rtps.pt --frames 50 [--paper-defaults]

Frames are `generate_scene(HELDOUT_SEED + i, height, width)`, the held-out frames of the model cards.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from panoptic_ros.classes import DEFAULT_LABEL_DIVISOR
from panoptic_ros.data.synthetic import generate_scene
from panoptic_ros.evaluation.pq import PQAccumulator
from panoptic_ros.fusion.reference.assemble import ReferenceResult
from panoptic_ros.fusion.reference.defaults import paper_defaults
from panoptic_ros.fusion.reference.fpsnet import fpsnet_reference
from panoptic_ros.fusion.reference.lpsnet import lpsnet_reference
from panoptic_ros.fusion.reference.psn import psn_reference
from panoptic_ros.fusion.reference.rtps import rtps_reference
from panoptic_ros.fusion.reference.spinet import spinet_reference
from panoptic_ros.pipeline_io import Thresholds

HELDOUT_SEED = 10**9


def reference_of(pipeline: nn.Module, heads: dict, thresholds: Thresholds) -> ReferenceResult:
    """The literal reference of the pipeline's model on NumPy heads, with the pipeline's K and geometry."""
    fusion, network, label_set = pipeline.fusion, pipeline.network, pipeline.label_set
    k, divisor = pipeline.max_instances, DEFAULT_LABEL_DIVISOR
    if pipeline.model == "psn":
        return psn_reference(heads, label_set, thresholds, divisor, k, fusion.nms_kernel)
    if pipeline.model == "rtps":
        return rtps_reference(heads, label_set, fusion.strides, thresholds, divisor, k)
    if pipeline.model == "lpsnet":
        return lpsnet_reference(heads, label_set, fusion.strides, thresholds, divisor, k)
    if pipeline.model == "fpsnet":
        return fpsnet_reference(heads, network, label_set, fusion.strides, fusion.anchor_sizes, fusion.anchor_ratios,
                                thresholds, divisor, k)
    return spinet_reference(heads, network, label_set, thresholds, divisor, k)


def as_numpy(heads: dict) -> dict:
    return {name: [x.numpy() for x in value] if isinstance(value, list) else value.numpy()
            for name, value in heads.items()}


@torch.no_grad()
def heldout_pq(checkpoint: str | Path, frames: int, height: int = 256, width: int = 512,
               paper: bool = False) -> dict:
    """{"model", "frames", "pq", "pq_things", "pq_stuff", "candidates_dropped", "thresholds"} of the
    reference on `frames` held-out frames, with the project's thresholds or (paper) the paper's."""
    from panoptic_ros.fusion.pipeline import pipeline_from_checkpoint

    pipeline = pipeline_from_checkpoint(checkpoint, height, width)
    thresholds = paper_defaults(pipeline.model) if paper else Thresholds()
    accumulator = PQAccumulator.from_label_set(pipeline.label_set)
    dropped = 0
    for n in range(frames):
        scene = generate_scene(HELDOUT_SEED + n, height, width)
        heads = as_numpy(pipeline.network(pipeline.normalize(torch.from_numpy(scene.image))))
        out = reference_of(pipeline, heads, thresholds)
        dropped += out.candidates_dropped
        accumulator.add_id_maps(scene.panoptic(DEFAULT_LABEL_DIVISOR), out.result.panoptic, DEFAULT_LABEL_DIVISOR)
    metrics = accumulator.result()
    return {"model": pipeline.model, "frames": frames, "pq": metrics.all.pq, "pq_things": metrics.things.pq,
            "pq_stuff": metrics.stuff.pq, "candidates_dropped": dropped, "thresholds": thresholds.as_dict()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--paper-defaults", action="store_true", help="the paper's thresholds (defaults.py)")
    args = parser.parse_args(argv)
    print(json.dumps(heldout_pq(args.checkpoint, args.frames, args.height, args.width, args.paper_defaults)))


if __name__ == "__main__":
    main()
