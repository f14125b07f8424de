"""Losses of the five methods behind two entry points for the training loop:

    outputs = training_forward(network, images, targets)   # network(images) plus method extras
    total, terms = compute_loss(network.model_name, outputs, targets)

`targets` come from `panoptic_ros.training.targets.build_targets`. FPSNet and SPINet need the
network during the loss computation (attention masks through the panoptic head, sampled
dynamic filters, triplet embeddings), which `training_forward` runs; for the other three it is
just `network(images)`. `terms` holds the weighted terms, which sum to `total`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from panoptic_ros.networks import PanopticNetwork
from panoptic_ros.training.losses.fpsnet import fpsnet_loss, fpsnet_training_forward
from panoptic_ros.training.losses.lpsnet import lpsnet_loss
from panoptic_ros.training.losses.psn import psn_loss
from panoptic_ros.training.losses.rtps import rtps_loss
from panoptic_ros.training.losses.spinet import spinet_loss, spinet_training_forward

_LOSSES: dict[str, Callable[[dict, dict], tuple[Tensor, dict[str, Tensor]]]] = {
    "psn": psn_loss, "rtps": rtps_loss, "fpsnet": fpsnet_loss, "spinet": spinet_loss, "lpsnet": lpsnet_loss}


def compute_loss(model_name: str, outputs: dict, targets: dict) -> tuple[Tensor, dict[str, Tensor]]:
    """(total loss, weighted terms by name) of method `model_name`."""
    if model_name not in _LOSSES:
        raise ValueError(f"unknown model {model_name!r}; expected one of {', '.join(_LOSSES)}")
    return _LOSSES[model_name](outputs, targets)


def training_forward(network: PanopticNetwork, images: Tensor, targets: dict, **options) -> dict:
    """Forward pass for training: outputs plus what the method's loss needs from the network.

    options: fpsnet `attention` ("detections" as the paper, or "ground_truth" boxes);
    spinet `samples_per_image` (filters sampled per image, default 64).
    """
    if network.model_name == "fpsnet":
        return fpsnet_training_forward(network, images, targets, **options)
    if network.model_name == "spinet":
        return spinet_training_forward(network, images, targets, **options)
    if options:
        raise ValueError(f"{network.model_name} training_forward takes no options, got {sorted(options)}")
    return network(images)


__all__ = ["compute_loss", "training_forward"]
