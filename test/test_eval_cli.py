"""`panoptic-ros eval` on COCO-layout folders: equal to the real Cityscapes panoptic evaluator
(cityscapesscripts, a port of panopticapi's pq_compute) and to the literal reference to 1e-9."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_eval_pq import COCO_CATEGORIES, random_frame, reference, reference_average, reference_miou

from panoptic_ros import cli
from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.data.formats import PanopticAnnotation, Segment, write_coco_panoptic
from panoptic_ros.evaluation.pq import PQAccumulator


@pytest.fixture
def folders(tmp_path, rng):
    """Random GT and prediction frames written in COCO panoptic layout; returns (paths, pairs)."""
    pairs = []
    for k in range(12):
        gt, pred = random_frame(rng, crowd_per_class=1 + k % 2)
        name = f"frame_{k:03d}.png"
        pairs.append((PanopticAnnotation(gt.ids, gt.segments, name), PanopticAnnotation(pred.ids, pred.segments, name)))
    paths = {"gt_json": tmp_path / "gt.json", "pred_json": tmp_path / "pred.json"}
    write_coco_panoptic(paths["gt_json"], None, [gt for gt, _ in pairs], COCO_CATEGORIES)
    write_coco_panoptic(paths["pred_json"], None, [pred for _, pred in pairs], COCO_CATEGORIES)
    return paths, pairs


def run_eval(paths, tmp_path, *extra):
    output = tmp_path / "metrics.json"
    code = cli.main(["eval", "--gt-json", str(paths["gt_json"]), "--pred-json", str(paths["pred_json"]),
                     "--output", str(output), *extra])
    assert code == 0
    return json.loads(output.read_text())


def assert_same_as(ours: dict, theirs: dict, tolerance: float = 1e-9) -> None:
    """`theirs`: panopticapi-style results ({All, Things, Stuff, per_class}, 0-1 scale)."""
    for ours_key, their_key in (("all", "All"), ("things", "Things"), ("stuff", "Stuff")):
        assert ours[ours_key]["n"] == theirs[their_key]["n"]
        for metric in ("pq", "sq", "rq"):
            assert ours[ours_key][metric] == pytest.approx(100 * theirs[their_key][metric], abs=tolerance)
    for entry in ours["per_class"]:
        for metric in ("pq", "sq", "rq"):
            expected = 100 * theirs["per_class"][entry["id"]][metric]
            assert (entry[metric] if entry[metric] is not None else 0.0) == pytest.approx(expected, abs=tolerance)


def test_eval_matches_the_cityscapes_evaluator(folders, tmp_path, capsys):
    evaluator = pytest.importorskip("cityscapesscripts.evaluation.evalPanopticSemanticLabeling",
                                    reason="cityscapesscripts (the reference evaluator) is not installed")
    paths, _ = folders
    ours = run_eval(paths, tmp_path)
    gt_json = json.loads(paths["gt_json"].read_text())
    pred_json = json.loads(paths["pred_json"].read_text())
    categories = {c["id"]: c for c in gt_json["categories"]}
    pred_by_image = {a["image_id"]: a for a in pred_json["annotations"]}
    pairs = [(a, pred_by_image[a["image_id"]]) for a in gt_json["annotations"]]
    # single-process entry of the reference (its multi-core wrapper only splits this list)
    stats = evaluator.pq_compute_single_core(0, pairs, str(paths["gt_json"].with_suffix("")),
                                             str(paths["pred_json"].with_suffix("")), categories)
    theirs = evaluator.average_pq(stats, categories)
    assert sum(stats[c].tp for c in categories) > 10 and sum(stats[c].fp for c in categories) > 10
    assert_same_as(ours, theirs)


def test_eval_matches_the_literal_reference_and_prints_the_table(folders, tmp_path, capsys):
    paths, pairs = folders
    ours = run_eval(paths, tmp_path)
    stats = reference(pairs)
    theirs = {name: reference_average(stats, COCO_CATEGORIES, isthing)[0]
              for name, isthing in (("All", None), ("Things", True), ("Stuff", False))}
    theirs["per_class"] = reference_average(stats, COCO_CATEGORIES, None)[1]
    assert_same_as(ours, theirs)
    ious = reference_miou(pairs, COCO_CATEGORIES)
    assert ours["num_frames"] == 12 and len(ious) > 1
    assert ours["miou"] == pytest.approx(sum(ious.values()) / len(ious), abs=1e-9)
    assert {c["id"]: c["iou"] for c in ours["per_class"] if c["iou"] is not None} == pytest.approx(ious, abs=1e-9)
    printed = capsys.readouterr().out
    assert "person" in printed and "Things" in printed and "mIoU" in printed


def test_eval_with_cityscapes_train_ids_maps_label_ids(tmp_path):
    # GT in Cityscapes label ids (road 7, car 26), prediction already in train ids (road 0, car 13)
    ids = np.zeros((16, 16), dtype=np.int64)
    ids[:8] = 7
    ids[8:, :8] = 26001
    gt = PanopticAnnotation(ids, {7: Segment(7, 7), 26001: Segment(26001, 26)}, "a.png")
    pred_ids = np.where(ids == 7, 1, np.where(ids == 26001, 2, 0))
    pred = PanopticAnnotation(pred_ids, {1: Segment(1, 0), 2: Segment(2, 13)}, "a.png")
    label_categories = [{"id": 7, "name": "road", "isthing": 0}, {"id": 26, "name": "car", "isthing": 1}]
    train_categories = [{"id": 0, "name": "road", "isthing": 0}, {"id": 13, "name": "car", "isthing": 1}]
    paths = {"gt_json": tmp_path / "gt.json", "pred_json": tmp_path / "pred.json"}
    write_coco_panoptic(paths["gt_json"], None, [gt], label_categories)
    write_coco_panoptic(paths["pred_json"], None, [pred], train_categories)
    ours = run_eval(paths, tmp_path, "--cityscapes-train-ids")
    assert ours["all"]["pq"] == 100.0 and ours["all"]["n"] == 2


def test_eval_reports_missing_predictions_and_files_clearly(folders, tmp_path, capsys):
    paths, _ = folders
    pred_json = json.loads(paths["pred_json"].read_text())
    pred_json["annotations"] = pred_json["annotations"][:-2]
    paths["pred_json"].write_text(json.dumps(pred_json))
    assert cli.main(["eval", "--gt-json", str(paths["gt_json"]), "--pred-json", str(paths["pred_json"])]) == 2
    assert "no prediction for 2 of 12 ground-truth images" in capsys.readouterr().err
    assert cli.main(["eval", "--gt-json", str(tmp_path / "nope.json"), "--pred-json", str(paths["pred_json"])]) == 2
    assert "not found" in capsys.readouterr().err


def test_bench_eval_runs_on_a_small_frame(capsys, monkeypatch):
    import argparse
    import functools
    import itertools

    from panoptic_ros import bench_report
    from panoptic_ros.evaluation import bench

    # A clock that advances 0.25 s per reading: a timed call reads it twice, so it takes 250 ms exactly, and the
    # readings count the calls (a warm-up call reads it once; one warm-up round and 2 timed rounds of 2 paths).
    readings = itertools.count()
    clock = functools.partial(next, map(lambda n: 0.25 * n, readings))
    monkeypatch.setattr(bench_report, "time_rounds", functools.partial(bench_report.time_rounds, clock=clock))
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert bench.run(parser.parse_args(["--height", "96", "--width", "160", "--instances", "6", "--repeats", "2"])) == 0
    report = json.loads(capsys.readouterr().out)
    assert next(readings) == 2 * (1 + 2 * 2)
    assert report["frame"] == "96x160" and report["repeats"] == 2
    for path in ("add", "add_id_maps"):
        assert report[path] == {"median_ms": 250.0, "min_ms": 250.0, "max_ms": 250.0}
    assert report["add_over_add_id_maps"] == 1.0
    # Both timed paths score the bench's frame pair as a fresh accumulator does, once.
    gt, pred = bench.synthetic_pair(96, 160, 6, np.random.default_rng(0))
    once = PQAccumulator.from_label_set(SYNTHETIC)
    once.add(gt, pred)
    expected = once.result().all.pq
    assert 0 < expected < 100
    assert report["pq"] == {"add": pytest.approx(expected, abs=1e-9), "add_id_maps": pytest.approx(expected, abs=1e-9)}


def test_bench_eval_peers_agree_on_pq_and_report_wall_and_cpu_time(capsys):
    """`bench eval --peers` on two small frame pairs: every installed evaluator gives our PQ."""
    import argparse

    from panoptic_ros.evaluation import bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--peers", "--frames", "2", "--rounds", "1", "--height", "64", "--width", "128",
                              "--instances", "4"])
    assert bench.run(args) == 0
    report = json.loads(capsys.readouterr().out)
    evaluators = report["evaluators"]
    assert set(evaluators) == {"panoptic-ros eval", *bench.PEERS} - set(report["not installed"])
    ours = evaluators["panoptic-ros eval"]
    assert 0 < ours["pq"] < 100 and ours["ours_vs_this"] == 1.0
    for name, evaluator in evaluators.items():
        assert evaluator["pq"] == pytest.approx(ours["pq"], abs=1e-6), name
        assert evaluator["median_s"] > 0 and evaluator["cpu_median_s"] > 0, name
