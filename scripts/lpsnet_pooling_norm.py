"""Measure the choice of normalisation in LPSNet's pyramid-pooling branches at batch 1 per process.

Trains the same tiny LPSNet (seeded, same data order) with the branches' batch norm replaced by
each candidate and prints the mean training loss of the last steps and PQ on held-out synthetic
frames. Candidates: fixed statistics (what the network uses), group norm, and, at batch 2 only,
batch statistics (what it used before; batch 1 raises "Expected more than 1 value per channel").

    OMP_NUM_THREADS=1 python scripts/lpsnet_pooling_norm.py --steps 300 --batch 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile

import numpy as np
import torch
from torch import nn

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.data.augment import Augment
from panoptic_ros.data.datasets import SyntheticScenes
from panoptic_ros.data.torch_dataset import PanopticDataset, collate
from panoptic_ros.fusion.pipeline import build_pipeline
from panoptic_ros.networks import fpn
from panoptic_ros.networks.layers import FixedStatsBatchNorm2d, group_norm
from panoptic_ros.training.config import TrainConfig
from panoptic_ros.training.train import train
from panoptic_ros.training.validation import evaluate_frames, scene_frames, validation_scenes

CANDIDATES = {"fixed-statistics": FixedStatsBatchNorm2d, "group-norm": group_norm, "batch-statistics": nn.BatchNorm2d}


def batches(batch: int, seed: int):
    dataset = PanopticDataset(SyntheticScenes.split("train", 10_000, 256, 512), Augment((0.5, 1.25), (128, 256)),
                              seed=seed)
    for start in itertools.count(0, batch):
        yield collate([dataset[i] for i in range(start, start + batch)])


def measure(name: str, args: argparse.Namespace) -> dict:
    fpn.FixedStatsBatchNorm2d = CANDIDATES[name]  # the pooling branches' norm, read when the network is built
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(model="lpsnet", output_dir=out, width_mult=0.25, backbone="resnet18", steps=args.steps,
                             batch_size=args.batch, lr=2e-3, warmup_steps=50, checkpoint_every=args.steps,
                             seed=args.seed)
        summary = train(config, SYNTHETIC, batches(args.batch, args.seed), show_progress=False,
                        evaluate=lambda network: _pq(network, args.eval_frames))
        with open(f"{out}/train_log.jsonl") as log:
            losses = [json.loads(line)["loss"] for line in log]
    fpn.FixedStatsBatchNorm2d = FixedStatsBatchNorm2d
    tail = losses[-args.tail:]
    return {"norm": name, "batch": args.batch, "seed": args.seed, "steps": summary["steps"],
            "loss_last": round(float(np.mean(tail)), 4),
            "loss_first": round(float(np.mean(losses[:args.tail])), 4), "pq": round(summary["final"]["all"]["pq"], 2),
            "miou": round(summary["final"]["miou"], 2)}


def _pq(network, frames: int) -> dict:
    pipeline = build_pipeline("lpsnet", SYNTHETIC, 256, 512, network=network)
    return evaluate_frames(pipeline.run, scene_frames(validation_scenes(frames, 256, 512)), SYNTHETIC).to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tail", type=int, default=50, help="steps averaged for the loss")
    parser.add_argument("--eval-frames", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="initialisation and data order")
    parser.add_argument("--norms", nargs="+", default=["fixed-statistics", "group-norm"], choices=tuple(CANDIDATES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.norms:
        print(json.dumps(measure(name, args)), flush=True)


if __name__ == "__main__":
    main()
