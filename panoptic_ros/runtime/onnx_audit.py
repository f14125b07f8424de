"""Audit an ONNX graph against TensorRT's ONNX parser and our static-graph rules.

The operator list (tensorrt_onnx_ops.json, beside this file) is TensorRT's own support matrix,
with its version and source. On top of it we forbid what our design rules out even where
TensorRT accepts it (data-dependent shapes and control flow), check the restrictions of the ops
we use that can be checked statically, and require every tensor shape to be fully static.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

OPS_FILE = Path(__file__).with_name("tensorrt_onnx_ops.json")

# TensorRT accepts these, but they mean data-dependent shapes or control flow, which our graphs
# must not have (design rule: fixed K candidates, masks of valid flags instead).
FORBIDDEN_BY_DESIGN = {
    "NonZero": "data-dependent output shape",
    "NonMaxSuppression": "data-dependent output shape",
    "Loop": "control flow",
    "If": "control flow",
    "Scan": "control flow",
}
TOPK_MAX = 3840  # TensorRT: K must be less than this
RESIZE_MODES = {"nearest", "linear"}
RESIZE_TRANSFORMS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}

_TYPE_NAMES = {
    TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16", TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64", TensorProto.INT8: "INT8", TensorProto.UINT8: "UINT8", TensorProto.BOOL: "BOOL",
    TensorProto.DOUBLE: "DOUBLE",
}


@cache
def tensorrt_ops() -> dict:
    """The parsed tensorrt_onnx_ops.json."""
    return json.loads(OPS_FILE.read_text())


def audit_file(path: str | Path) -> list[str]:
    """Problems of the ONNX file at `path` (empty when it passes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    return audit_model(onnx.load(str(path)))


def audit_model(model: onnx.ModelProto) -> list[str]:
    """Problems of `model` (empty when it passes): unsupported or forbidden ops, unsupported input
    types, violated restrictions, non-static shapes."""
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = model.graph
    types = _tensor_types(graph)
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    constants.update({node.output[0]: _constant_value(node) for node in graph.node if node.op_type == "Constant"})
    problems = []
    for node in graph.node:
        problems += _node_problems(node, types, constants)
    problems += _shape_problems(graph)
    return problems


def _node_problems(node: onnx.NodeProto, types: dict[str, str], constants: dict) -> list[str]:
    supported = tensorrt_ops()["supported"]
    where = f"{node.op_type} node {node.name or node.output[0]!r}"
    if node.domain not in ("", "ai.onnx"):
        return [f"{where}: custom domain {node.domain!r} (TensorRT would need a plugin)"]
    if node.op_type not in supported:
        return [f"{where}: not supported by TensorRT {tensorrt_ops()['tensorrt_version']}"]
    if node.op_type in FORBIDDEN_BY_DESIGN:
        return [f"{where}: {FORBIDDEN_BY_DESIGN[node.op_type]}, not allowed in a static pipeline graph"]
    problems = []
    data_type = types.get(node.input[0]) if node.input else None
    if data_type and data_type not in supported[node.op_type]["types"]:
        problems.append(f"{where}: input type {data_type} not supported (TensorRT takes "
                        f"{', '.join(supported[node.op_type]['types'])})")
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    reduction = attributes.get("reduction", b"none")
    if node.op_type in ("ScatterElements", "ScatterND") and reduction != b"none":
        problems.append(f"{where}: reduction {reduction.decode()!r} is plugin-only in TensorRT")
    if node.op_type == "TopK":
        k = constants.get(node.input[1]) if len(node.input) > 1 else None
        if k is None:
            problems.append(f"{where}: K must be a constant")
        elif int(k.reshape(-1)[0]) >= TOPK_MAX:
            problems.append(f"{where}: K = {int(k.reshape(-1)[0])} must be less than {TOPK_MAX}")
        if attributes.get("sorted", 1) != 1:
            problems.append(f"{where}: sorted must be 1")
    if node.op_type == "Resize":
        mode = attributes.get("mode", b"nearest").decode()
        transform = attributes.get("coordinate_transformation_mode", b"half_pixel").decode()
        if mode not in RESIZE_MODES or transform not in RESIZE_TRANSFORMS:
            problems.append(f"{where}: mode {mode!r} / coordinate transformation {transform!r} unsupported")
    if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
        problems.append(f"{where}: the Indices output is unsupported")
    return problems


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attribute = node.attribute[0]
    value = onnx.helper.get_attribute_value(attribute)
    return numpy_helper.to_array(value) if attribute.name == "value" else np.asarray(value)


def _tensor_types(graph: onnx.GraphProto) -> dict[str, str]:
    types = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        types[value.name] = _TYPE_NAMES.get(value.type.tensor_type.elem_type, str(value.type.tensor_type.elem_type))
    for init in graph.initializer:
        types[init.name] = _TYPE_NAMES.get(init.data_type, str(init.data_type))
    return types


def _shape_problems(graph: onnx.GraphProto) -> list[str]:
    """Every graph input, output and intermediate tensor must have a fully known, fixed shape."""
    shapes = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}
    problems = []
    for name in [v.name for v in (*graph.input, *graph.output)] + [o for n in graph.node for o in n.output if o]:
        value = shapes.get(name)
        if value is None or not value.type.tensor_type.HasField("shape"):
            problems.append(f"tensor {name!r}: shape unknown")
            continue
        dims = value.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            shown = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
            problems.append(f"tensor {name!r}: shape {shown} is not static")
    return problems
