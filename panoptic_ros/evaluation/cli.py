"""`panoptic-ros eval`: PQ/SQ/RQ and mIoU of COCO / Cityscapes panoptic predictions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate panoptic predictions (COCO panoptic layout) against ground truth",
        description="PQ, SQ, RQ per class and averaged over all / things / stuff, and mIoU, with the matching "
                    "rules of COCO's panopticapi and Cityscapes' panoptic evaluator. Ground truth and prediction "
                    "are JSON + folder of RGB-encoded PNGs, paired by image_id.")
    parser.add_argument("--gt-json", required=True, type=Path, help="ground-truth panoptic JSON")
    parser.add_argument("--gt-dir", type=Path, help="ground-truth PNG folder (default: the JSON path without .json)")
    parser.add_argument("--pred-json", required=True, type=Path, help="prediction panoptic JSON")
    parser.add_argument("--pred-dir", type=Path, help="prediction PNG folder (default: the JSON path without .json)")
    parser.add_argument("--cityscapes-train-ids", action="store_true",
                        help="read both as Cityscapes panoptic and compare in the 19 train ids")
    parser.add_argument("--output", type=Path, help="write the metrics as JSON here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from panoptic_ros.evaluation.folders import evaluate_panoptic_folders

    result = evaluate_panoptic_folders(args.gt_json, args.gt_dir, args.pred_json, args.pred_dir,
                                       cityscapes_train_ids=args.cityscapes_train_ids, progress=sys.stderr.isatty())
    print(result.format_table())
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        metrics = {"gt_json": str(args.gt_json), "pred_json": str(args.pred_json), **result.to_dict()}
        args.output.write_text(json.dumps(metrics, indent=1))
        print(f"metrics written to {args.output}")
    return 0
