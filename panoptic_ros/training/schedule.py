"""Learning-rate schedules of the five papers: polynomial decay (PSN, FPSNet) and multistep decay
(RTPS, SPINet, LPSNet), each after an optional linear warm-up."""

from __future__ import annotations

from dataclasses import dataclass

from panoptic_ros.training.config import TrainConfig


@dataclass(frozen=True)
class Schedule:
    """The learning rate of optimiser step `step` (0-based) of a run of `steps` steps.

    `progress` in [0, 1] is the fraction of the run's budget used: step / steps, or the fraction of
    the time limit when a time-limited run runs out of time first, so such a run still decays
    (poly to min_lr, multistep past milestone m once progress reaches m / steps).
    """

    lr: float
    steps: int
    kind: str = "poly"
    min_lr: float = 0.0
    power: float = 0.9
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_steps: int = 0
    warmup_factor: float = 0.001

    @classmethod
    def from_config(cls, config: TrainConfig) -> Schedule:
        return cls(config.lr, config.steps, config.schedule, config.min_lr, config.poly_power, config.milestones,
                   config.gamma, config.warmup_steps, config.warmup_factor)

    def __call__(self, step: int, progress: float | None = None) -> float:
        progress = step / self.steps if progress is None else progress
        if self.kind == "poly":
            lr = self.min_lr + (self.lr - self.min_lr) * max(0.0, 1.0 - progress) ** self.power
        else:
            # Same denominator on both sides, so step == milestone compares exactly equal.
            passed = sum(progress >= milestone / self.steps for milestone in self.milestones)
            lr = self.lr * self.gamma ** passed
        return lr * self.warmup(step)

    def warmup(self, step: int) -> float:
        """Linear warm-up factor: warmup_factor at step 0, rising to 1 at step warmup_steps (detectron2's rule)."""
        if step >= self.warmup_steps:
            return 1.0
        alpha = step / self.warmup_steps
        return self.warmup_factor * (1.0 - alpha) + alpha
