"""`panoptic-ros eval-bag`: run a model on every frame of a rosbag2 and write an evaluation report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from panoptic_ros.tracking.config import TrackerConfig

EPILOG = """\
model: --model NAME|PATH (a shipped model, models/NAME.onnx, or a file), --onnx F, --engine F (TensorRT),
--checkpoint F (torch; needs --input-size), or `model` in --params. Settings come from the defaults of
panoptic_node, then --params (a node parameters file such as config/cpu.yaml: every ros__parameters
section applies), then the options given here.

thresholds: the model's own defaults (its file's metadata: its paper's values), unless --params or an
option sets one. The command prints each value in force with its source, warns about a threshold set
that the model does not use, and the report lists them ("thresholds", "threshold sources").

fusion: the report counts frames whose unrolled NMS / pasting did not converge and the valid candidates
that did not fit the model's K slots (their pixels are void), per bag and in total; the command warns
when either is not 0.

ground truth: --gt-topic T: 32SC1 id images (class * label_divisor + instance, -1 void) with the frames'
header stamps (within --gt-tolerance-ms). --gt-dir D: a COCO / Cityscapes panoptic PNG folder with its JSON
(default D.json); --gt-match stamp: the last run of digits in a PNG's name is the frame's header stamp in
nanoseconds; --gt-match index: the PNGs sorted by name are the topic's frames in order.

tracking: --tracking gives the things of every frame track ids and scores them against ground truth whose
instance ids are track ids (synth --sequence): STQ, AQ, SQ, AQ per class, identity switches per frame.
--tracker off scores the per-frame instance ids instead (the baseline without tracking). With several bags,
each bag is its own sequence: its row in the report has its STQ, AQ and identity switches.

many bags: give several bags, or folders of bags (.mcap / .db3 files and rosbag2 directories inside, by
name). The report is over all of them (PQ of every frame together) with a row per bag; --jobs N runs
them on N processes here, --ray auto|ADDRESS as tasks on a Ray cluster (`ray start --head` on one
machine, `ray start --address HEAD:6379` on the others; bags and the model path must be readable where
the tasks run, the model itself travels with them). The numbers are the same however the bags ran.
--split-frames N also splits each bag into ranges of N frames, one task each, so that a few long bags keep
many workers busy; the report is the one of each bag run in one piece (not with --tracking or
--output-bag, which follow a bag's frames in order). --output-bag DIR with several bags: a new folder
with one predictions bag per input bag, DIR/<bag name>.mcap.

exit status: 0 done; 1 a bag is damaged part-way (its report covers the frames before the damage) or,
of several bags, some could not be read (their rows say why); 2 bad input (a single missing or
unreadable bag or topic, bad option).
"""

THRESHOLD_OPTIONS = ("score_threshold", "center_threshold", "nms_iou", "mask_sigma", "overlap_threshold",
                     "min_stuff_area")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval-bag", help="evaluate a model on a rosbag2 (PQ report, latencies, overlays, prediction bag)",
        description="Run the panoptic pipeline on every frame of an image topic of a rosbag2 (mcap or sqlite3, "
                    "raw or compressed images), in order, and write a report folder: metrics.json, report.md, "
                    "latency histogram, PQ per class and side-by-side overlays.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bags", type=Path, nargs="+", metavar="BAG",
                        help="rosbag2 directory, .mcap or .db3 file, or a folder of them")
    parser.add_argument("--image-topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    truth = parser.add_mutually_exclusive_group()
    truth.add_argument("--gt-topic", help="ground-truth 32SC1 id image topic in the same bag")
    truth.add_argument("--gt-dir", type=Path, help="ground-truth panoptic PNG folder (COCO / Cityscapes layout)")
    parser.add_argument("--gt-json", type=Path, help="the --gt-dir folder's JSON (default: the folder's path + .json)")
    parser.add_argument("--gt-format", choices=("coco", "cityscapes"), default="coco",
                        help="coco: categories are the model's train ids; cityscapes: label ids, mapped to train ids")
    parser.add_argument("--gt-match", choices=("stamp", "index"), default="stamp",
                        help="how --gt-dir files find their frames (default stamp)")
    parser.add_argument("--gt-tolerance-ms", type=float, default=0.0,
                        help="largest stamp difference between a frame and its ground truth (default 0: equal)")

    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", help="shipped model name (models/<name>.onnx) or model file path")
    model.add_argument("--onnx", type=Path, help="ONNX model file")
    model.add_argument("--engine", type=Path, help="TensorRT engine file")
    model.add_argument("--checkpoint", type=Path, help="PyTorch checkpoint (.pt), run with the torch backend")
    parser.add_argument("--backend", choices=("onnxruntime", "torch", "tensorrt"),
                        help="runtime (default: onnxruntime; tensorrt for --engine, torch for --checkpoint)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: --params, else auto)")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads (0: ONNX Runtime decides)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="tensorrt: precision when building")
    parser.add_argument("--input-size", help="torch with --checkpoint: model input HxW, e.g. 512x1024")
    parser.add_argument("--params", type=Path, help="panoptic_node parameters YAML (e.g. config/cpu.yaml)")
    for name in THRESHOLD_OPTIONS:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float,
                            help=f"fusion threshold {name} (default: the model's)")
    parser.add_argument("--label-divisor", type=int, help="panoptic id = class * divisor + instance (default 1000)")

    parser.add_argument("--report", required=True, type=Path, help="report folder to write")
    parser.add_argument("--output-bag", type=Path,
                        help="also write the predictions to this new rosbag2 (.db3: sqlite3, else mcap); with several "
                             "bags a new folder of them, one per bag: DIR/<bag name>.mcap")
    parser.add_argument("--max-frames", type=int, help="evaluate only the topic's first N frames")
    parser.add_argument("--overlays", type=int, default=4, help="side-by-side overlays in the report (default 4)")
    parser.add_argument("--tracking", action="store_true", help="track things across frames and score the tracks "
                                                                "(STQ, AQ, identity switches)")
    parser.add_argument("--tracker", choices=("on", "off"), default="on",
                        help="with --tracking: off scores per-frame instance ids, the no-tracking baseline")
    parser.add_argument("--track-max-age", type=int, default=TrackerConfig.max_age,
                        help=f"frames a track may go unseen and be continued (default {TrackerConfig.max_age})")
    parser.add_argument("--jobs", type=int, default=1, help="bags evaluated at once on local processes (default 1)")
    parser.add_argument("--ray", metavar="ADDRESS",
                        help="run the bags as Ray tasks: auto (the running cluster), ray://HOST:PORT or HOST:PORT, "
                             "local (a private cluster here); needs `pip install panoptic_ros[cluster]`")
    parser.add_argument("--split-frames", type=int, metavar="N",
                        help="evaluate each bag as ranges of N frames, a task each (with --jobs / --ray: one long bag "
                             "on many workers); the same report as in one piece")
    parser.add_argument("--no-overlap", action="store_true",
                        help="decode, infer and score one frame after another instead of overlapping them")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from panoptic_ros.evaluation.fleet import find_bags

    if args.gt_json is not None and args.gt_dir is None:
        raise ValueError("--gt-json goes with --gt-dir (the PNG folder it describes)")
    if args.output_bag is not None and args.output_bag.exists():
        raise ValueError(f"--output-bag {args.output_bag} exists already; give a new path")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.tracker == "off" and not args.tracking:
        raise ValueError("--tracker off goes with --tracking (it chooses what --tracking scores)")
    if args.split_frames is not None:
        if args.split_frames < 1:
            raise ValueError(f"--split-frames must be >= 1, got {args.split_frames}")
        if args.tracking or args.output_bag is not None:
            raise ValueError("--split-frames does not go with --tracking or --output-bag: a tracker and a predictions "
                             "bag follow a bag's frames in order, in one task")
    bags = find_bags(args.bags)
    if len(bags) == 1 and args.ray is None and args.split_frames is None:
        return run_one(args, bags[0])
    if args.gt_dir is not None and args.gt_match == "index" and len(bags) > 1:
        raise ValueError("--gt-match index pairs files with one bag's frames; with several bags match by stamp")
    return run_many(args, bags)


def output_bags(folder: Path, bags: list[Path]) -> list[Path]:
    """--output-bag with several bags: FOLDER/<bag name>.mcap for each bag (names must differ)."""
    outputs = [folder / f"{bag.stem if bag.is_file() else bag.name}.mcap" for bag in bags]
    named: dict[Path, Path] = {}
    for bag, output in zip(bags, outputs, strict=True):
        if output in named:
            raise ValueError(f"--output-bag: bags {named[output]} and {bag} would both write {output}; give bags "
                             "with different names")
        named[output] = bag
    return outputs


def _settings(args: argparse.Namespace):
    """(threshold overrides, label divisor, model settings) of the command's options (overrides checked here, so
    a bad value fails before a model loads)."""
    from panoptic_ros.ros import parameters as params
    from panoptic_ros.runtime.model_thresholds import check_overrides

    values = node_parameters(args)
    overrides = {name: values[name] for name in THRESHOLD_OPTIONS if values.get(name) is not None}
    check_overrides(overrides)
    return overrides, int(values["label_divisor"]), params.model_settings(values)


def print_thresholds(in_force) -> None:
    """The thresholds in force with their sources, and a warning per override the model does not use."""
    print(f"eval-bag: {in_force.describe()}", file=sys.stderr)
    for warning in in_force.warnings():
        print(f"panoptic-ros eval-bag: warning: {warning}", file=sys.stderr)


def print_fusion_warning(not_converged: int, candidates_dropped: int) -> None:
    """A warning when frames did not converge or candidates were dropped (the report has the counts)."""
    if not_converged or candidates_dropped:
        print(f"panoptic-ros eval-bag: warning: {not_converged} frames did not converge (NMS / pasting stopped at "
              f"the graph's sweep bound) and {candidates_dropped} candidates were dropped (more valid objects than "
              "the model's K slots: their pixels are void)", file=sys.stderr)


def run_one(args: argparse.Namespace, bag: Path) -> int:
    """One bag in this process: its report, and the predictions bag with --output-bag."""
    from panoptic_ros.evaluation.bag_eval import evaluate_bag, image_topic_count
    from panoptic_ros.evaluation.fleet import TrackingSpec
    from panoptic_ros.evaluation.ground_truth import FolderGroundTruth, TopicGroundTruth
    from panoptic_ros.ros import parameters as params
    from panoptic_ros.runtime.backends import create_backend
    from panoptic_ros.runtime.model_thresholds import thresholds_in_force
    from panoptic_ros.tracking.report import summary_line

    overrides, label_divisor, settings = _settings(args)
    tolerance_ns = round(args.gt_tolerance_ms * 1e6)
    # The bag and its topics first: a typo should not wait for a model to load.
    image_topic_count(bag, args.image_topic)
    ground_truth = TopicGroundTruth(bag, args.gt_topic, tolerance_ns) if args.gt_topic else None
    backend = create_backend(settings.backend, settings.model_file(params.default_models_dir()),
                             device=settings.device, **settings.backend_options())
    print_thresholds(thresholds_in_force(backend.info, overrides))
    if args.gt_dir is not None:
        ground_truth = FolderGroundTruth(args.gt_dir, backend.label_set, args.gt_json, args.gt_format, args.gt_match,
                                         tolerance_ns)

    tracking = (TrackingSpec(args.tracker == "on", TrackerConfig(max_age=args.track_max_age)).create(
        backend.label_set, label_divisor) if args.tracking else None)
    evaluation = evaluate_bag(bag, args.image_topic, backend, ground_truth=ground_truth, thresholds=overrides,
                              label_divisor=label_divisor, max_frames=args.max_frames, num_overlays=args.overlays,
                              output_bag=args.output_bag, tracking=tracking, overlap=not args.no_overlap,
                              progress=sys.stderr.isatty())
    evaluation.write_report(args.report, backend.label_set)
    if evaluation.result is not None:
        print(evaluation.result.format_table())
    if evaluation.tracking is not None:
        print(summary_line(evaluation.tracking, evaluation.tracking_mode, backend.label_set))
    _print_summary(None, evaluation.latencies_ms, evaluation.skipped)
    print_fusion_warning(evaluation.not_converged, evaluation.candidates_dropped)
    print(f"{evaluation.frames} frames run; report written to {args.report}"
          + (f"; predictions written to {args.output_bag}" if args.output_bag is not None else ""))
    if evaluation.bag_error:
        print(f"panoptic-ros eval-bag: warning: stopped early at damaged or unreadable input, the report covers "
              f"the {evaluation.frames} frames before it: {evaluation.bag_error}", file=sys.stderr)
        return 1
    return 0


def run_many(args: argparse.Namespace, bags: list[Path]) -> int:
    """Several bags (or one on Ray): one combined report with a row per bag."""
    from collections import Counter

    from panoptic_ros.evaluation.fleet import (
        BagTask,
        GroundTruthSpec,
        ModelSpec,
        TrackingSpec,
        evaluate_bags,
        overlay_shares,
        worker_threads,
    )
    from panoptic_ros.ros import parameters as params

    overrides, label_divisor, settings = _settings(args)
    options = settings.backend_options()
    if "threads" in options:  # workers share the cores instead of each taking them all
        busy = args.jobs if args.split_frames is not None else min(args.jobs, len(bags))
        options["threads"] = 1 if args.ray is not None and not options["threads"] else \
            worker_threads(busy, options["threads"])

    def path(value: Path | None) -> str | None:
        # Ray workers do not run in this folder: they get absolute paths (valid where they run: shared storage).
        if value is None:
            return None
        return str(value.resolve()) if args.ray is not None else str(value)

    model = ModelSpec(settings.backend, str(settings.model_file(params.default_models_dir()).resolve()),
                      settings.device, tuple(sorted(options.items())))
    ground_truth = GroundTruthSpec(topic=args.gt_topic, folder=path(args.gt_dir), json_path=path(args.gt_json),
                                   layout=args.gt_format, match=args.gt_match,
                                   tolerance_ns=round(args.gt_tolerance_ms * 1e6))
    tracking = (TrackingSpec(args.tracker == "on", TrackerConfig(max_age=args.track_max_age))
                if args.tracking else None)
    outputs: list[Path | None] = [None] * len(bags)
    if args.output_bag is not None:  # one bag (on Ray): its predictions bag; several: a folder of them
        outputs = [args.output_bag] if len(bags) == 1 else output_bags(args.output_bag, bags)
    tasks = [BagTask(path(bag), args.image_topic, model, ground_truth, tuple(sorted(overrides.items())), label_divisor,
                     args.max_frames, share, overlap=not args.no_overlap, output_bag=path(output), tracking=tracking)
             for bag, share, output in zip(bags, overlay_shares(args.overlays, len(bags)), outputs, strict=True)]
    fleet = evaluate_bags(tasks, jobs=args.jobs, ray_address=args.ray, progress=sys.stderr.isatty(),
                          split_frames=args.split_frames)
    label_set = next((e.label_set for e in fleet.evaluations), None)
    fleet.write_report(args.report, label_set)

    evaluations = fleet.evaluations
    latencies: dict[str, list[float]] = {}
    skipped: Counter[str] = Counter()
    for evaluation in evaluations:
        skipped.update(evaluation.skipped)
        for stage, values in evaluation.latencies_ms.items():
            latencies.setdefault(stage, []).extend(values)
    _print_summary(fleet.result, latencies, dict(skipped))
    if evaluations:  # the workers loaded the model: its thresholds are known now
        print_thresholds(evaluations[0].thresholds)
    print_fusion_warning(sum(e.not_converged for e in evaluations), sum(e.candidates_dropped for e in evaluations))
    for row in fleet.rows():
        pq = f"PQ {row['pq']:5.1f}" if row["pq"] is not None else "PQ     -"
        stq = f", STQ {100 * row['stq']:.1f}" if row.get("stq") is not None else ""
        print(f"{row['bag']}: {pq}{stq}, {row['frames run']} frames run, {row['skipped']} skipped"
              + (f"; ERROR {row['error']}" if row["error"] else ""))
    print(f"{len(bags)} bags, {sum(e.frames for e in evaluations)} frames run; report written to {args.report}"
          + (f"; predictions written to {args.output_bag}" if args.output_bag is not None else ""))
    if fleet.failed:
        print(f"panoptic-ros eval-bag: warning: {len(fleet.failed)} of {len(bags)} bags could not be read in full; "
              "their rows in the report say why", file=sys.stderr)
        return 1
    return 0


def _print_summary(result, latencies_ms: dict[str, list[float]], skipped: dict[str, int]) -> None:
    from panoptic_ros.evaluation.report import latency_summary

    if result is not None:
        print(result.format_table())
    for stage, s in latency_summary(latencies_ms).items():
        print(f"{stage:>12s}: p50 {s['p50']:7.2f}  p90 {s['p90']:7.2f}  p99 {s['p99']:7.2f} ms  ({s['count']} frames)")
    if skipped:
        print("skipped frames: " + ", ".join(f"{reason}: {count}" for reason, count in skipped.items()))


def node_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """panoptic_node's parameter values: its defaults, then --params, then the command's options."""
    from panoptic_ros.evaluation.node_params import node_defaults, read_params_file

    values = node_defaults()
    if args.params is not None:
        values.update(read_params_file(args.params))
    for name in (*THRESHOLD_OPTIONS, "label_divisor", "device", "threads", "precision"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    values.update(_model_choice(args, values["backend"]))
    if not values["model"] and not values["engine_path"]:
        raise ValueError("no model: give --model, --onnx, --engine or --checkpoint (or `model` in --params)")
    return values


def _model_choice(args: argparse.Namespace, params_backend: str) -> dict[str, Any]:
    """Parameter values of the model options given (none: those of --params stay)."""
    for option, backend in (("engine", "tensorrt"), ("checkpoint", "torch")):
        if getattr(args, option) is not None and args.backend not in (None, backend):
            raise ValueError(f"--{option} runs on the {backend} backend, not --backend {args.backend}")
    if args.engine is not None:
        return {"backend": "tensorrt", "engine_path": str(args.engine), "model": ""}
    if args.checkpoint is not None:
        if not args.input_size:
            raise ValueError("--checkpoint needs --input-size HxW (the model input size, multiples of 128)")
        height, width = parse_size(args.input_size)
        return {"backend": "torch", "model": str(args.checkpoint), "engine_path": "",
                "torch_input_height": height, "torch_input_width": width}
    choice: dict[str, Any] = {"backend": args.backend or params_backend}
    if args.onnx is not None or args.model is not None:
        choice.update(model=str(args.onnx or args.model), engine_path="")
        if args.onnx is not None:
            choice["backend"] = args.backend or "onnxruntime"
    if args.input_size:
        choice["torch_input_height"], choice["torch_input_width"] = parse_size(args.input_size)
    return choice


def parse_size(text: str) -> tuple[int, int]:
    """'512x1024' -> (512, 1024)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--input-size must be HxW, e.g. 512x1024, got {text!r}") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"--input-size must be positive, got {text!r}")
    return height, width
