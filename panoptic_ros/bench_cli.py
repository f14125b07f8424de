"""`panoptic-ros bench TARGET`: the speed benchmarks, one per part of the product.

Each target is a module with `add_arguments(parser)` and `run(args) -> int` that imports its
heavy libraries inside `run`, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "inference": ("panoptic_ros.runtime.bench", "whole-graph inference time of the shipped models (as the node runs)"),
    "fusion": ("panoptic_ros.fusion.bench", "network vs fusion time per model (PyTorch, ONNX Runtime)"),
    "eval": ("panoptic_ros.evaluation.bench", "PQ evaluation time of one frame pair"),
    "node": ("panoptic_ros.ros.bench", "node overhead per frame and load test against a running node"),
    "tracker": ("panoptic_ros.tracking.bench", "the tracker's cost per frame (1024x2048, 50 instances)"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="run a speed benchmark", description=__doc__)
    targets = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, (module_name, help_text) in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        target = targets.add_parser(name, help=help_text)
        module.add_arguments(target)
        target.set_defaults(func=module.run)
