"""`panoptic-ros bench fusion` on a tiny configuration: every runtime row is produced and consistent.

Times come from an injected clock (no test depends on the machine's speed): a fake clock that moves
only when the timed function runs says which calls were timed and how the medians are taken.
"""

import argparse
import functools
import json

import pytest

from panoptic_ros.fusion import bench, timing


class FakeClock:
    """Seconds that advance only by `advance`."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += ms / 1000.0


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_median_ms_times_each_iteration_after_the_warmup():
    clock, durations = FakeClock(), iter([50.0, 5.0, 1.0, 3.0])  # the first call is the warm-up
    calls = []

    def work():
        calls.append(1)
        clock.advance(next(durations))

    assert timing.median_ms(work, warmup=1, iterations=3, clock=clock) == pytest.approx(3.0)
    assert len(calls) == 4


def test_bench_times_network_fusion_and_fpsnet_head(tmp_path, capsys, monkeypatch):
    ticks = []  # clock readings

    def clock() -> float:
        ticks.append(1)
        return 0.001 * len(ticks)  # one ms per reading: each timed run is exactly 1 ms long

    monkeypatch.setattr(timing, "time_pipeline", functools.partial(timing.time_pipeline, clock=clock))
    out = tmp_path / "bench.json"
    args = parse("--models", "fpsnet", "--sizes", "128x128", "--width-mult", "0.125", "--max-instances", "8",
                 "--iterations", "2", "--warmup", "0", "--runtimes", "torch", "onnxruntime", "--json", str(out))
    assert bench.run(args) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["model"], r["size"], r["runtime"]) for r in rows] == [("fpsnet", "128x128", "torch"),
                                                                      ("fpsnet", "128x128", "onnxruntime")]
    for row in rows:  # network, fusion and FPSNet's head each timed (1 ms a run), post = fusion - head
        assert (row["network_ms"], row["fusion_ms"], row["head_ms"]) == pytest.approx((1.0, 1.0, 1.0))
        assert row["ratio"] == pytest.approx(0.0, abs=1e-9)
    assert len(ticks) == 2 * 2 * 3 * 2  # runtimes x iterations x parts x (start, end)
    assert "| fpsnet | 128x128 | onnxruntime | 1.0 | 1.0 | 1.0 | 0.0% |" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (("--models", "yolo"), "unknown models"),
    (("--sizes", "512by1024"), "size must look like 512x1024"),
    (("--iterations", "0"), "--iterations must be >= 1"),
])
def test_bench_refuses_bad_arguments(argv, message):
    with pytest.raises(ValueError, match=message):
        bench.run(parse(*argv))


def test_bench_ideal_reports_psn_pq_on_ideal_heads(capsys):
    assert bench.run(parse("--ideal", "1", "--sizes", "256x512")) == 0
    assert "| 256x512 | 1 | 100.0 | 100.0 |" in capsys.readouterr().out


def test_versus_deeplab_times_psn_and_the_straightforward_version(tmp_path, monkeypatch):
    ticks = []

    def clock() -> float:
        ticks.append(1)
        return 0.001 * len(ticks)  # each timed run is exactly 1 ms long

    monkeypatch.setattr(timing, "time_psn_versus_deeplab", functools.partial(timing.time_psn_versus_deeplab,
                                                                             clock=clock))
    out = tmp_path / "versus.json"
    args = parse("--versus-deeplab", "2", "--sizes", "128x256", "--max-instances", "8", "--iterations", "3",
                 "--warmup", "0", "--json", str(out))
    assert bench.run(args) == 0
    rows = json.loads(out.read_text())["versus_deeplab"]
    assert [(r["size"], r["frame"]) for r in rows] == [("128x256", 0), ("128x256", 1)]
    assert all(r["fusion_ms"] == r["deeplab_ms"] == pytest.approx(1.0) and r["instances"] > 0 for r in rows)
    assert len(ticks) == 2 * 2 * 3 * 2  # frames x versions x iterations x (start, stop)


def test_straightforward_panoptic_deeplab_gives_psn_fusions_ids_on_ideal_heads():
    import numpy as np
    import torch

    from panoptic_ros.classes import SYNTHETIC
    from panoptic_ros.data.synthetic import generate_scene
    from panoptic_ros.fusion.base import RuntimeThresholds
    from panoptic_ros.fusion.deeplab_postprocess import panoptic_deeplab
    from panoptic_ros.fusion.ideal_heads import ideal_psn_heads
    from panoptic_ros.fusion.psn import PSNFusion
    from panoptic_ros.pipeline_io import Thresholds

    # (At 128x256 some ideal peaks are flat-topped: the straightforward version then finds two centres.)
    scene = generate_scene(10**9, 256, 512)
    heads = {k: torch.from_numpy(v) for k, v in ideal_psn_heads(scene.semantic, scene.instance, SYNTHETIC).items()}
    expected = PSNFusion(SYNTHETIC, 100, 7)(heads, RuntimeThresholds.from_thresholds(Thresholds(min_stuff_area=0)),
                                            torch.tensor(1000, dtype=torch.int32))[0].numpy()
    ids = panoptic_deeplab(heads["semantic"][0], heads["center"][0, 0], heads["offset"][0], list(SYNTHETIC.thing_ids),
                           1000, 0, 0.1, 7, 100).numpy()
    assert len(np.unique(ids[ids % 1000 > 0])) >= 2  # the frame has instances
    # The same segments with the same classes; instances are numbered in another order (centres
    # in raster order there, by score here).
    pairs = np.unique(np.stack((ids.ravel(), expected.ravel())), axis=1)
    assert pairs.shape[1] == len(np.unique(ids)) == len(np.unique(expected))
    np.testing.assert_array_equal(ids // 1000, expected // 1000)
