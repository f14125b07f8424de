"""`panoptic-ros bench fusion`: network time vs fusion time, per model and input size, in PyTorch
(CPU, and CUDA when present) and ONNX Runtime (CPU).

"network" is normalisation + the network's forward pass; "fusion" is everything after it. FPSNet's
panoptic head runs between detector and arg-max, so inside the fusion; it is also timed alone
("head"), and the ratio reported is post-processing over learned layers: (fusion - head) /
(network + head). In ONNX Runtime each part is exported as its own graph and timed on its own.
The static fusion does the same work whatever the frame holds, so untrained networks give
representative timings.

--versus-deeplab times PSN's static fusion against a straightforward full-resolution Panoptic-DeepLab
post-processing (fusion/deeplab_postprocess.py), both eager PyTorch on CPU, on the same heads: the
ideal heads of held-out synthetic frames (their real instance counts; the straightforward version's
time grows with them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from panoptic_ros import bench_report

DEFAULT_SIZES = ("512x1024", "1024x2048")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", help="models to time (default: all five)")
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES),
                        help="HxW input sizes (default: %(default)s)")
    parser.add_argument("--width-mult", type=float, default=1.0, help="network width multiplier (default 1.0)")
    parser.add_argument("--max-instances", type=int, default=100, help="K (default 100)")
    parser.add_argument("--iterations", type=int, default=2, help="timed runs per measurement (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    parser.add_argument("--runtimes", nargs="+", choices=("torch", "onnxruntime", "cuda"),
                        default=["torch", "onnxruntime", "cuda"],
                        help="where to time (cuda is skipped without a GPU; default: all)")
    parser.add_argument("--threads", type=int, default=bench_report.usable_cores(),
                        help="PyTorch and ONNX Runtime intra-op threads (default: the usable cores, %(default)s here)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--ideal", type=int, nargs="?", const=5, metavar="FRAMES",
                        help="instead of timing: PQ of PSN's fusion on ideal heads of FRAMES (default 5) held-out "
                             "synthetic frames at each size")
    parser.add_argument("--versus-deeplab", type=int, nargs="?", const=1, metavar="FRAMES",
                        help="instead: PSN's fusion vs a straightforward Panoptic-DeepLab post-processing, eager "
                             "PyTorch, on ideal heads of FRAMES (default 1) held-out synthetic frames at each size")
    bench_report.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    if args.ideal is not None:
        return _run_ideal(args)
    if args.versus_deeplab is not None:
        torch.set_num_threads(args.threads)
        return _run_versus_deeplab(args)

    from panoptic_ros.classes import SYNTHETIC
    from panoptic_ros.fusion.pipeline import MODEL_NAMES, build_pipeline
    from panoptic_ros.fusion.timing import time_pipeline

    models = args.models or list(MODEL_NAMES)
    unknown = sorted(set(models) - set(MODEL_NAMES))
    if unknown:
        raise ValueError(f"unknown models {unknown}; expected some of {', '.join(MODEL_NAMES)}")
    if args.iterations < 1 or args.warmup < 0 or args.threads < 1:
        raise ValueError("--iterations must be >= 1, --warmup >= 0 and --threads >= 1")
    torch.set_num_threads(args.threads)
    sizes = [_parse_size(s) for s in args.sizes]
    runtimes = [r for r in args.runtimes if r != "cuda" or torch.cuda.is_available()]
    rows = []
    for height, width in sizes:
        for model in models:
            torch.manual_seed(0)
            pipeline = build_pipeline(model, SYNTHETIC, height, width, width_mult=args.width_mult,
                                      max_instances=args.max_instances)
            for runtime in runtimes:
                times = time_pipeline(pipeline, runtime, args.warmup, args.iterations, threads=args.threads)
                post = times["fusion_ms"] - times["head_ms"]
                rows.append({"model": model, "size": f"{height}x{width}", "runtime": runtime, **times,
                             "ratio": post / (times["network_ms"] + times["head_ms"])})
                print(_format_row(rows[-1]), flush=True)
    print()
    print(format_table(rows))
    machine = bench_report.describe_machine(f"PyTorch and ONNX Runtime intra-op {args.threads}",
                                            ("onnxruntime", "torch"))
    bench_report.publish(args, "fusion", machine, format_table(rows),
                         f"Untrained networks at width {args.width_mult:g}, K = {args.max_instances}, median of "
                         f"{args.iterations} runs after {args.warmup} warm-up; post / network = (fusion - head) / "
                         "(network + head), both halves timed in the same run.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"width_mult": args.width_mult, "max_instances": args.max_instances,
                                         "iterations": args.iterations, "results": rows}, indent=1))
    return 0


def _run_ideal(args: argparse.Namespace) -> int:
    from panoptic_ros.fusion.ideal_pq import ideal_psn_pq

    print("| size | frames | PQ | things PQ |\n|---|---:|---:|---:|")
    for height, width in (_parse_size(s) for s in args.sizes):
        pq, things = ideal_psn_pq(height, width, args.ideal)
        print(f"| {height}x{width} | {args.ideal} | {pq:.1f} | {things:.1f} |", flush=True)
    return 0


def _run_versus_deeplab(args: argparse.Namespace) -> int:
    from panoptic_ros.fusion.timing import time_psn_versus_deeplab

    rows = []
    for height, width in (_parse_size(s) for s in args.sizes):
        for frame in range(args.versus_deeplab):
            rows.append({"size": f"{height}x{width}", "frame": frame,
                         **time_psn_versus_deeplab(height, width, frame, args.max_instances, args.warmup,
                                                   args.iterations)})
            print(f"{rows[-1]['size']} frame {frame}: fusion {rows[-1]['fusion_ms']:.1f} ms, straightforward "
                  f"{rows[-1]['deeplab_ms']:.1f} ms", flush=True)
    lines = ["| size | frame | PSN fusion ms | straightforward ms | speed-up |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['size']} | {r['frame']} | {r['fusion_ms']:.1f} | {r['deeplab_ms']:.1f} | "
              f"{r['deeplab_ms'] / r['fusion_ms']:.2f}x |" for r in rows]
    print("\n".join(lines))
    machine = bench_report.describe_machine(f"PyTorch intra-op {args.threads}", ("torch",))
    bench_report.publish(args, "fusion-deeplab", machine, "\n".join(lines),
                         f"Eager PyTorch on CPU, K = {args.max_instances}, ideal heads of held-out synthetic frames, "
                         f"median of {args.iterations} runs after {args.warmup} warm-up, both in the same run.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"max_instances": args.max_instances, "versus_deeplab": rows}, indent=1))
    return 0


def _parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like 512x1024 (HxW), got {text!r}") from None
    return height, width


def _format_row(row: dict) -> str:
    head = f" (head {row['head_ms']:.1f})" if row["head_ms"] else ""
    return (f"{row['model']:7s} {row['size']:>9s} {row['runtime']:12s} network {row['network_ms']:9.1f} ms  "
            f"fusion {row['fusion_ms']:8.1f} ms{head}  post/network {100 * row['ratio']:6.1f}%")


def format_table(rows: list[dict]) -> str:
    """A Markdown table of the results."""
    lines = ["| model | size | runtime | network ms | fusion ms | of which head ms | post / network |",
             "|---|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['size']} | {r['runtime']} | {r['network_ms']:.1f} | {r['fusion_ms']:.1f} | "
              f"{r['head_ms']:.1f} | {100 * r['ratio']:.1f}% |" for r in rows]
    return "\n".join(lines)
