"""Report writer: metrics JSON, Markdown, charts and overlays from a run's numbers."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.data.formats import from_id_map
from panoptic_ros.evaluation.pq import PQAccumulator
from panoptic_ros.evaluation.report import latency_summary, side_by_side, write_report

DIVISOR = 1000


def scene(rng: np.random.Generator, height: int = 60, width: int = 80):
    """An image and a pipeline id map: road / building stuff and two cars."""
    panoptic = np.full((height, width), 2 * DIVISOR, dtype=np.int32)  # building
    panoptic[height // 2:] = 0  # road
    panoptic[35:50, 10:30] = 6 * DIVISOR + 1
    panoptic[30:45, 50:70] = 6 * DIVISOR + 2
    panoptic[:5] = -1  # void
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return image, panoptic


def test_latency_summary_percentiles():
    summary = latency_summary({"network": list(range(1, 101)), "empty": []})
    assert list(summary) == ["network"]
    s = summary["network"]
    assert (s["count"], s["max"], s["mean"]) == (100, 100.0, 50.5)
    assert s["p50"] == pytest.approx(50.5) and s["p90"] == pytest.approx(90.1) and s["p99"] == pytest.approx(99.01)


def test_side_by_side_panels(rng):
    image, panoptic = scene(rng)
    strip = side_by_side(image, panoptic, panoptic, SYNTHETIC, DIVISOR, panel_width=160)
    assert strip.shape == (120, 480, 3) and strip.dtype == np.uint8
    assert side_by_side(image, None, panoptic, SYNTHETIC, DIVISOR, panel_width=160).shape == (120, 320, 3)
    # the prediction panel is tinted by the class colors: it differs from the plain image panel
    assert np.abs(strip[60:, 320:].astype(int) - strip[60:, :160].astype(int)).mean() > 10
    with pytest.raises(ValueError, match="must match"):
        side_by_side(image, panoptic[:10], panoptic, SYNTHETIC, DIVISOR)


def test_write_report_with_ground_truth(tmp_path, rng):
    image, panoptic = scene(rng)
    predicted = panoptic.copy()
    predicted[30:45, 50:70] = 7 * DIVISOR + 1  # one car predicted as a bicycle
    accumulator = PQAccumulator.from_label_set(SYNTHETIC)
    accumulator.add(from_id_map(panoptic, DIVISOR, SYNTHETIC), from_id_map(predicted, DIVISOR, SYNTHETIC))
    result = accumulator.result()
    latencies = {"network": rng.normal(20, 2, 50).tolist(), "total": rng.normal(25, 2, 50).tolist()}
    paths = write_report(tmp_path / "report", result=result, latencies_ms=latencies,
                         overlays=[side_by_side(image, panoptic, predicted, SYNTHETIC, DIVISOR, panel_width=160)],
                         skipped={"no ground truth": 2, "size mismatch": 1}, info={"bag": "test.mcap"},
                         label_set=SYNTHETIC)
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["metrics"]["all"]["pq"] == pytest.approx(result.all.pq)
    assert metrics["skipped_frames"] == {"total": 3, "no ground truth": 2, "size mismatch": 1}
    assert set(metrics["latency_ms"]) == {"network", "total"} and metrics["info"] == {"bag": "test.mcap"}
    assert metrics["files"]["overlays"] == ["overlays/000.jpg"]
    markdown = paths["markdown"].read_text()
    car = next(c for c in result.per_class if c.category.name == "car")
    assert f"| car | thing | {car.pq:.1f} |" in markdown and "| bicycle | thing | 0.0 |" in markdown
    assert "Skipped frames: 3 (no ground truth: 2, size mismatch: 1)" in markdown
    assert "![latency histogram](latency_histogram.png)" in markdown and "overlays/000.jpg" in markdown
    for name in ("latency_histogram", "pq_per_class"):
        chart = cv2.imread(str(paths[name]))
        assert chart is not None and chart.shape[0] > 200 and chart.std() > 5
    assert cv2.imread(str(paths["overlay_000"])).shape == (120, 480, 3)


def test_write_report_without_ground_truth(tmp_path):
    paths = write_report(tmp_path, result=None, latencies_ms={"total": [5.0, 6.0]})
    assert "pq_per_class" not in paths and json.loads(paths["metrics"].read_text())["metrics"] is None
    assert "No ground truth" in paths["markdown"].read_text()
