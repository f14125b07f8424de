"""Networks of the five papers, their backbones, FPN and shared box geometry.

`build_network(name, label_set, width, backbone)` builds any of NETWORK_NAMES. Networks take a
normalised float image batch (B, 3, H, W), H and W multiples of 128; normalisation with
IMAGENET_MEAN / IMAGENET_STD (RGB in [0, 1]) is done by the pipeline, not inside the network.
"""

from __future__ import annotations

from panoptic_ros.classes import LabelSet
from panoptic_ros.networks.base import INPUT_MULTIPLE, PanopticNetwork
from panoptic_ros.networks.fpsnet import FPSNet, gaussian_attention_masks
from panoptic_ros.networks.lpsnet import LPSNet
from panoptic_ros.networks.psn import PanopticSwiftNet
from panoptic_ros.networks.rtps import RTPSNet
from panoptic_ros.networks.spinet import SPINet

# ImageNet statistics for RGB in [0, 1]. Normalisation is done by the pipeline, not the networks.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_REGISTRY: dict[str, type[PanopticNetwork]] = {
    cls.model_name: cls for cls in (PanopticSwiftNet, RTPSNet, FPSNet, SPINet, LPSNet)}
NETWORK_NAMES = tuple(_REGISTRY)


def build_network(name: str, label_set: LabelSet, width: float = 1.0, backbone: str | None = None) -> PanopticNetwork:
    """The network `name` (one of NETWORK_NAMES) for `label_set`, channels scaled by `width`.

    `backbone` is resnet18, resnet34 or resnet50; None takes the paper's (resnet18 for psn, resnet50 otherwise).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown network {name!r}; expected one of {', '.join(NETWORK_NAMES)}")
    return _REGISTRY[name](label_set, width=width, backbone=backbone)


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INPUT_MULTIPLE", "NETWORK_NAMES", "FPSNet", "LPSNet", "PanopticNetwork",
           "PanopticSwiftNet", "RTPSNet", "SPINet", "build_network", "gaussian_attention_masks"]
