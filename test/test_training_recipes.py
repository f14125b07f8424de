"""Training recipes: the papers' presets, learning-rate schedules, batch-norm control, LPSNet at batch 1."""

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.cli import main
from panoptic_ros.data.datasets import SyntheticScenes
from panoptic_ros.data.torch_dataset import PanopticDataset, collate
from panoptic_ros.networks import build_network
from panoptic_ros.networks.checkpoint import load_network
from panoptic_ros.networks.fpn import PyramidPooling
from panoptic_ros.networks.layers import FixedStatsBatchNorm2d
from panoptic_ros.training.config import TrainConfig, per_process_batch
from panoptic_ros.training.norms import freeze_batch_norm, sync_batch_norm
from panoptic_ros.training.presets import PRESETS
from panoptic_ros.training.schedule import Schedule
from panoptic_ros.training.train import Distributed, build_optimizer, prepare_network, train

# The papers' Cityscapes recipes as their text states them (see presets.py for the quotes). Crop is
# (height, width); batch is the total over all GPUs.
PAPERS = {
    "psn-cityscapes": {"model": "psn", "backbone": "resnet18", "width_mult": 1.0, "optimizer": "adam", "lr": 5e-5,
                       "min_lr": 1e-7, "schedule": "poly", "steps": 90_000, "batch_size": 8, "crop": (1024, 2048),
                       "scale": (0.5, 2.0)},
    "rtps-cityscapes": {"model": "rtps", "backbone": "resnet50", "width_mult": 1.0, "lr": 0.013,
                        "weight_decay": 1e-4, "schedule": "multistep", "milestones": (36_000, 44_000), "gamma": 0.1,
                        "steps": 48_000, "batch_size": 8, "scale": (0.7, 1.3), "freeze_backbone_bn": True},
    "fpsnet-cityscapes": {"model": "fpsnet", "backbone": "resnet50", "width_mult": 1.0, "optimizer": "sgd",
                          "momentum": 0.9, "weight_decay": 1e-3, "lr": 0.01, "schedule": "poly", "poly_power": 0.9,
                          "steps": 200_000, "batch_size": 4, "crop": (512, 1024), "scale": (0.5, 1.5),
                          "warmup_steps": 0},
    "spinet-cityscapes": {"model": "spinet", "backbone": "resnet50", "width_mult": 1.0, "lr": 0.01,
                          "schedule": "multistep", "milestones": (80_000, 90_000), "steps": 95_000,
                          "batch_size": 32, "freeze_backbone_bn": True},
    "lpsnet-cityscapes": {"model": "lpsnet", "backbone": "resnet50", "width_mult": 1.0, "optimizer": "sgd",
                          "momentum": 0.9, "weight_decay": 1e-4, "schedule": "multistep", "milestones": (9_000,),
                          "steps": 12_000, "batch_size": 16},
}
# What a paper leaves open must be declared, with our choice, in the preset.
OPEN = {"psn-cityscapes": {"poly_power", "weight_decay", "warmup_steps", "backbone_lr_mult"},
        "rtps-cityscapes": {"optimizer", "warmup_steps", "backbone_lr_mult"},
        "fpsnet-cityscapes": {"min_lr", "warmup_steps", "backbone_lr_mult"},
        "spinet-cityscapes": {"optimizer", "weight_decay", "gamma", "crop", "scale", "warmup_steps",
                              "backbone_lr_mult"},
        "lpsnet-cityscapes": {"lr", "gamma", "crop", "scale", "warmup_steps", "backbone_lr_mult"}}


def _print_config(capsys, *argv: str) -> dict:
    assert main(["train", *argv, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_each_preset_resolves_to_its_papers_recipe(capsys, name):
    shown = _print_config(capsys, "--preset", name)
    config = shown["config"]
    for field, value in PAPERS[name].items():
        assert config[field] == (list(value) if isinstance(value, tuple) else value), field
    assert set(shown["chosen"]) == OPEN[name]
    assert config["clip_grad_norm"] == 0.0  # no paper clips gradients
    assert shown["dataset"] == "cityscapes" and shown["batch_per_process"] == PAPERS[name]["batch_size"]
    assert shown["paper"] and "--imagenet-weights" in shown["notes"][0]


def test_rtps_crop_is_the_papers_rounded_to_multiples_of_128_and_says_so(capsys):
    shown = _print_config(capsys, "--preset", "rtps-cityscapes")
    assert shown["config"]["crop"] == [896, 1792] and "1800x900" in shown["paper"]
    assert "896 x 1792" in shown["deviations"][0]


def test_command_line_options_override_the_preset_and_are_listed(capsys):
    shown = _print_config(capsys, "--preset", "spinet-cityscapes", "--lr", "0.02", "--height", "256",
                          "--no-freeze-backbone-bn", "--milestones", "50000", "--dataset", "synthetic")
    config = shown["config"]
    assert config["lr"] == 0.02 and config["crop"] == [256, 1024] and config["freeze_backbone_bn"] is False
    assert config["milestones"] == [50_000] and config["steps"] == 95_000 and shown["dataset"] == "synthetic"
    assert config["extra"]["overridden"] == ["crop", "freeze_backbone_bn", "lr", "milestones"]


def test_without_a_preset_the_networks_own_backbone_is_used(capsys):
    shown = _print_config(capsys, "--model", "rtps")
    assert shown["config"]["backbone"] is None and shown["preset"] is None and shown["dataset"] == "synthetic"
    assert build_network("rtps", SYNTHETIC, width=0.25, backbone=shown["config"]["backbone"]).backbone_name == \
        "resnet50"


@pytest.mark.parametrize(("argv", "message"), [
    (["--preset", "psn-cityscapes", "--model", "rtps"], "trains psn"),
    ([], "--model or --preset"),
    (["--preset", "rtps-cityscapes", "--steps", "1000"], "milestones"),
    (["--model", "psn"], "--output")])
def test_inconsistent_command_lines_are_refused(tmp_path, capsys, argv, message):
    assert main(["train", *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_batch_is_shared_among_processes(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert _print_config(capsys, "--preset", "spinet-cityscapes")["batch_per_process"] == 4
    assert per_process_batch(16, 8) == 2
    with pytest.raises(ValueError, match="does not divide"):
        per_process_batch(8, 3)


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_two_steps_of_each_preset_at_tiny_size_end_with_a_finite_loss(tmp_path, name):
    """The preset's optimiser, schedule and batch-norm settings, shrunk to a tiny synthetic run at
    one image per step (LPSNet included: its pooling branches' batch norms keep fixed statistics)."""
    out = tmp_path / "run"
    assert main(["train", "--preset", name, "--dataset", "synthetic", "--scene-size", "128", "256",
                 "--train-frames", "2", "--eval-frames", "1", "--width-mult", "0.125", "--height", "128",
                 "--width", "256", "--steps", "2", "--milestones", "1", "--batch-size", "1", "--workers", "0",
                 "--output", str(out), "--no-progress"]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(math.isfinite(r["loss"]) for r in log)
    preset = PRESETS[name].values
    schedule = Schedule(preset["lr"], 2, preset["schedule"], preset.get("min_lr", 0.0), preset.get("poly_power", 0.9),
                        (1,), preset.get("gamma", 0.1), preset["warmup_steps"], preset.get("warmup_factor", 0.001))
    assert [r["lr"] for r in log] == pytest.approx([schedule(0), schedule(1)])
    network, info = load_network(out / "final.pt")
    assert info["backbone"] == preset["backbone"] and info["train_steps"] == 2


def test_multistep_decay_changes_exactly_at_each_milestone():
    schedule = Schedule(0.013, 48_000, "multistep", milestones=(36_000, 44_000), gamma=0.1)
    assert schedule(0) == 0.013
    assert schedule(35_999) == 0.013
    assert schedule(36_000) == pytest.approx(0.0013)
    assert schedule(43_999) == pytest.approx(0.0013)
    assert schedule(44_000) == pytest.approx(0.00013)
    assert schedule(47_999) == pytest.approx(0.00013)
    # Time-limited: past a milestone once the budget used reaches milestone / steps.
    assert schedule(10, progress=0.75) == pytest.approx(0.0013)
    assert schedule(10, progress=0.7499) == 0.013


def test_poly_decays_from_lr_to_min_lr():
    schedule = Schedule(5e-5, 90_000, "poly", min_lr=1e-7, power=0.9)
    assert schedule(0) == 5e-5
    assert schedule(45_000) == pytest.approx(1e-7 + (5e-5 - 1e-7) * 0.5 ** 0.9)
    assert schedule(90_000) == pytest.approx(1e-7)
    assert schedule(10, progress=1.5) == pytest.approx(1e-7)


def test_warmup_ramps_linearly_from_factor_to_one():
    schedule = Schedule(0.01, 12_000, "multistep", milestones=(9_000,), warmup_steps=500, warmup_factor=1 / 3)
    assert schedule(0) == pytest.approx(0.01 / 3)
    assert schedule(250) == pytest.approx(0.01 * (1 / 3 * 0.5 + 0.5))
    assert schedule(499) == pytest.approx(0.01 * (1 / 3 * (1 / 500) + 499 / 500))
    assert schedule(500) == 0.01


@pytest.fixture(scope="module")
def batch() -> dict:
    dataset = PanopticDataset(SyntheticScenes.split("train", 2, 128, 256))
    return collate([dataset[0], dataset[1]])


def _batch_norm_state(module: nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_frozen_backbone_batch_norm_keeps_statistics_and_affine_while_the_rest_trains(tmp_path, batch):
    config = TrainConfig(model="psn", output_dir=str(tmp_path), backbone="resnet18", steps=2, batch_size=2,
                         warmup_steps=0, freeze_backbone_bn=True)
    train(config, SYNTHETIC, itertools.repeat(batch), show_progress=False)
    trained, _ = load_network(tmp_path / "final.pt")  # frozen layers save as plain BatchNorm2d
    torch.manual_seed(0)
    before = build_network("psn", SYNTHETIC, width=0.25, backbone="resnet18").state_dict()
    after = trained.state_dict()
    assert before.keys() == after.keys()
    bn_keys = [k for k in after if k.startswith("backbone.") and ("bn" in k or "downsample.1" in k)]
    assert bn_keys and all(torch.equal(before[k], after[k]) for k in bn_keys if "num_batches" not in k)
    # The decoder's batch norms and the backbone's convolutions did train.
    assert not torch.equal(before["backbone.conv1.weight"], after["backbone.conv1.weight"])
    assert not torch.equal(before["semantic_head.0.running_mean"], after["semantic_head.0.running_mean"])


def test_frozen_batch_norm_ignores_train_mode_and_takes_no_gradient():
    bn = nn.BatchNorm2d(4)
    holder = nn.Sequential(bn)
    assert freeze_batch_norm(holder) == 1
    frozen = holder[0]
    holder.train()
    assert isinstance(frozen, FixedStatsBatchNorm2d) and not frozen.training
    assert not frozen.weight.requires_grad and not frozen.bias.requires_grad
    x = torch.randn(2, 4, 3, 3) * 5 + 3
    assert torch.allclose(frozen(x), bn.eval()(x))
    assert torch.equal(frozen.running_mean, torch.zeros(4))


def test_frozen_parameters_are_not_given_to_the_optimizer_and_the_backbone_gets_its_multiplier(tmp_path):
    config = TrainConfig(model="rtps", output_dir=str(tmp_path), backbone="resnet18", freeze_backbone_bn=True,
                         optimizer="sgd", lr=0.01, backbone_lr_mult=0.25)
    network = prepare_network(config, SYNTHETIC, Distributed(), torch.device("cpu"))
    optimizer = build_optimizer(network, config)
    head, backbone = optimizer.param_groups
    assert (head["lr"], head["lr_mult"], backbone["lr_mult"]) == (0.01, 1.0, 0.25)
    backbone_ids = {id(p) for p in backbone["params"]}
    assert {id(p) for p in network.backbone.parameters() if p.requires_grad} == backbone_ids
    assert id(network.backbone.bn1.weight) not in backbone_ids and {id(p) for p in head["params"]}.isdisjoint(
        id(p) for p in network.backbone.parameters())


def test_sync_bn_converts_plain_batch_norms_keeps_the_keys_and_needs_cuda_under_ddp(tmp_path):
    network = build_network("lpsnet", SYNTHETIC, width=0.25, backbone="resnet18")
    keys = network.state_dict().keys()
    converted = sync_batch_norm(network)
    assert converted > 0 and network.state_dict().keys() == keys
    assert isinstance(network.backbone.bn1, nn.SyncBatchNorm)
    assert isinstance(network.fpn.c5_context.branches[0][1], FixedStatsBatchNorm2d)  # fixed already
    config = TrainConfig(model="psn", output_dir=str(tmp_path), sync_bn=True)
    with pytest.raises(ValueError, match="CUDA"):
        prepare_network(config, SYNTHETIC, Distributed(rank=0, world_size=2), torch.device("cpu"))
    assert prepare_network(config, SYNTHETIC, Distributed(), torch.device("cpu")).backbone.bn1.__class__ is \
        nn.BatchNorm2d  # one process: nothing to synchronise


def test_lpsnet_pooling_trains_at_one_image_where_batch_statistics_do_not_exist():
    torch.manual_seed(0)
    pooling = PyramidPooling(32, 16).train()
    x = torch.randn(1, 32, 4, 8)
    out = pooling(x)
    out.sum().backward()
    assert out.shape == (1, 16, 4, 8) and pooling.branches[0][1].weight.grad is not None
    assert torch.equal(pooling.branches[0][1].running_mean, torch.zeros(16))  # statistics stay fixed
    plain = nn.Sequential(nn.Conv2d(32, 16, 1), nn.BatchNorm2d(16)).train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        plain(torch.nn.functional.avg_pool2d(x, (4, 8)))  # what the 1-bin branch did before


def test_shipped_lpsnet_checkpoint_loads_with_fixed_statistics_pooling():
    network, _ = load_network(Path(__file__).resolve().parents[1] / "models" / "lpsnet.pt")
    branch_norm = network.fpn.c5_context.branches[0][1]
    assert isinstance(branch_norm, FixedStatsBatchNorm2d)
    assert not torch.equal(branch_norm.running_var, torch.ones_like(branch_norm.running_var))  # its trained stats


def test_two_processes_share_the_batch_and_stop_together_under_ddp(tmp_path):
    """A real torchrun job on CPU (gloo): each process takes half the batch, rank 0 writes the run."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "panoptic_ros.cli", "train", "--preset", "lpsnet-cityscapes", "--dataset", "synthetic",
               "--scene-size", "128", "256", "--train-frames", "4", "--eval-frames", "1", "--width-mult", "0.125",
               "--backbone", "resnet18", "--height", "128", "--width", "256", "--steps", "2", "--milestones", "1",
               "--batch-size", "2", "--workers", "0", "--output", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]  # one writer
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["config"]["batch_size"] == 2
    assert summary["config"]["extra"]["batch_per_process"] == 1
    network, _ = load_network(out / "final.pt")
    assert network.backbone_name == "resnet18"
