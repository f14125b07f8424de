"""The tracker's cost per frame (`panoptic-ros bench tracker`, and part of `bench node`): `Tracker.update` on an id
map of the camera's size with a given number of thing instances moving across it, as the node calls it once per
frame."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from panoptic_ros.pipeline_io import COL, INSTANCE_COLUMNS

THING = (False, True, True)  # class 0 stuff, classes 1 and 2 things
LABEL_DIVISOR = 1000


def moving_boxes(height: int, width: int, instances: int, frames: int, seed: int = 0
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(id map, instance rows) of `frames` frames: `instances` boxes of two classes, each moving a few pixels
    per frame, drawn far to near over a stuff background (so nearer boxes occlude farther ones)."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(0.03, 0.15, (instances, 2)) * (height, width)
    start = rng.uniform(0, 1, (instances, 2)) * ((height, width) - size)
    velocity = rng.uniform(-4, 4, (instances, 2))
    classes = 1 + rng.integers(0, 2, instances)
    out = []
    for t in range(frames):
        panoptic = np.zeros((height, width), dtype=np.int32)
        rows = []
        count = {1: 0, 2: 0}
        for k in np.argsort(-size.prod(axis=1)):  # big (near) last
            y1, x1 = np.clip(start[k] + velocity[k] * t, 0, None).astype(int)
            y2, x2 = np.minimum((y1, x1) + size[k].astype(int), (height - 1, width - 1))
            count[int(classes[k])] += 1
            segment = int(classes[k]) * LABEL_DIVISOR + count[int(classes[k])]
            panoptic[y1:y2 + 1, x1:x2 + 1] = segment
            row = np.zeros(len(INSTANCE_COLUMNS), dtype=np.float32)
            values = {"valid": 1, "id": segment, "class_id": classes[k], "score": rng.uniform(0.3, 1.0),
                      "x1": x1, "y1": y1, "x2": x2, "y2": y2}
            row[[COL[name] for name in values]] = list(values.values())
            rows.append(row)
        out.append((panoptic, np.array(rows)))
    return out


def tracker_cost_ms(height: int = 1024, width: int = 2048, instances: int = 50, frames: int = 30,
                    clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Milliseconds of each `Tracker.update` after the first, on `moving_boxes` frames."""
    from panoptic_ros.tracking.tracker import Tracker  # scipy: only when benchmarking

    sequence = moving_boxes(height, width, instances, frames)
    tracker = Tracker(THING)
    tracker.update(*sequence[0])
    times = []
    for panoptic, rows in sequence[1:]:
        start = clock()
        tracker.update(panoptic, rows)
        times.append((clock() - start) * 1e3)
    return times


TARGET_MS = 2.0  # the tracker's budget per frame at 1024x2048 with 50 instances


def tracker_figures(height: int, width: int, instances: int = 50) -> dict:
    """`bench node`'s tracker figures: median and p90 ms per frame of wall-clock time, and the median of its CPU
    time, which waiting for a busy CPU does not inflate (medians: the machine may be shared)."""
    wall = tracker_cost_ms(height, width, instances)
    cpu = tracker_cost_ms(height, width, instances, clock=time.thread_time)
    return {"tracker_frame": f"{width}x{height}, {instances} instances", "tracker_ms_p50": float(np.median(wall)),
            "tracker_ms_p90": float(np.percentile(wall, 90)), "tracker_cpu_ms_p50": float(np.median(cpu)),
            "tracker_target_ms": TARGET_MS}


def tracker_report_line(figures: dict) -> str:
    return (f"  tracker per frame ({figures['tracker_frame']}, in this process): p50 {figures['tracker_ms_p50']:.2f} "
            f"ms, p90 {figures['tracker_ms_p90']:.2f} ms, CPU time p50 {figures['tracker_cpu_ms_p50']:.2f} ms "
            f"(target <= {figures['tracker_target_ms']:g} ms)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from panoptic_ros import bench_report

    parser.add_argument("--height", type=int, default=1024, help="id map height (default: 1024)")
    parser.add_argument("--width", type=int, default=2048, help="id map width (default: 2048)")
    parser.add_argument("--instances", type=int, default=50, help="thing instances per frame (default: 50)")
    bench_report.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from panoptic_ros import bench_report

    figures = tracker_figures(args.height, args.width, args.instances)
    print(tracker_report_line(figures).strip())
    machine = bench_report.describe_machine("1 (NumPy, SciPy)", ("numpy", "scipy"))
    bench_report.publish(args, "tracker", machine, markdown_table(figures),
                         "29 frames timed after a first one; CPU time is the thread's, which waiting for a busy CPU "
                         "does not inflate.")
    return 0


def markdown_table(figures: dict) -> str:
    return "\n".join([f"| tracker per frame ({figures['tracker_frame']}) | ms |", "|---|---:|",
                      f"| wall clock, p50 | {figures['tracker_ms_p50']:.2f} |",
                      f"| wall clock, p90 | {figures['tracker_ms_p90']:.2f} |",
                      f"| CPU time, p50 | {figures['tracker_cpu_ms_p50']:.2f} |",
                      f"| target | <= {figures['tracker_target_ms']:g} |"])
