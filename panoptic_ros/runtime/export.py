"""Export a PanopticPipeline to one self-contained, static-shape ONNX file (opset 17).

We use torch.onnx's TorchScript exporter (`dynamo=False`): in torch 2.13 it still works (with a
deprecation warning), it traces our static-shape module into plain opset-17 ops, and it takes
0-d scalar inputs as they are. The dynamo exporter targets opset 18 and would need a down-
conversion to reach the opset-17 graphs TensorRT parsers on current Jetsons expect. The traced
graph then goes through onnxscript's optimizer, which folds the exporter's shape arithmetic
(Shape -> Gather -> Concat chains of GroupNorm and Resize) into constants, so that every tensor
has a static shape that ONNX shape inference can see.

The written graph has the pipeline_io input/output names, metadata_props META_MODEL,
META_LABEL_SET, META_MAX_INSTANCES and META_DEFAULT_THRESHOLDS (fusion/model_defaults.py: the paper's thresholds of the
model, fusion/reference/defaults.py), and passes the TensorRT audit (runtime.onnx_audit).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxscript.optimizer
import torch
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from panoptic_ros.fusion.model_defaults import model_defaults
from panoptic_ros.fusion.pipeline import PanopticPipeline
from panoptic_ros.pipeline_io import (
    INPUT_NAMES,
    META_DEFAULT_THRESHOLDS,
    META_LABEL_SET,
    META_MAX_INSTANCES,
    META_MODEL,
    OUTPUT_NAMES,
    thresholds_to_json,
)
from panoptic_ros.runtime.mixed_precision import to_mixed_precision
from panoptic_ros.runtime.onnx_audit import audit_model, releases

OPSET = 17
EXPORT_PRECISIONS = ("fp32", "fp16")
# The TensorRT releases an export must parse on: all audited ones, 8.5 (JetPack 5.1) included now
# that the fusion gives TopK/ArgMax/ArgMin float inputs (fusion/static_ops.index_op_input).
EXPORT_AUDITED = releases()
FOLD_SIZE_LIMIT = 4096  # elements: shape-sized constants only
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
                     "Multinomial"}


def export_onnx(pipeline: PanopticPipeline, path: str | Path, opset: int = OPSET, precision: str = "fp32") -> Path:
    """Write `pipeline` to `path` as one ONNX file; returns the path. Raises ValueError if the
    graph would not parse in every supported TensorRT (see runtime.onnx_audit).

    `precision` "fp16" writes a mixed-precision graph (network FP16, fusion FP32; see
    runtime.mixed_precision) for strongly typed TensorRT builds."""
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"unknown export precision {precision!r}; valid: {', '.join(EXPORT_PRECISIONS)}")
    path = Path(path)
    model = to_onnx_model(pipeline, opset)
    if precision == "fp16":
        model = to_mixed_precision(model)
    problems = audit_model(model, only=EXPORT_AUDITED)
    if problems:
        raise ValueError(f"{pipeline.model}: exported graph fails the TensorRT audit:\n  " + "\n  ".join(problems))
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def to_onnx_model(pipeline: PanopticPipeline, opset: int = OPSET) -> onnx.ModelProto:
    """The pipeline as an in-memory ONNX model with shapes inferred and metadata set."""
    was_training = pipeline.training
    pipeline.eval()
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter's deprecation notice and tracer notes about our (intended) constants.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(pipeline, pipeline.example_inputs(), buffer, dynamo=False, opset_version=opset,
                              input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                              do_constant_folding=True)
    finally:
        pipeline.train(was_training)
    # Fold the exporter's shape arithmetic into constants: every shape static.
    optimized = onnxscript.optimizer.optimize(fold_small_constants(onnx.load_from_string(buffer.getvalue())))
    model = onnx.shape_inference.infer_shapes(optimized, strict_mode=True)
    onnx.helper.set_model_props(model, {
        META_MODEL: pipeline.model,
        META_LABEL_SET: json.dumps(pipeline.label_set.to_dict()),
        META_MAX_INSTANCES: str(pipeline.max_instances),
        META_DEFAULT_THRESHOLDS: thresholds_to_json(model_defaults(pipeline.model)),
    })
    onnx.checker.check_model(model, full_check=True)
    return model


def fold_small_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace nodes whose inputs are all constants and whose outputs are small by initializers.

    This is the exporter's shape arithmetic (e.g. ConstantOfShape -> Mul -> Equal -> Where ahead
    of an Expand), which onnxscript's optimizer leaves alone because it does not fold
    ConstantOfShape; without it, shape inference cannot see that the Expand is static.
    """
    graph = model.graph
    opset = {o.domain: o.version for o in model.opset_import}[""]
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    kept = []
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if node.domain in ("", "ai.onnx") and node.op_type not in _NONDETERMINISTIC \
                and all(name in constants for name in inputs):
            values = ReferenceEvaluator(node, opsets={"": opset}).run(None, {n: constants[n] for n in inputs})
            if all(np.asarray(v).size <= FOLD_SIZE_LIMIT for v in values):
                for name, value in zip(node.output, values, strict=True):
                    constants[name] = np.asarray(value)
                    graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
                continue
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return model
