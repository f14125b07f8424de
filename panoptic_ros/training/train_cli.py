"""`panoptic-ros train`: train one of the five networks on synthetic scenes, Cityscapes or COCO."""

from __future__ import annotations

import argparse
import json

from panoptic_ros.training.config import OPTIMIZERS

DATASETS = ("synthetic", "cityscapes", "coco", "synth-folder")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a network (AdamW/SGD, poly decay, AMP on CUDA, DDP via torchrun)",
                              description=__doc__)
    p.add_argument("--model", required=True, help="psn, rtps, fpsnet, spinet or lpsnet")
    p.add_argument("--dataset", choices=DATASETS, default="synthetic")
    p.add_argument("--data-root", help="Cityscapes root / synth folder, or the COCO panoptic JSON")
    p.add_argument("--image-dir", help="COCO: folder of the images")
    p.add_argument("--train-frames", type=int, default=100_000, help="synthetic: number of training scenes")
    p.add_argument("--scene-size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"),
                   help="synthetic: scene resolution (training crops are cut from it; validation runs on it)")
    p.add_argument("--height", type=int, default=128, help="training crop height (multiple of 128)")
    p.add_argument("--width", type=int, default=256, help="training crop width (multiple of 128)")
    p.add_argument("--scale", type=float, nargs=2, default=(0.5, 1.25), help="scale jitter range")
    p.add_argument("--width-mult", type=float, default=0.25, help="channel width multiplier (1.0 = paper)")
    p.add_argument("--backbone", default="resnet18", help="resnet18, resnet34 or resnet50")
    p.add_argument("--imagenet-weights", help="torchvision ResNet checkpoint (.pth) for the backbone")
    p.add_argument("--attention", choices=("detections", "ground_truth"),
                   help="fpsnet: attention masks from detections (paper) or ground-truth boxes (its ablation)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--eval-every", type=int, default=0, help="steps between PQ evaluations (0: at the end only)")
    p.add_argument("--eval-frames", type=int, default=20, help="validation frames per evaluation")
    p.add_argument("--time-limit", type=float, default=0.0, help="minutes; stop and save when reached")
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", help="last.pt of an earlier run to continue")
    p.add_argument("--output", required=True, help="run folder (checkpoints, log, summary)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from panoptic_ros.data.augment import Augment
    from panoptic_ros.data.datasets import SyntheticScenes, open_dataset
    from panoptic_ros.data.torch_dataset import PanopticDataset, collate
    from panoptic_ros.fusion.pipeline import build_pipeline
    from panoptic_ros.training.config import TrainConfig
    from panoptic_ros.training.train import Distributed, cycle, train
    from panoptic_ros.training.validation import evaluate_frames, scene_frames, validation_scenes

    torch.set_num_threads(max(1, torch.get_num_threads()))
    config = TrainConfig(
        model=args.model, output_dir=args.output, width_mult=args.width_mult, backbone=args.backbone,
        steps=args.steps, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, amp=not args.no_amp, eval_every=args.eval_every,
        time_limit_s=args.time_limit * 60, seed=args.seed, imagenet_weights=args.imagenet_weights,
        forward_options={"attention": args.attention} if args.attention else {},
        extra={"dataset": args.dataset, "height": args.height, "width": args.width, "scale": list(args.scale)})

    if args.dataset == "synthetic":
        source = SyntheticScenes.split("train", args.train_frames, *args.scene_size)
    else:
        if not args.data_root:
            raise ValueError(f"--dataset {args.dataset} needs --data-root")
        source = open_dataset(args.dataset, args.data_root, split="train", image_dir=args.image_dir)
    label_set = source.label_set
    dataset = PanopticDataset(source, Augment(scale=tuple(args.scale), crop_size=(args.height, args.width)),
                              seed=args.seed)
    dist = Distributed.from_env()
    sampler = (torch.utils.data.DistributedSampler(dataset, dist.world_size, dist.rank, seed=args.seed)
               if dist.world_size > 1 else torch.utils.data.RandomSampler(
                   dataset, generator=torch.Generator().manual_seed(args.seed)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, collate_fn=collate,
                                         num_workers=args.workers, drop_last=True,
                                         persistent_workers=False)

    evaluate = None
    if args.dataset == "synthetic":
        scenes = validation_scenes(args.eval_frames, *args.scene_size)

        def evaluate(network) -> dict:
            pipeline = build_pipeline(args.model, label_set, *args.scene_size, network=network)
            return evaluate_frames(pipeline.run, scene_frames(scenes), label_set).to_dict()

    summary = train(config, label_set, cycle(loader), evaluate=evaluate, resume=args.resume,
                    progress=not args.no_progress)
    final = summary.get("final", {})
    print(json.dumps({"steps": summary["steps"], "train_seconds": summary["train_seconds"],
                      "final": {k: final[k] for k in ("all", "things", "stuff", "miou") if k in final}}, indent=2))
    return 0
