"""The pipeline graph's interface: input and output names, the instance table's columns, and the
runtime thresholds with their valid ranges.

Every runtime (PyTorch, ONNX Runtime, TensorRT), the node and the evaluation speak this one
interface, so it lives apart from all of them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import numpy as np

IMAGE_INPUT = "image"  # uint8 (H, W, 3) RGB
# Scalar inputs after the image, in this order: float32 thresholds, then int32 label_divisor.
THRESHOLD_INPUTS = ("score_threshold", "center_threshold", "nms_iou", "mask_sigma",
                    "overlap_threshold", "min_stuff_area")
LABEL_DIVISOR_INPUT = "label_divisor"
INPUT_NAMES = (IMAGE_INPUT, *THRESHOLD_INPUTS, LABEL_DIVISOR_INPUT)

# Outputs: panoptic id map int32 (H, W) (-1 void), semantic map uint8 (H, W) (255 void),
# instance table float32 (K, len(INSTANCE_COLUMNS)), number of valid rows int32 scalar,
# converged int32 scalar (1: every unrolled sequential rule - greedy NMS, pasting by confidence -
# reached its fixed point, so the result is exactly the sequential rule's), candidates_dropped int32
# scalar (valid candidates that did not fit the K slots; their pixels are void).
OUTPUT_NAMES = ("panoptic", "semantic", "instances", "num_instances", "converged", "candidates_dropped")

# Network head outputs the fusions read (each network's forward returns a dict with some of these).
HEAD_SEMANTIC = "semantic"  # (1, C, h, w) class logits
HEAD_CENTER = "center"  # PSN: (1, 1, H, W) centre heatmap
HEAD_OFFSET = "offset"  # PSN: (1, 2, H, W) (dy, dx) to the instance centre, pixels
HEAD_BOX_CLS = "box_cls"  # per level (1, T or A*T, h, w) class logits
HEAD_BOX_REG = "box_reg"  # per level (1, 4 or A*4, h, w) box distances / deltas
HEAD_CENTERNESS = "centerness"  # RTPS: per level (1, 1, h, w)
HEAD_LEVELNESS = "levelness"  # RTPS: (1, L + 1, h, w)
HEAD_BORDERNESS = "borderness"  # LPSNet: per level (1, 1, h, w)
HEAD_FEATURES = "features"  # FPSNet: (1, F, H/8, W/8) panoptic head input
HEAD_CLASS_LOGITS = "class_logits"  # SPINet: per level (1, T, h, w)
HEAD_FILTERS = "filters"  # SPINet: per level (1, D, h, w) dynamic filters
HEAD_PANOPTIC_FEATURE = "panoptic_feature"  # SPINet: (1, F, H/4, W/4)

# Columns of the instance table. Valid rows come first; box corners are inclusive pixel
# coordinates (x = column, y = row) in the graph's input resolution.
INSTANCE_COLUMNS = ("valid", "id", "class_id", "score", "x1", "y1", "x2", "y2", "area",
                    "centroid_x", "centroid_y")
COL = {name: i for i, name in enumerate(INSTANCE_COLUMNS)}


@dataclass(frozen=True)
class Thresholds:
    """Runtime thresholds of the fusion (graph inputs: changing them needs no rebuild).

    Each method uses the ones its paper has; the others are ignored by its graph.
    """

    score_threshold: float = 0.3  # minimum instance / detection confidence
    center_threshold: float = 0.1  # PSN: minimum center-heatmap peak
    nms_iou: float = 0.5  # box NMS IoU
    mask_sigma: float = 0.5  # RTPS: IoU x P_sem threshold; SPINet: mask probability
    overlap_threshold: float = 0.3  # LPSNet / merge: drop an instance whose overlap exceeds this
    min_stuff_area: float = 64.0  # stuff segments smaller than this (pixels) become void

    # (low, high, inclusive) valid range of each field
    RANGES = {
        "score_threshold": (0.0, 1.0),
        "center_threshold": (0.0, 1.0),
        "nms_iou": (0.0, 1.0),
        "mask_sigma": (0.0, 1.0),
        "overlap_threshold": (0.0, 1.0),
        "min_stuff_area": (0.0, 1.0e7),
    }

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            low, high = self.RANGES[f.name]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"{f.name} must be in [{low}, {high}], got {value}")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def as_inputs(self, label_divisor: int) -> dict[str, np.ndarray]:
        """The scalar graph inputs for these thresholds and label divisor."""
        inputs = {name: np.asarray(getattr(self, name), dtype=np.float32) for name in THRESHOLD_INPUTS}
        inputs[LABEL_DIVISOR_INPUT] = np.asarray(label_divisor, dtype=np.int32)
        return inputs


INT32_MAX = 2**31 - 1


def check_label_divisor(label_divisor: int, max_instances: int, num_classes: int) -> None:
    """Ids are class * divisor + instance number: the divisor must exceed K and keep ids in int32."""
    if isinstance(label_divisor, bool) or not isinstance(label_divisor, (int, np.integer)):
        raise ValueError(f"{LABEL_DIVISOR_INPUT} must be an integer, got {label_divisor!r}")
    if label_divisor <= max_instances:
        raise ValueError(f"{LABEL_DIVISOR_INPUT} must be greater than max_instances ({max_instances}), "
                         f"got {label_divisor}")
    largest = (num_classes - 1) * label_divisor + max_instances
    if largest > INT32_MAX:
        raise ValueError(f"{LABEL_DIVISOR_INPUT} {label_divisor} is too large: ids up to {largest} overflow int32")


@dataclass
class PanopticResult:
    """One frame's pipeline outputs, as NumPy arrays."""

    panoptic: np.ndarray  # int32 (H, W), -1 void
    semantic: np.ndarray  # uint8 (H, W), 255 void
    instances: np.ndarray  # float32 (K, len(INSTANCE_COLUMNS))
    num_instances: int
    converged: bool = True  # every sequential rule reached its fixed point
    candidates_dropped: int = 0  # valid candidates beyond K (their pixels are void)

    @property
    def valid_instances(self) -> np.ndarray:
        """The valid rows of the instance table."""
        return self.instances[: self.num_instances]


# ONNX metadata_props written by export and read by every backend (an engine keeps a copy in
# its sidecar JSON), so a model file says what it is without its checkpoint.
META_MODEL = "panoptic_ros.model"  # network name, e.g. "psn"
META_LABEL_SET = "panoptic_ros.label_set"  # JSON of LabelSet.to_dict()
META_MAX_INSTANCES = "panoptic_ros.max_instances"  # K, the build-time number of thing rows
# JSON {field: value} of the model's default Thresholds (its paper's, fusion/reference/defaults.py);
# runtimes use them unless a parameter overrides them. Optional: older files have none.
META_DEFAULT_THRESHOLDS = "panoptic_ros.default_thresholds"


def thresholds_to_json(thresholds: Thresholds) -> str:
    return json.dumps(thresholds.as_dict(), sort_keys=True)


def thresholds_from_json(text: str) -> Thresholds:
    """Thresholds from META_DEFAULT_THRESHOLDS text; ValueError when unreadable or out of range."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"default thresholds are not JSON: {error}") from None
    if not isinstance(values, dict) or set(values) - set(THRESHOLD_INPUTS):
        raise ValueError(f"default thresholds must be an object with keys among {THRESHOLD_INPUTS}, got {values!r}")
    return Thresholds(**values)
