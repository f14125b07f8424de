"""`panoptic-ros train`: train one of the five networks on synthetic scenes, Cityscapes or COCO.

`--preset NAME` sets a paper's Cityscapes recipe (optimiser, learning rates, schedule, steps,
batch, crop, scale range, backbone, width, batch norm); any option given on the command line
overrides it. `--print-config` prints the resolved recipe, with the paper's words and the values
the paper leaves open, and exits.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import MISSING, asdict, fields

from panoptic_ros.training.config import OPTIMIZERS, SCHEDULES, TrainConfig, per_process_batch
from panoptic_ros.training.presets import IMAGENET_NOTE, PRESETS, get_preset

DATASETS = ("synthetic", "cityscapes", "coco", "synth-folder")
_DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}

# Options that map onto one TrainConfig field each: (flag, field, argparse keywords, help).
_RECIPE_OPTIONS: tuple[tuple[str, str, dict, str], ...] = (
    ("--width-mult", "width_mult", {"type": float}, "channel width multiplier (1.0 = paper)"),
    ("--backbone", "backbone", {}, "resnet18, resnet34 or resnet50 (default: the network's own)"),
    ("--steps", "steps", {"type": int}, "optimiser steps"),
    ("--batch-size", "batch_size", {"type": int}, "images per step over all processes (each takes its share)"),
    ("--scale", "scale", {"type": float, "nargs": 2, "metavar": ("LOW", "HIGH")}, "scale jitter range"),
    ("--optimizer", "optimizer", {"choices": OPTIMIZERS}, "optimiser"),
    ("--lr", "lr", {"type": float}, "base learning rate"),
    ("--min-lr", "min_lr", {"type": float}, "poly: learning rate at the end"),
    ("--backbone-lr-mult", "backbone_lr_mult", {"type": float}, "backbone learning rate = lr x this"),
    ("--weight-decay", "weight_decay", {"type": float}, "weight decay (Adam: L2 on the gradient)"),
    ("--momentum", "momentum", {"type": float}, "SGD momentum"),
    ("--schedule", "schedule", {"choices": SCHEDULES}, "learning-rate decay"),
    ("--poly-power", "poly_power", {"type": float}, "poly: (1 - progress)^power"),
    ("--milestones", "milestones", {"type": int, "nargs": "+", "metavar": "STEP"},
     "multistep: steps at which the learning rate is multiplied by --gamma"),
    ("--gamma", "gamma", {"type": float}, "multistep: decay factor"),
    ("--warmup-steps", "warmup_steps", {"type": int}, "linear warm-up length (0: none)"),
    ("--warmup-factor", "warmup_factor", {"type": float}, "warm-up starts at lr x this"),
    ("--clip-grad-norm", "clip_grad_norm", {"type": float}, "clip the gradient norm to this (0: off)"),
    ("--freeze-backbone-bn", "freeze_backbone_bn", {"action": argparse.BooleanOptionalAction},
     "fix the backbone's batch-norm statistics and affine (RTPS, SPINet)"),
    ("--sync-bn", "sync_bn", {"action": argparse.BooleanOptionalAction},
     "SyncBatchNorm across processes under DDP (CUDA)"),
    ("--eval-every", "eval_every", {"type": int}, "steps between PQ evaluations (0: at the end only)"),
    ("--checkpoint-every", "checkpoint_every", {"type": int}, "steps between last.pt checkpoints"),
    ("--seed", "seed", {"type": int}, "random seed"),
    ("--imagenet-weights", "imagenet_weights", {}, "torchvision ResNet checkpoint (.pth) for the backbone"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a network (paper presets, poly/multistep decay, AMP, DDP via "
                                            "torchrun)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=tuple(PRESETS), help="a paper's Cityscapes recipe (sets --model)")
    p.add_argument("--model", help="psn, rtps, fpsnet, spinet or lpsnet (needed without --preset)")
    p.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    p.add_argument("--dataset", choices=DATASETS, help="default: the preset's (cityscapes), else synthetic")
    p.add_argument("--data-root", help="Cityscapes root / synth folder, or the COCO panoptic JSON")
    p.add_argument("--image-dir", help="COCO: folder of the images")
    p.add_argument("--train-frames", type=int, default=100_000, help="synthetic: number of training scenes")
    p.add_argument("--scene-size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"),
                   help="synthetic: scene resolution (training crops are cut from it; validation runs on it)")
    # Recipe options default to SUPPRESS, so only those given on the command line override the preset.
    p.add_argument("--height", type=int, default=argparse.SUPPRESS,
                   help=f"training crop height, multiple of 128 (default {_DEFAULTS['crop'][0]})")
    p.add_argument("--width", type=int, default=argparse.SUPPRESS,
                   help=f"training crop width, multiple of 128 (default {_DEFAULTS['crop'][1]})")
    for flag, name, keywords, text in _RECIPE_OPTIONS:
        p.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=f"{text} (default {_DEFAULTS[name]})",
                       **keywords)
    p.add_argument("--attention", choices=("detections", "ground_truth"),
                   help="fpsnet: attention masks from detections (paper) or ground-truth boxes (its ablation)")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--time-limit", type=float, default=0.0, help="minutes; stop and save when reached")
    p.add_argument("--eval-frames", type=int, default=20, help="validation frames per evaluation")
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    p.add_argument("--resume", help="last.pt of an earlier run to continue")
    p.add_argument("--output", help="run folder (checkpoints, log, summary); needed unless --print-config")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace) -> tuple[TrainConfig, str]:
    """(TrainConfig, dataset) of the command line: TrainConfig defaults < the preset < options given."""
    preset = get_preset(args.preset) if args.preset else None
    model = args.model or (preset.model if preset else None)
    if model is None:
        raise ValueError("give --model or --preset")
    if preset and model != preset.model:
        raise ValueError(f"--preset {preset.name} trains {preset.model}, not --model {model}")
    given = {name: getattr(args, name) for _, name, _, _ in _RECIPE_OPTIONS if hasattr(args, name)}
    base = preset.values if preset else _DEFAULTS
    if hasattr(args, "height") or hasattr(args, "width"):
        given["crop"] = (getattr(args, "height", base["crop"][0]), getattr(args, "width", base["crop"][1]))
    overrides = {**given, "amp": not args.no_amp, "time_limit_s": args.time_limit * 60,
                 "forward_options": {"attention": args.attention} if args.attention else {}}
    output = args.output or ""
    config = preset.config(output, **overrides) if preset else TrainConfig(model=model, output_dir=output, **overrides)
    config.extra = {"preset": args.preset, "overridden": sorted(given)}
    dataset = args.dataset or (preset.dataset if preset else "synthetic")
    return config, dataset


def describe(config: TrainConfig, dataset: str, world_size: int) -> dict:
    """The resolved recipe as --print-config shows it: values, the paper's words, open values, deviations."""
    name = config.extra.get("preset")
    preset = get_preset(name) if name else None
    notes = [IMAGENET_NOTE] if preset and not config.imagenet_weights else []
    if config.freeze_backbone_bn and not config.imagenet_weights:
        notes.append("--freeze-backbone-bn without --imagenet-weights keeps the initial statistics (mean 0, "
                     "variance 1) and affine (1, 0): the backbone then trains without normalisation")
    return {"preset": name, "dataset": dataset, "config": asdict(config),
            "processes": world_size, "batch_per_process": per_process_batch(config.batch_size, world_size),
            "paper": preset.source if preset else None, "chosen": preset.chosen if preset else {},
            "deviations": list(preset.deviations) if preset else [], "notes": notes}


def run(args: argparse.Namespace) -> int:
    config, dataset = resolve_config(args)
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if args.print_config:
        print(json.dumps(describe(config, dataset, world_size), indent=2))
        return 0
    if not args.output:
        raise ValueError("--output is needed to train (or use --print-config)")
    return _train(args, config, dataset, per_process_batch(config.batch_size, world_size))


def _train(args: argparse.Namespace, config: TrainConfig, dataset_name: str, batch: int) -> int:
    import torch

    from panoptic_ros.data.augment import Augment
    from panoptic_ros.data.datasets import SyntheticScenes, open_dataset
    from panoptic_ros.data.torch_dataset import PanopticDataset, collate
    from panoptic_ros.fusion.pipeline import build_pipeline
    from panoptic_ros.training.train import Distributed, cycle, train
    from panoptic_ros.training.validation import evaluate_frames, scene_frames, validation_scenes

    torch.set_num_threads(max(1, torch.get_num_threads()))
    if dataset_name == "synthetic":
        source = SyntheticScenes.split("train", args.train_frames, *args.scene_size)
    else:
        if not args.data_root:
            raise ValueError(f"--dataset {dataset_name} needs --data-root")
        source = open_dataset(dataset_name, args.data_root, split="train", image_dir=args.image_dir)
    label_set = source.label_set
    dataset = PanopticDataset(source, Augment(scale=config.scale, crop_size=config.crop), seed=config.seed)
    dist = Distributed.from_env()
    sampler = (torch.utils.data.DistributedSampler(dataset, dist.world_size, dist.rank, seed=config.seed)
               if dist.world_size > 1 else torch.utils.data.RandomSampler(
                   dataset, generator=torch.Generator().manual_seed(config.seed)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, collate_fn=collate,
                                         num_workers=args.workers, drop_last=True, persistent_workers=False)
    config.extra.update(dataset=dataset_name, batch_per_process=batch)

    evaluate = None
    if dataset_name == "synthetic":
        scenes = validation_scenes(args.eval_frames, *args.scene_size)

        def evaluate(network) -> dict:
            pipeline = build_pipeline(config.model, label_set, *args.scene_size, network=network)
            return evaluate_frames(pipeline.run, scene_frames(scenes), label_set).to_dict()

    summary = train(config, label_set, cycle(loader), evaluate=evaluate, resume=args.resume,
                    show_progress=not args.no_progress)
    final = summary.get("final", {})
    print(json.dumps({"steps": summary["steps"], "train_seconds": summary["train_seconds"],
                      "final": {k: final[k] for k in ("all", "things", "stuff", "miou") if k in final}}, indent=2))
    return 0
