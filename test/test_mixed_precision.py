"""`export --precision fp16`: the network in FP16, the fusion and every index/score path in FP32,
the pipeline contract unchanged; ONNX Runtime runs it and agrees with the FP32 export; TensorRT
for RTX builds it as a strongly typed FP16 engine through build_engine."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.fusion.pipeline import build_pipeline
from panoptic_ros.pipeline_io import OUTPUT_NAMES, Thresholds
from panoptic_ros.runtime.backends.model_info import read_onnx_info
from panoptic_ros.runtime.export import export_onnx
from panoptic_ros.runtime.mixed_precision import fp16_node_count

MODELS = ("psn", "fpsnet")  # PSN: fusion after the heads; FPSNet: a learned head inside the fusion


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed")
    out = {}
    for model in MODELS:
        torch.manual_seed(0)
        pipeline = build_pipeline(model, SYNTHETIC, 128, 256, width_mult=0.25, max_instances=20)
        out[model] = (export_onnx(pipeline, folder / f"{model}.onnx"),
                      export_onnx(pipeline, folder / f"{model}_fp16.onnx", precision="fp16"))
    return out


def _types(model: onnx.ModelProto) -> dict[str, int]:
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


@pytest.mark.parametrize("model", MODELS)
def test_network_is_fp16_and_post_processing_fp32(exports, model):
    fp32_path, fp16_path = exports[model]
    graph = onnx.load(str(fp16_path))
    types = _types(graph)
    assert read_onnx_info(fp16_path) == read_onnx_info(fp32_path)  # same contract: names, shapes, dtypes
    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    assert convs and all(types[n.output[0]] == TensorProto.FLOAT16 for n in convs)
    assert fp16_node_count(graph) > len(convs)
    for node in graph.graph.node:
        if node.op_type in ("TopK", "ArgMax", "ArgMin", "ReduceSum"):  # selections and pixel counts
            assert types[node.input[0]] != TensorProto.FLOAT16, node.name
            assert all(types[o] != TensorProto.FLOAT16 for o in node.output), node.name
    assert fp16_path.stat().st_size < 0.7 * fp32_path.stat().st_size  # weights stored in FP16


@pytest.mark.parametrize("model", MODELS)
def test_onnxruntime_agrees_with_the_fp32_export(exports, model, rng):
    fp32_path, fp16_path = exports[model]
    image = rng.integers(0, 256, (128, 256, 3), dtype=np.uint8)
    feeds = {"image": image, **Thresholds().as_inputs(1000)}
    full, half = (dict(zip(OUTPUT_NAMES, ort.InferenceSession(str(p)).run(list(OUTPUT_NAMES), feeds), strict=True))
                  for p in (fp32_path, fp16_path))
    assert (full["semantic"] == half["semantic"]).mean() >= 0.99
    assert (full["panoptic"] == half["panoptic"]).mean() >= 0.98
    assert half["instances"].dtype == np.float32 and half["panoptic"].dtype == np.int32


def test_unknown_export_precision_is_refused(tmp_path):
    pipeline = build_pipeline("psn", SYNTHETIC, 128, 128, width_mult=0.125, max_instances=8)
    with pytest.raises(ValueError, match="unknown export precision 'int8'; valid: fp32, fp16"):
        export_onnx(pipeline, tmp_path / "x.onnx", precision="int8")


@pytest.mark.tensorrt_rtx
def test_tensorrt_rtx_builds_it_strongly_typed(exports, tmp_path):
    trt = pytest.importorskip("tensorrt_rtx_bindings")
    from panoptic_ros.runtime.engine_builder import build_engine

    _, fp16_path = exports["psn"]
    sidecar = build_engine(fp16_path, tmp_path / "psn_fp16.engine", "fp16", trt=trt, gpu=("no GPU (CI)", "0.0"))
    assert sidecar.build["strongly_typed"] and sidecar.build["fp32_layers"] == 0
    assert sidecar.key.precision == "fp16"
    with pytest.raises(ValueError, match="mixed-precision .* build it with --precision fp16"):
        build_engine(fp16_path, tmp_path / "psn_fp32.engine", "fp32", trt=trt, gpu=("no GPU (CI)", "0.0"))
