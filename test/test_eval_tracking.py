"""eval-bag --tracking: the tracker's tracks scored by STQ against a synthetic sequence's track-id ground truth,
against the per-frame ids of --tracker off, and the report's tracking section."""

import json

import numpy as np
import pytest

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.cli import main
from panoptic_ros.data.synthetic import generate_sequence
from panoptic_ros.pipeline_io import COL, INSTANCE_COLUMNS, PanopticResult
from panoptic_ros.tracking.evaluation import PER_FRAME, TRACKER, SequenceTracking, track_map

DIVISOR = 1000


def detections(gt_id_map: np.ndarray) -> PanopticResult:
    """A perfect per-frame detector: the ground truth's segments, things numbered 1..n per class by size (as a
    detector numbers by score), so ids carry no identity from frame to frame."""
    ids, areas = np.unique(gt_id_map, return_counts=True)
    panoptic = np.full(gt_id_map.shape, -1, dtype=np.int32)
    rows, count = [], {}
    for segment in ids[np.argsort(-areas, kind="stable")]:
        class_id = int(segment) // DIVISOR
        if SYNTHETIC.thing[class_id]:
            count[class_id] = count.get(class_id, 0) + 1
            new = class_id * DIVISOR + count[class_id]
        else:
            new = class_id * DIVISOR
        ys, xs = np.nonzero(gt_id_map == segment)
        panoptic[ys, xs] = new
        row = np.zeros(len(INSTANCE_COLUMNS), dtype=np.float32)
        values = {"valid": 1, "id": new, "class_id": class_id, "score": 0.9, "x1": xs.min(), "y1": ys.min(),
                  "x2": xs.max(), "y2": ys.max(), "area": len(xs), "centroid_x": xs.mean(), "centroid_y": ys.mean()}
        for name, value in values.items():
            row[COL[name]] = value
        rows.append(row)
    return PanopticResult(panoptic, np.zeros(gt_id_map.shape, np.uint8), np.array(rows), len(rows))


def test_tracking_a_perfect_detector_recovers_the_tracks():
    frames = [f.panoptic(DIVISOR) for f in generate_sequence(2_000_000_002, 20, 128, 256)]
    scores = {}
    for use_tracker in (True, False):
        tracking = SequenceTracking(SYNTHETIC, DIVISOR, use_tracker=use_tracker)
        for gt in frames:
            result = detections(gt)
            tracking.score(gt, result.panoptic, tracking.track(result))
        scores[tracking.mode] = tracking.result()
    tracked, per_frame = scores[TRACKER], scores[PER_FRAME]
    assert tracked.sq == per_frame.sq == 1.0  # the same perfect segmentation both ways
    assert tracked.aq > 0.75 and per_frame.aq < 0.5 * tracked.aq  # 0.81 and 0.35 when written
    assert tracked.id_switches < per_frame.id_switches / 2  # 29 and 92
    assert tracked.num_frames == 20 and tracked.gt_tracks == per_frame.gt_tracks > 10


def test_track_map():
    panoptic = np.array([[-1, 0, 6001], [6002, 5001, 7001]])
    assert track_map(panoptic, {6001: 12, 6002: 0, 5001: 3}).tolist() == [[0, 0, 12], [0, 3, 0]]


@pytest.fixture(scope="module")
def sequence_bag(tmp_path_factory):
    bag = tmp_path_factory.mktemp("sequence") / "seq.mcap"
    assert main(["synth", "--sequence", "--frames", "30", "--height", "256", "--width", "512", "--seed", "2000000000",
                 "--bag", str(bag)]) == 0
    return bag


def test_eval_bag_tracking_with_the_shipped_model(tmp_path, sequence_bag, capsys):
    """The issue's check: 30 frames at 256x512, shipped psn; AQ with the tracker >= 1.5 x AQ without."""
    metrics = {}
    for tracker in ("on", "off"):
        report = tmp_path / tracker
        assert main(["eval-bag", str(sequence_bag), "--image-topic", "/camera/image_raw", "--gt-topic",
                     "/camera/panoptic_gt", "--model", "psn", "--threads", "1", "--tracking", "--tracker", tracker,
                     "--overlays", "0", "--report", str(report)]) == 0
        out = capsys.readouterr().out
        assert "STQ " in out and " AQ " in out and "identity switches" in out
        metrics[tracker] = json.loads((report / "metrics.json").read_text())["tracking"]
        markdown = (report / "report.md").read_text()
        assert "## Tracking" in markdown and "| car |" in markdown
        assert (report / "id_switches_per_frame.png").stat().st_size > 0
    on, off = metrics["on"], metrics["off"]
    assert on["mode"] == TRACKER and off["mode"] == PER_FRAME
    assert on["frames"] == off["frames"] == 30 and len(on["switches_per_frame"]) == 30
    assert on["SQ"] == off["SQ"]  # tracking changes ids, never pixels
    assert on["AQ"] >= 1.5 * off["AQ"], (on["AQ"], off["AQ"])
    assert on["STQ"] > off["STQ"] and on["id_switches"] < off["id_switches"]
    assert set(on["AQ_per_class"]) <= {"person", "car", "bicycle"} and "car" in on["AQ_per_class"]


def test_eval_bag_tracking_options_are_checked(tmp_path, sequence_bag, capsys):
    common = [str(sequence_bag), "--image-topic", "/camera/image_raw", "--model", "psn", "--report", str(tmp_path)]
    assert main(["eval-bag", *common, "--tracker", "off"]) == 2
    assert "--tracker off goes with --tracking" in capsys.readouterr().err
    assert main(["eval-bag", *common, "--tracking", "--track-max-age", "-1"]) == 2
    assert "track_max_age must be an integer >= 0" in capsys.readouterr().err


def test_folder_ground_truth_brings_its_track_ids(tmp_path):
    from panoptic_ros.data import formats
    from panoptic_ros.evaluation.ground_truth import FolderGroundTruth
    from panoptic_ros.tracking.evaluation import ground_truth_tracks

    for sequence, out in ((True, tmp_path / "seq"), (False, tmp_path / "scenes")):
        assert main(["synth", *(["--sequence"] if sequence else []), "--frames", "3", "--seed", "4", "--height",
                     "64", "--width", "128", "--out", str(out)]) == 0
        _, png_dir = formats.cityscapes_panoptic_paths(out, "val")
        folder = FolderGroundTruth(png_dir, SYNTHETIC, match="index")
        frames = list(generate_sequence(4, 3, 64, 128))
        for index, frame in enumerate(frames):
            tracks = ground_truth_tracks(folder.lookup(0, index), DIVISOR, SYNTHETIC)
            if sequence:
                assert np.array_equal(tracks, frame.panoptic(DIVISOR))  # as the bag's topic has it
            else:
                assert tracks is None  # independent scenes have no tracks
    tracking = SequenceTracking(SYNTHETIC, DIVISOR)
    gt = FolderGroundTruth(png_dir, SYNTHETIC, match="index").lookup(0, 0)
    result = detections(gt.as_id_map(DIVISOR, SYNTHETIC))
    tracking.score_frame(gt, result.panoptic, tracking.track(result))
    assert tracking.result() is None and "1 frames not scored for tracking" in tracking.note
