"""The tracking part of an evaluation report: STQ, AQ, SQ, identity switches, AQ per class, and a plot of the
identity switches per frame (evaluation.report.write_report calls `write_tracking_section`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from panoptic_ros.classes import LabelSet
from panoptic_ros.tracking.stq import STQResult

SWITCHES_PLOT = "id_switches_per_frame.png"


@dataclass
class TrackingSection:
    metrics: dict
    markdown: list[str]
    paths: dict[str, Path]


def write_tracking_section(directory: Path, result: STQResult, mode: str,
                           label_set: LabelSet | None = None) -> TrackingSection:
    """Write the identity-switch plot into `directory`; the section's metrics and Markdown lines."""
    names = label_set.names if label_set is not None else None
    path = directory / SWITCHES_PLOT
    plot_switches_per_frame(result, path, mode)

    def name(c: int) -> str:
        return names[c] if names is not None and c < len(names) else str(c)

    lines = [f"## Tracking ({mode}, {result.num_frames} frames)", "",
             "| STQ | AQ | SQ (mIoU) | identity switches | ground-truth tracks | predicted tracks |",
             "|---:|---:|---:|---:|---:|---:|",
             f"| {100 * result.stq:.1f} | {100 * result.aq:.1f} | {100 * result.sq:.1f} | {result.id_switches} "
             f"| {result.gt_tracks} | {result.predicted_tracks} |", "",
             "| class | AQ |", "|---|---:|"]
    lines += [f"| {name(c)} | {100 * aq:.1f} |" for c, aq in result.aq_per_class.items()]
    lines += ["", f"![identity switches per frame]({SWITCHES_PLOT})", ""]
    return TrackingSection({"mode": mode, **result.to_dict(names)}, lines, {"id_switches_per_frame": path})


def summary_line(result: STQResult, mode: str, label_set: LabelSet | None = None) -> str:
    """One line for the terminal: STQ, AQ, SQ, identity switches, AQ per class."""
    names = label_set.names if label_set is not None else ()
    per_class = ", ".join(f"{names[c] if c < len(names) else c} {100 * aq:.1f}"
                          for c, aq in result.aq_per_class.items())
    return (f"STQ {100 * result.stq:.1f}  AQ {100 * result.aq:.1f}  SQ {100 * result.sq:.1f}  identity switches "
            f"{result.id_switches}  ({mode}, {result.num_frames} frames; AQ per class: {per_class or '-'})")


def plot_switches_per_frame(result: STQResult, path: Path, mode: str) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3), dpi=100, layout="constrained")
    axis = figure.add_subplot()
    frames = np.arange(len(result.switches_per_frame))
    axis.bar(frames, result.switches_per_frame, width=0.9, color="tab:red")
    axis.set_xlabel("frame (evaluated, in order)")
    axis.set_ylabel("identity switches")
    axis.set_title(f"Identity switches per frame, {mode}: {result.id_switches} in all")
    figure.savefig(path)
