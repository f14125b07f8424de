"""Settings of a training run (torch-free, so the CLI can build its parser without torch).

The defaults are the small recipe the demo models were trained with (width 0.25, AdamW, poly
decay, 128 x 256 crops); `panoptic_ros.training.presets` holds the five papers' Cityscapes recipes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("poly", "multistep")


@dataclass
class TrainConfig:
    """Everything a training run needs; saved next to its checkpoints."""

    model: str
    output_dir: str
    width_mult: float = 0.25
    backbone: str | None = None  # None: the network's own (resnet18 for psn, resnet50 otherwise)
    steps: int = 1000
    batch_size: int = 8  # over all processes, as papers state it; each of N processes takes batch_size / N
    crop: tuple[int, int] = (128, 256)  # (height, width), multiples of 128
    scale: tuple[float, float] = (0.5, 1.25)  # scale jitter range
    optimizer: str = "adamw"
    lr: float = 2e-3
    min_lr: float = 0.0  # poly decays from lr to min_lr
    backbone_lr_mult: float = 1.0  # the backbone's learning rate is lr x this
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    schedule: str = "poly"
    poly_power: float = 0.9
    milestones: tuple[int, ...] = ()  # multistep: steps at which the learning rate is multiplied by gamma
    gamma: float = 0.1
    warmup_steps: int = 50
    warmup_factor: float = 0.001  # the warm-up ramps linearly from lr x warmup_factor to lr
    clip_grad_norm: float = 10.0  # clip the gradient's norm to this; 0: no clipping
    freeze_backbone_bn: bool = False  # backbone batch norm: running statistics and affine fixed
    sync_bn: bool = False  # batch statistics over all processes under DDP (CUDA)
    amp: bool = True  # used on CUDA only
    eval_every: int = 0  # steps between evaluations; 0: only at the end
    checkpoint_every: int = 200
    time_limit_s: float = 0.0  # stop (and save) after this many seconds; 0: no limit
    seed: int = 0
    imagenet_weights: str | None = None  # torchvision ResNet .pth for the backbone
    forward_options: dict = field(default_factory=dict)  # method options of training_forward
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.crop = tuple(int(v) for v in self.crop)
        self.scale = tuple(float(v) for v in self.scale)
        self.milestones = tuple(int(v) for v in self.milestones)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; expected one of {', '.join(SCHEDULES)}")
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "backbone_lr_mult", "poly_power", "gamma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr], got {self.min_lr}")
        if self.warmup_steps < 0 or not 0 < self.warmup_factor <= 1:
            raise ValueError(f"warm-up needs steps >= 0 and a factor in (0, 1], got {self.warmup_steps}, "
                             f"{self.warmup_factor}")
        if self.clip_grad_norm < 0:
            raise ValueError(f"clip_grad_norm must be >= 0 (0: off), got {self.clip_grad_norm}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"weight_decay must be >= 0 and momentum in [0, 1), got {self.weight_decay}, "
                             f"{self.momentum}")
        milestones_valid = bool(self.milestones) and list(self.milestones) == sorted(set(self.milestones)) and all(
            0 < m < self.steps for m in self.milestones)
        if self.schedule == "multistep" and not milestones_valid:
            raise ValueError(f"the multistep schedule needs milestones that increase strictly and lie in "
                             f"(0, steps={self.steps}), got {list(self.milestones)}")
        if len(self.crop) != 2 or any(v < 128 or v % 128 for v in self.crop):
            raise ValueError(f"crop must be (height, width), multiples of 128, got {self.crop}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {self.scale}")


def per_process_batch(batch_size: int, world_size: int) -> int:
    """Images per process when `world_size` processes share a batch of `batch_size`."""
    if batch_size % world_size:
        raise ValueError(f"batch size {batch_size} does not divide among {world_size} processes")
    return batch_size // world_size
