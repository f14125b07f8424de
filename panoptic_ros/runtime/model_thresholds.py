"""Which fusion thresholds a loaded model runs with, and where each value comes from.

A model file carries its own default thresholds in its metadata (its paper's, fusion/model_defaults.py).
panoptic_node, eval-bag and demo run a model with those unless a parameter, option or params file
overrides one; an override stays an override whatever model is loaded. Each method uses only some of
the thresholds: the one list per model is fusion/reference/defaults.py `used_thresholds` (each fusion's
docstring names the ones it ignores, and a test checks on the shipped models that they change nothing).
An override of a threshold the model does not use changes nothing, and is reported as such.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from panoptic_ros.fusion.reference.defaults import DEFAULT_SOURCES, used_thresholds
from panoptic_ros.pipeline_io import THRESHOLD_INPUTS, Thresholds
from panoptic_ros.runtime.backends.model_info import ModelInfo

MODEL_DEFAULT = "model default"  # the value the model file's metadata gives
PROJECT_DEFAULT = "project default"  # a model file without defaults (exported before they existed)
OVERRIDE = "override"  # a parameter, option or params file gave it


def unused_thresholds(model: str) -> tuple[str, ...]:
    """The thresholds `model`'s fusion does not use (none known for a model this package does not define)."""
    if model not in DEFAULT_SOURCES:
        return ()
    used = used_thresholds(model)
    return tuple(name for name in THRESHOLD_INPUTS if name not in used)


def models_using(name: str) -> tuple[str, ...]:
    """The package's methods whose fusion uses threshold `name`."""
    return tuple(model for model in DEFAULT_SOURCES if name in used_thresholds(model))


def check_overrides(overrides: Mapping[str, float]) -> None:
    """ValueError naming the field unless every override is a known threshold within its range."""
    unknown = sorted(set(overrides) - set(THRESHOLD_INPUTS))
    if unknown:
        raise ValueError(f"unknown thresholds {', '.join(unknown)}; thresholds: {', '.join(THRESHOLD_INPUTS)}")
    Thresholds(**{**Thresholds().as_dict(), **overrides})


@dataclass(frozen=True)
class ThresholdsInForce:
    """The thresholds a model runs with, each value's source, and the thresholds it does not use."""

    model: str
    thresholds: Thresholds
    sources: dict[str, str] = field(compare=False)  # name -> MODEL_DEFAULT | PROJECT_DEFAULT | OVERRIDE
    unused: tuple[str, ...] = ()

    def source(self, name: str) -> str:
        """Where `name`'s value comes from, in words ('model default', 'override', 'not used by psn', ...)."""
        if name in self.unused:
            return f"not used by {self.model}" + (", override ignored" if self.sources[name] == OVERRIDE else "")
        return self.sources[name]

    def report(self) -> dict[str, str]:
        """name -> source (for reports and /diagnostics)."""
        return {name: self.source(name) for name in THRESHOLD_INPUTS}

    def ignored_overrides(self) -> tuple[str, ...]:
        """Overrides of thresholds this model does not use."""
        return tuple(name for name in self.unused if self.sources[name] == OVERRIDE)

    def describe(self) -> str:
        """One line: each used threshold's value and source, then the ones the model does not use."""
        used = [f"{name} {getattr(self.thresholds, name):g} ({self.sources[name]})"
                for name in THRESHOLD_INPUTS if name not in self.unused]
        line = f"thresholds of {self.model}: {', '.join(used)}"
        if self.unused:
            line += f"; not used by {self.model}: {', '.join(self.unused)}"
        return line

    def warnings(self) -> list[str]:
        """One line per override that changes nothing for this model."""
        return [f"{name} is set to {getattr(self.thresholds, name):g}, but {self.model} does not use {name}: "
                "it changes nothing for this model" for name in self.ignored_overrides()]


def model_default_thresholds(info: ModelInfo) -> tuple[Thresholds, str]:
    """The model's default thresholds and their source: its file's metadata, else the project's defaults."""
    if info.default_thresholds is not None:
        return info.default_thresholds, MODEL_DEFAULT
    return Thresholds(), PROJECT_DEFAULT


def thresholds_in_force(info: ModelInfo, overrides: Mapping[str, float]) -> ThresholdsInForce:
    """The model's defaults with `overrides` (name -> value) on top; ValueError for an unknown name or a value
    out of range."""
    check_overrides(overrides)
    defaults, default_source = model_default_thresholds(info)
    thresholds = Thresholds(**{**defaults.as_dict(), **{name: float(v) for name, v in overrides.items()}})
    sources = {name: OVERRIDE if name in overrides else default_source for name in THRESHOLD_INPUTS}
    return ThresholdsInForce(info.model_name, thresholds, sources, unused_thresholds(info.model_name))
