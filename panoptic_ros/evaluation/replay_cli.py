"""`panoptic-ros replay` (a user's bag through the live node) and `panoptic-ros demo` (the same on a
synthetic street-scene sequence with a shipped model, with tracking and without: what `make demo` runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEMO_HEIGHT, DEMO_WIDTH = 256, 512  # the shipped demo models' input size
DEMO_IMAGE_TOPIC, DEMO_GT_TOPIC = "/camera/image_raw", "/camera/panoptic_gt"
DEMO_FPS = 10.0  # the demo drive's frame rate


def register(subparsers: argparse._SubParsersAction) -> None:
    replay = subparsers.add_parser(
        "replay", help="replay a rosbag through a live panoptic_node and evaluate what it publishes",
        description="Start panoptic_node with a params file, play the bag's camera frames into it at their "
                    "recorded rate from a real rclpy publisher, record its outputs, and write a report: PQ, SQ, "
                    "RQ, mIoU against the ground-truth topic (matched by header stamp), per-stage and end-to-end "
                    "latency, dropped frames, overlays.")
    replay.add_argument("bag", type=Path, help="rosbag2 directory, or a .mcap / .db3 file")
    replay.add_argument("--image-topic", required=True, help="camera topic (sensor_msgs/Image or CompressedImage)")
    replay.add_argument("--gt-topic", help="ground-truth id images (32SC1, class * label_divisor + instance, -1 "
                                           "void) with the camera frames' stamps; without it: latency and drops only")
    replay.add_argument("--params", type=Path, help="node parameters file (default: the shipped config/cpu.yaml)")
    replay.add_argument("--model-path", type=Path, help="model file for the node instead of the params file's model")
    replay.add_argument("--rate", type=float, default=1.0, help="playback speed, 1.0 = recorded rate (default 1.0)")
    replay.add_argument("--report", required=True, type=Path, help="report folder")
    replay.add_argument("--tracking", action="store_true",
                        help="score track ids too (STQ, AQ, identity switches; needs ground truth whose instance "
                             "ids are track ids, as synth --sequence writes)")
    replay.add_argument("--tracker", choices=("on", "off"), default="on",
                        help="with --tracking: the node's tracking parameter; off scores its per-frame ids, the "
                             "no-tracking baseline")
    _add_common(replay)
    replay.set_defaults(func=run_replay)

    demo = subparsers.add_parser(
        "demo", help="the whole product on a synthetic street-scene bag with a shipped model",
        description=f"Generate a {DEMO_WIDTH}x{DEMO_HEIGHT} synthetic street-scene sequence bag (a drive along a "
                    "test-split street, never seen in training), replay it through panoptic_node with "
                    "config/cpu.yaml and models/<model>.onnx on ONNX Runtime, with tracking and again with "
                    "tracking false, and print PQ, STQ, latency and drops of both runs.")
    demo.add_argument("--model", default="psn", help="shipped model name (psn, rtps, fpsnet, spinet, lpsnet) or an "
                                                    ".onnx file (default psn)")
    demo.add_argument("--frames", type=int, default=40, help="frames in the bag (default 40)")
    demo.add_argument("--rate", type=float, default=10.0, help="frame rate of the bag in Hz (default 10)")
    demo.add_argument("--report", type=Path, help="report folder (default reports/demo-<model>)")
    _add_common(demo)
    demo.set_defaults(func=run_demo)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overlays", type=int, default=4, help="side-by-side overlay images in the report "
                                                               "(default 4)")
    parser.add_argument("--ready-timeout", type=float, default=120.0,
                        help="seconds the node may take to start and answer a first frame (default 120)")


def shipped_params_file() -> Path:
    """config/cpu.yaml beside the shipped models (the checkout's, or the installed share dir's)."""
    from panoptic_ros.ros.parameters import default_models_dir

    return default_models_dir().parent / "config" / "cpu.yaml"


def run_replay(args: argparse.Namespace) -> int:
    from panoptic_ros.evaluation.replay import replay, summary

    if args.tracker == "off" and not args.tracking:
        raise ValueError("--tracker off goes with --tracking (it chooses what --tracking scores)")
    run = replay(args.bag, args.image_topic, args.report, params_file=args.params or shipped_params_file(),
                 gt_topic=args.gt_topic, model_path=args.model_path, rate=args.rate, overlays=args.overlays,
                 ready_timeout=args.ready_timeout, progress=sys.stderr.isatty(),
                 tracking=(args.tracker == "on") if args.tracking else None)
    print(summary(run))
    return 0


def write_demo_bag(path: Path, frames: int, rate: float) -> None:
    """A drive of `frames` frames along the first test-split street, with track-id ground truth, filmed at
    DEMO_FPS and stamped `rate` Hz apart (a lower rate plays it in slow motion, for a slow machine)."""
    from panoptic_ros.data.datasets import SYNTHETIC_SPLIT_SEEDS
    from panoptic_ros.data.rosbag_io import BagFrame, write_frames
    from panoptic_ros.data.synth_cli import LABEL_DIVISOR, SYNTH_START_NS
    from panoptic_ros.data.synthetic import generate_sequence

    def scenes():
        sequence = generate_sequence(SYNTHETIC_SPLIT_SEEDS["test"], frames, DEMO_HEIGHT, DEMO_WIDTH, fps=DEMO_FPS)
        for i, scene in enumerate(sequence):
            yield BagFrame(SYNTH_START_NS + round(i * 1e9 / rate), scene.image, scene.panoptic(LABEL_DIVISOR))

    write_frames(path, scenes(), image_topic=DEMO_IMAGE_TOPIC, gt_topic=DEMO_GT_TOPIC)


def run_demo(args: argparse.Namespace) -> int:
    import tempfile

    from panoptic_ros.evaluation.replay import replay, summary
    from panoptic_ros.ros.parameters import default_models_dir, find_model

    if args.frames <= 0:
        raise ValueError(f"--frames must be positive, got {args.frames}")
    if not args.rate > 0:
        raise ValueError(f"--rate must be positive, got {args.rate}")
    model_path = find_model(args.model, "onnxruntime", default_models_dir())
    report = args.report or Path("reports") / f"demo-{model_path.stem}"
    with tempfile.TemporaryDirectory(prefix="panoptic-demo-") as work:
        bag = Path(work) / "demo.mcap"
        print(f"demo: a {args.frames}-frame synthetic street drive ({DEMO_WIDTH}x{DEMO_HEIGHT}, {args.rate:g} Hz) "
              f"through panoptic_node with {model_path.name} on ONNX Runtime, with tracking and without", flush=True)
        write_demo_bag(bag, args.frames, args.rate)
        runs = {}
        for tracking, folder in ((True, report), (False, report.with_name(report.name + "-tracking-off"))):
            runs[tracking] = replay(bag, DEMO_IMAGE_TOPIC, folder, params_file=shipped_params_file(),
                                    gt_topic=DEMO_GT_TOPIC, model_path=model_path, overlays=args.overlays,
                                    ready_timeout=args.ready_timeout, progress=sys.stderr.isatty(), tracking=tracking)
            print(f"-- tracking: {str(tracking).lower()}\n{summary(runs[tracking])}", flush=True)
    print(closing_note(runs[True], runs[False]))
    return 0


def closing_note(on, off) -> str:
    """Both runs' PQ and STQ, and how much AQ drops without tracking."""
    def figures(run) -> str:
        pq = f"PQ {run.result.all.pq:.1f}" if run.result is not None and run.result.all.pq is not None else "PQ -"
        if run.tracking is None:
            return f"{pq}, STQ - (no frame scored)"
        t = run.tracking
        return f"{pq}, STQ {100 * t.stq:.1f} (AQ {100 * t.aq:.1f}, SQ {100 * t.sq:.1f}), {t.id_switches} id switches"
    note = f"tracking true: {figures(on)}\ntracking false: {figures(off)}"
    if on.tracking is not None and off.tracking is not None and on.tracking.aq > 0:
        note += f"\nwithout tracking AQ drops by {100 * (1 - off.tracking.aq / on.tracking.aq):.0f}%"
    return note
