"""`panoptic-ros bench eval`: evaluation time of one frame pair (default 1024x2048).

The pair is a synthetic street-like frame: stuff bands, rectangular thing instances, some void and a
crowd region; the prediction is the ground truth shifted and painted over. Two paths are timed:
`add` on COCO-layout annotations (prediction ids of COCO's RGB size) and `add_id_maps` on the
pipeline's id maps (class * 1000 + instance), which is what bag evaluation uses.

`--peers`: `--frames` such pairs (each of its own seed) are written as COCO panoptic folders, and each
evaluator installed (hotcoco, cityscapesscripts) and `panoptic-ros eval` run on them in a fresh process,
interleaved, `--rounds` times; the median wall time of each (process start, imports and PNG reading
included), its median CPU time (user + system, the process and the children it waited for: what load does
not inflate), the wall-time ratios to ours from the same run, and each one's PQ (they must agree) are reported.
`--bag-fps`: a bag of `--bag-frames` JPEG frames of `--height`x`--width` street scenes (8 scenes, cycled) with
32SC1 ground truth is evaluated with a shipped model (`--model`, ONNX Runtime) with and without decoding,
inference and scoring overlapped (eval-bag's default and its --no-overlap), alternately `--rounds` times;
frames per second of each and their ratio are reported.
Run: `panoptic-ros bench eval [--peers | --bag-fps] [--markdown | --update README.md]`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from panoptic_ros import bench_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--height", type=int, default=1024, help="frame height (default 1024)")
    parser.add_argument("--width", type=int, default=2048, help="frame width (default 2048)")
    parser.add_argument("--instances", type=int, default=60, help="thing instances in the frame (default 60)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peers", action="store_true",
                        help="compare whole-process time with hotcoco and cityscapesscripts (those installed)")
    parser.add_argument("--frames", type=int, default=40, help="--peers: frame pairs in the folders (default 40)")
    parser.add_argument("--rounds", type=int, default=3, help="--peers, --bag-fps: runs of each (default 3)")
    parser.add_argument("--bag-fps", action="store_true",
                        help="eval-bag frames per second on a bag, with and without overlapped stages")
    parser.add_argument("--bag-frames", type=int, default=200, help="--bag-fps: frames in the bag (default 200)")
    parser.add_argument("--model", default="psn", help="--bag-fps: shipped model or .onnx file (default psn)")
    parser.add_argument("--device", default="auto", help="--bag-fps: device (default auto: CUDA when present)")
    bench_report.add_arguments(parser)


def synthetic_pair(height: int, width: int, instances: int, rng: np.random.Generator):
    """A ground-truth / prediction PanopticAnnotation pair over the SYNTHETIC label set."""
    from panoptic_ros.classes import SYNTHETIC
    from panoptic_ros.data.formats import PanopticAnnotation, Segment

    stuff, things = SYNTHETIC.stuff_ids, SYNTHETIC.thing_ids
    ids = np.zeros((height, width), dtype=np.int32)
    segments: dict[int, Segment] = {}
    bands = np.sort(rng.integers(0, height, size=len(stuff) - 1))
    for k, (top, bottom) in enumerate(zip((0, *bands), (*bands, height), strict=True)):
        ids[top:bottom] = k + 1
        segments[k + 1] = Segment(k + 1, stuff[k])
    for k in range(instances):
        segment_id = 100 + k
        h, w = rng.integers(height // 40, height // 6), rng.integers(width // 80, width // 10)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        ids[y:y + h, x:x + w] = segment_id
        segments[segment_id] = Segment(segment_id, int(rng.choice(things)), iscrowd=k == 0)
    ids[: height // 20] = 0  # void band
    present = set(np.unique(ids).tolist())
    gt = PanopticAnnotation(ids, {i: s for i, s in segments.items() if i in present})

    shift = max(1, height // 128)  # 8 pixels at 1024 rows
    pred_ids = np.roll(ids, (int(rng.integers(-shift, shift + 1)), int(rng.integers(-shift, shift + 1))), axis=(0, 1))
    for _ in range(10):
        h, w = rng.integers(8, max(9, height // 8)), rng.integers(8, max(9, width // 8))  # 8 px at 64x64
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        pred_ids[y:y + h, x:x + w] = rng.choice(list(gt.segments))
    old = np.unique(pred_ids[pred_ids != 0])
    new = rng.choice(np.arange(1, 256**3), size=old.size, replace=False)
    lookup = np.zeros(int(old.max()) + 1, dtype=np.int64)
    lookup[old] = new
    pred_segments = {int(n): Segment(int(n), gt.segments[int(o)].category_id) for o, n in zip(old, new, strict=True)}
    return gt, PanopticAnnotation(lookup[pred_ids], pred_segments)


def _summary(ms: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms)}


# Each peer: a script run as `python -c SCRIPT GT_JSON GT_DIR PRED_JSON PRED_DIR OUT_DIR` printing {"pq": 0-100}.
PEERS = {
    "hotcoco": ("hotcoco", """
import json, sys
from hotcoco.panoptic import pq_compute
gt_json, gt_dir, pred_json, pred_dir, out = sys.argv[1:]
result = pq_compute(gt_json, pred_json, gt_dir, pred_dir)
print(json.dumps({"pq": 100 * result["All"]["pq"]}))
"""),
    "cityscapesscripts": ("cityscapesscripts", """
import contextlib, io, json, os, sys
from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import evaluatePanoptic
gt_json, gt_dir, pred_json, pred_dir, out = sys.argv[1:]
with contextlib.redirect_stdout(io.StringIO()):
    result = evaluatePanoptic(gt_json, gt_dir, pred_json, pred_dir, os.path.join(out, "cityscapes.json"))
print(json.dumps({"pq": 100 * result["All"]["pq"]}))
"""),
}


def write_peer_folders(root: Path, frames: int, height: int, width: int, instances: int, seed: int) -> list[Path]:
    """`frames` synthetic pairs as COCO panoptic folders: [gt json, gt dir, pred json, pred dir]."""
    from panoptic_ros.classes import SYNTHETIC
    from panoptic_ros.data.formats import PanopticAnnotation, label_set_categories, write_coco_panoptic

    gts, preds = [], []
    for k in range(frames):
        gt, pred = synthetic_pair(height, width, instances, np.random.default_rng(seed + k))
        name = f"frame_{k:04d}.png"
        gts.append(PanopticAnnotation(gt.ids, gt.segments, name, image_id=k))
        preds.append(PanopticAnnotation(pred.ids, pred.segments, name, image_id=k))
    categories = label_set_categories(SYNTHETIC)
    paths = [root / "gt.json", root / "gt", root / "pred.json", root / "pred"]
    write_coco_panoptic(paths[0], paths[1], gts, categories)
    write_coco_panoptic(paths[2], paths[3], preds, categories)
    return paths


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed_process(command: list[str], metrics: Path | None) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, PQ) of a command that prints {"pq": ...} last, or writes eval's `metrics` JSON."""
    cpu, start = _children_cpu_seconds(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - start, _children_cpu_seconds() - cpu
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed: {done.stderr.strip()[-2000:]}")
    if metrics is not None:
        return seconds, cpu, float(json.loads(metrics.read_text())["all"]["pq"])
    return seconds, cpu, float(json.loads(done.stdout.strip().splitlines()[-1])["pq"])


def run_peers(args: argparse.Namespace) -> dict:
    """Whole-process wall time of each evaluator on the same folders (see module doc)."""
    if args.frames < 1 or args.rounds < 1:
        raise ValueError("need --frames >= 1 and --rounds >= 1")
    with tempfile.TemporaryDirectory(prefix="panoptic-bench-eval-") as work:
        root = Path(work)
        paths = [str(p) for p in write_peer_folders(root, args.frames, args.height, args.width, args.instances,
                                                     args.seed)]
        ours_metrics = root / "ours.json"
        ours = [sys.executable, "-m", "panoptic_ros.cli", "eval", "--gt-json", paths[0], "--gt-dir", paths[1],
                "--pred-json", paths[2], "--pred-dir", paths[3], "--output", str(ours_metrics)]
        commands = {"panoptic-ros eval": (ours, ours_metrics)}
        missing = []
        for name, (module, script) in PEERS.items():
            if importlib.util.find_spec(module) is None:
                missing.append(name)
            else:
                commands[name] = ([sys.executable, "-c", script, *paths, work], None)
        times: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        pq: dict[str, float] = {}
        for _ in range(args.rounds):  # interleaved, so that load changes touch every evaluator alike
            for name, (command, metrics) in commands.items():
                seconds, cpu_seconds, pq[name] = _timed_process(command, metrics)
                times[name].append(seconds)
                cpu[name].append(cpu_seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    ours_s = median["panoptic-ros eval"]
    return {"frames": args.frames, "frame": f"{args.height}x{args.width}", "rounds": args.rounds,
            "not installed": missing,
            "evaluators": {name: {"median_s": median[name], "per_frame_ms": 1000 * median[name] / args.frames,
                                  "ours_vs_this": ours_s / median[name], "cpu_median_s": statistics.median(cpu[name]),
                                  "pq": pq[name], "runs_s": times[name]}
                           for name in commands}}


def run_bag_fps(args: argparse.Namespace) -> dict:
    """eval-bag frames per second with and without overlapped stages (see module doc)."""
    from panoptic_ros.data.rosbag_io import BagFrame, write_frames
    from panoptic_ros.data.synthetic import generate_scene
    from panoptic_ros.evaluation.bag_eval import evaluate_bag
    from panoptic_ros.evaluation.ground_truth import TopicGroundTruth
    from panoptic_ros.ros.parameters import default_models_dir, find_model
    from panoptic_ros.runtime.backends import create_backend

    if args.bag_frames < 1 or args.rounds < 1:
        raise ValueError("need --bag-frames >= 1 and --rounds >= 1")
    backend = create_backend("onnxruntime", find_model(args.model, "onnxruntime", default_models_dir()),
                             device=args.device)
    scenes = [generate_scene(args.seed + k, args.height, args.width) for k in range(min(8, args.bag_frames))]
    fps: dict[str, list[float]] = {"overlap": [], "no overlap": []}
    with tempfile.TemporaryDirectory(prefix="panoptic-bench-bag-") as work:
        bag = Path(work) / "drive.mcap"
        write_frames(bag, (BagFrame(1_700_000_000 * 10**9 + k * 10**8, scenes[k % len(scenes)].image,
                                    scenes[k % len(scenes)].panoptic(1000)) for k in range(args.bag_frames)),
                     compressed=True)
        for _ in range(args.rounds):  # alternated, so that load changes touch both alike
            for name, overlap in (("no overlap", False), ("overlap", True)):
                start = time.perf_counter()
                evaluation = evaluate_bag(bag, "/camera/image_raw", backend, num_overlays=0, overlap=overlap,
                                          ground_truth=TopicGroundTruth(bag, "/camera/panoptic_gt"))
                fps[name].append(evaluation.frames / (time.perf_counter() - start))
    median = {name: statistics.median(values) for name, values in fps.items()}
    described = backend.describe()
    return {"frames": args.bag_frames, "frame": f"{args.height}x{args.width}", "model": described["model_name"],
            "input": "x".join(map(str, backend.input_hw)), "device": described["device"],
            "rounds": args.rounds, "fps": median, "runs_fps": fps,
            "overlap_vs_no_overlap": median["overlap"] / median["no overlap"], "pq": evaluation.result.all.pq}


def publish_peers(args: argparse.Namespace, report: dict, machine: bench_report.Machine) -> None:
    evaluators = report["evaluators"]
    body = "\n".join([
        f"| {report['frames']} frame pairs of {report['frame']}, COCO panoptic folders | whole process, median s | "
        "ms per frame | `panoptic-ros eval` time / this | CPU, median s | PQ |", "|---|---:|---:|---:|---:|---:|",
        *(f"| {name} | {e['median_s']:.2f} | {e['per_frame_ms']:.0f} | {e['ours_vs_this']:.2f} | "
          f"{e['cpu_median_s']:.2f} | {e['pq']:.6f} |"
          for name, e in evaluators.items())])
    note = (f"{report['rounds']} interleaved rounds; each run is a fresh process (start, imports, PNG reading "
            "included); ratios are from this one run." + (f" Not installed: {', '.join(report['not installed'])}."
                                                          if report["not installed"] else ""))
    bench_report.publish(args, "eval-peers", machine, body, note)


def publish_bag_fps(args: argparse.Namespace, report: dict, machine: bench_report.Machine) -> None:
    body = "\n".join([
        f"| eval-bag, {report['frames']} frames of {report['frame']} (JPEG), {report['model']} at {report['input']} "
        f"on {report['device']} | frames per second |", "|---|---:|",
        f"| decode, inference and scoring one after another (`--no-overlap`) | {report['fps']['no overlap']:.2f} |",
        f"| overlapped, bounded queues (default) | {report['fps']['overlap']:.2f} |",
        f"| ratio | {report['overlap_vs_no_overlap']:.2f} |"])
    bench_report.publish(args, "eval-bag-fps", machine, body,
                         f"{report['rounds']} alternating rounds; the ratio is from this one run.")


def run(args: argparse.Namespace) -> int:
    # Each machine description is taken before its run, so that its load average is the load at the start.
    if args.bag_fps:
        machine = bench_report.describe_machine("ONNX Runtime default, decode and scoring threads",
                                                ("numpy", "onnxruntime", "opencv-python-headless"))
        report = run_bag_fps(args)
        print(json.dumps(report, indent=1))
        publish_bag_fps(args, report, machine)
        return 0
    if args.peers:
        machine = bench_report.describe_machine("all cores (each evaluator's own choice)",
                                                ("numpy", "opencv-python-headless", "kornia-rs", "hotcoco",
                                                 "cityscapesscripts"))
        report = run_peers(args)
        print(json.dumps(report, indent=1))
        publish_peers(args, report, machine)
        return 0
    from panoptic_ros.classes import SYNTHETIC
    from panoptic_ros.data.formats import to_id_map
    from panoptic_ros.evaluation.pq import PQAccumulator

    if args.repeats < 1 or args.height < 64 or args.width < 64:
        raise ValueError("need --repeats >= 1 and a frame of at least 64x64")
    machine = bench_report.describe_machine("1 (NumPy)", ("numpy",))
    gt, pred = synthetic_pair(args.height, args.width, args.instances, np.random.default_rng(args.seed))
    gt_map, pred_map = to_id_map(gt, 1000, SYNTHETIC), to_id_map(pred, 1000, SYNTHETIC)
    coco, pipeline = PQAccumulator.from_label_set(SYNTHETIC), PQAccumulator.from_label_set(SYNTHETIC)
    # Interleaved rounds: a change of load hits both paths alike, so their ratio holds.
    times = bench_report.time_rounds({"add": lambda: coco.add(gt, pred),
                                      "add_id_maps": lambda: pipeline.add_id_maps(gt_map, pred_map, 1000)},
                                     warmup=1, repeats=args.repeats)
    report = {"frame": f"{args.height}x{args.width}", "segments": [len(gt.segments), len(pred.segments)],
              "repeats": args.repeats, "add": _summary(times["add"]), "add_id_maps": _summary(times["add_id_maps"]),
              # The frame's PQ from each path (the same frame added repeats + 1 times: the same PQ).
              "pq": {"add": coco.result().all.pq, "add_id_maps": pipeline.result().all.pq}}
    report["add_over_add_id_maps"] = report["add"]["median_ms"] / report["add_id_maps"]["median_ms"]
    print(json.dumps(report, indent=1))
    body = "\n".join([
        f"| PQ of one {report['frame']} frame pair ({report['segments'][0]} segments) | median ms | min ms |"
        " ratio to `add_id_maps` |", "|---|---:|---:|---:|",
        *(f"| `{path}` ({what}) | {report[path]['median_ms']:.1f} | {report[path]['min_ms']:.1f} | "
          f"{report[path]['median_ms'] / report['add_id_maps']['median_ms']:.2f} |"
          for path, what in (("add", "COCO-layout annotations"), ("add_id_maps", "pipeline id maps, as eval-bag"))),
    ])
    bench_report.publish(args, "eval", machine, body, f"{args.repeats} interleaved rounds after one warm-up round.")
    return 0
