"""Parameter and FLOP counts of the networks, measured without doing any arithmetic.

The network is built and run on PyTorch's meta device (shapes only), under
torch.utils.flop_counter.FlopCounterMode, which counts a multiply-add as 2 FLOPs. The count
covers the exported graph: the network plus the inference-time head calls (FPSNet's panoptic
head with N_att attention masks, SPINet's stuff filters), not the fusion after it.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from panoptic_ros.classes import CITYSCAPES, LabelSet
from panoptic_ros.networks import build_network, gaussian_attention_masks
from panoptic_ros.networks.fpsnet import FEATURE_STRIDE


def training_only_parameters(network: torch.nn.Module) -> int:
    """Parameters that exist for training only (SPINet's contour head and triplet FC)."""
    modules = [getattr(network, name) for name in ("contour_head", "triplet_fc") if hasattr(network, name)]
    return sum(p.numel() for m in modules for p in m.parameters())


def network_complexity(name: str, label_set: LabelSet = CITYSCAPES, width: float = 1.0, backbone: str | None = None,
                       image_hw: tuple[int, int] = (1024, 2048)) -> dict[str, float]:
    """{"parameters", "inference_parameters", "gflops"} of network `name` at input size `image_hw`."""
    with torch.device("meta"):
        network = build_network(name, label_set, width=width, backbone=backbone).eval()
        image = torch.empty(1, 3, *image_hw)
    with FlopCounterMode(display=False) as counter:
        outputs = network(image)
        if name == "fpsnet":
            features = outputs["features"]
            boxes = torch.zeros(1, network.num_attention, 4, device="meta")
            masks = gaussian_attention_masks(boxes, torch.ones(1, network.num_attention, device="meta"),
                                             tuple(features.shape[-2:]), FEATURE_STRIDE)
            network.panoptic_head(features, masks)
        if name == "spinet":
            network.stuff_mask_logits(outputs["panoptic_feature"])
    parameters = sum(p.numel() for p in network.parameters())
    return {"parameters": parameters, "inference_parameters": parameters - training_only_parameters(network),
            "gflops": counter.get_total_flops() / 1e9}
