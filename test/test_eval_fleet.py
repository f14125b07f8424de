"""eval-bag over many bags: sequential, --jobs and Ray runs give one combined report with the same numbers; a bag
that cannot be read is a row with its error and loses nothing else; decoding, inference and scoring overlap
without changing a result. Real bags (rosbags), a real exported model on ONNX Runtime, a real local Ray cluster.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from eval_cases import (
    DIVISOR,
    GT_TOPIC,
    IMAGE_TOPIC,
    direct_metrics,
    scene_frames,
    tasks_of,
    without_latency,
    write_bag_with_undecodable,
    write_folder,
)

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.cli import main
from panoptic_ros.data.rosbag_io import read_id_images, write_frames
from panoptic_ros.evaluation.bag_eval import evaluate_bag
from panoptic_ros.evaluation.fleet import (
    evaluate_bags,
    find_bags,
    overlay_shares,
)
from panoptic_ros.evaluation.ground_truth import FolderGroundTruth, TopicGroundTruth
from panoptic_ros.evaluation.overlap import ahead
from panoptic_ros.evaluation.pq import PQAccumulator
from panoptic_ros.evaluation.scoring import UNDECODABLE_IMAGE

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def bags(tmp_path_factory, backend):
    """Three bags of 3, 2 and 4 frames, the third with an undecodable message; and their frames."""
    root = tmp_path_factory.mktemp("bags")
    frames = [scene_frames(backend, 3, first_seed=0), scene_frames(backend, 2, first_seed=10),
              scene_frames(backend, 4, first_seed=20)]
    paths = [root / "a.mcap", root / "b.db3", root / "c.mcap"]
    write_frames(paths[0], frames[0])
    write_frames(paths[1], frames[1], storage="sqlite3", compressed=True)
    write_bag_with_undecodable(paths[2], frames[2], undecodable=1)
    return paths, frames


def test_combined_report_is_every_frame_together_and_a_row_per_bag(bags, backend, model_path, tmp_path):
    paths, frames = bags
    fleet = evaluate_bags(tasks_of(paths, model_path))
    per_bag = [evaluate_bag(path, IMAGE_TOPIC, backend, ground_truth=TopicGroundTruth(path, GT_TOPIC),
                            label_divisor=DIVISOR) for path in paths]
    merged = PQAccumulator.from_label_set(SYNTHETIC)
    for evaluation in per_bag:
        merged.merge(evaluation.accumulator)
    assert fleet.result.to_dict() == merged.result().to_dict()
    assert fleet.result.num_frames == 3 + 2 + 3
    rows = fleet.rows()
    assert [(r["bag"], r["frames run"], r["frames evaluated"], r["skipped"], r["error"]) for r in rows] == [
        (str(paths[0]), 3, 3, 0, None), (str(paths[1]), 2, 2, 0, None), (str(paths[2]), 3, 3, 1, None)]
    assert [r["pq"] for r in rows] == [e.result.all.pq for e in per_bag]
    # The fusion's counts per bag (the untrained network overflows its 16 slots) and in total.
    assert [(r["not converged"], r["candidates dropped"]) for r in rows] == [
        (e.not_converged, e.candidates_dropped) for e in per_bag]
    dropped = sum(e.candidates_dropped for e in per_bag)
    not_converged = sum(e.not_converged for e in per_bag)  # the untrained PSN's crowded centres (psn.py)
    assert dropped > 0

    paths_written = fleet.write_report(tmp_path / "report", SYNTHETIC)
    metrics = json.loads(paths_written["metrics"].read_text())
    assert metrics["metrics"] == merged.result().to_dict()
    assert metrics["skipped_frames"] == {"total": 1, UNDECODABLE_IMAGE: 1}
    assert metrics["latency_ms"]["total"]["count"] == 8
    assert metrics["info"]["bags"] == 3 and metrics["info"]["frames run"] == 8
    assert (metrics["info"]["frames not converged"], metrics["info"]["candidates dropped"]) == (not_converged, dropped)
    assert without_latency(metrics["bags"]) == without_latency(rows)
    markdown = paths_written["markdown"].read_text()
    assert "## Bags (3)" in markdown and f"| {paths[2]} | 3 | 3 | 1 |" in markdown


def test_jobs_give_the_sequential_report(bags, model_path, tmp_path, capsys):
    paths, _ = bags
    reports = {}
    for jobs in (1, 2):
        report = tmp_path / f"jobs{jobs}"
        code = main(["eval-bag", *map(str, paths), "--image-topic", IMAGE_TOPIC, "--gt-topic", GT_TOPIC,
                     "--onnx", str(model_path), "--device", "cpu", "--report", str(report), "--jobs", str(jobs),
                     "--overlays", "4"])
        assert code == 0, capsys.readouterr()
        reports[jobs] = json.loads((report / "metrics.json").read_text())
    one, two = reports[1], reports[2]
    assert one["metrics"] == two["metrics"] and one["metrics"]["num_frames"] == 8
    assert without_latency(one["bags"]) == without_latency(two["bags"])
    assert one["skipped_frames"] == two["skipped_frames"]
    assert len(one["files"]["overlays"]) == len(two["files"]["overlays"]) == 4
    assert two["info"]["workers"] == "2 processes"
    printed = capsys.readouterr().out
    assert f"{paths[2]}: PQ" in printed and "3 bags, 8 frames run" in printed


def test_a_bag_that_cannot_be_read_is_a_row_and_the_others_are_kept(bags, model_path, tmp_path, capsys):
    paths, _ = bags
    broken = tmp_path / "broken.mcap"
    broken.write_bytes(paths[0].read_bytes()[:300])
    missing_topic = tmp_path / "other.mcap"
    write_frames(missing_topic, [], image_topic="/other/image_raw", gt_topic="/other/gt")
    report = tmp_path / "report"
    code = main(["eval-bag", str(paths[0]), str(broken), str(missing_topic), str(paths[1]), "--image-topic",
                 IMAGE_TOPIC, "--gt-topic", GT_TOPIC, "--onnx", str(model_path), "--report", str(report)])
    assert code == 1
    assert "2 of 4 bags could not be read in full" in capsys.readouterr().err
    metrics = json.loads((report / "metrics.json").read_text())
    rows = {row["bag"]: row for row in metrics["bags"]}
    assert f"cannot open bag {broken}" in rows[str(broken)]["error"]
    assert f"is not in bag {missing_topic}; its topics: none" in rows[str(missing_topic)]["error"]
    assert rows[str(paths[0])]["error"] is None and rows[str(paths[1])]["frames run"] == 2
    good = evaluate_bags(tasks_of([paths[0], paths[1]], model_path))
    assert metrics["metrics"] == good.result.to_dict() and metrics["info"]["bags with errors"] == 2


def test_an_unreadable_ground_truth_file_names_the_bag_and_frame_and_keeps_the_frames_before(tmp_path, backend):
    bag = tmp_path / "bag.mcap"
    frames = scene_frames(backend, 3)
    write_frames(bag, frames)
    write_folder(tmp_path, frames, lambda i, frame: f"{i:04d}.png")
    (tmp_path / "panoptic" / "0001.png").write_bytes(b"not a png")
    folder = FolderGroundTruth(tmp_path / "panoptic", SYNTHETIC, match="index")
    evaluation = evaluate_bag(bag, IMAGE_TOPIC, backend, ground_truth=folder, label_divisor=DIVISOR)
    assert evaluation.bag_error.startswith(f"bag {bag}, image message 1 (stamp {frames[1].stamp_ns}): scoring failed")
    assert "0001.png" in evaluation.bag_error
    assert evaluation.result.to_dict() == direct_metrics(backend, [(frames[0].image, frames[0].ground_truth)])


def test_overlapped_stages_give_the_plain_loop_results(bags, backend):
    paths, _ = bags
    runs = [evaluate_bag(paths[2], IMAGE_TOPIC, backend, ground_truth=TopicGroundTruth(paths[2], GT_TOPIC),
                         label_divisor=DIVISOR, num_overlays=2, overlap=overlap) for overlap in (False, True)]
    plain, overlapped = runs
    assert plain.result.to_dict() == overlapped.result.to_dict()
    assert (plain.frames, plain.skipped, plain.notes) == (overlapped.frames, overlapped.skipped, overlapped.notes)
    assert all(np.array_equal(a, b) for a, b in zip(plain.overlays, overlapped.overlays, strict=True))
    assert {stage: len(v) for stage, v in plain.latencies_ms.items()} == \
        {stage: len(v) for stage, v in overlapped.latencies_ms.items()}


def test_ahead_is_bounded_ordered_and_raises_in_place():
    depth, produced, consumed = 3, [0], [0]
    lock = threading.Lock()
    gaps = []

    def numbers():
        for i in range(50):
            with lock:
                gaps.append(produced[0] - consumed[0])  # how far ahead of the consumer the producer is
                produced[0] += 1
            yield i
        raise ValueError("damage after 50")

    received = []
    with pytest.raises(ValueError, match="damage after 50"):
        for item in ahead(numbers(), depth):
            received.append(item)
            with lock:
                consumed[0] += 1
    assert received == list(range(50))
    # Items in the queue (depth) plus the one being handed over: never more ahead than that.
    assert max(gaps) <= depth + 1


def test_closing_ahead_early_stops_and_closes_its_producer():
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    stage = ahead(endless(), 2)
    assert [next(stage) for _ in range(5)] == [0, 1, 2, 3, 4]
    stage.close()
    assert closed.is_set()


def test_folders_of_bags_and_overlay_shares(tmp_path):
    (tmp_path / "b.mcap").write_bytes(b"")
    (tmp_path / "a.db3").write_bytes(b"")
    (tmp_path / "c_dir").mkdir()
    (tmp_path / "c_dir" / "metadata.yaml").write_text("rosbag2_bagfile_information: {}\n")
    (tmp_path / "notes.txt").write_text("not a bag")
    assert find_bags([tmp_path]) == [tmp_path / "a.db3", tmp_path / "b.mcap", tmp_path / "c_dir"]
    assert find_bags([tmp_path / "c_dir", tmp_path / "b.mcap"]) == [tmp_path / "c_dir", tmp_path / "b.mcap"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no bags in folder"):
        find_bags([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="bag not found"):
        find_bags([tmp_path / "nope.mcap"])
    assert overlay_shares(4, 3) == [2, 1, 1] and overlay_shares(2, 3) == [1, 1, 0] and sum(overlay_shares(7, 7)) == 7


def test_several_bags_refuse_options_for_one(bags, model_path, tmp_path, capsys):
    paths, _ = bags
    common = ["eval-bag", str(paths[0]), str(paths[1]), "--image-topic", IMAGE_TOPIC, "--onnx", str(model_path),
              "--report", str(tmp_path / "report")]
    twin = tmp_path / "twin" / paths[0].name  # another bag of the same name: its predictions bag would clash
    twin.parent.mkdir()
    twin.write_bytes(paths[0].read_bytes())
    assert main([*common[:3], str(twin), *common[3:], "--output-bag", str(tmp_path / "out")]) == 2
    assert f"--output-bag: bags {paths[0]} and {twin} would both write {tmp_path / 'out' / 'a.mcap'}" in \
        capsys.readouterr().err
    assert main([*common, "--gt-dir", str(tmp_path), "--gt-match", "index"]) == 2
    assert "with several bags match by stamp" in capsys.readouterr().err
    assert main([*common, "--jobs", "0"]) == 2
    assert "--jobs must be >= 1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    """Two synthetic drives (synth --sequence) of 4 frames each: ground truth with track ids."""
    root = tmp_path_factory.mktemp("sequences")
    paths = [root / "drive_a.mcap", root / "drive_b.db3"]
    for seed, path in zip((2_000_000_010, 2_000_000_020), paths, strict=True):
        assert main(["synth", "--sequence", "--frames", "4", "--height", "128", "--width", "256", "--seed", str(seed),
                     "--bag", str(path)]) == 0
    return paths


def test_tracking_and_predictions_of_several_bags_are_those_of_each_bag(sequences, model_path, tmp_path, capsys):
    """--tracking and --output-bag with several bags (on 2 processes): each bag tracked on its own, its STQ in its
    row, and its predictions bag in the folder, all as when the bag is evaluated alone."""
    common = ["--image-topic", IMAGE_TOPIC, "--gt-topic", GT_TOPIC, "--onnx", str(model_path), "--device", "cpu",
              "--threads", "1", "--overlays", "0", "--tracking", "--track-max-age", "5"]
    alone = []
    for i, path in enumerate(sequences):
        report, output = tmp_path / f"alone{i}", tmp_path / f"alone{i}.mcap"
        assert main(["eval-bag", str(path), *common, "--report", str(report), "--output-bag", str(output)]) == 0
        alone.append((json.loads((report / "metrics.json").read_text()), output))
    capsys.readouterr()
    folder = tmp_path / "predictions"
    assert main(["eval-bag", *map(str, sequences), *common, "--jobs", "2", "--report", str(tmp_path / "both"),
                 "--output-bag", str(folder)]) == 0
    printed = capsys.readouterr().out
    both = json.loads((tmp_path / "both" / "metrics.json").read_text())
    for row, (metrics, output) in zip(both["bags"], alone, strict=True):
        stq = metrics["tracking"]
        assert (row["stq"], row["aq"], row["id switches"]) == (stq["STQ"], stq["AQ"], stq["id_switches"])
        assert row["pq"] == metrics["metrics"]["all"]["pq"]
        written = folder / f"{Path(row['bag']).stem}.mcap"
        assert id_images(written) == id_images(output) and len(id_images(written)) == 4
    assert both["info"]["tracking"] == "tracker" and f"STQ {100 * both['bags'][1]['stq']:.1f}" in printed
    assert f"predictions written to {folder}" in printed


def id_images(path) -> list[bytes]:
    return [frame.pixels.tobytes() for frame in read_id_images(path, "/camera/panoptic/id_image")]


def test_without_ray_the_error_says_how_to_get_it(bags, model_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` raises ImportError
    with pytest.raises(RuntimeError, match=r"--ray needs Ray, which is not installed: pip install "
                                           r"'panoptic_ros\[cluster\]'"):
        evaluate_bags(tasks_of(bags[0], model_path), ray_address="auto")


def test_three_bags_through_a_local_ray_cluster_equal_the_sequential_run(bags, model_path):
    ray = pytest.importorskip("ray", reason="Ray (the cluster extra) is not installed")
    paths, _ = bags
    tasks = tasks_of(paths, model_path, num_overlays=1)
    sequential = evaluate_bags(tasks)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024**2, log_to_driver=False)
    try:
        distributed = evaluate_bags(tasks, ray_address="auto")  # joins the cluster started above
        # The longest bag as ranges of 1 frame (its 2nd message undecodable), 4 tasks on the 2 CPUs.
        ranges = evaluate_bags(tasks[2:], ray_address="auto", split_frames=1)
    finally:
        ray.shutdown()
    assert ranges.info["frame ranges"] == "4 tasks of up to 1 frames"
    assert ranges.accumulator.iou_sum.tobytes() == sequential.evaluations[2].accumulator.iou_sum.tobytes()
    assert ranges.result.to_dict() == sequential.evaluations[2].result.to_dict()
    assert without_latency(ranges.rows()) == without_latency(sequential.rows()[2:])
    assert distributed.result.to_dict() == sequential.result.to_dict()
    assert distributed.accumulator.iou_sum.tobytes() == sequential.accumulator.iou_sum.tobytes()  # bit for bit
    assert without_latency(distributed.rows()) == without_latency(sequential.rows())
    assert all(np.array_equal(a.overlays[0], b.overlays[0])
               for a, b in zip(distributed.evaluations, sequential.evaluations, strict=True))
    assert distributed.info["workers"] == "ray auto"
