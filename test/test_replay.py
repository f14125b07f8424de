"""`panoptic-ros replay` mechanics through a real panoptic_node process: frames sent, received, dropped and
processed add up, outputs are matched to ground truth by stamp, the report is complete, and bad input fails
with a clear message.

The model is a tiny untrained Panoptic SwiftNet exported to ONNX (seeded): its PQ is about 0, so quality is
checked in test_demo.py with the shipped model; here the numbers checked are the replay's own.
"""

import json
from pathlib import Path

import pytest

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.data.datasets import SYNTHETIC_SPLIT_SEEDS
from panoptic_ros.data.rosbag_io import BagError, BagFrame, write_frames
from panoptic_ros.data.synthetic import generate_scene
from panoptic_ros.evaluation.replay import END_TO_END, NodeFailed, replay

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "config" / "cpu.yaml"
HW = (128, 256)
START_NS = 1_700_000_000 * 10**9
IMAGE, GT = "/camera/image_raw", "/camera/panoptic_gt"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    import torch

    from panoptic_ros.fusion.pipeline import build_pipeline
    from panoptic_ros.runtime.export import export_onnx

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny_psn.onnx"
    return export_onnx(build_pipeline("psn", SYNTHETIC, *HW, width_mult=0.25, max_instances=16), path)


def write_bag(path: Path, count: int, rate_hz: float) -> None:
    """Synthetic test-split scenes with ground truth at `rate_hz`."""
    stamps = [START_NS + round(i * 1e9 / rate_hz) for i in range(count)]
    scenes = (generate_scene(SYNTHETIC_SPLIT_SEEDS["test"] + i, *HW) for i in range(count))
    frames = (BagFrame(stamp, scene.image, scene.panoptic(1000)) for stamp, scene in zip(stamps, scenes, strict=True))
    write_frames(path, frames)


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bag") / "street.mcap"
    write_bag(path, 8, rate_hz=10.0)
    return path


def test_replay_accounts_for_every_frame_and_evaluates_by_stamp(bag, tiny_model, tmp_path):
    report = tmp_path / "report"
    run = replay(bag, IMAGE, report, params_file=PARAMS, gt_topic=GT, model_path=tiny_model, overlays=3)

    counts = run.counts
    assert counts.sent == 8
    assert counts.consistent, counts
    assert counts.outputs == counts.processed > 0
    # Every output came back with the stamp of a frame that has ground truth, so every one was evaluated.
    assert run.result is not None and run.result.num_frames == counts.outputs
    assert 0.0 <= run.result.all.pq <= 100.0

    # End-to-end latency: one sample per output, and it includes the node's own processing of the frame.
    e2e = run.latency_ms[END_TO_END]
    assert e2e["count"] == counts.outputs
    assert run.latency_ms["total"]["count"] == counts.processed
    assert e2e["p50"] >= run.latency_ms["total"]["p50"]

    files = sorted(str(p.relative_to(report)) for p in report.rglob("*") if p.is_file())
    assert files == ["latency_histogram.png", "metrics.json", "node.log", "overlays/000.jpg", "overlays/001.jpg",
                     "overlays/002.jpg", "pq_per_class.png", "report.md"]
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["info"]["frames sent"] == 8
    assert metrics["info"]["model file"] == str(tiny_model)
    assert metrics["info"]["node exit code"] == 0
    assert metrics["metrics"]["num_frames"] == counts.outputs
    assert set(metrics["latency_ms"]) == {"queue", "convert", "resize", "inference", "publish", "total", END_TO_END}
    markdown = (report / "report.md").read_text()
    assert "| frames sent | 8 |" in markdown and f"| {END_TO_END} | {counts.outputs} |" in markdown


def test_playback_faster_than_the_node_drops_frames_and_the_counts_add_up(tmp_path, tiny_model):
    bag = tmp_path / "fast.mcap"
    write_bag(bag, 24, rate_hz=10.0)
    # 40x the recorded rate: 400 frames per second, far more than the node can run.
    run = replay(bag, IMAGE, tmp_path / "report", params_file=PARAMS, model_path=tiny_model, rate=40.0)

    counts = run.counts
    assert counts.sent == 24
    assert counts.not_processed > 0
    assert counts.not_processed == counts.lost + counts.dropped + counts.rejected + counts.failed
    assert counts.outputs == counts.processed
    assert run.result is None  # no ground-truth topic: latency and drops only
    assert not (tmp_path / "report" / "pq_per_class.png").exists()
    skipped = json.loads((tmp_path / "report" / "metrics.json").read_text())["skipped_frames"]
    assert skipped["total"] == counts.not_processed


def test_missing_topic_names_the_topics_of_the_bag(bag, tiny_model, tmp_path):
    with pytest.raises(BagError, match=r"'/camera/left'.*its topics: /camera/image_raw \(sensor_msgs/msg/Image, 8"):
        replay(bag, "/camera/left", tmp_path, params_file=PARAMS, model_path=tiny_model)
    with pytest.raises(BagError, match="ground-truth topic '/nope' is not in bag"):
        replay(bag, IMAGE, tmp_path, params_file=PARAMS, gt_topic="/nope", model_path=tiny_model)
    with pytest.raises(FileNotFoundError, match="bag not found"):
        replay(tmp_path / "missing.mcap", IMAGE, tmp_path, params_file=PARAMS, model_path=tiny_model)


def test_a_node_that_cannot_start_is_reported_with_its_log(bag, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an ONNX model")
    with pytest.raises(NodeFailed, match=r"(?s)exited with code 2.*node.log.*not a readable ONNX model"):
        replay(bag, IMAGE, tmp_path / "report", params_file=PARAMS, model_path=corrupt)


def test_a_topic_the_node_cannot_read_fails_with_its_reason(bag, tiny_model, tmp_path):
    # The ground-truth topic is a 32SC1 image: the node refuses it, and the replay says why at once.
    with pytest.raises(NodeFailed, match="cannot use the frames of this topic: rejected: unsupported encoding '32SC1'"):
        replay(bag, GT, tmp_path / "report", params_file=PARAMS, model_path=tiny_model, ready_timeout=60)


def test_demo_command_with_a_model_file(tiny_model, tmp_path, capsys):
    from panoptic_ros.cli import main

    report = tmp_path / "demo"
    assert main(["demo", "--model", str(tiny_model), "--frames", "3", "--rate", "5", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "3 synthetic street scenes (512x256, 5 Hz)" in out
    assert "PQ " in out and "latency end-to-end: p50" in out and "dropped frames:" in out
    assert f"report: {report / 'report.md'}" in out
    info = json.loads((report / "metrics.json").read_text())["info"]
    assert info["frames in bag"] == 3 and info["params file"].endswith("config/cpu.yaml")


def test_bad_demo_options_are_refused(capsys):
    from panoptic_ros.cli import main

    assert main(["demo", "--frames", "0"]) == 2
    assert main(["demo", "--model", "no_such_model"]) == 2
    err = capsys.readouterr().err
    assert "--frames must be positive, got 0" in err
    assert "model 'no_such_model': no file no_such_model.onnx" in err
