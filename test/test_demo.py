"""The demo, shortened to a few frames, with the shipped default model: what `make demo` runs.

A synthetic street-scene bag (test-split scenes, never trained on) goes through a real panoptic_node
process with config/cpu.yaml and models/psn.onnx on ONNX Runtime; the report must be complete and its
PQ above a floor that a broken pipeline (wrong colour order, outputs matched to the wrong frames, an
untrained network) does not reach.
"""

import json
from pathlib import Path

import pytest

from panoptic_ros.cli import main

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "psn.onnx"
# Measured on these 6 frames with the shipped psn: 64.6; the same model fed BGR frames: 37.1, its outputs
# scored against the next frame's ground truth: 11.5; an untrained network: ~0. The issue asks for >= 50.
PQ_FLOOR = 50.0

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not MODEL.is_file(), reason="models/psn.onnx (the trained demo model) is not in "
                                                               "this checkout; `make demo` needs it too")]


def test_short_demo_with_the_shipped_model(tmp_path, capsys):
    report = tmp_path / "demo-psn"
    # 2 Hz leaves the node time for every frame on a busy 2-core machine.
    assert main(["demo", "--frames", "6", "--rate", "2", "--report", str(report)]) == 0

    out = capsys.readouterr().out
    assert "with psn.onnx on ONNX Runtime" in out and f"report: {report / 'report.md'}" in out
    files = sorted(str(p.relative_to(report)) for p in report.rglob("*") if p.is_file())
    assert files == ["latency_histogram.png", "metrics.json", "node.log", *(f"overlays/00{k}.jpg" for k in range(4)),
                     "pq_per_class.png", "report.md"]
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["info"]["model"] == "psn" and metrics["info"]["backend"] == "onnxruntime"
    assert metrics["info"]["frames sent"] == 6 and metrics["info"]["drop counts consistent"]
    assert metrics["metrics"]["num_frames"] >= 3
    assert metrics["metrics"]["all"]["pq"] >= PQ_FLOOR, metrics["metrics"]["all"]
