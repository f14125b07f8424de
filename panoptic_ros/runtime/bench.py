"""`panoptic-ros bench inference`: the shipped models' whole-graph inference time, as the node runs it.

Each model file (models/<name>.onnx) is loaded into the backend the node would use, and run on a
synthetic street scene at the model's input size (network + fusion, one frame at a time). Models
are timed in interleaved rounds (psn, rtps, ..., psn, rtps, ...), so that a change of load during
the run slows all of them alike and the ratios between them hold; the ratios to the first model
are the figures to compare across machines.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from panoptic_ros import bench_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", help="shipped model names or model files (default: all shipped)")
    parser.add_argument("--backend", default="onnxruntime", help="backend (default: onnxruntime)")
    parser.add_argument("--device", default="cpu", help="device (default: cpu)")
    parser.add_argument("--threads", type=int, default=bench_report.usable_cores(),
                        help="ONNX Runtime intra-op threads (default: the usable cores, %(default)s here)")
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic scene seed (default 0)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    bench_report.add_arguments(parser)


def shipped_models(models_dir: Path, suffixes: tuple[str, ...]) -> list[str]:
    """Shipped model names in the paper order of MODEL_NAMES, then any other file in models/."""
    from panoptic_ros.fusion.pipeline import MODEL_NAMES

    present = {p.stem for suffix in suffixes for p in models_dir.glob(f"*{suffix}")}
    return [m for m in MODEL_NAMES if m in present] + sorted(present - set(MODEL_NAMES))


def summarize(times: dict[str, list[float]]) -> list[dict]:
    """p50, p90 and min per model, and p50 as a ratio to the first model's."""
    rows = [{"model": name, "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
             "min_ms": min(ms), "repeats": len(ms)} for name, ms in times.items()]
    for row in rows:
        row["ratio_to_first"] = row["p50_ms"] / rows[0]["p50_ms"]
    return rows


def format_table(rows: list[dict], sizes: dict[str, str], first: str) -> str:
    lines = [f"| model | input (HxW) | p50 ms | p90 ms | p50 / {first} |", "|---|---|---:|---:|---:|"]
    lines += [f"| `{r['model']}` | {sizes[r['model']]} | {r['p50_ms']:.0f} | {r['p90_ms']:.0f} | "
              f"{r['ratio_to_first']:.2f} |" for r in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from panoptic_ros.data.synthetic import generate_scene
    from panoptic_ros.pipeline_io import Thresholds
    from panoptic_ros.ros.parameters import MODEL_SUFFIXES, default_models_dir, find_model
    from panoptic_ros.runtime.backends import create_backend

    if args.repeats < 1 or args.warmup < 0 or args.threads < 0:
        raise ValueError("need --repeats >= 1, --warmup >= 0 and --threads >= 0")
    if args.backend not in MODEL_SUFFIXES:
        raise ValueError(f"unknown backend {args.backend!r}; valid: {', '.join(MODEL_SUFFIXES)}")
    models_dir = default_models_dir()
    models = args.models or shipped_models(models_dir, MODEL_SUFFIXES[args.backend])
    if not models:
        raise ValueError(f"no shipped models in {models_dir}")
    options = {"threads": args.threads} if args.backend == "onnxruntime" else {}
    runs, sizes = {}, {}
    thresholds = Thresholds()
    for model in models:
        backend = create_backend(args.backend, find_model(model, args.backend, models_dir), args.device, **options)
        height, width = backend.input_hw
        image = generate_scene(args.seed, height, width).image
        runs[model] = lambda b=backend, i=image: b.run(i, thresholds, 1000)
        sizes[model] = f"{height}x{width}"
    rows = summarize(bench_report.time_rounds(runs, args.warmup, args.repeats))
    for row in rows:
        print(f"{row['model']:8s} {sizes[row['model']]:>9s} p50 {row['p50_ms']:8.1f} ms  p90 {row['p90_ms']:8.1f} ms"
              f"  x{row['ratio_to_first']:.2f} of {rows[0]['model']}", flush=True)
    threads = f"ONNX Runtime intra-op {args.threads}" if args.backend == "onnxruntime" else args.backend
    machine = bench_report.describe_machine(f"{threads}, one frame at a time", ("onnxruntime", "torch"))
    note = (f"{args.backend} on {args.device}, whole graph (network + fusion) on a synthetic street scene, "
            f"{args.repeats} interleaved rounds (warm-up rounds: {args.warmup}). Milliseconds follow the "
            f"machine and its load; the ratios are what another machine reproduces.")
    bench_report.publish(args, "inference", machine, format_table(rows, sizes, rows[0]["model"]), note)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine.describe(), "results": rows}, indent=1) + "\n")
    return 0
