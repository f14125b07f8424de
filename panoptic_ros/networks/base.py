"""What every network of the registry has in common: label set, width, backbone, input check."""

from __future__ import annotations

from torch import Tensor, nn

from panoptic_ros.classes import LabelSet
from panoptic_ros.networks.backbones import build_backbone

# Inputs must divide by the coarsest stride any network uses (P7 and PSN's quarter-scale C5).
INPUT_MULTIPLE = 128


class PanopticNetwork(nn.Module):
    """Base class: holds `label_set`, `thing_ids`, `stuff_ids`, `width`, `backbone_name` and `backbone`."""

    model_name: str = ""
    default_backbone: str = "resnet50"

    def __init__(self, label_set: LabelSet, width: float = 1.0, backbone: str | None = None) -> None:
        super().__init__()
        if not isinstance(label_set, LabelSet):
            raise ValueError(f"label_set must be a LabelSet, got {type(label_set).__name__}")
        if not label_set.thing_ids:
            raise ValueError(f"label set {label_set.name!r} has no thing classes; panoptic networks need some")
        self.label_set = label_set
        self.thing_ids = label_set.thing_ids
        self.stuff_ids = label_set.stuff_ids
        self.width = float(width)
        self.backbone_name = backbone or self.default_backbone
        self.backbone = build_backbone(self.backbone_name, width)

    @property
    def num_classes(self) -> int:
        return self.label_set.num_classes

    @property
    def num_things(self) -> int:
        return len(self.thing_ids)

    def check_input(self, x: Tensor) -> None:
        """Raise ValueError unless x is (B, 3, H, W) with H and W multiples of INPUT_MULTIPLE."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.model_name}: expected a normalised (B, 3, H, W) image batch, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE:
            raise ValueError(f"{self.model_name}: input height and width must be multiples of {INPUT_MULTIPLE}, "
                             f"got {h}x{w}")
