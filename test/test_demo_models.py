"""The shipped demo models (models/<name>.onnx and .pt) load and segment fresh synthetic streets."""

from pathlib import Path

import pytest

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.networks import NETWORK_NAMES
from panoptic_ros.networks.checkpoint import load_network
from panoptic_ros.pipeline_io import Thresholds
from panoptic_ros.runtime.backends import create_backend
from panoptic_ros.training.validation import evaluate_frames, scene_frames, validation_scenes

MODELS = Path(__file__).resolve().parents[1] / "models"
PQ_FLOOR = 30.0  # an untrained or broken pipeline scores about 0 here


def _shipped(name: str, suffix: str) -> Path:
    path = MODELS / f"{name}{suffix}"
    if not path.is_file():
        pytest.skip(f"{path.name} is not shipped")
    return path


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_shipped_model_beats_the_pq_floor_on_fresh_scenes(name):
    backend = create_backend("onnxruntime", _shipped(name, ".onnx"), device="cpu")
    assert backend.model_name == name and backend.label_set == SYNTHETIC
    # The synthetic test split: never seen in training, nor in the model cards' validation.
    scenes = validation_scenes(5, *backend.input_hw, split="test")
    result = evaluate_frames(lambda image: backend.run(image, Thresholds(), 1000), scene_frames(scenes), SYNTHETIC)
    assert result.all.pq > PQ_FLOOR, result.format_table()


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_shipped_checkpoint_loads_weights_only(name):
    network, info = load_network(_shipped(name, ".pt"))
    assert info["model"] == name and network.label_set == SYNTHETIC
    assert _shipped(name, ".pt").stat().st_size < 20_000_000
