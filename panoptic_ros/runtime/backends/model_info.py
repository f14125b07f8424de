"""What a model file says about itself: its name, label set, K, and its inputs and outputs.

Every backend needs the same facts, whichever file it loads: an ONNX file carries them in its
metadata_props (written by export), an engine in its sidecar JSON (a copy made at build time), a
checkpoint in the pipeline built from it. The facts are checked against the pipeline contract
(panoptic_ros.pipeline_io) once, here, so a wrong file fails at load with a message naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from panoptic_ros.classes import LabelSet
from panoptic_ros.pipeline_io import (
    IMAGE_INPUT,
    INPUT_NAMES,
    INSTANCE_COLUMNS,
    LABEL_DIVISOR_INPUT,
    META_DEFAULT_THRESHOLDS,
    META_LABEL_SET,
    META_MAX_INSTANCES,
    META_MODEL,
    OUTPUT_NAMES,
    Thresholds,
    thresholds_from_json,
    thresholds_to_json,
)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, static shape, NumPy dtype name ("uint8", "float32", ...)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict) -> TensorSpec:
        return cls(name=str(data["name"]), shape=tuple(int(d) for d in data["shape"]), dtype=str(data["dtype"]))


def contract_specs(height: int, width: int, table_rows: int) -> tuple[tuple[TensorSpec, ...], ...]:
    """The inputs and outputs a pipeline graph must have (pipeline_io's contract), for images of
    height x width and an instance table of `table_rows` rows (K things + one per stuff class)."""
    inputs = tuple(
        TensorSpec(name, (height, width, 3), "uint8") if name == IMAGE_INPUT
        else TensorSpec(name, (), "int32" if name == LABEL_DIVISOR_INPUT else "float32")
        for name in INPUT_NAMES
    )
    outputs = (
        TensorSpec("panoptic", (height, width), "int32"),
        TensorSpec("semantic", (height, width), "uint8"),
        TensorSpec("instances", (table_rows, len(INSTANCE_COLUMNS)), "float32"),
        TensorSpec("num_instances", (), "int32"),
        TensorSpec("converged", (), "int32"),
        TensorSpec("candidates_dropped", (), "int32"),
    )
    assert tuple(s.name for s in outputs) == OUTPUT_NAMES
    return inputs, outputs


def io_differences(expected: tuple[TensorSpec, ...], actual: tuple[TensorSpec, ...]) -> list[str]:
    """Human-readable differences between two I/O lists (names, order, shapes, dtypes); empty if equal."""
    expected_names = [s.name for s in expected]
    actual_names = [s.name for s in actual]
    if sorted(expected_names) != sorted(actual_names):
        return [f"names {actual_names}, expected {expected_names}"]
    by_name = {s.name: s for s in actual}
    problems = []
    for want in expected:
        got = by_name[want.name]
        if got.shape != want.shape:
            problems.append(f"{want.name}: shape {list(got.shape)}, expected {list(want.shape)}")
        if got.dtype != want.dtype:
            problems.append(f"{want.name}: dtype {got.dtype}, expected {want.dtype}")
    return problems


@dataclass(frozen=True)
class ModelInfo:
    """A pipeline model's identity and interface."""

    model_name: str
    label_set: LabelSet
    max_instances: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    default_thresholds: Thresholds | None = None  # the model's own (its paper's); None in older files

    @property
    def table_rows(self) -> int:
        """Rows of the instance table: K things, then one per stuff class."""
        return self.max_instances + len(self.label_set.stuff_ids)

    @property
    def input_hw(self) -> tuple[int, int]:
        height, width, _ = self.inputs[INPUT_NAMES.index(IMAGE_INPUT)].shape
        return height, width

    def check_contract(self, source: str | Path) -> None:
        """Raise ValueError naming `source` unless the I/O is exactly the pipeline contract."""
        image = next((s for s in self.inputs if s.name == IMAGE_INPUT), None)
        if image is None or len(image.shape) != 3:
            raise ValueError(f"{source}: not a panoptic_ros pipeline: no {IMAGE_INPUT!r} input of shape (H, W, 3); "
                             f"inputs are {[s.to_dict() for s in self.inputs]}")
        expected_inputs, expected_outputs = contract_specs(image.shape[0], image.shape[1], self.table_rows)
        problems = io_differences(expected_inputs, self.inputs) + io_differences(expected_outputs, self.outputs)
        if problems:
            raise ValueError(f"{source}: does not match the pipeline contract: {'; '.join(problems)}")

    def metadata(self) -> dict[str, str]:
        """The ONNX metadata_props form of the model facts (what export writes)."""
        metadata = {META_MODEL: self.model_name, META_LABEL_SET: json.dumps(self.label_set.to_dict()),
                    META_MAX_INSTANCES: str(self.max_instances)}
        if self.default_thresholds is not None:
            metadata[META_DEFAULT_THRESHOLDS] = thresholds_to_json(self.default_thresholds)
        return metadata

    def to_dict(self) -> dict:
        return {"metadata": self.metadata(), "inputs": [s.to_dict() for s in self.inputs],
                "outputs": [s.to_dict() for s in self.outputs]}

    @classmethod
    def from_dict(cls, data: dict, source: str | Path) -> ModelInfo:
        return cls.from_metadata(data["metadata"], tuple(TensorSpec.from_dict(s) for s in data["inputs"]),
                                 tuple(TensorSpec.from_dict(s) for s in data["outputs"]), source)

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], inputs: tuple[TensorSpec, ...],
                      outputs: tuple[TensorSpec, ...], source: str | Path) -> ModelInfo:
        missing = [key for key in (META_MODEL, META_LABEL_SET, META_MAX_INSTANCES) if key not in metadata]
        if missing:
            raise ValueError(f"{source}: missing panoptic_ros metadata {missing}; "
                             "export the model with `panoptic-ros export`")
        try:
            label_set = LabelSet.from_dict(json.loads(metadata[META_LABEL_SET]))
            max_instances = int(metadata[META_MAX_INSTANCES])
            defaults = metadata.get(META_DEFAULT_THRESHOLDS)
            default_thresholds = None if defaults is None else thresholds_from_json(defaults)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{source}: unreadable panoptic_ros metadata: {error}") from None
        info = cls(metadata[META_MODEL], label_set, max_instances, inputs, outputs, default_thresholds)
        info.check_contract(source)
        return info


def read_onnx_info(path: str | Path) -> ModelInfo:
    """The ModelInfo of an exported pipeline ONNX file; clear errors for a missing or broken file."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as error:
        raise ValueError(f"{path} is not a readable ONNX model: {error}") from None
    if not model.graph.input:
        raise ValueError(f"{path} is not a readable ONNX model: its graph has no inputs")
    initializers = {t.name for t in model.graph.initializer}
    inputs = tuple(_onnx_spec(v, path) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_onnx_spec(v, path) for v in model.graph.output)
    metadata = {p.key: p.value for p in model.metadata_props}
    return ModelInfo.from_metadata(metadata, inputs, outputs, path)


def _onnx_spec(value_info, path: Path) -> TensorSpec:
    from onnx.helper import tensor_dtype_to_np_dtype

    tensor_type = value_info.type.tensor_type
    dims = []
    for dim in tensor_type.shape.dim:
        if not dim.HasField("dim_value"):
            raise ValueError(f"{path}: {value_info.name} has a dynamic dimension {dim.dim_param!r}; "
                             "pipeline graphs are exported with static shapes")
        dims.append(dim.dim_value)
    return TensorSpec(value_info.name, tuple(dims), np.dtype(tensor_dtype_to_np_dtype(tensor_type.elem_type)).name)
