"""The `panoptic-ros` command: one entry point, one subcommand per job.

Each subcommand lives next to the code it drives, in a module with a `register(subparsers)`
function that adds its parser and sets `func`. Modules import heavy libraries (torch, onnxruntime,
tensorrt) inside `func`, so `panoptic-ros --help` is instant and works where they are missing.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import panoptic_ros

# Modules that register subcommands, in the order `--help` lists them.
COMMAND_MODULES: tuple[str, ...] = ("panoptic_ros.evaluation.cli", "panoptic_ros.evaluation.bag_cli",
                                   "panoptic_ros.runtime.engine_cli",
                                   "panoptic_ros.data.synth_cli", "panoptic_ros.runtime.export_cli",
                                   "panoptic_ros.training.train_cli", "panoptic_ros.evaluation.replay_cli",
                                   "panoptic_ros.bench_cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="panoptic-ros",
        description="Real-time panoptic segmentation for ROS 2: export, engines, evaluation, training, demo.",
    )
    parser.add_argument("--version", action="version", version=f"panoptic-ros {panoptic_ros.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # benchmarks state the command they ran
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        # User errors (bad file, bad value, missing library) get one clear line, not a traceback.
        print(f"panoptic-ros {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
