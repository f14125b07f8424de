"""`panoptic-ros replay` mechanics through a real panoptic_node process: frames sent, received, dropped and
processed add up, outputs are matched to ground truth by stamp, the report is complete, and bad input fails
with a clear message.

The model is a tiny untrained Panoptic SwiftNet exported to ONNX (seeded): its PQ is about 0, so quality is
checked in test_demo.py with the shipped model; here the numbers checked are the replay's own.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.data.datasets import SYNTHETIC_SPLIT_SEEDS
from panoptic_ros.data.rosbag_io import BagError, BagFrame, write_frames
from panoptic_ros.data.synthetic import generate_scene
from panoptic_ros.evaluation.replay import (
    END_TO_END,
    FrameCounts,
    NodeFailed,
    Recorder,
    params_file_overrides,
    replay,
    summary,
)
from panoptic_ros.runtime.backends import read_onnx_info
from panoptic_ros.runtime.model_thresholds import thresholds_in_force

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


def write_bag(path: Path, count: int, rate_hz: float, truth=None) -> None:
    """Synthetic test-split scenes at `rate_hz`, with `truth(image)` (default: the scene's labels) as ground truth."""
    stamps = [START_NS + round(i * 1e9 / rate_hz) for i in range(count)]
    scenes = (generate_scene(SYNTHETIC_SPLIT_SEEDS["test"] + i, *HW) for i in range(count))
    frames = (BagFrame(stamp, scene.image, truth(scene.image) if truth else scene.panoptic(1000))
              for stamp, scene in zip(stamps, scenes, strict=True))
    write_frames(path, frames)


@pytest.fixture(scope="module")
def bag(tmp_path_factory, tiny_model) -> Path:
    """8 frames whose ground truth is the tiny model's own prediction with the node's settings (config/cpu.yaml):
    every frame the node processes and the replay matches to its ground truth by stamp scores PQ 100."""
    from panoptic_ros.runtime.backends import create_backend

    backend = create_backend("onnxruntime", tiny_model, device="cpu")
    thresholds = thresholds_in_force(backend.info, params_file_overrides(PARAMS)).thresholds
    path = tmp_path_factory.mktemp("bag") / "street.mcap"
    write_bag(path, 8, rate_hz=10.0, truth=lambda image: backend.run(image, thresholds, 1000).panoptic)
    return path


def test_replay_accounts_for_every_frame_and_evaluates_by_stamp(bag, tiny_model, tmp_path):
    report = tmp_path / "report"
    run = replay(bag, IMAGE, report, params_file=PARAMS, gt_topic=GT, model_path=tiny_model, overlays=3)

    counts = run.counts
    assert counts.sent == 8
    assert counts.consistent, counts
    assert counts.outputs == counts.processed > 0
    # Every output came back with the stamp of a frame that has ground truth, so every one was evaluated, against
    # its own frame's ground truth (another frame's would not score 100).
    assert run.result is not None and run.result.num_frames == counts.outputs
    assert run.result.all.pq == 100.0
    present = [c for c in run.result.per_class if c.tp]
    assert present and all(c.fp == c.fn == 0 for c in run.result.per_class)

    # Latency: one end-to-end sample per output, one node sample per processed frame.
    assert run.latency_ms[END_TO_END]["count"] == counts.outputs
    assert run.latency_ms["total"]["count"] == counts.processed

    files = sorted(str(p.relative_to(report)) for p in report.rglob("*") if p.is_file())
    assert files == ["latency_histogram.png", "metrics.json", "node.log", "overlays/000.jpg", "overlays/001.jpg",
                     "overlays/002.jpg", "pq_per_class.png", "report.md"]
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["info"]["frames sent"] == 8
    assert metrics["info"]["model file"] == str(tiny_model)
    assert metrics["info"]["node exit code"] == 0
    # config/cpu.yaml sets no threshold: the node ran the model's own defaults, as its /diagnostics said.
    assert metrics["info"]["thresholds"] == thresholds_in_force(read_onnx_info(tiny_model), {}).thresholds.as_dict()
    assert metrics["info"]["threshold sources"] == {
        "center_threshold": "model default", "min_stuff_area": "model default",
        **{name: "not used by psn" for name in ("score_threshold", "nms_iou", "mask_sigma", "overlap_threshold")}}
    # The untrained network finds more centres than its 16 slots on these scenes: the bag's frames drop some.
    assert metrics["info"]["frames not converged"] == 0 and metrics["info"]["candidates dropped"] > 0
    assert metrics["metrics"]["num_frames"] == counts.outputs
    assert set(metrics["latency_ms"]) == {"queue", "convert", "resize", "inference", "tracking", "publish", "total",
                                        END_TO_END}
    markdown = (report / "report.md").read_text()
    assert "| frames sent | 8 |" in markdown and f"| {END_TO_END} | {counts.outputs} |" in markdown


def test_fast_playback_counts_add_up(tmp_path, tiny_model):
    """40x the recorded rate: the node may drop frames (how many depends on the machine); whatever it drops, its
    counters explain every frame, and the report's skipped frames are those not processed. The params file also
    sets score_threshold, which psn does not use: the replay says so."""
    bag = tmp_path / "fast.mcap"
    write_bag(bag, 24, rate_hz=10.0)
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS.read_text() + "    score_threshold: 0.9\n")
    run = replay(bag, IMAGE, tmp_path / "report", params_file=params, model_path=tiny_model, rate=40.0)
    assert run.info["threshold sources"]["score_threshold"] == "not used by psn, override ignored"
    assert run.info["thresholds"]["score_threshold"] == 0.9
    assert ("warning: the params file sets score_threshold, which psn does not use: no effect"
            in summary(run).splitlines())

    counts = run.counts
    assert counts.sent == 24
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
    assert "a 3-frame synthetic street drive (512x256, 5 Hz)" in out
    assert "PQ " in out and "latency end-to-end: p50" in out and "dropped frames:" in out
    assert f"report: {report / 'report.md'}" in out
    assert "tracking true: PQ" in out and "tracking false: PQ" in out  # the closing note: both runs
    for folder, tracking in ((report, "panoptic_node's tracker"), (tmp_path / "demo-tracking-off", "per-frame ids")):
        info = json.loads((folder / "metrics.json").read_text())["info"]
        assert info["frames in bag"] == 3 and info["params file"].endswith("config/cpu.yaml")
        assert info["tracking"].startswith(tracking)


def test_bad_demo_options_are_refused(capsys):
    from panoptic_ros.cli import main

    assert main(["demo", "--frames", "0"]) == 2
    assert main(["demo", "--model", "no_such_model"]) == 2
    err = capsys.readouterr().err
    assert "--frames must be positive, got 0" in err
    assert "model 'no_such_model': no file no_such_model.onnx" in err


def test_frame_counts_explain_drops():
    counts = FrameCounts(sent=24, received=22, processed=9, dropped=12, rejected=1, failed=0, outputs=9)
    assert (counts.lost, counts.not_processed, counts.consistent) == (2, 15, True)
    assert not FrameCounts(sent=24, received=22, processed=9, dropped=11, rejected=1, failed=0, outputs=9).consistent
    assert counts.as_dict()["frames not processed"] == 15 and counts.as_dict()["lost before the node"] == 2


def test_end_to_end_latency_is_output_time_minus_send_time():
    """The recorder's clock is injected: latencies are exact, outputs of stamps never sent are ignored."""
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    from panoptic_ros.ros.image_conversion import to_image_msg

    ticks = iter([10.0, 10.5, 10.25, 10.75, 11.0])
    recorder = Recorder(clock=lambda: next(ticks))
    recorder.mark_sent(START_NS)  # 10.0
    recorder.mark_sent(START_NS + 1)  # 10.5
    ids = np.arange(6, dtype=np.int32).reshape(2, 3)
    for stamp in (START_NS, START_NS + 7, START_NS + 1):  # at 10.25, 10.75 (not sent: ignored), 11.0
        header = Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9))
        recorder.on_output("", "id_image", to_image_msg(ids, "32SC1", header))
    assert recorder.end_to_end_ms() == [250.0, 500.0]
    assert sorted(recorder.id_images) == [START_NS, START_NS + 1]
    assert np.array_equal(recorder.id_image(START_NS + 1), ids)
