"""Settings of a training run (torch-free, so the CLI can build its parser without torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

OPTIMIZERS = ("adamw", "sgd")


@dataclass
class TrainConfig:
    """Everything a training run needs; saved next to its checkpoints."""

    model: str
    output_dir: str
    width_mult: float = 0.25
    backbone: str | None = "resnet18"
    steps: int = 1000
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    poly_power: float = 0.9
    warmup_steps: int = 50
    amp: bool = True  # used on CUDA only
    eval_every: int = 0  # steps between evaluations; 0: only at the end
    checkpoint_every: int = 200
    time_limit_s: float = 0.0  # stop (and save) after this many seconds; 0: no limit
    seed: int = 0
    imagenet_weights: str | None = None  # torchvision ResNet .pth for the backbone
    forward_options: dict = field(default_factory=dict)  # method options of training_forward
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
