"""`panoptic-ros export`: write a model's whole per-frame pipeline (uint8 image -> normalise ->
network -> fusion -> outputs) as one static-shape ONNX file (opset 17) that TensorRT can build."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a model's pipeline to one ONNX file", description=__doc__)
    parser.add_argument("--model", required=True, help="psn, rtps, lpsnet, fpsnet or spinet")
    parser.add_argument("--checkpoint", type=Path,
                        help="trained network checkpoint (its label set and width are used); "
                             "without it the network is freshly initialised")
    parser.add_argument("--label-set", default="synthetic", help="label set without a checkpoint (default synthetic)")
    parser.add_argument("--width-mult", type=float, default=1.0,
                        help="channel width multiplier without a checkpoint (default 1.0)")
    parser.add_argument("--height", type=int, required=True, help="input height in pixels (multiple of 128)")
    parser.add_argument("--width", type=int, required=True, help="input width in pixels (multiple of 128)")
    parser.add_argument("--max-instances", type=int, default=100, help="K, thing rows of the table (default 100)")
    parser.add_argument("--nms-kernel", type=int, default=7, help="PSN centre NMS window in pixels (default 7)")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                        help="fp16: network in FP16, fusion in FP32, for strongly typed TensorRT builds "
                             "(10.x, 11, TensorRT for RTX); default fp32")
    parser.add_argument("--output", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument("--golden", type=Path, help="also write golden outputs (.npz) for `panoptic-ros verify-engine`")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from panoptic_ros.classes import get_label_set
    from panoptic_ros.fusion.pipeline import build_pipeline
    from panoptic_ros.runtime.export import export_onnx

    if args.checkpoint is not None:
        from panoptic_ros.networks.checkpoint import load_network

        network, info = load_network(args.checkpoint)
        if info["model"] != args.model:
            raise ValueError(f"{args.checkpoint} holds a {info['model']!r} network, not {args.model!r}")
        pipeline = build_pipeline(args.model, network.label_set, args.height, args.width, network=network,
                                  max_instances=args.max_instances, nms_kernel=args.nms_kernel)
    else:
        pipeline = build_pipeline(args.model, get_label_set(args.label_set), args.height, args.width,
                                  width_mult=args.width_mult, max_instances=args.max_instances,
                                  nms_kernel=args.nms_kernel)
    path = export_onnx(pipeline, args.output, precision=args.precision)
    # Files derived from the export (e.g. golden outputs for checking a TensorRT engine) go here.
    if args.golden is not None:
        from panoptic_ros.runtime.golden import write_golden

        print(f"wrote {write_golden(path, args.golden)} (golden input and ONNX Runtime outputs)")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {args.model}, {args.height}x{args.width}, "
          f"label set {pipeline.label_set.name}, K={pipeline.max_instances}, {args.precision}")
    return 0
