"""`panoptic-ros bench eval`: evaluation time of one frame pair (default 1024x2048).

The pair is a synthetic street-like frame: stuff bands, rectangular thing instances, some void and a
crowd region; the prediction is the ground truth shifted and painted over. Two paths are timed:
`add` on COCO-layout annotations (prediction ids of COCO's RGB size) and `add_id_maps` on the
pipeline's id maps (class * 1000 + instance), which is what bag evaluation uses.
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np

from panoptic_ros import bench_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--height", type=int, default=1024, help="frame height (default 1024)")
    parser.add_argument("--width", type=int, default=2048, help="frame width (default 2048)")
    parser.add_argument("--instances", type=int, default=60, help="thing instances in the frame (default 60)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs (default 20)")
    parser.add_argument("--seed", type=int, default=0)
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


def run(args: argparse.Namespace) -> int:
    from panoptic_ros.classes import SYNTHETIC
    from panoptic_ros.data.formats import to_id_map
    from panoptic_ros.evaluation.pq import PQAccumulator

    if args.repeats < 1 or args.height < 64 or args.width < 64:
        raise ValueError("need --repeats >= 1 and a frame of at least 64x64")
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
    machine = bench_report.describe_machine("1 (NumPy)", ("numpy",))
    bench_report.publish(args, "eval", machine, body, f"{args.repeats} interleaved rounds after one warm-up round.")
    return 0
