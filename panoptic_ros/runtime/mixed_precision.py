"""A mixed-precision copy of a pipeline ONNX graph: the network in FP16, the fusion in FP32.

For strongly typed TensorRT builds (10.x, 11, TensorRT for RTX), where the file's tensor types
are the engine's. Which nodes stay FP32 is the rule engine_builder pins on weakly typed builds
(layers_to_keep_fp32), applied to the ONNX nodes: everything no learned layer depends on, the
selections (TopK/ArgMax/ArgMin) and everything after them. Every other node with a float output
(the network: convolutions, normalisation, activations, resizes) computes in FP16; Casts are
inserted where a tensor crosses between the two parts, and the weights of FP16 nodes are stored
in FP16. Graph inputs and outputs keep their types (the pipeline contract).

We convert on the ONNX graph rather than with onnxconverter-common's float16 converter because
the FP32 set is our own rule (shared with the weakly typed path) and spans operators that
converter's block list knows nothing about; what is done here is small: retype, cast, copy weights.
"""

from __future__ import annotations

import heapq

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from panoptic_ros.runtime.engine_builder import LayerFacts, is_learned, layers_to_keep_fp32

FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)
SELECTIONS = ("TopK", "ArgMax", "ArgMin")
# Inputs that keep their own type whatever the node computes in (Resize: roi, scales, sizes).
TYPED_INPUTS = {"Resize": (1, 2, 3)}
# Ops whose output type is fixed by an attribute, not by their inputs: never retyped.
FIXED_OUTPUT_TYPE = {"Constant", "ConstantOfShape", "EyeLike", "RandomNormal", "RandomUniform"}


def onnx_layer_facts(model: onnx.ModelProto) -> list[LayerFacts]:
    """LayerFacts of the ONNX nodes of a shape-inferred model, by the rule tensorrt_layer_facts
    applies to TensorRT layers."""
    graph = model.graph
    types = _types(graph)
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant"
                                                         for o in n.output}
    facts = []
    for node in graph.node:
        learned = is_learned(node.name, node.op_type in ("Conv", "ConvTranspose"),
                             node.op_type in ("MatMul", "Gemm") and any(t in constants for t in node.input))
        facts.append(LayerFacts(node.name, tuple(node.input), tuple(node.output), learned,
                                tuple(types.get(o) in FLOATS for o in node.output),
                                settable=node.op_type != "Constant", selects=node.op_type in SELECTIONS))
    return facts


def to_mixed_precision(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose network part computes in FP16 (see the module docstring)."""
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = model.graph
    if len({node.name for node in graph.node}) != len(graph.node):
        raise ValueError("node names must be unique to choose the FP16 part")
    types = _types(graph)
    keep = set(layers_to_keep_fp32(onnx_layer_facts(model)))
    half = {node.name for node in graph.node
            if node.name not in keep and node.op_type not in FIXED_OUTPUT_TYPE | set(SELECTIONS)
            and any(types.get(o) == TensorProto.FLOAT for o in node.output)}
    initializers = {t.name: t for t in graph.initializer}
    half_tensors = {o for node in graph.node if node.name in half for o in node.output
                    if types.get(o) == TensorProto.FLOAT}
    casts: dict[tuple[str, int], str] = {}  # (tensor, to) -> cast output
    new_nodes, new_initializers = [], {}

    def cast(tensor: str, to: int) -> str:
        if (tensor, to) not in casts:
            name = f"{tensor}__to_{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}"
            if to == TensorProto.FLOAT16 and tensor in initializers:  # weights: stored in FP16
                array = numpy_helper.to_array(initializers[tensor]).astype(np.float16)
                new_initializers[name] = numpy_helper.from_array(array, name)
            else:
                new_nodes.append(helper.make_node("Cast", [tensor], [name], to=to, name=f"{name}__cast"))
            casts[(tensor, to)] = name
        return casts[(tensor, to)]

    for node in graph.node:
        in_half = node.name in half
        for index, tensor in enumerate(node.input):
            if not tensor or index in TYPED_INPUTS.get(node.op_type, ()):
                continue
            if in_half and types.get(tensor) == TensorProto.FLOAT and tensor not in half_tensors:
                node.input[index] = cast(tensor, TensorProto.FLOAT16)
            elif not in_half and tensor in half_tensors:
                node.input[index] = cast(tensor, TensorProto.FLOAT)
        if in_half and node.op_type == "Cast":
            attribute = next(a for a in node.attribute if a.name == "to")
            if attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.FLOAT16
        new_nodes.append(node)
    outputs = {o.name for o in graph.output}
    for tensor in sorted(half_tensors & outputs):  # a graph output produced in FP16: rename, cast back
        producer = next(n for n in new_nodes if tensor in n.output)
        producer.output[list(producer.output).index(tensor)] = f"{tensor}__fp16"
        new_nodes.append(helper.make_node("Cast", [f"{tensor}__fp16"], [tensor], to=TensorProto.FLOAT))
    del graph.node[:]
    available = {i.name for i in graph.input} | set(initializers) | set(new_initializers)
    graph.node.extend(_topological(new_nodes, available))
    graph.initializer.extend(new_initializers.values())
    used = {t for node in graph.node for t in node.input}
    kept_initializers = [t for t in graph.initializer if t.name in used]  # FP32 weights now stored in FP16
    del graph.initializer[:]
    graph.initializer.extend(kept_initializers)
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def fp16_node_count(model: onnx.ModelProto) -> int:
    """How many nodes of a (shape-inferred) model output FP16."""
    types = _types(model.graph)
    return sum(any(types.get(o) == TensorProto.FLOAT16 for o in node.output) for node in model.graph.node)


def _types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """`nodes` in an order where every input is produced before it is read (the casts were
    appended at the end); otherwise the original order."""
    producers = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    waiting = [sum(1 for t in set(n.input) if t and t not in available and t in producers) for n in nodes]
    consumers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for tensor in set(node.input):
            if tensor and tensor not in available and tensor in producers:
                consumers.setdefault(producers[tensor], []).append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    ordered = []
    while ready:
        i = heapq.heappop(ready)
        ordered.append(nodes[i])
        for j in consumers.get(i, ()):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(ordered) != len(nodes):
        raise ValueError("cycle in the converted graph")
    return ordered
