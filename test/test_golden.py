"""Golden outputs and `panoptic-ros verify-engine`: written from ONNX Runtime, read back, compared."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.cli import main
from panoptic_ros.fusion.pipeline import build_pipeline
from panoptic_ros.networks.checkpoint import save_checkpoint
from panoptic_ros.pipeline_io import COL, PanopticResult, Thresholds
from panoptic_ros.runtime.backends import create_backend
from panoptic_ros.runtime.engine_cache import file_sha256
from panoptic_ros.runtime.golden import Agreement, compare_results, golden_image, load_golden, write_golden

HEIGHT, WIDTH, K = 128, 256, 20


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny PSN pipeline as ONNX and checkpoint, and its golden file."""
    out = tmp_path_factory.mktemp("golden")
    torch.manual_seed(0)
    pipeline = build_pipeline("psn", SYNTHETIC, HEIGHT, WIDTH, width_mult=0.25, max_instances=K)
    from panoptic_ros.runtime.export import export_onnx

    onnx_path = export_onnx(pipeline, out / "psn.onnx")
    save_checkpoint(out / "psn.pt", pipeline.network, "psn")
    golden = write_golden(onnx_path, out / "psn.golden.npz", thresholds=Thresholds(center_threshold=0.02))
    return onnx_path, out / "psn.pt", golden


def test_golden_round_trip(exported):
    onnx_path, _, golden_path = exported
    golden = load_golden(golden_path)
    np.testing.assert_array_equal(golden.image, golden_image(HEIGHT, WIDTH))
    assert golden.thresholds == Thresholds(center_threshold=0.02) and golden.label_divisor == 1000
    assert (golden.model_name, golden.max_instances, golden.onnx_sha256) == ("psn", K, file_sha256(onnx_path))
    fresh = create_backend("onnxruntime", onnx_path, device="cpu").run(golden.image, golden.thresholds, 1000)
    agreement = compare_results(golden.result, fresh)
    assert agreement.id_agreement == agreement.semantic_agreement == 1.0
    assert agreement.count_difference == 0 and agreement.matched == golden.result.num_instances
    assert all(v == 0.0 for v in agreement.column_max_abs.values())


def test_golden_name_is_kept_and_image_can_be_given(exported, tmp_path, rng):
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    path = write_golden(exported[0], tmp_path / "custom.golden", image=image)
    assert path == tmp_path / "custom.golden" and path.is_file()
    np.testing.assert_array_equal(load_golden(path).image, image)


def _result(panoptic, semantic, rows) -> PanopticResult:
    table = np.zeros((4, 11), np.float32)
    table[: len(rows)] = np.asarray(rows, np.float32).reshape(len(rows), 11)
    return PanopticResult(np.asarray(panoptic, np.int32), np.asarray(semantic, np.uint8), table, len(rows))


def test_compare_results_counts_pixels_and_matches_rows_by_id():
    row_a = [1, 6001, 6, 0.9, 0, 0, 1, 1, 4, 0.5, 0.5]
    row_b = [1, 5001, 5, 0.8, 2, 0, 3, 1, 4, 2.5, 0.5]
    expected = _result([[6001, 6001, 5001, 5001]] * 2, [[6, 6, 5, 5]] * 2, [row_a, row_b])
    moved = list(row_a)
    moved[COL["score"]], moved[COL["x2"]] = 0.85, 2
    actual = _result([[6001, 6001, 6001, 0]] * 2, [[6, 6, 5, 0]] * 2, [moved])
    agreement = compare_results(expected, actual)
    assert agreement.id_agreement == 0.5 and agreement.semantic_agreement == 0.75
    assert (agreement.expected_count, agreement.actual_count, agreement.matched) == (2, 1, 1)
    assert agreement.count_difference == -1
    assert agreement.column_max_abs["score"] == pytest.approx(0.05) and agreement.column_max_abs["x2"] == 1.0
    assert agreement.column_max_abs["area"] == 0.0 and "id" not in agreement.column_max_abs
    assert not agreement.passed(min_agreement=0.4)  # one instance short
    assert agreement.passed(min_agreement=0.4, max_count_difference=1)
    assert not agreement.passed(min_agreement=0.6, max_count_difference=1)
    report = agreement.report()
    assert "50.0000%" in report and "difference -1" in report and "score 0.05" in report


def test_passing_needs_both_agreements_each_at_least_the_threshold():
    def agreement(id_agreement: float, semantic_agreement: float, actual_count: int = 3) -> Agreement:
        return Agreement(id_agreement, semantic_agreement, expected_count=3, actual_count=actual_count, matched=3)

    assert agreement(0.999, 0.999).passed(0.999)  # exactly at min_agreement passes (>=)
    assert agreement(1.0, 0.999).passed(0.999) and agreement(0.999, 1.0).passed(0.999)
    assert not agreement(1.0, 0.9989).passed(0.999)  # a wrong semantic map fails though the ids agree
    assert not agreement(0.9989, 1.0).passed(0.999)
    assert not agreement(1.0, 1.0, actual_count=2).passed(0.999)  # fewer instances than the golden file
    assert not agreement(1.0, 1.0, actual_count=4).passed(0.999)
    assert agreement(1.0, 1.0, actual_count=2).passed(0.999, max_count_difference=1)


def test_compare_results_refuses_other_sizes():
    small = _result([[0, 0]], [[0, 0]], [])
    with pytest.raises(ValueError, match="sizes differ"):
        compare_results(small, replace(small, panoptic=np.zeros((2, 2), np.int32)))


def test_load_golden_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="none.npz"):
        load_golden(tmp_path / "none.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="text.npz is not a golden file"):
        load_golden(tmp_path / "text.npz")
    np.savez(tmp_path / "other.npz", image=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz is not a golden file.*missing arrays"):
        load_golden(tmp_path / "other.npz")


def test_verify_engine_passes_onnxruntime_and_torch(exported, capsys):
    onnx_path, checkpoint, golden = exported
    assert main(["verify-engine", "--backend", "onnxruntime", "--onnx", str(onnx_path), "--golden", str(golden)]) == 0
    out = capsys.readouterr().out
    assert "panoptic id agreement: 100.0000%" in out and "semantic agreement:    100.0000%" in out
    assert "onnxruntime on cpu (fp32), model psn, 128x256" in out and "PASS" in out
    assert main(["verify-engine", "--checkpoint", str(checkpoint), "--golden", str(golden), "--device", "cpu"]) == 0
    assert "torch on cpu" in capsys.readouterr().out


def test_verify_engine_fails_below_the_threshold(exported, tmp_path, capsys):
    onnx_path, _, golden_path = exported
    golden = dict(np.load(golden_path))
    golden["panoptic"] = golden["panoptic"].copy()
    golden["panoptic"][:4] = 123456  # 4 of 128 rows disagree: 96.9 %
    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, **golden)
    assert main(["verify-engine", "--onnx", str(onnx_path), "--golden", str(tampered)]) == 1
    out = capsys.readouterr().out
    assert "panoptic id agreement: 96.8750%" in out and "FAIL" in out
    assert main(["verify-engine", "--onnx", str(onnx_path), "--golden", str(tampered), "--min-agreement", "0.95"]) == 0


def test_verify_engine_usage_errors(exported, tmp_path, capsys):
    onnx_path, checkpoint, golden = exported
    assert main(["verify-engine", "--backend", "torch", "--onnx", str(onnx_path), "--golden", str(golden)]) == 2
    assert "--onnx runs with --backend onnxruntime or tensorrt, not torch" in capsys.readouterr().err
    assert main(["verify-engine", "--onnx", str(onnx_path), "--golden", str(tmp_path / "no.npz")]) == 2
    assert "golden file not found" in capsys.readouterr().err
    torch.manual_seed(1)
    other = build_pipeline("lpsnet", SYNTHETIC, HEIGHT, WIDTH, width_mult=0.25, max_instances=K)
    from panoptic_ros.runtime.export import export_onnx

    other_onnx = export_onnx(other, tmp_path / "lpsnet.onnx")
    assert main(["verify-engine", "--onnx", str(other_onnx), "--golden", str(golden)]) == 2
    assert "was made for model 'psn', the backend runs 'lpsnet'" in capsys.readouterr().err


def test_export_golden_then_verify_reports_full_agreement(tmp_path, capsys):
    """The issue's acceptance check (at a smaller size): export --golden, then verify-engine."""
    onnx_path, golden = tmp_path / "m.onnx", tmp_path / "g.npz"
    assert main(["export", "--model", "psn", "--height", "128", "--width", "256", "--width-mult", "0.25",
                 "--output", str(onnx_path), "--golden", str(golden)]) == 0
    assert golden.is_file() and load_golden(golden).onnx_sha256 == file_sha256(onnx_path)
    capsys.readouterr()
    assert main(["verify-engine", "--backend", "onnxruntime", "--onnx", str(onnx_path), "--golden", str(golden)]) == 0
    out = capsys.readouterr().out
    assert "panoptic id agreement: 100.0000%" in out and "PASS" in out
