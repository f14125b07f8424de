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
from panoptic_ros.runtime.engine_builder import (
    BuildProgress,
    LayerFacts,
    ProgressPrinter,
    layers_to_keep_fp32,
    uint8_conversion_problems,
)
from panoptic_ros.runtime.export import export_onnx

FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)


@pytest.fixture(scope="module")
def pipeline_onnx(tmp_path_factory):
    torch.manual_seed(0)
    pipeline = build_pipeline("psn", SYNTHETIC, 128, 256, width_mult=0.25, max_instances=20)
    return export_onnx(pipeline, tmp_path_factory.mktemp("builder") / "psn.onnx")


def onnx_layer_facts(model: onnx.ModelProto) -> list[LayerFacts]:
    """LayerFacts of ONNX nodes, by the rule tensorrt_layer_facts applies to TensorRT layers."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output]}
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    facts = []
    for node in graph.node:
        learned = node.op_type in ("Conv", "ConvTranspose") or (
            node.op_type in ("MatMul", "Gemm") and any(t in constants for t in node.input))
        float_output = node.op_type != "Constant" and all(types.get(o) in FLOATS for o in node.output)
        facts.append(LayerFacts(node.name, tuple(node.input), tuple(node.output), learned, float_output,
                                selects=node.op_type in ("TopK", "ArgMax", "ArgMin")))
    return facts


def test_fp32_rule_on_a_small_chain():
    layers = [
        LayerFacts("normalize", ("image",), ("x",), learned=False, float_output=True),
        LayerFacts("conv1", ("x",), ("f",), learned=True, float_output=True),
        LayerFacts("relu", ("f",), ("g",), learned=False, float_output=True),
        LayerFacts("head", ("g",), ("logits",), learned=True, float_output=True),
        LayerFacts("softmax", ("logits",), ("p",), learned=False, float_output=True),
        LayerFacts("area", ("p",), ("counts",), learned=False, float_output=True),
        LayerFacts("argmax", ("p",), ("labels",), learned=False, float_output=False),
        LayerFacts("threshold", ("score_threshold",), ("t",), learned=False, float_output=True),
    ]
    assert layers_to_keep_fp32(layers) == ["softmax", "area", "threshold"]


def test_fp32_rule_keeps_selected_candidates_that_feed_a_learned_layer():
    """FPSNet: boxes are selected by top-k, turned into masks, and go through a conv again."""
    layers = [
        LayerFacts("box_head", ("features",), ("boxes",), learned=True, float_output=True),
        LayerFacts("scale_boxes", ("boxes",), ("scaled",), learned=False, float_output=True),
        LayerFacts("topk", ("scaled",), ("best", "index"), learned=False, float_output=False, selects=True),
        LayerFacts("masks", ("best",), ("attention",), learned=False, float_output=True),
        LayerFacts("concat", ("attention", "features"), ("joined",), learned=False, float_output=True),
        LayerFacts("panoptic_head", ("joined",), ("logits",), learned=True, float_output=True),
        LayerFacts("argmax", ("logits",), ("labels",), learned=False, float_output=False, selects=True),
    ]
    assert layers_to_keep_fp32(layers) == ["masks", "concat"]


def test_fp32_layers_of_the_pipeline_are_its_post_processing(pipeline_onnx):
    model = onnx.load(str(pipeline_onnx))
    facts = onnx_layer_facts(model)
    kept = set(layers_to_keep_fp32(facts))
    by_name = {f.name: f for f in facts}
    ops = {node.name: node.op_type for node in model.graph.node}
    assert kept and not any(by_name[name].learned for name in kept)
    # PSN's fusion feeds no learned layer: every float layer of it is kept, and nothing of the
    # network (backbone, decoder, heads) is, so that part stays free to run in FP16/INT8.
    fusion_floats = {name for name in ops if name.startswith("/fusion/") and by_name[name].float_output}
    assert fusion_floats and fusion_floats <= kept
    network_ops = {name for name in ops if name.startswith("/network/backbone/")}
    assert network_ops and not network_ops & kept
    assert "ReduceSum" in {ops[name] for name in kept}


def test_uint8_conversions_are_checked_for_tensorrt_8():
    def graph_with_cast(src: int, dst: int) -> onnx.ModelProto:
        node = helper.make_node("Cast", ["x"], ["y"], to=dst, name="cast_me")
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", src, [4])],
                                  [helper.make_tensor_value_info("y", dst, [4])])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    assert uint8_conversion_problems(graph_with_cast(TensorProto.FLOAT, TensorProto.UINT8), 8) == []
    assert uint8_conversion_problems(graph_with_cast(TensorProto.UINT8, TensorProto.FLOAT16), 8) == []
    problems = uint8_conversion_problems(graph_with_cast(TensorProto.INT32, TensorProto.UINT8), 8)
    assert len(problems) == 1 and "'cast_me'" in problems[0] and "x: int32" in problems[0]
    assert uint8_conversion_problems(graph_with_cast(TensorProto.INT32, TensorProto.UINT8), 10) == []
    transpose = helper.make_node("Transpose", ["x"], ["y"], perm=[0], name="t")
    graph = helper.make_graph([transpose], "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert "Transpose node 't'" in uint8_conversion_problems(model, 8)[0]


def test_pipeline_graph_builds_on_tensorrt_8(pipeline_onnx):
    """JetPack 5 ships TensorRT 8.6: the pipeline's uint8 conversions must all be float casts."""
    assert uint8_conversion_problems(onnx.load(str(pipeline_onnx)), 8) == []


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
        assert "TensorRT is not installed" in error("--precision", "fp16")


requires_tensorrt_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@requires_tensorrt_gpu
def test_build_engine_writes_engine_sidecar_and_timing_cache(pipeline_onnx, tmp_path):
    pytest.importorskip("tensorrt")
    from panoptic_ros.runtime.engine_builder import build_engine
    from panoptic_ros.runtime.engine_cache import engine_problems, file_sha256, read_sidecar, running_key

    engine = tmp_path / "psn.engine"
    sidecar = build_engine(pipeline_onnx, engine, "fp16", timing_cache=tmp_path / "timing.cache")
    assert engine.is_file() and (tmp_path / "timing.cache").stat().st_size > 0
    assert read_sidecar(engine) == sidecar and sidecar.build["fp32_layers"] > 0
    key = running_key(file_sha256(pipeline_onnx), "fp16", 0)
    assert engine_problems(engine, sidecar, key, sidecar.info) == []
    assert np.isfinite(sidecar.build["build_seconds"])
