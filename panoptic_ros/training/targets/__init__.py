"""Training targets of the five methods, as pure functions of a panoptic ground truth.

`build_targets(network, class_map, instance_map)` calls the generator of the network's method
with the parameters it takes from the network (thing/stuff ids, strides, anchors).
"""

from __future__ import annotations

from torch import Tensor

from panoptic_ros.networks import PanopticNetwork
from panoptic_ros.training.targets.fpsnet import fpsnet_targets, panoptic_target
from panoptic_ros.training.targets.lpsnet import lpsnet_targets
from panoptic_ros.training.targets.psn import psn_targets
from panoptic_ros.training.targets.rtps import rtps_targets
from panoptic_ros.training.targets.spinet import spinet_targets


def build_targets(network: PanopticNetwork, class_map: Tensor, instance_map: Tensor) -> dict:
    """Targets for `network` (any of the registry) from class and instance maps (B, H, W) int64."""
    things = network.thing_ids
    name = network.model_name
    if name == "psn":
        return psn_targets(class_map, instance_map, things)
    if name == "rtps":
        return rtps_targets(class_map, instance_map, things, network.strides)
    if name == "lpsnet":
        return lpsnet_targets(class_map, instance_map, things, network.strides)
    if name == "fpsnet":
        return fpsnet_targets(class_map, instance_map, things, network.strides, network.anchor_sizes,
                              network.anchor_ratios)
    if name == "spinet":
        return spinet_targets(class_map, instance_map, things, network.stuff_ids, network.strides)
    raise ValueError(f"no targets for network {name!r}")


__all__ = ["build_targets", "fpsnet_targets", "lpsnet_targets", "panoptic_target", "psn_targets", "rtps_targets",
           "spinet_targets"]
