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
from panoptic_ros.networks.checkpoint import load_network
from panoptic_ros.training.config import TrainConfig
from panoptic_ros.training.train import normalize, poly_lr_factor, train


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
    summary = train(_config(tmp_path), SYNTHETIC, itertools.repeat(batch), progress=False)
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
    train(_config(tmp_path / "a", steps=4), SYNTHETIC, itertools.repeat(batch), progress=False)
    summary = train(_config(tmp_path / "b", steps=6), SYNTHETIC, itertools.repeat(batch),
                    resume=str(tmp_path / "a" / "last.pt"), progress=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert summary["steps"] == 6 and steps == [5, 6]


def test_resume_refuses_a_weights_only_checkpoint(tmp_path, batch):
    train(_config(tmp_path / "a", steps=1), SYNTHETIC, itertools.repeat(batch), progress=False)
    with pytest.raises(ValueError, match="cannot resume"):
        train(_config(tmp_path / "b"), SYNTHETIC, itertools.repeat(batch),
              resume=str(tmp_path / "a" / "final.pt"), progress=False)


def test_poly_decay_warms_up_then_decays_to_zero():
    assert poly_lr_factor(0, 0.0, 0.9, warmup=10) == pytest.approx(0.1)
    assert poly_lr_factor(10, 0.0, 0.9, warmup=10) == 1.0
    assert poly_lr_factor(50, 0.5, 0.9, warmup=10) == pytest.approx(0.5 ** 0.9)
    assert poly_lr_factor(99, 1.2, 0.9, warmup=10) == 0.0


@pytest.mark.parametrize(("field", "value", "message"), [
    ("optimizer", "adam", "unknown optimizer"), ("steps", 0, "steps must be"), ("lr", -1.0, "lr must be")])
def test_invalid_settings_are_refused(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **{field: value})


def test_train_command_writes_a_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "lpsnet", "--steps", "2", "--batch-size", "2", "--scene-size", "128", "256",
                 "--eval-frames", "1", "--workers", "0", "--output", str(out), "--no-progress"]) == 0
    assert {p.name for p in out.iterdir()} >= {"final.pt", "last.pt", "summary.json", "train_log.jsonl"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and 0.0 <= summary["final"]["miou"] <= 100.0
    assert '"steps": 2' in capsys.readouterr().out


def test_train_command_needs_data_root_for_cityscapes(tmp_path, capsys):
    assert main(["train", "--model", "psn", "--dataset", "cityscapes", "--output", str(tmp_path)]) == 2
    assert "--data-root" in capsys.readouterr().err
