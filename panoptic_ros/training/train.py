"""The training loop shared by all five networks.

One step: a batch of samples (image, semantic, instance) -> targets of the network's method ->
training forward -> the method's loss -> optimiser step under a polynomial learning-rate decay.
The same loop runs on one CPU, one GPU (with AMP) or several GPUs through torch DDP (`torchrun`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from panoptic_ros.classes import LabelSet
from panoptic_ros.networks import IMAGENET_MEAN, IMAGENET_STD, PanopticNetwork, build_network
from panoptic_ros.networks.checkpoint import save_checkpoint
from panoptic_ros.training.config import TrainConfig
from panoptic_ros.training.losses import compute_loss, training_forward
from panoptic_ros.training.targets import build_targets


def poly_lr_factor(step: int, progress: float, power: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then (1 - progress)^power, as in DeepLab and the five papers.

    `progress` in [0, 1] is the fraction of the run's budget used: steps, or time when the run has a
    time limit and that runs out first, so a time-limited run still decays to zero.
    """
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1.0 - progress) ** power


def normalize(images: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) RGB -> float normalised as the pipeline does it."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


class TrainingStep(nn.Module):
    """Wraps a network so that DDP sees the whole training forward (FPSNet's and SPINet's second
    stages run inside it), not only network.forward."""

    def __init__(self, network: PanopticNetwork, options: dict) -> None:
        super().__init__()
        self.network = network
        self.options = options

    def forward(self, images: Tensor, targets: dict) -> dict:
        return training_forward(self.network, images, targets, **self.options)


@dataclass
class Distributed:
    """This process's place in a torchrun job (world of one without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Distributed:
        if "WORLD_SIZE" not in os.environ:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _device(dist: Distributed) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def train(config: TrainConfig, label_set: LabelSet, batches: Iterator[dict],
          evaluate: Callable[[PanopticNetwork], dict] | None = None, resume: str | None = None,
          progress: bool = True) -> dict:
    """Run `config.steps` optimiser steps on `batches` (dicts of image uint8 (B,3,H,W), semantic and
    instance int64 (B,H,W)); returns the run summary. Writes last.pt (resumable), final.pt (weights
    only) and train_log.jsonl to config.output_dir.
    """
    dist = Distributed.from_env()
    if dist.world_size > 1:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = _device(dist)
    torch.manual_seed(config.seed + dist.rank)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    network = build_network(config.model, label_set, width=config.width_mult, backbone=config.backbone)
    if config.imagenet_weights:
        from panoptic_ros.networks.backbones import load_imagenet_weights

        load_imagenet_weights(network.backbone, config.imagenet_weights)
    network.to(device).train()
    step_module: nn.Module = TrainingStep(network, config.forward_options)
    if dist.world_size > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[dist.local_rank] if device.type == "cuda" else None, find_unused_parameters=True)

    params = [p for p in network.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_step = 0
    if resume:
        start_step = _load_training_state(resume, network, optimizer, scaler)

    log_path = out / "train_log.jsonl"
    bar = _progress_bar(config.steps, start_step, progress and dist.is_main)
    started = time.monotonic()
    summary: dict = {"config": asdict(config), "evaluations": []}
    step = start_step
    while step < config.steps:
        elapsed = time.monotonic() - started
        progress = step / config.steps
        if config.time_limit_s:
            progress = max(progress, elapsed / config.time_limit_s)
        lr = config.lr * poly_lr_factor(step, progress, config.poly_power, config.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = next(batches)
        images = normalize(batch["image"].to(device, non_blocking=True))
        semantic, instance = batch["semantic"].to(device), batch["instance"].to(device)
        with torch.no_grad():
            targets = build_targets(network, semantic, instance)
        with torch.autocast(device.type, enabled=use_amp):
            outputs = step_module(images, targets)
            total, terms = compute_loss(config.model, outputs, targets)
        if not torch.isfinite(total):
            raise RuntimeError(f"loss is {float(total)} at step {step}: lower --lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(params, 10.0)
        scaler.step(optimizer)
        scaler.update()
        step += 1

        if dist.is_main:
            record = {"step": step, "loss": float(total.detach()), "lr": lr,
                      **{k: float(v.detach()) for k, v in terms.items()}}
            with log_path.open("a") as log:
                log.write(json.dumps(record) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", **{k: f"{float(v):.3f}" for k, v in list(terms.items())[:3]})
        out_of_time = config.time_limit_s and time.monotonic() - started > config.time_limit_s
        if dist.is_main and (step % config.checkpoint_every == 0 or step == config.steps or out_of_time):
            _save_training_state(out / "last.pt", network, config, optimizer, scaler, step)
        if dist.is_main and evaluate and config.eval_every and step % config.eval_every == 0 and step < config.steps:
            summary["evaluations"].append({"step": step, **_evaluate(evaluate, network)})
        if out_of_time:
            break
    bar.close()

    summary["steps"] = step
    summary["train_seconds"] = round(time.monotonic() - started, 1)
    if dist.is_main:
        save_checkpoint(out / "final.pt", network, config.model,
                        extra={"train_steps": step, "train_seconds": summary["train_seconds"]})
        if evaluate:
            summary["final"] = _evaluate(evaluate, network)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if dist.world_size > 1:
        torch.distributed.destroy_process_group()
    return summary


def _evaluate(evaluate: Callable[[PanopticNetwork], dict], network: PanopticNetwork) -> dict:
    network.eval()
    with torch.no_grad():
        result = evaluate(network)
    network.train()
    return result


def _save_training_state(path: Path, network: PanopticNetwork, config: TrainConfig, optimizer, scaler,
                         step: int) -> None:
    # Optimiser state (tensors, ints, floats) keeps the file torch.load(weights_only=True)-safe.
    save_checkpoint(path, network, config.model, extra={
        "step": step, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
        "train_config": asdict(config)})


def _load_training_state(path: str, network: PanopticNetwork, optimizer, scaler) -> int:
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "optimizer", "step"):
        if key not in state:
            raise ValueError(f"{path} cannot resume training: it has no {key!r} (use last.pt of a run)")
    if state["model"] != network.model_name:
        raise ValueError(f"{path} holds a {state['model']} network, not {network.model_name}")
    network.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state.get("scaler", {}))
    return int(state["step"])


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)


def cycle(loader) -> Iterator[dict]:
    """Endless iteration over a DataLoader (a new epoch, reshuffled, each time it runs out)."""
    epoch = 0
    while True:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1
