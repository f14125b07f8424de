"""Which thresholds a model runs with and where each comes from (runtime.model_thresholds), and that the one
list of thresholds each method ignores (fusion/reference/defaults.py) is what the shipped graphs do."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from panoptic_ros.data.datasets import SYNTHETIC_SPLIT_SEEDS
from panoptic_ros.data.synthetic import generate_scene
from panoptic_ros.fusion.model_defaults import model_defaults
from panoptic_ros.pipeline_io import THRESHOLD_INPUTS, Thresholds
from panoptic_ros.runtime.backends import create_backend, read_onnx_info
from panoptic_ros.runtime.model_thresholds import (
    MODEL_DEFAULT,
    OVERRIDE,
    PROJECT_DEFAULT,
    check_overrides,
    thresholds_in_force,
    unused_thresholds,
)

MODELS = Path(__file__).resolve().parents[1] / "models"
SHIPPED = ("psn", "rtps", "fpsnet", "spinet", "lpsnet")
# A value of each threshold far from every default: if a model used the threshold, its output would change.
EXTREME = {"score_threshold": 0.0, "center_threshold": 0.0, "nms_iou": 0.05, "mask_sigma": 0.95,
           "overlap_threshold": 0.0, "min_stuff_area": 1e6}


def info_of(model: str):
    return read_onnx_info(MODELS / f"{model}.onnx")


@pytest.mark.parametrize("model", SHIPPED)
def test_shipped_files_carry_their_models_defaults(model):
    assert info_of(model).default_thresholds == model_defaults(model)


def test_defaults_sources_and_overrides():
    rtps = info_of("rtps")
    in_force = thresholds_in_force(rtps, {"nms_iou": 0.6, "center_threshold": 0.25})
    assert in_force.thresholds == replace(model_defaults("rtps"), nms_iou=0.6, center_threshold=0.25)
    assert in_force.thresholds.mask_sigma == 0.3  # the paper's sigma, not the project's 0.5
    assert in_force.sources == {name: OVERRIDE if name in ("nms_iou", "center_threshold") else MODEL_DEFAULT
                                for name in THRESHOLD_INPUTS}
    assert in_force.source("center_threshold") == "not used by rtps, override ignored"
    assert in_force.ignored_overrides() == ("center_threshold",)
    assert in_force.warnings() == ["center_threshold is set to 0.25, but rtps does not use center_threshold: it "
                                   "changes nothing for this model"]
    assert in_force.describe() == ("thresholds of rtps: score_threshold 0.3 (model default), nms_iou 0.6 (override), "
                                   "mask_sigma 0.3 (model default), overlap_threshold 0.3 (model default), "
                                   "min_stuff_area 64 (model default); not used by rtps: center_threshold")


def test_an_override_equal_to_the_default_is_still_an_override():
    spinet = info_of("spinet")
    in_force = thresholds_in_force(spinet, {"score_threshold": 0.45})
    assert in_force.thresholds == model_defaults("spinet") and in_force.source("score_threshold") == OVERRIDE


def test_a_file_without_defaults_runs_the_projects_and_says_so():
    old = replace(info_of("psn"), default_thresholds=None)
    in_force = thresholds_in_force(old, {})
    assert in_force.thresholds == Thresholds() and set(in_force.sources.values()) == {PROJECT_DEFAULT}


@pytest.mark.parametrize(("overrides", "message"), [
    ({"nms_iou": 1.0000001}, "nms_iou must be in [0.0, 1.0]"),
    ({"min_stuff_area": -1.0}, "min_stuff_area must be in"),
    ({"score_threshold": float("nan")}, "score_threshold must be a finite number"),
    ({"nms_kernel": 7.0}, "unknown thresholds nms_kernel"),
])
def test_bad_overrides_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_overrides(overrides)


def test_range_ends_are_allowed():
    check_overrides({"nms_iou": 1.0, "score_threshold": 0.0, "min_stuff_area": 1e7})


@pytest.mark.parametrize("model", SHIPPED)
def test_thresholds_a_model_does_not_use_change_nothing_in_its_graph(model):
    backend = create_backend("onnxruntime", MODELS / f"{model}.onnx", device="cpu", threads=1)
    image = generate_scene(SYNTHETIC_SPLIT_SEEDS["test"], *backend.input_hw).image
    defaults = backend.info.default_thresholds
    unused = unused_thresholds(model)
    assert unused  # every method ignores some
    moved = backend.run(image, replace(defaults, **{name: EXTREME[name] for name in unused}), 1000)
    base = backend.run(image, defaults, 1000)
    np.testing.assert_array_equal(moved.panoptic, base.panoptic)
    np.testing.assert_array_equal(moved.instances, base.instances)
