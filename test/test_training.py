"""The training loop: it learns, checkpoints reload exactly, runs resume, and bad settings are refused."""

import itertools
import json

import numpy as np
import pytest
import torch

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.cli import main
from panoptic_ros.data.datasets import SyntheticScenes
from panoptic_ros.data.torch_dataset import PanopticDataset, collate
from panoptic_ros.fusion.pipeline import build_pipeline
from panoptic_ros.networks.checkpoint import load_network
from panoptic_ros.training.config import TrainConfig
from panoptic_ros.training.train import Budget, normalize, train
from panoptic_ros.training.validation import evaluate_frames, scene_frames, validation_scenes


@pytest.fixture(scope="module")
def batch() -> dict:
    dataset = PanopticDataset(SyntheticScenes.split("train", 2, 128, 256))
    return collate([dataset[0], dataset[1]])


def _config(tmp_path, **overrides) -> TrainConfig:
    values = {"model": "psn", "output_dir": str(tmp_path), "steps": 12, "batch_size": 2, "lr": 2e-3,
              "warmup_steps": 0, "checkpoint_every": 100, "seed": 0}
    values.update(overrides)
    return TrainConfig(**values)


def test_loss_goes_down_and_final_checkpoint_reloads_to_identical_outputs(tmp_path, batch):
    torch.set_num_threads(2)
    summary = train(_config(tmp_path), SYNTHETIC, itertools.repeat(batch), show_progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert summary["steps"] == 12 and len(losses) == 12
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses

    network, info = load_network(tmp_path / "final.pt")
    assert info["model"] == "psn" and info["train_steps"] == 12
    again, _ = load_network(tmp_path / "last.pt")
    images = normalize(batch["image"])
    with torch.no_grad():
        first, second = network(images), again(images)
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_resume_continues_from_the_saved_step(tmp_path, batch):
    train(_config(tmp_path / "a", steps=4), SYNTHETIC, itertools.repeat(batch), show_progress=False)
    summary = train(_config(tmp_path / "b", steps=6), SYNTHETIC, itertools.repeat(batch),
                    resume=str(tmp_path / "a" / "last.pt"), show_progress=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert summary["steps"] == 6 and steps == [5, 6]


def test_resume_refuses_a_weights_only_checkpoint(tmp_path, batch):
    train(_config(tmp_path / "a", steps=1), SYNTHETIC, itertools.repeat(batch), show_progress=False)
    with pytest.raises(ValueError, match="cannot resume"):
        train(_config(tmp_path / "b"), SYNTHETIC, itertools.repeat(batch),
              resume=str(tmp_path / "a" / "final.pt"), show_progress=False)


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_time_limited_run_decays_by_time_and_stops_when_time_is_up(tmp_path, batch):
    clock = FakeClock()

    def batches():
        for _ in range(100):
            clock.now += 30.0  # every step takes 30 s of the 100 s limit
            yield batch

    summary = train(_config(tmp_path, steps=100, time_limit_s=100.0), SYNTHETIC, batches(), show_progress=False,
                    clock=clock)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    # Step 1 starts at 0 s, step 2 at 30 s, ...: poly over time, not over the 100-step budget; after
    # step 4 (120 s > 100 s) the run stops and saves.
    assert summary["steps"] == 4
    assert lrs == pytest.approx([2e-3 * (1 - t) ** 0.9 for t in (0.0, 0.3, 0.6, 0.9)])
    assert (tmp_path / "last.pt").is_file()


def test_budget_progress_is_the_larger_of_steps_and_time():
    clock = FakeClock()
    budget = Budget(steps=10, time_limit_s=0.0, clock=clock)
    clock.now += 1e6
    assert budget.progress(5) == 0.5 and not budget.out_of_time()
    budget = Budget(steps=10, time_limit_s=100.0, clock=clock)
    clock.now += 100.0
    assert budget.progress(2) == 1.0 and not budget.out_of_time()  # exactly at the limit: not yet out
    clock.now += 1e-3
    assert budget.out_of_time()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("optimizer", "lamb", "unknown optimizer"), ("steps", 0, "steps must be"), ("lr", -1.0, "lr must be"),
    ("schedule", "cosine", "unknown schedule"), ("crop", (100, 256), "multiples of 128"),
    ("min_lr", 1.0, "min_lr"), ("warmup_factor", 0.0, "warm-up")])
def test_invalid_settings_are_refused(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **{field: value})


def test_train_command_writes_a_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "lpsnet", "--steps", "2", "--batch-size", "2", "--scene-size", "128", "256",
                 "--eval-frames", "1", "--workers", "0", "--output", str(out), "--no-progress"]) == 0
    assert {p.name for p in out.iterdir()} >= {"final.pt", "last.pt", "summary.json", "train_log.jsonl"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["config"]["crop"] == [128, 256]
    assert '"steps": 2' in capsys.readouterr().out
    # The final evaluation is of the trained network on the held-out frames: re-evaluating final.pt agrees.
    network, _ = load_network(out / "final.pt")
    pipeline = build_pipeline("lpsnet", SYNTHETIC, 128, 256, network=network)
    again = evaluate_frames(pipeline.run, scene_frames(validation_scenes(1, 128, 256)), SYNTHETIC).to_dict()
    assert summary["final"]["miou"] == pytest.approx(again["miou"]) and summary["final"]["all"] == again["all"]


def test_train_command_needs_data_root_for_cityscapes(tmp_path, capsys):
    assert main(["train", "--model", "psn", "--dataset", "cityscapes", "--output", str(tmp_path)]) == 2
    assert "--data-root" in capsys.readouterr().err
