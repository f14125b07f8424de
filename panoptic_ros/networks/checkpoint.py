"""Save and load network checkpoints: the weights plus everything needed to rebuild the network.

A checkpoint is a plain dict {"model", "width", "backbone", "label_set", "state_dict", ...extra}
of tensors and built-in types, so it loads with torch.load(weights_only=True).
"""

from __future__ import annotations

from pathlib import Path

import torch

from panoptic_ros.classes import LabelSet
from panoptic_ros.networks import NETWORK_NAMES, PanopticNetwork, build_network

_REQUIRED_KEYS = ("model", "width", "backbone", "label_set", "state_dict")


def save_checkpoint(path: str | Path, network: PanopticNetwork, model_name: str, extra: dict | None = None) -> None:
    """Write `network` to `path` with its model name, width, backbone and label set (plus `extra` entries)."""
    if model_name != network.model_name:
        raise ValueError(f"model name {model_name!r} does not match the network, which is {network.model_name!r}")
    extra = dict(extra or {})
    clash = set(extra) & set(_REQUIRED_KEYS)
    if clash:
        raise ValueError(f"extra entries may not replace checkpoint keys: {sorted(clash)}")
    checkpoint = {"model": model_name, "width": network.width, "backbone": network.backbone_name,
                  "label_set": network.label_set.to_dict(),
                  "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()}, **extra}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


def load_network(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[PanopticNetwork, dict]:
    """Rebuild the network stored at `path`; returns (network in eval mode, the checkpoint dict without state_dict)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt files raise pickle, zip or runtime errors depending on the damage
        raise ValueError(f"cannot read checkpoint {path} (corrupt or not a torch checkpoint): {exc}") from exc
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in _REQUIRED_KEYS):
        raise ValueError(f"{path} is not a panoptic_ros checkpoint: expected a dict with keys {list(_REQUIRED_KEYS)}")
    if checkpoint["model"] not in NETWORK_NAMES:
        raise ValueError(f"{path}: unknown model {checkpoint['model']!r}; expected one of {', '.join(NETWORK_NAMES)}")
    network = build_network(checkpoint["model"], LabelSet.from_dict(checkpoint["label_set"]),
                            width=float(checkpoint["width"]), backbone=checkpoint["backbone"])
    try:
        network.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit a {checkpoint['model']} network "
                         f"(width {checkpoint['width']}, {checkpoint['backbone']}): {exc}") from exc
    network.to(map_location).eval()
    info = {k: v for k, v in checkpoint.items() if k != "state_dict"}
    return network, info
