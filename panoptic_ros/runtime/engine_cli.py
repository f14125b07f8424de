"""`panoptic-ros build-engine` and `panoptic-ros verify-engine`: build a TensorRT engine ahead of
time, then check any backend against the golden outputs written at export."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

BACKEND_BY_MODEL_ARG = {"engine": "tensorrt", "checkpoint": "torch", "onnx": "onnxruntime"}


def register(subparsers: argparse._SubParsersAction) -> None:
    from panoptic_ros.runtime.backends.trt_api import TENSORRT_MODULES
    from panoptic_ros.runtime.calibration import CALIBRATION_ALGORITHMS, DEFAULT_MAX_IMAGES
    from panoptic_ros.runtime.choices import BACKENDS, PRECISIONS
    from panoptic_ros.runtime.engine_cache import CACHE_ENV
    from panoptic_ros.runtime.golden import DEFAULT_MIN_AGREEMENT

    build = subparsers.add_parser(
        "build-engine", help="build a TensorRT engine from an exported ONNX file",
        description="Build a TensorRT engine (with its sidecar JSON) from a pipeline ONNX file. Without --output "
                    f"it goes into the engine cache (${CACHE_ENV} or ~/.cache/panoptic_ros/engines), where the node "
                    "finds it for the same ONNX file and precision.")
    build.add_argument("--onnx", required=True, type=Path, help="pipeline ONNX file (from `panoptic-ros export`)")
    build.add_argument("--precision", default="fp16", choices=PRECISIONS, help="engine precision (default fp16)")
    source = build.add_mutually_exclusive_group()
    source.add_argument("--calib-images", type=Path, metavar="DIR", help="int8: folder of calibration images")
    source.add_argument("--calib-bag", type=Path, metavar="BAG", help="int8: rosbag with calibration images")
    build.add_argument("--calib-topic", help="int8: image topic of --calib-bag")
    build.add_argument("--calib-algo", default="entropy", choices=CALIBRATION_ALGORITHMS,
                       help="int8 calibrator: entropy (IInt8EntropyCalibrator2) or minmax (default entropy)")
    build.add_argument("--calib-max", type=int, default=DEFAULT_MAX_IMAGES,
                       help=f"int8: at most this many frames, spread evenly (default {DEFAULT_MAX_IMAGES})")
    build.add_argument("--calib-cache", type=Path,
                       help="int8: calibration table file, reused when it exists (default: <output>.calib)")
    build.add_argument("--workspace", type=int, default=1024, metavar="MB", help="builder workspace (default 1024)")
    build.add_argument("--output", type=Path, help="engine file (default: the engine cache entry)")
    build.add_argument("--cache-dir", type=Path, help="engine cache folder (default: see above)")
    build.add_argument("--timing-cache", type=Path, help="TensorRT timing cache file (default: in the cache folder)")
    build.add_argument("--device", default="cuda:0", help="CUDA device (default cuda:0)")
    build.add_argument("--tensorrt-module", choices=TENSORRT_MODULES,
                       help="TensorRT library to build with (default: the first installed of "
                            f"{', '.join(TENSORRT_MODULES)})")
    build.set_defaults(func=run_build)

    verify = subparsers.add_parser(
        "verify-engine", help="check a backend against golden outputs",
        description="Run a backend on the golden input written by `panoptic-ros export --golden` and report how "
                    "far its outputs are from ONNX Runtime's. Exits 1 below the agreement threshold.")
    model = verify.add_mutually_exclusive_group(required=True)
    model.add_argument("--engine", type=Path, help="TensorRT engine (tensorrt backend)")
    model.add_argument("--onnx", type=Path, help="pipeline ONNX file (onnxruntime, or tensorrt via the engine cache)")
    model.add_argument("--checkpoint", type=Path, help="network checkpoint (torch backend)")
    verify.add_argument("--golden", required=True, type=Path, help="golden .npz written at export")
    verify.add_argument("--backend", choices=BACKENDS,
                        help="default: tensorrt for --engine, torch for --checkpoint, onnxruntime for --onnx")
    verify.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    verify.add_argument("--precision", default="fp16", choices=PRECISIONS,
                        help="tensorrt with --onnx: precision of the cached engine (default fp16)")
    verify.add_argument("--no-build", action="store_true",
                        help="tensorrt with --onnx: refuse to build a missing engine")
    verify.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT,
                        help=f"pixel agreement needed for ids and classes (default {DEFAULT_MIN_AGREEMENT})")
    verify.add_argument("--max-count-diff", type=int, default=0,
                        help="instance count difference allowed (default 0)")
    verify.set_defaults(func=run_verify)


def run_build(args: argparse.Namespace) -> int:
    import logging

    from panoptic_ros.runtime import engine_cache
    from panoptic_ros.runtime.backends.model_info import read_onnx_info
    from panoptic_ros.runtime.backends.trt_api import import_tensorrt
    from panoptic_ros.runtime.engine_builder import build_engine

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    calibrating = args.calib_images or args.calib_bag or args.calib_cache
    if args.precision != "int8" and calibrating:
        raise ValueError("--calib-* options apply to --precision int8 only")
    if args.calib_bag and not args.calib_topic:
        raise ValueError("--calib-bag needs --calib-topic (the image topic to calibrate on)")
    if args.precision == "int8" and not (args.calib_images or args.calib_bag or
                                         (args.calib_cache and args.calib_cache.is_file())):
        raise ValueError("--precision int8 needs calibration frames: --calib-images DIR, --calib-bag BAG "
                         "--calib-topic TOPIC, or an existing --calib-cache FILE")
    device_index = _cuda_index(args.device)
    info = read_onnx_info(args.onnx)
    trt = import_tensorrt(args.tensorrt_module)
    cache_dir = args.cache_dir or engine_cache.default_cache_dir()
    key = engine_cache.running_key(engine_cache.file_sha256(args.onnx), args.precision, device_index, trt)
    output = args.output or engine_cache.cached_engine_path(cache_dir, args.onnx, key)
    timing_cache = args.timing_cache or engine_cache.timing_cache_path(cache_dir, key)
    calibrator, calibration = None, None
    if args.precision == "int8":
        calibrator, calibration = _calibrator(args, info, output, device_index, trt)
    sidecar = build_engine(args.onnx, output, args.precision, workspace_mb=args.workspace, timing_cache=timing_cache,
                           calibrator=calibrator, calibration=calibration, device_index=device_index, trt=trt)
    print(f"engine: {output}\nsidecar: {engine_cache.sidecar_path(output)}\n"
          f"TensorRT {sidecar.key.tensorrt_version} on {sidecar.key.gpu_name} (sm {sidecar.key.compute_capability}), "
          f"{sidecar.key.precision}, built in {sidecar.build['build_seconds']} s")
    print(f"verify it: panoptic-ros verify-engine --engine {output} --golden GOLDEN.npz")
    return 0


def _calibrator(args: argparse.Namespace, info, output: Path, device_index: int, trt):
    from panoptic_ros.runtime.calibration import (
        CalibrationCache,
        CalibrationFeeder,
        images_from_bag,
        images_from_dir,
        make_calibrator,
    )

    cache = CalibrationCache(args.calib_cache or output.with_name(output.name + ".calib"))
    if args.calib_images:
        count, frames = images_from_dir(args.calib_images, info.input_hw, args.calib_max)
        source = str(args.calib_images)
    elif args.calib_bag:
        count, frames = images_from_bag(args.calib_bag, args.calib_topic, info.input_hw, args.calib_max)
        source = f"{args.calib_bag}:{args.calib_topic}"
    else:
        count, frames, source = 0, None, None
    feeder = CalibrationFeeder(frames, info, f"cuda:{device_index}", count) if frames is not None else None
    description = {"algorithm": args.calib_algo, "source": source, "frames": count, "cache": str(cache.path)}
    return make_calibrator(args.calib_algo, feeder, cache, trt), description


def _cuda_index(device: str) -> int:
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if not match:
        raise ValueError(f"--device must be cuda or cuda:N for TensorRT, got {device!r}")
    return int(match.group(1) or 0)


def run_verify(args: argparse.Namespace) -> int:
    from panoptic_ros.runtime.backends import create_backend
    from panoptic_ros.runtime.golden import compare_results, load_golden

    model_arg = next(name for name in BACKEND_BY_MODEL_ARG if getattr(args, name) is not None)
    backend_name = args.backend or BACKEND_BY_MODEL_ARG[model_arg]
    allowed = {"engine": ("tensorrt",), "checkpoint": ("torch",), "onnx": ("onnxruntime", "tensorrt")}[model_arg]
    if backend_name not in allowed:
        raise ValueError(f"--{model_arg} runs with --backend {' or '.join(allowed)}, not {backend_name}")
    golden = load_golden(args.golden)
    height, width = golden.image.shape[:2]
    options = {}
    if backend_name == "torch":
        options = {"height": height, "width": width, "max_instances": golden.max_instances}
    elif backend_name == "tensorrt" and model_arg == "onnx":
        options = {"precision": args.precision, "allow_build": not args.no_build}
    backend = create_backend(backend_name, getattr(args, model_arg), device=args.device, **options)
    if backend.model_name != golden.model_name:
        raise ValueError(f"{args.golden} was made for model {golden.model_name!r}, the backend runs "
                         f"{backend.model_name!r}")
    _warn_if_other_onnx(args, backend, golden.onnx_sha256)
    result = backend.run(golden.image, golden.thresholds, golden.label_divisor)
    agreement = compare_results(golden.result, result)
    facts = backend.describe()
    print(f"{facts['backend']} on {facts['device']} ({facts['precision']}), model {facts['model_name']}, "
          f"{height}x{width}")
    print(agreement.report())
    passed = agreement.passed(args.min_agreement, args.max_count_diff)
    print(f"{'PASS' if passed else 'FAIL'} (needs >= {args.min_agreement:.2%} agreement, "
          f"instance count within {args.max_count_diff})")
    return 0 if passed else 1


def _warn_if_other_onnx(args: argparse.Namespace, backend, golden_sha256: str) -> None:
    """Golden and model from different exports are comparable only if the weights are the same: say so."""
    from panoptic_ros.runtime.engine_cache import file_sha256, read_sidecar

    if args.onnx is not None:
        model_sha256 = file_sha256(args.onnx)
    elif args.engine is not None:
        model_sha256 = read_sidecar(args.engine).key.onnx_sha256
    else:
        return
    if model_sha256 != golden_sha256:
        print(f"warning: {args.golden} was written for another ONNX file (sha256 {golden_sha256[:12]}…, "
              f"this model's {model_sha256[:12]}…)", file=sys.stderr)
