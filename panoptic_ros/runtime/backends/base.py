"""The one interface every runtime implements: load once, run one frame, describe itself."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from panoptic_ros.classes import LabelSet
from panoptic_ros.pipeline_io import PanopticResult, Thresholds, check_label_divisor
from panoptic_ros.runtime.backends.model_info import ModelInfo

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


def resolve_device(device: str, cuda_available: bool) -> str:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> 'cpu' or 'cuda:N' ('auto' takes CUDA where there is one)."""
    if device == "auto":
        return "cuda:0" if cuda_available else "cpu"
    if device == "cpu":
        return "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if not match:
        raise ValueError(f"unknown device {device!r}; valid: {', '.join(DEVICE_CHOICES)}")
    if not cuda_available:
        raise RuntimeError(f"device {device!r} asked for, but CUDA is not available here")
    return f"cuda:{match.group(1) or 0}"


def check_image(image: np.ndarray, input_hw: tuple[int, int]) -> None:
    """Raise ValueError unless `image` is a uint8 (H, W, 3) array of the model's input size."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    height, width = input_hw
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3) RGB, got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.shape[:2] != (height, width):
        raise ValueError(f"image is {image.shape[0]}x{image.shape[1]} (HxW) but the model takes {height}x{width}; "
                         "resize it before running the backend")


def result_from_outputs(outputs: dict[str, np.ndarray]) -> PanopticResult:
    """A PanopticResult from the graph's named outputs (NumPy arrays)."""
    return PanopticResult(panoptic=outputs["panoptic"], semantic=outputs["semantic"], instances=outputs["instances"],
                          num_instances=int(outputs["num_instances"]), converged=bool(outputs["converged"]),
                          candidates_dropped=int(outputs["candidates_dropped"]))


class Backend(ABC):
    """One loaded model on one device. Subclasses implement `_run` and set `name` and `precision`."""

    name: str = ""

    def __init__(self, info: ModelInfo, model_path: Path, device: str, precision: str) -> None:
        self.info = info
        self.model_path = Path(model_path)
        self.device = device
        self.precision = precision

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.info.input_hw

    @property
    def label_set(self) -> LabelSet:
        return self.info.label_set

    @property
    def model_name(self) -> str:
        return self.info.model_name

    @property
    def max_instances(self) -> int:
        return self.info.max_instances

    def run(self, image: np.ndarray, thresholds: Thresholds, label_divisor: int) -> PanopticResult:
        """Run the whole pipeline on one uint8 (H, W, 3) RGB frame of exactly `input_hw`."""
        check_image(image, self.input_hw)
        if not isinstance(thresholds, Thresholds):
            raise ValueError(f"thresholds must be a Thresholds, got {type(thresholds).__name__}")
        check_label_divisor(label_divisor, self.max_instances, self.label_set.num_classes)
        return self._run(image, thresholds, int(label_divisor))

    @abstractmethod
    def _run(self, image: np.ndarray, thresholds: Thresholds, label_divisor: int) -> PanopticResult:
        """Run one validated frame."""

    def describe(self) -> dict:
        """What is loaded, where, and its interface (for logs, diagnostics and `verify-engine`)."""
        return {
            "backend": self.name,
            "device": self.device,
            "precision": self.precision,
            "model_name": self.model_name,
            "model_path": str(self.model_path),
            "engine_path": None,
            "label_set": self.label_set.name,
            "num_classes": self.label_set.num_classes,
            "max_instances": self.max_instances,
            "input_hw": list(self.input_hw),
            "inputs": [s.to_dict() for s in self.info.inputs],
            "outputs": [s.to_dict() for s in self.info.outputs],
        }

