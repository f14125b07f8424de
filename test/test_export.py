"""ONNX export of every model's pipeline: ONNX Runtime equals eager PyTorch, the graph passes the
TensorRT audit (supported ops, static shapes), metadata and names follow pipeline_io, and the CLI."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from test_pipeline import spread_weights

from panoptic_ros.classes import SYNTHETIC, LabelSet
from panoptic_ros.cli import main
from panoptic_ros.fusion.model_defaults import model_defaults
from panoptic_ros.fusion.pipeline import MODEL_NAMES, build_pipeline
from panoptic_ros.networks import build_network
from panoptic_ros.pipeline_io import (
    INPUT_NAMES,
    META_LABEL_SET,
    META_MAX_INSTANCES,
    META_MODEL,
    OUTPUT_NAMES,
    Thresholds,
)
from panoptic_ros.runtime.backends.model_info import read_onnx_info
from panoptic_ros.runtime.export import EXPORT_AUDITED, export_onnx
from panoptic_ros.runtime.onnx_audit import (
    audit_file,
    audit_model,
    releases,
    tensorrt_parsers,
    uint8_conversion_problems,
)

H, W, K = 128, 256, 16


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """model -> (pipeline, path of its ONNX export), tiny networks with spread weights."""
    out = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    result = {}
    for model in MODEL_NAMES:
        network = spread_weights(build_network(model, SYNTHETIC, width=0.125), seed=1)
        pipeline = build_pipeline(model, SYNTHETIC, H, W, network=network, max_instances=K)
        result[model] = (pipeline, export_onnx(pipeline, out / f"{model}.onnx"))
    return result


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_onnx_runtime_equals_eager_pytorch(exported, model, rng):
    pipeline, path = exported[model]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for thresholds in (Thresholds(), Thresholds(score_threshold=0.2, nms_iou=0.3, mask_sigma=0.3, min_stuff_area=0)):
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        feeds = {name: t.numpy() for name, t in zip(INPUT_NAMES, pipeline.make_inputs(image, thresholds),
                                                    strict=True)}
        panoptic, semantic, instances, num, converged, dropped = session.run(list(OUTPUT_NAMES), feeds)
        expected = pipeline.run(image, thresholds)
        assert (panoptic == expected.panoptic).mean() >= 0.999
        assert (semantic == expected.semantic).mean() >= 0.999
        assert int(num) == expected.num_instances
        assert (bool(converged), int(dropped)) == (expected.converged, expected.candidates_dropped)
        np.testing.assert_allclose(instances, expected.instances, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_exported_graph_passes_the_tensorrt_audit_and_follows_the_contract(exported, model):
    _, path = exported[model]
    assert audit_file(path, only=EXPORT_AUDITED) == []  # these TensorRTs' parsers import every node
    graph = onnx.load(str(path))
    for release in releases():
        assert {node.op_type for node in graph.graph.node} <= set(tensorrt_parsers()["releases"][release]["operators"])
    assert graph.opset_import[0].version == 17
    assert [i.name for i in graph.graph.input] == list(INPUT_NAMES)
    assert [o.name for o in graph.graph.output] == list(OUTPUT_NAMES)
    types = {v.name: v.type.tensor_type for v in (*graph.graph.input, *graph.graph.output)}
    assert types["image"].elem_type == TensorProto.UINT8
    assert [d.dim_value for d in types["image"].shape.dim] == [H, W, 3]
    assert types["label_divisor"].elem_type == TensorProto.INT32 and not types["label_divisor"].shape.dim
    assert types["panoptic"].elem_type == TensorProto.INT32 and types["semantic"].elem_type == TensorProto.UINT8
    assert [d.dim_value for d in types["instances"].shape.dim] == [K + len(SYNTHETIC.stuff_ids), 11]
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta[META_MODEL] == model and meta[META_MAX_INSTANCES] == str(K)
    assert LabelSet.from_dict(json.loads(meta[META_LABEL_SET])) == SYNTHETIC
    assert not graph.graph.initializer or all(not t.HasField("data_location") or t.data_location == 0
                                              for t in graph.graph.initializer)  # self-contained


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "models").glob("*.onnx"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_models_pass_the_audit_of_tensorrt_8_6_and_later(path):
    assert audit_file(path, only=EXPORT_AUDITED) == []


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_models_pass_the_audit_of_tensorrt_8_5(path):
    assert audit_file(path, only=("8.5",)) == []


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_exported_graph_passes_the_audit_of_tensorrt_8_5(exported, model):
    assert audit_file(exported[model][1], only=("8.5",)) == []


def test_parser_tables_name_their_release_and_source():
    assert releases() == ("8.5", "8.6", "10.3", "10.15")
    for release, table in tensorrt_parsers()["releases"].items():
        assert table["source"]["repository"] == "https://github.com/onnx/onnx-tensorrt", release
        assert table["source"]["ref"] and table["source"]["note"]
        assert {"Conv", "TopK", "ArgMax", "Cast"} <= set(table["operators"]) and "Unique" not in table["operators"]
        assert "UINT8" in table["invalid_input_types"]["TopK"]["0"]
    tables = tensorrt_parsers()["releases"]
    # onnx-tensorrt 8.5-GA's TopK importer and argMinMaxHelper refuse INT32; 8.6 added INT32 input
    assert tables["8.5"]["invalid_input_types"]["TopK"]["0"] == ["INT32", "UINT8"]
    assert tables["8.5"]["invalid_input_types"]["ArgMax"]["0"] == ["INT32", "UINT8"]
    assert tables["8.6"]["invalid_input_types"]["TopK"]["0"] == ["UINT8"]
    assert [tables[r]["int64_read_as_int32"] for r in releases()] == [True, True, False, False]


def _selection_graph(op: str, elem_type: int) -> onnx.ModelProto:
    """One TopK (K=2) or ArgMax over a (1, 8) tensor of `elem_type`."""
    x = helper.make_tensor_value_info("x", elem_type, [1, 8])
    if op == "TopK":
        k = helper.make_tensor("k", TensorProto.INT64, [1], [2])
        node = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="select")
        outputs = [helper.make_tensor_value_info("v", elem_type, [1, 2]),
                   helper.make_tensor_value_info("i", TensorProto.INT64, [1, 2])]
        return _graph([node], [x], outputs, [k])
    node = helper.make_node("ArgMax", ["x"], ["i"], axis=1, keepdims=0, name="select")
    return _graph([node], [x], [helper.make_tensor_value_info("i", TensorProto.INT64, [1])])


@pytest.mark.parametrize("op", ["TopK", "ArgMax"])
def test_integer_selections_fail_on_tensorrt_8_5_only(op):
    """TensorRT 8 reads INT64 as INT32 and the 8.5 parser refuses INT32 into TopK/ArgMax/ArgMin
    (JetPack 5.1, onnx/onnx-tensorrt#918); 8.6 and later take it. A float input passes everywhere."""
    for elem_type, name in ((TensorProto.INT64, "INT64 (read as INT32)"), (TensorProto.INT32, "INT32")):
        problems = audit_model(_selection_graph(op, elem_type))
        assert len(problems) == 1, problems
        assert problems[0].startswith(f"TensorRT 8.5: {op} node 'select': input 0 'x' is {name}, which its ONNX "
                                      "parser refuses there (onnx-tensorrt df60e73")
        assert audit_model(_selection_graph(op, elem_type), only=("8.6", "10.3", "10.15")) == []
    assert audit_model(_selection_graph(op, TensorProto.FLOAT)) == []


def test_uint8_conversions_are_checked_for_tensorrt_8():
    def graph_with_cast(src: int, dst: int) -> onnx.ModelProto:
        node = helper.make_node("Cast", ["x"], ["y"], to=dst, name="cast_me")
        return _graph([node], [helper.make_tensor_value_info("x", src, [4])],
                      [helper.make_tensor_value_info("y", dst, [4])])

    assert audit_model(graph_with_cast(TensorProto.FLOAT, TensorProto.UINT8)) == []
    assert audit_model(graph_with_cast(TensorProto.UINT8, TensorProto.FLOAT16)) == []
    problems = audit_model(graph_with_cast(TensorProto.INT32, TensorProto.UINT8))
    assert [p.split(":")[0] for p in problems] == ["TensorRT 8.5", "TensorRT 8.6"]
    assert "Cast node 'cast_me' (x: INT32, y: UINT8): converts uint8 only by a Cast" in problems[0]
    assert len(uint8_conversion_problems(graph_with_cast(TensorProto.INT32, TensorProto.UINT8))) == 1


def _graph(nodes, inputs, outputs, initializers=()):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(initializers)),
                              opset_imports=[helper.make_opsetid("", 17)])
    return model


def test_audit_flags_forbidden_unsupported_and_dynamic_graphs():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])
    dynamic = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    out = helper.make_tensor_value_info("y", TensorProto.INT64, None)
    nonzero = _graph([helper.make_node("NonZero", ["x"], ["y"])], [x], [out])
    assert any("NonZero" in p and "data-dependent" in p for p in audit_model(nonzero))
    unique = _graph([helper.make_node("Unique", ["x"], ["y"])], [x], [helper.make_tensor_value_info("y", 1, None)])
    assert any("Unique" in p and "not supported" in p for p in audit_model(unique))
    relu = _graph([helper.make_node("Relu", ["x"], ["y"])], [dynamic], [helper.make_tensor_value_info("y", 1, None)])
    assert any("not static" in p for p in audit_model(relu))
    index = helper.make_tensor("i", TensorProto.INT64, [4, 4], np.zeros(16, dtype=np.int64))
    scatter = _graph([helper.make_node("ScatterElements", ["x", "i", "x"], ["y"], reduction="add")], [x],
                     [helper.make_tensor_value_info("y", 1, [4, 4])], [index])
    assert any("plugin-only" in p for p in audit_model(scatter))
    k = helper.make_tensor("k", TensorProto.INT64, [1], [5000])
    long = helper.make_tensor_value_info("x", TensorProto.FLOAT, [8000])
    topk = _graph([helper.make_node("TopK", ["x", "k"], ["v", "y"])], [long],
                  [helper.make_tensor_value_info("v", 1, [5000]), helper.make_tensor_value_info("y", 7, [5000])], [k])
    assert any("less than 3840" in p for p in audit_model(topk))
    uint8 = helper.make_tensor_value_info("x", TensorProto.UINT8, [4, 4])
    transpose = _graph([helper.make_node("Transpose", ["x"], ["y"])], [uint8],
                       [helper.make_tensor_value_info("y", TensorProto.UINT8, [4, 4])])
    assert any("input type UINT8" in p for p in audit_model(transpose))


def test_export_cli_writes_a_graph_that_runs(tmp_path, capsys):
    path = tmp_path / "psn.onnx"
    code = main(["export", "--model", "psn", "--width-mult", "0.125", "--height", "128", "--width", "128",
                 "--max-instances", "8", "--output", str(path)])
    assert code == 0 and "wrote" in capsys.readouterr().out
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"image": np.zeros((128, 128, 3), np.uint8), **Thresholds().as_inputs(1000)}
    panoptic, *_ = session.run(None, feeds)
    assert panoptic.shape == (128, 128)


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "yolo"], "unknown model 'yolo'"),
    (["--model", "psn", "--label-set", "coco"], "unknown label set 'coco'"),
    (["--model", "psn", "--checkpoint", "missing.pt"], "checkpoint not found"),
])
def test_export_cli_reports_bad_arguments(tmp_path, capsys, args, message):
    code = main(["export", *args, "--height", "128", "--width", "128", "--output", str(tmp_path / "x.onnx")])
    assert code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_index_ops_take_float_inputs_for_tensorrt_8_5(exported, model):
    # TensorRT 8.5's parser rejects INT32 (and INT64, read as INT32) inputs to TopK and ArgMax/ArgMin.
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(exported[model][1])))
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.graph.value_info, *graph.graph.input)}
    types.update({t.name: t.data_type for t in graph.graph.initializer})
    index_ops = [node for node in graph.graph.node if node.op_type in ("TopK", "ArgMax", "ArgMin")]
    assert index_ops
    assert {node.name: types[node.input[0]] for node in index_ops} == {node.name: TensorProto.FLOAT
                                                                       for node in index_ops}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_export_writes_the_papers_default_thresholds(exported, model):
    info = read_onnx_info(exported[model][1])
    assert info.default_thresholds == model_defaults(model)
