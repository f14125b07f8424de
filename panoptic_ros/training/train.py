"""The training loop shared by all five networks.

One step: a batch of samples (image, semantic, instance) -> targets of the network's method ->
training forward -> the method's loss -> optimiser step at the learning rate of the run's
schedule (`schedule.Schedule`: poly or multistep decay after a linear warm-up). The same loop runs
on one CPU, one GPU (with AMP) or several GPUs through torch DDP (`torchrun`).
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
from panoptic_ros.training.norms import freeze_batch_norm, sync_batch_norm
from panoptic_ros.training.schedule import Schedule
from panoptic_ros.training.targets import build_targets


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

    def start(self) -> None:
        if self.world_size > 1:
            torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    def wait_for_all(self) -> None:
        """Every process waits here for the others (rank 0 writes the run's files first): the process
        group is then torn down by all at once; a rank leaving while rank 0 still works aborted in gloo."""
        if self.world_size > 1:
            torch.distributed.barrier()

    def stop(self) -> None:
        if self.world_size > 1:
            torch.distributed.destroy_process_group()

    def any(self, flag: bool) -> bool:
        """True when `flag` is true on any process (all stop together when one runs out of time)."""
        if self.world_size == 1:
            return flag
        value = torch.tensor(float(flag), device="cuda" if torch.cuda.is_available() else "cpu")
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())


def _device(dist: Distributed) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def prepare_network(config: TrainConfig, label_set: LabelSet, dist: Distributed,
                    device: torch.device) -> PanopticNetwork:
    """The network of `config` on `device` in training mode: ImageNet weights, frozen or synchronised batch norm."""
    network = build_network(config.model, label_set, width=config.width_mult, backbone=config.backbone)
    if config.imagenet_weights:
        from panoptic_ros.networks.backbones import load_imagenet_weights

        load_imagenet_weights(network.backbone, config.imagenet_weights)
    if config.freeze_backbone_bn:
        freeze_batch_norm(network.backbone)
    if config.sync_bn and dist.world_size > 1:
        if device.type != "cuda":
            raise ValueError("--sync-bn needs one CUDA device per process (SyncBatchNorm has no CPU kernel)")
        sync_batch_norm(network)
    return network.to(device).train()


def build_optimizer(network: PanopticNetwork, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD over the trainable parameters; the backbone's group has lr_mult = backbone_lr_mult."""
    backbone_ids = {id(p) for p in network.backbone.parameters()}
    trainable = [p for p in network.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in backbone_ids], "lr_mult": 1.0},
              {"params": [p for p in trainable if id(p) in backbone_ids], "lr_mult": config.backbone_lr_mult}]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "adam":  # weight decay as L2 on the gradient, as Adam defines it
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]


class Budget:
    """How much of a run's budget is used: its steps, or its time limit when that runs out first."""

    def __init__(self, steps: int, time_limit_s: float, clock: Callable[[], float]) -> None:
        self.steps, self.time_limit_s, self.clock = steps, time_limit_s, clock
        self.started = clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def progress(self, step: int) -> float:
        if not self.time_limit_s:
            return step / self.steps
        return max(step / self.steps, self.elapsed() / self.time_limit_s)

    def out_of_time(self) -> bool:
        return bool(self.time_limit_s) and self.elapsed() > self.time_limit_s


class RunLog:
    """One JSON line per step in train_log.jsonl and a progress bar (main process only)."""

    def __init__(self, path: Path, total: int, initial: int, show_progress: bool) -> None:
        from tqdm import tqdm

        self.path = path
        self.bar = tqdm(total=total, initial=initial, disable=not show_progress, unit="step", dynamic_ncols=True)

    def record(self, step: int, lr: float, total: Tensor, terms: dict[str, Tensor]) -> None:
        record = {"step": step, "loss": float(total.detach()), "lr": lr,
                  **{k: float(v.detach()) for k, v in terms.items()}}
        with self.path.open("a") as log:
            log.write(json.dumps(record) + "\n")
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{record['loss']:.3f}", **{k: f"{record[k]:.3f}" for k in list(terms)[:3]})

    def close(self) -> None:
        self.bar.close()


@dataclass
class Trainer:
    """The network, its DDP wrapper, optimiser and gradient scaler of one process's run."""

    config: TrainConfig
    network: PanopticNetwork
    step_module: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device

    @classmethod
    def create(cls, config: TrainConfig, label_set: LabelSet, dist: Distributed) -> Trainer:
        device = _device(dist)
        torch.manual_seed(config.seed + dist.rank)
        network = prepare_network(config, label_set, dist, device)
        step_module: nn.Module = TrainingStep(network, config.forward_options)
        if dist.world_size > 1:
            step_module = nn.parallel.DistributedDataParallel(
                step_module, device_ids=[dist.local_rank] if device.type == "cuda" else None,
                find_unused_parameters=True)
        scaler = torch.amp.GradScaler("cuda", enabled=config.amp and device.type == "cuda")
        return cls(config, network, step_module, build_optimizer(network, config), scaler, device)

    def step(self, batch: dict, lr: float, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """One optimiser step at learning rate `lr` on `batch`; returns (total loss, weighted terms)."""
        set_learning_rate(self.optimizer, lr)
        images = normalize(batch["image"].to(self.device, non_blocking=True))
        semantic, instance = batch["semantic"].to(self.device), batch["instance"].to(self.device)
        with torch.no_grad():
            targets = build_targets(self.network, semantic, instance)
        with torch.autocast(self.device.type, enabled=self.scaler.is_enabled()):
            outputs = self.step_module(images, targets)
            total, terms = compute_loss(self.config.model, outputs, targets)
        if not torch.isfinite(total):
            raise RuntimeError(f"loss is {float(total)} at step {step}: lower --lr or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.config.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                     self.config.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return total, terms

    def save(self, path: Path, step: int) -> None:
        _save_training_state(path, self.network, self.config, self.optimizer, self.scaler, step)

    def resume(self, path: str) -> int:
        return _load_training_state(path, self.network, self.optimizer, self.scaler)


def train(config: TrainConfig, label_set: LabelSet, batches: Iterator[dict],
          evaluate: Callable[[PanopticNetwork], dict] | None = None, resume: str | None = None,
          show_progress: bool = True, clock: Callable[[], float] = time.monotonic) -> dict:
    """Run `config.steps` optimiser steps on `batches` (dicts of image uint8 (B,3,H,W), semantic and
    instance int64 (B,H,W)); returns the run summary. Writes last.pt (resumable), final.pt (weights
    only), train_log.jsonl and summary.json to config.output_dir. `clock` (seconds) times the run's
    time limit.
    """
    dist = Distributed.from_env()
    dist.start()
    try:
        trainer = Trainer.create(config, label_set, dist)
        start = trainer.resume(resume) if resume else 0
        budget = Budget(config.steps, config.time_limit_s, clock)
        summary = {"config": asdict(config), "evaluations": []}
        summary["steps"] = _run_steps(trainer, batches, start, budget, dist, evaluate, summary["evaluations"],
                                      show_progress)
        summary["train_seconds"] = round(budget.elapsed(), 1)
        if dist.is_main:
            _finish(trainer, summary, evaluate)
        dist.wait_for_all()
        return summary
    finally:
        dist.stop()


def _run_steps(trainer: Trainer, batches: Iterator[dict], step: int, budget: Budget, dist: Distributed,
               evaluate: Callable[[PanopticNetwork], dict] | None, evaluations: list, show_progress: bool) -> int:
    """The step loop from `step`: log, checkpoint and evaluate on the main process; returns the last step."""
    config, out = trainer.config, Path(trainer.config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    schedule = Schedule.from_config(config)
    log = RunLog(out / "train_log.jsonl", config.steps, step, show_progress and dist.is_main)
    while step < config.steps:
        lr = schedule(step, budget.progress(step))
        total, terms = trainer.step(next(batches), lr, step)
        step += 1
        out_of_time = dist.any(budget.out_of_time())
        if dist.is_main:
            log.record(step, lr, total, terms)
            if step % config.checkpoint_every == 0 or step == config.steps or out_of_time:
                trainer.save(out / "last.pt", step)
            if evaluate and config.eval_every and step % config.eval_every == 0 and step < config.steps:
                evaluations.append({"step": step, **_evaluate(evaluate, trainer.network)})
        if out_of_time:
            break
    log.close()
    return step


def _finish(trainer: Trainer, summary: dict, evaluate: Callable[[PanopticNetwork], dict] | None) -> None:
    """final.pt (weights only), the final evaluation and summary.json."""
    out = Path(trainer.config.output_dir)
    save_checkpoint(out / "final.pt", trainer.network, trainer.config.model,
                    extra={"train_steps": summary["steps"], "train_seconds": summary["train_seconds"]})
    if evaluate:
        summary["final"] = _evaluate(evaluate, trainer.network)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

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


def cycle(loader) -> Iterator[dict]:
    """Endless iteration over a DataLoader (a new epoch, reshuffled, each time it runs out)."""
    epoch = 0
    while True:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1
