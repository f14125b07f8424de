"""The demo, shortened to a few frames, with the shipped default model: what `make demo` runs.

A synthetic street-drive bag (a test-split street, never trained on) goes through a real panoptic_node
process with config/cpu.yaml and models/psn.onnx on ONNX Runtime, with tracking and again without; the
report must be complete, its PQ above a floor that a broken pipeline (wrong colour order, outputs matched
to the wrong frames, an untrained network) does not reach, and AQ lower without tracking.
"""

import json
from pathlib import Path

import pytest

from panoptic_ros.cli import main

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "psn.onnx"
# Measured on the first 6 frames of the demo drive with the shipped psn: PQ 67.5 (AQ 17.2 with tracking, 4.4
# without); an untrained network: ~0. The issue asks for PQ >= 50.
PQ_FLOOR = 50.0

pytestmark = [pytest.mark.timeout(240),  # two replays: with tracking and without
              pytest.mark.skipif(not MODEL.is_file(), reason="models/psn.onnx (the trained demo model) is not in "
                                                               "this checkout; `make demo` needs it too")]


def test_short_demo_with_the_shipped_model(tmp_path, capsys):
    report = tmp_path / "demo-psn"
    # 2 Hz leaves the node time for every frame on a busy 2-core machine.
    assert main(["demo", "--frames", "6", "--rate", "2", "--report", str(report)]) == 0

    out = capsys.readouterr().out
    assert "with psn.onnx on ONNX Runtime" in out and f"report: {report / 'report.md'}" in out
    files = sorted(str(p.relative_to(report)) for p in report.rglob("*") if p.is_file())
    assert files == ["id_switches_per_frame.png", "latency_histogram.png", "metrics.json", "node.log",
                     *(f"overlays/00{k}.jpg" for k in range(4)), "pq_per_class.png", "report.md"]
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["info"]["model"] == "psn" and metrics["info"]["backend"] == "onnxruntime"
    assert metrics["info"]["frames sent"] == 6 and metrics["info"]["drop counts consistent"]
    assert metrics["metrics"]["num_frames"] >= 3
    assert metrics["metrics"]["all"]["pq"] >= PQ_FLOOR, metrics["metrics"]["all"]
    # The same drive again with tracking false: per-frame ids only, so association quality drops.
    off = json.loads((tmp_path / "demo-psn-tracking-off" / "metrics.json").read_text())
    assert "tracking true: PQ" in out and "tracking false: PQ" in out and "without tracking AQ drops by" in out
    assert metrics["tracking"]["frames"] >= 3 and off["tracking"]["frames"] >= 3
    assert off["tracking"]["AQ"] < metrics["tracking"]["AQ"], (off["tracking"], metrics["tracking"])
