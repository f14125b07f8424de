"""Golden outputs: one input frame and ONNX Runtime's outputs for it, saved next to an export, so an
engine built later on another machine (a Jetson) can be checked against the graph it came from.

A golden file is a plain .npz (no pickles): image, thresholds, label_divisor, the four outputs,
and the model name, K and ONNX hash it was made from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from panoptic_ros.classes import DEFAULT_LABEL_DIVISOR
from panoptic_ros.pipeline_io import COL, INSTANCE_COLUMNS, THRESHOLD_INPUTS, PanopticResult, Thresholds

GOLDEN_KEYS = ("image", "thresholds", "label_divisor", "panoptic", "semantic", "instances", "num_instances",
               "model_name", "max_instances", "onnx_sha256")
DEFAULT_MIN_AGREEMENT = 0.999
GOLDEN_SEED = 0
DEFAULT_THRESHOLDS = Thresholds()


@dataclass
class Golden:
    image: np.ndarray
    thresholds: Thresholds
    label_divisor: int
    result: PanopticResult
    model_name: str
    max_instances: int
    onnx_sha256: str


def golden_image(height: int, width: int, seed: int = GOLDEN_SEED) -> np.ndarray:
    """The deterministic synthetic street scene of `seed` (uint8 RGB): stuff, things and borders."""
    from panoptic_ros.data.synthetic import generate_scene

    return generate_scene(seed, height, width).image


def write_golden(onnx_path: str | Path, out_path: str | Path, image: np.ndarray | None = None,
                 thresholds: Thresholds = DEFAULT_THRESHOLDS, label_divisor: int = DEFAULT_LABEL_DIVISOR) -> Path:
    """Run `onnx_path` in ONNX Runtime (CPU) on `image` (default: golden_image) and save the golden file."""
    from panoptic_ros.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from panoptic_ros.runtime.engine_cache import file_sha256

    backend = OnnxRuntimeBackend(onnx_path, device="cpu")
    if image is None:
        image = golden_image(*backend.input_hw)
    result = backend.run(image, thresholds, label_divisor)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "wb") as f:  # a file object keeps numpy from appending ".npz" to the name
        np.savez_compressed(
            f, image=image, thresholds=np.array([getattr(thresholds, n) for n in THRESHOLD_INPUTS], np.float64),
            label_divisor=np.int64(label_divisor), panoptic=result.panoptic, semantic=result.semantic,
            instances=result.instances, num_instances=np.int64(result.num_instances),
            model_name=np.str_(backend.model_name), max_instances=np.int64(backend.max_instances),
            onnx_sha256=np.str_(file_sha256(onnx_path)))
    return out_path


def load_golden(path: str | Path) -> Golden:
    """Read a golden file; clear errors for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"golden file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in GOLDEN_KEYS if k not in data.files]
            if missing:
                raise ValueError(f"missing arrays {missing}")
            arrays = {k: data[k] for k in GOLDEN_KEYS}
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a golden file written by `panoptic-ros export --golden`: {error}") from None
    thresholds = Thresholds(**{n: float(v) for n, v in zip(THRESHOLD_INPUTS, arrays["thresholds"], strict=True)})
    result = PanopticResult(arrays["panoptic"], arrays["semantic"], arrays["instances"], int(arrays["num_instances"]))
    return Golden(arrays["image"], thresholds, int(arrays["label_divisor"]), result, str(arrays["model_name"]),
                  int(arrays["max_instances"]), str(arrays["onnx_sha256"]))


@dataclass
class Agreement:
    """How far a backend's result is from the golden one."""

    id_agreement: float  # fraction of pixels with the same panoptic id
    semantic_agreement: float  # fraction of pixels with the same semantic class
    expected_count: int
    actual_count: int
    matched: int  # instances present in both (same id)
    column_max_abs: dict[str, float] = field(default_factory=dict)  # over matched rows

    @property
    def count_difference(self) -> int:
        return self.actual_count - self.expected_count

    def passed(self, min_agreement: float = DEFAULT_MIN_AGREEMENT, max_count_difference: int = 0) -> bool:
        return (self.id_agreement >= min_agreement and self.semantic_agreement >= min_agreement
                and abs(self.count_difference) <= max_count_difference)

    def report(self) -> str:
        lines = [f"panoptic id agreement: {self.id_agreement:.4%}",
                 f"semantic agreement:    {self.semantic_agreement:.4%}",
                 f"instances: golden {self.expected_count}, backend {self.actual_count} "
                 f"(difference {self.count_difference:+d}), matched by id {self.matched}"]
        if self.column_max_abs:
            lines.append("instance table max |difference| over matched rows: " +
                         ", ".join(f"{name} {value:.4g}" for name, value in self.column_max_abs.items()))
        return "\n".join(lines)


def compare_results(expected: PanopticResult, actual: PanopticResult) -> Agreement:
    """Pixel agreement of ids and classes, and instance-table differences over rows matched by id."""
    if expected.panoptic.shape != actual.panoptic.shape:
        raise ValueError(f"result sizes differ: golden {expected.panoptic.shape}, backend {actual.panoptic.shape}")
    expected_rows = {int(row[COL["id"]]): row for row in expected.valid_instances}
    actual_rows = {int(row[COL["id"]]): row for row in actual.valid_instances}
    matched = sorted(expected_rows.keys() & actual_rows.keys())
    compared = [name for name in INSTANCE_COLUMNS if name not in ("valid", "id")]
    column_max_abs = {}
    if matched:
        diff = np.abs(np.stack([expected_rows[i] for i in matched]).astype(np.float64)
                      - np.stack([actual_rows[i] for i in matched]).astype(np.float64))
        column_max_abs = {name: float(diff[:, COL[name]].max()) for name in compared}
    return Agreement(
        id_agreement=float(np.mean(expected.panoptic == actual.panoptic)),
        semantic_agreement=float(np.mean(expected.semantic == actual.semantic)),
        expected_count=expected.num_instances, actual_count=actual.num_instances, matched=len(matched),
        column_max_abs=column_max_abs)
