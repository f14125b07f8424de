"""Evaluation and replay reports: metrics JSON, a Markdown page, latency and PQ charts, overlays.

`write_report` takes what a run measured (PQ result if there was ground truth, per-stage latencies,
side-by-side overlay images, skipped-frame counts, free-form run info) and writes into one folder:

    metrics.json            everything below as numbers
    report.md               run info, averages, per-class table, latency percentiles, links
    latency_histogram.png   per-stage latency histograms
    pq_per_class.png        PQ / SQ / RQ per class (only with ground truth)
    id_switches_per_frame.png   identity switches per frame (only with tracking scored: STQ, AQ per class)
    overlays/NNN.jpg        image | ground truth | prediction

Charts use matplotlib's object API (Figure + Agg canvas), so no global backend is touched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from panoptic_ros.classes import LabelSet
from panoptic_ros.evaluation.pq import PQResult
from panoptic_ros.tracking.stq import STQResult

PERCENTILES = (50, 90, 99)
PANEL_TITLES = ("image", "ground truth", "prediction")


def latency_summary(latencies_ms: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """Per stage: count, mean, p50, p90, p99 and max in milliseconds (stages with no samples left out)."""
    summary = {}
    for stage, samples in latencies_ms.items():
        values = np.asarray(samples, dtype=np.float64)
        if values.size == 0:
            continue
        p50, p90, p99 = np.percentile(values, PERCENTILES)
        summary[stage] = {"count": int(values.size), "mean": float(values.mean()), "p50": float(p50),
                          "p90": float(p90), "p99": float(p99), "max": float(values.max())}
    return summary


def side_by_side(image: np.ndarray, gt_panoptic: np.ndarray | None, pred_panoptic: np.ndarray, label_set: LabelSet,
                 label_divisor: int, panel_width: int = 640, alpha: float = 0.6) -> np.ndarray:
    """One RGB strip: the image, the ground truth (when given) and the prediction, each blended on the image.

    Panoptic maps are pipeline id maps (class * label_divisor + instance, -1 void) of the image's size.
    Each panel is scaled to `panel_width` pixels wide and titled.
    """
    import cv2

    from panoptic_ros.imaging import overlay_image, segment_colors

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB image uint8 (H, W, 3), got {image.dtype} {image.shape}")
    panels = [image]
    for name, panoptic in (("ground truth", gt_panoptic), ("prediction", pred_panoptic)):
        if panoptic is None:
            continue
        panoptic = np.asarray(panoptic)
        if panoptic.shape != image.shape[:2]:
            raise ValueError(f"{name} map is {panoptic.shape} but the image is {image.shape[:2]}; they must match")
        void = panoptic < 0
        semantic = np.where(void, 255, panoptic // label_divisor).astype(np.uint8)
        panels.append(overlay_image(image, segment_colors(panoptic, semantic, label_set, label_divisor), void, alpha))
    titles = PANEL_TITLES if len(panels) == 3 else (PANEL_TITLES[0], PANEL_TITLES[2])
    height = max(1, round(image.shape[0] * panel_width / image.shape[1]))
    strips = []
    for panel, title in zip(panels, titles, strict=True):
        panel = cv2.resize(panel, (panel_width, height), interpolation=cv2.INTER_AREA)
        cv2.putText(panel, title, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 4, cv2.LINE_AA)
        cv2.putText(panel, title, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
        strips.append(panel)
    return np.concatenate(strips, axis=1)


def plot_latency_histogram(latencies_ms: Mapping[str, Sequence[float]], path: Path) -> None:
    """Step histograms of every stage's latency on one axis, with each stage's p50 in the legend."""
    from matplotlib.figure import Figure

    stages = {stage: np.asarray(v, dtype=np.float64) for stage, v in latencies_ms.items() if len(v)}
    figure = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    axis = figure.add_subplot()
    if stages:
        low = min(v.min() for v in stages.values())
        high = max(v.max() for v in stages.values())
        bins = np.linspace(0.98 * low, 1.02 * high + 1e-6, 60)
        for stage, values in stages.items():
            axis.hist(values, bins=bins, histtype="step", linewidth=1.5,
                      label=f"{stage} (p50 {np.percentile(values, 50):.1f} ms)")
        axis.legend(loc="upper right", fontsize=8)
    axis.set_xlabel("latency per frame (ms)")
    axis.set_ylabel("frames")
    axis.set_title("Latency per stage")
    figure.savefig(path)


def plot_pq_per_class(result: PQResult, path: Path, label_set: LabelSet | None = None) -> None:
    """Horizontal bars of PQ per class present, with SQ and RQ as markers; class colors from `label_set`."""
    from matplotlib.figure import Figure

    present = [c for c in result.per_class if c.pq is not None]
    figure = Figure(figsize=(8, 1.4 + 0.32 * max(len(present), 1)), dpi=100, layout="constrained")
    axis = figure.add_subplot()
    rows = np.arange(len(present))
    colors = []
    for c in present:
        if label_set is not None and 0 <= c.category.id < label_set.num_classes:
            colors.append(tuple(v / 255 for v in label_set.colors[c.category.id]))
        else:
            colors.append("tab:orange" if c.category.isthing else "tab:blue")
    axis.barh(rows, [c.pq for c in present], color=colors, edgecolor="black", linewidth=0.5, label="PQ")
    axis.scatter([c.sq for c in present], rows, marker="|", color="black", s=120, label="SQ")
    axis.scatter([c.rq for c in present], rows, marker="x", color="dimgray", label="RQ")
    axis.set_yticks(rows, [f"{c.category.name} ({'thing' if c.category.isthing else 'stuff'})" for c in present])
    axis.invert_yaxis()
    axis.set_xlim(0, 100)
    axis.set_xlabel("%")
    pq_all = f"{result.all.pq:.1f}" if result.all.pq is not None else "-"
    axis.set_title(f"PQ per class (all: {pq_all}, {result.num_frames} frames)")
    figure.legend(loc="outside right upper", fontsize=8)
    figure.savefig(path)


def write_report(directory: str | Path, *, result: PQResult | None, latencies_ms: Mapping[str, Sequence[float]],
                 overlays: Sequence[np.ndarray] = (), skipped: Mapping[str, int] | None = None,
                 info: Mapping[str, object] | None = None, label_set: LabelSet | None = None,
                 tracking: tuple[STQResult, str] | None = None,
                 bags: Sequence[Mapping[str, object]] | None = None) -> dict[str, Path]:
    """Write the report folder; returns the paths written by name (metrics, markdown, charts, overlays).

    `skipped` counts frames left out by reason (e.g. {"no ground truth": 3}); `info` is shown as is
    (bag, model, backend, thresholds, ...) and must be JSON-serialisable; `bags` (a report over several
    bags) is a row per bag, shown as a table with the same keys in every row. `tracking`: the STQ result and
    where its track ids came from (tracking.evaluation.SequenceTracking.mode).
    """
    from panoptic_ros.data.formats import write_rgb
    from panoptic_ros.tracking.report import write_tracking_section

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    skipped = dict(skipped or {})
    info = dict(info or {})
    latency = latency_summary(latencies_ms)
    paths = {"metrics": directory / "metrics.json", "markdown": directory / "report.md",
             "latency_histogram": directory / "latency_histogram.png"}
    plot_latency_histogram(latencies_ms, paths["latency_histogram"])
    if result is not None:
        paths["pq_per_class"] = directory / "pq_per_class.png"
        plot_pq_per_class(result, paths["pq_per_class"], label_set)
    section = write_tracking_section(directory, *tracking, label_set) if tracking is not None else None
    if section is not None:
        paths.update(section.paths)
    overlay_paths = []
    for k, overlay in enumerate(overlays):
        overlay_paths.append(directory / "overlays" / f"{k:03d}.jpg")
        write_rgb(overlay_paths[-1], overlay)

    metrics = {"info": info, "metrics": result.to_dict() if result is not None else None,
               "tracking": section.metrics if section is not None else None,
               "latency_ms": latency, "skipped_frames": {"total": sum(skipped.values()), **skipped},
               "files": {name: path.name for name, path in paths.items()}
               | {"overlays": [str(p.relative_to(directory)) for p in overlay_paths]}}
    if bags is not None:
        metrics["bags"] = [dict(row) for row in bags]
    paths["metrics"].write_text(json.dumps(metrics, indent=1))
    paths["markdown"].write_text(_markdown(result, latency, skipped, info, paths, overlay_paths, directory,
                                           section.markdown if section is not None else [], bags))
    for k, path in enumerate(overlay_paths):
        paths[f"overlay_{k:03d}"] = path
    return paths


def _markdown(result: PQResult | None, latency: dict, skipped: dict[str, int], info: dict, paths: dict[str, Path],
              overlay_paths: list[Path], directory: Path, tracking: list[str],
              bags: Sequence[Mapping[str, object]] | None = None) -> str:
    def number(value: float | None) -> str:
        return f"{value:.1f}" if value is not None else "-"

    def cell(value: object) -> str:
        if value is None:
            return "-"
        return f"{value:.1f}" if isinstance(value, float) else str(value).replace("|", "\\|")

    lines = ["# Panoptic evaluation report", ""]
    if info:
        lines += ["| | |", "|---|---|"] + [f"| {key} | {value} |" for key, value in info.items()] + [""]
    reasons = ", ".join(f"{reason}: {count}" for reason, count in skipped.items())
    lines += [f"Skipped frames: {sum(skipped.values())}" + (f" ({reasons})" if reasons else ""), ""]
    if result is None:
        lines += ["No ground truth: latency and overlays only.", ""]
    else:
        lines += [f"## Panoptic quality ({result.num_frames} frames)", "",
                  "| | PQ | SQ | RQ | classes |", "|---|---:|---:|---:|---:|"]
        for name, average in (("All", result.all), ("Things", result.things), ("Stuff", result.stuff)):
            lines.append(f"| {name} | {number(average.pq)} | {number(average.sq)} | {number(average.rq)} "
                         f"| {average.n} |")
        lines += ["", f"mIoU: {number(result.miou)}", "", "### Per class", "",
                  "| class | kind | PQ | SQ | RQ | IoU | TP | FP | FN |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for c in result.per_class:
            lines.append(f"| {c.category.name} | {'thing' if c.category.isthing else 'stuff'} | {number(c.pq)} "
                         f"| {number(c.sq)} | {number(c.rq)} | {number(c.iou)} | {c.tp} | {c.fp} | {c.fn} |")
        lines += ["", f"![PQ per class]({paths['pq_per_class'].name})", ""]
    lines += tracking
    lines += ["## Latency (ms per frame)", "", "| stage | frames | mean | p50 | p90 | p99 | max |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for stage, s in latency.items():
        lines.append(f"| {stage} | {s['count']} | {s['mean']:.2f} | {s['p50']:.2f} | {s['p90']:.2f} | {s['p99']:.2f} "
                     f"| {s['max']:.2f} |")
    lines += ["", f"![latency histogram]({paths['latency_histogram'].name})", ""]
    if bags:
        keys = list(bags[0])
        lines += [f"## Bags ({len(bags)})", "", "| " + " | ".join(keys) + " |",
                  "|" + "|".join("---" if key in ("bag", "error") else "---:" for key in keys) + "|"]
        lines += ["| " + " | ".join(cell(row.get(key)) for key in keys) + " |" for row in bags] + [""]
    if overlay_paths:
        lines += ["## Overlays", ""] + [f"![overlay {k}]({p.relative_to(directory)})"
                                        for k, p in enumerate(overlay_paths)] + [""]
    return "\n".join(lines)
