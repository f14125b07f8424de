"""Engine building logic that needs no TensorRT: which layers stay FP32 (on a real exported
pipeline graph), the TensorRT 8.x uint8 check, and the progress display; plus a real build where
TensorRT and a GPU exist."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.fusion.pipeline import build_pipeline
from panoptic_ros.runtime import mixed_precision
from panoptic_ros.runtime.engine_builder import (
    BuildProgress,
    LayerFacts,
    PrecisionPlan,
    ProgressPrinter,
    is_learned,
    layers_to_keep_fp32,
    onnx_is_mixed_precision,
    plan_precision,
)
from panoptic_ros.runtime.export import export_onnx


@pytest.fixture(scope="module")
def pipeline_onnx(tmp_path_factory):
    torch.manual_seed(0)
    pipeline = build_pipeline("psn", SYNTHETIC, 128, 256, width_mult=0.25, max_instances=20)
    return export_onnx(pipeline, tmp_path_factory.mktemp("builder") / "psn.onnx")


def onnx_layer_facts(model: onnx.ModelProto) -> list[LayerFacts]:
    return mixed_precision.onnx_layer_facts(onnx.shape_inference.infer_shapes(model))


F, N = True, False  # an output is float / an output is not (an index, an integer)


def test_fp32_rule_on_a_small_chain():
    layers = [
        LayerFacts("normalize", ("image",), ("x",), learned=False, float_outputs=(F,)),
        LayerFacts("conv1", ("x",), ("f",), learned=True, float_outputs=(F,)),
        LayerFacts("relu", ("f",), ("g",), learned=False, float_outputs=(F,)),
        LayerFacts("head", ("g",), ("logits",), learned=True, float_outputs=(F,)),
        LayerFacts("softmax", ("logits",), ("p",), learned=False, float_outputs=(F,)),
        LayerFacts("area", ("p",), ("counts",), learned=False, float_outputs=(F,)),
        LayerFacts("labels", ("p",), ("ids",), learned=False, float_outputs=(N,)),  # a cast to int: no precision
        LayerFacts("threshold", ("score_threshold",), ("t",), learned=False, float_outputs=(F,)),
    ]
    assert layers_to_keep_fp32(layers) == ["softmax", "area", "threshold"]


def test_fp32_rule_pins_the_selections_themselves():
    """TopK/ArgMax/ArgMin output float values and int indices: an FP16 ArgMin over distances may
    pick another candidate, so they are pinned (their index output keeps its type, see keep_fusion_fp32)."""
    layers = [
        LayerFacts("head", ("x",), ("d",), learned=True, float_outputs=(F,)),
        LayerFacts("argmin", ("d",), ("nearest_value", "nearest"), learned=False, float_outputs=(F, N), selects=True),
        LayerFacts("topk", ("d",), ("best", "index"), learned=False, float_outputs=(F, N), selects=True),
    ]
    assert layers_to_keep_fp32(layers) == ["argmin", "topk"]


def test_fp32_rule_needs_an_output_and_a_settable_layer():
    layers = [
        LayerFacts("head", ("x",), ("y",), learned=True, float_outputs=(F,)),
        LayerFacts("no_outputs", ("y",), (), learned=False, float_outputs=()),  # any(()) is False: nothing to pin
        LayerFacts("in_loop", ("y",), ("z",), learned=False, float_outputs=(F,), settable=False),
        LayerFacts("after", ("z",), ("w",), learned=False, float_outputs=(F,)),
    ]
    assert layers_to_keep_fp32(layers) == ["after"]


def test_weight_ops_of_the_fusion_are_not_learned():
    assert is_learned("/network/backbone/conv1/Conv", True, False) and not is_learned("/network/Relu", False, False)
    assert is_learned("/network/head/MatMul", False, True)
    assert not is_learned("/fusion/assembler/MatMul", False, True)  # constant 0/1 matrices: per-cell sums
    assert is_learned("/fusion/classifier/Conv", True, False)  # FPSNet's panoptic head, called by the fusion


def test_fp32_rule_keeps_selected_candidates_that_feed_a_learned_layer():
    """FPSNet: boxes are selected by top-k, turned into masks, and go through a conv again."""
    layers = [
        LayerFacts("box_head", ("features",), ("boxes",), learned=True, float_outputs=(F,)),
        LayerFacts("scale_boxes", ("boxes",), ("scaled",), learned=False, float_outputs=(F,)),
        LayerFacts("topk", ("scaled",), ("best", "index"), learned=False, float_outputs=(F, N), selects=True),
        LayerFacts("masks", ("best",), ("attention",), learned=False, float_outputs=(F,)),
        LayerFacts("concat", ("attention", "features"), ("joined",), learned=False, float_outputs=(F,)),
        LayerFacts("panoptic_head", ("joined",), ("logits",), learned=True, float_outputs=(F,)),
        LayerFacts("argmax", ("logits",), ("best_logit", "labels"), learned=False, float_outputs=(F, N), selects=True),
    ]
    assert layers_to_keep_fp32(layers) == ["topk", "masks", "concat", "argmax"]


def test_fp32_layers_of_the_pipeline_are_its_post_processing(pipeline_onnx):
    model = onnx.load(str(pipeline_onnx))
    facts = onnx_layer_facts(model)
    kept = set(layers_to_keep_fp32(facts))
    by_name = {f.name: f for f in facts}
    ops = {node.name: node.op_type for node in model.graph.node}
    assert kept and not any(by_name[name].learned for name in kept)
    # PSN's fusion feeds no learned layer: every float layer of it is kept, and nothing of the
    # network (backbone, decoder, heads) is, so that part stays free to run in FP16/INT8.
    fusion_floats = {name for name in ops if name.startswith("/fusion/") and any(by_name[name].float_outputs)}
    assert fusion_floats and fusion_floats <= kept
    network_ops = {name for name in ops if name.startswith("/network/backbone/")}
    assert network_ops and not network_ops & kept
    assert "ReduceSum" in {ops[name] for name in kept}


def test_progress_line_shows_open_phases_and_steps():
    # A start far from zero: float seconds at this uptime would make 125 s read as 124.99999 s.
    now = [10**18 + 7]
    progress = BuildProgress("building psn.engine (fp16)", clock=lambda: now[0])
    start = now[0]
    seconds = 1_000_000_000
    now[0] = start + 5 * seconds - 1
    assert progress.line() == "building psn.engine (fp16) [0:04]"
    now[0] = start + 5 * seconds
    assert progress.line() == "building psn.engine (fp16) [0:05]"
    progress.phase_start("Building engine", 3)
    progress.phase_start("Tactic selection", 40)
    progress.step_complete("Tactic selection", 9)
    now[0] = start + 125 * seconds
    assert progress.line() == \
        "building psn.engine (fp16) [2:05] Building engine 0/3 > Tactic selection 10/40"
    progress.phase_finish("Tactic selection")
    progress.step_complete("Building engine", 0)
    progress.step_complete("no such phase", 1)  # TensorRT may report a phase it already closed
    now[0] = start + 130 * seconds
    assert progress.line().endswith("[2:10] Building engine 1/3")


def test_progress_printer_writes_lines_to_a_log():
    stream = io.StringIO()  # not a terminal: whole lines, no carriage returns
    progress = BuildProgress("building", clock=lambda: 0)
    # An interval no test run reaches: the only line is the closing one, whatever the machine's load.
    with ProgressPrinter(progress, stream=stream, log_interval=3600):
        progress.phase_start("Parsing", 1)
    assert stream.getvalue() == "building [0:00] Parsing 0/1\n"


def test_build_engine_usage_errors(pipeline_onnx, tmp_path, capsys):
    from panoptic_ros.cli import main

    def error(*args: str) -> str:
        assert main(["build-engine", "--onnx", str(pipeline_onnx), *args]) == 2
        return capsys.readouterr().err

    assert "apply to --precision int8 only" in error("--calib-images", str(tmp_path))
    assert "needs calibration frames" in error("--precision", "int8")
    assert "needs --calib-topic" in error("--precision", "int8", "--calib-bag", str(tmp_path / "x.mcap"))
    assert main(["build-engine", "--onnx", str(tmp_path / "none.onnx")]) == 2
    assert "ONNX model not found" in capsys.readouterr().err
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "TensorRT is not installed" in error("--precision", "fp16", "--tensorrt-module", "tensorrt")


def _module(weak: bool, strong: bool, calibrators: bool):
    from types import SimpleNamespace

    builder_flags = SimpleNamespace(**({"FP16": 1, "INT8": 2} if weak else {}))
    creation = SimpleNamespace(**({"STRONGLY_TYPED": 5} if strong else {}))
    module = SimpleNamespace(__name__="tensorrt", __version__="x", BuilderFlag=builder_flags,
                             NetworkDefinitionCreationFlag=creation)
    if calibrators:
        module.IInt8EntropyCalibrator2 = object
    return module


TRT8 = _module(weak=True, strong=False, calibrators=True)
TRT10 = _module(weak=True, strong=True, calibrators=True)
TRT11 = _module(weak=False, strong=True, calibrators=False)  # also TensorRT for RTX


@pytest.mark.parametrize("precision, trt, mixed, plan", [
    ("fp32", TRT8, False, PrecisionPlan(strongly_typed=False, fp16_flag=False, int8=False, pin_fusion=False)),
    ("fp32", TRT11, False, PrecisionPlan(strongly_typed=True, fp16_flag=False, int8=False, pin_fusion=False)),
    ("fp16", TRT8, False, PrecisionPlan(strongly_typed=False, fp16_flag=True, int8=False, pin_fusion=True)),
    ("fp16", TRT8, True, PrecisionPlan(strongly_typed=False, fp16_flag=True, int8=False, pin_fusion=True)),
    ("fp16", TRT10, False, PrecisionPlan(strongly_typed=False, fp16_flag=True, int8=False, pin_fusion=True)),
    ("fp16", TRT10, True, PrecisionPlan(strongly_typed=True, fp16_flag=False, int8=False, pin_fusion=False)),
    ("fp16", TRT11, True, PrecisionPlan(strongly_typed=True, fp16_flag=False, int8=False, pin_fusion=False)),
    ("int8", TRT10, False, PrecisionPlan(strongly_typed=False, fp16_flag=True, int8=True, pin_fusion=True)),
])
def test_precision_plans(precision, trt, mixed, plan):
    assert plan_precision(precision, trt, mixed) == plan


def test_precisions_a_tensorrt_cannot_give_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match="no weak typing .* needs a mixed-precision ONNX .* --precision fp16"):
        plan_precision("fp16", TRT11, mixed_precision_onnx=False)
    with pytest.raises(ValueError, match="no INT8 calibration .* TensorRT 8.5 to 10.x"):
        plan_precision("int8", TRT11, mixed_precision_onnx=False)
    with pytest.raises(ValueError, match="mixed-precision .* build it with --precision fp16"):
        plan_precision("fp32", TRT10, mixed_precision_onnx=True)


def test_mixed_precision_is_recognised_by_its_fp16_tensors(pipeline_onnx):
    model = onnx.load(str(pipeline_onnx))
    assert not onnx_is_mixed_precision(model)
    model.graph.node.append(helper.make_node("Cast", ["image"], ["half_image"], to=TensorProto.FLOAT16))
    assert onnx_is_mixed_precision(model)


requires_tensorrt_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@requires_tensorrt_gpu
def test_build_engine_writes_engine_sidecar_and_timing_cache(pipeline_onnx, tmp_path):
    pytest.importorskip("tensorrt")
    from panoptic_ros.runtime.engine_builder import build_engine
    from panoptic_ros.runtime.engine_cache import CacheEntry, file_sha256, read_sidecar, running_key

    engine = tmp_path / "psn.engine"
    sidecar = build_engine(pipeline_onnx, engine, "fp16", timing_cache=tmp_path / "timing.cache")
    assert engine.is_file() and (tmp_path / "timing.cache").stat().st_size > 0
    assert read_sidecar(engine) == sidecar and sidecar.build["fp32_layers"] > 0 and sidecar.build["engine_io_checked"]
    key = running_key(file_sha256(pipeline_onnx), "fp16", 0)
    assert CacheEntry.read(engine).problems(key, sidecar.info) == []
    assert np.isfinite(sidecar.build["build_seconds"])
