"""`panoptic-ros bench fusion` on a tiny configuration: every runtime row is produced and consistent."""

import argparse
import json

import pytest

from panoptic_ros.fusion import bench


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_bench_times_network_fusion_and_fpsnet_head(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = parse("--models", "fpsnet", "--sizes", "128x128", "--width-mult", "0.125", "--max-instances", "8",
                 "--iterations", "1", "--warmup", "0", "--runtimes", "torch", "onnxruntime", "--json", str(out))
    assert bench.run(args) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["model"], r["size"], r["runtime"]) for r in rows] == [("fpsnet", "128x128", "torch"),
                                                                      ("fpsnet", "128x128", "onnxruntime")]
    for row in rows:
        assert row["network_ms"] > 0 and row["fusion_ms"] > row["head_ms"] > 0
        assert row["ratio"] == pytest.approx((row["fusion_ms"] - row["head_ms"]) / (row["network_ms"] + row["head_ms"]))
    assert "| fpsnet | 128x128 | onnxruntime |" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (("--models", "yolo"), "unknown models"),
    (("--sizes", "512by1024"), "size must look like 512x1024"),
    (("--iterations", "0"), "--iterations must be >= 1"),
])
def test_bench_refuses_bad_arguments(argv, message):
    with pytest.raises(ValueError, match=message):
        bench.run(parse(*argv))
