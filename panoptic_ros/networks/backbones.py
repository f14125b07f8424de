"""ResNet-18/34/50 backbones whose state_dict keys are torchvision's.

The module names (conv1, bn1, layer1.0.conv1, ..., layer4.1.downsample.0) mirror
torchvision.models.resnet, so an ImageNet checkpoint such as resnet18-f37072fd.pth loads with
`load_imagenet_weights` (torch.load(weights_only=True); torchvision itself is not needed).
The classifier (avgpool, fc) is not part of the backbone: its fc.* keys are dropped on load.
A width multiplier scales every channel count; only width 1.0 matches ImageNet checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from panoptic_ros.networks.layers import scale_channels


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut: ResNet-18/34."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, as torchvision's "ResNet v1.5"), 1x1 expand x4: ResNet-50."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet trunk returning [C2, C3, C4, C5] at strides (4, 8, 16, 32)."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, int, int, int],
                 width: float = 1.0) -> None:
        super().__init__()
        stem = scale_channels(64, width)
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._in_channels = stem
        planes = [scale_channels(p, width) for p in (64, 128, 256, 512)]
        self.layer1 = self._make_layer(block, planes[0], layers[0], stride=1)
        self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2)
        self.out_channels = tuple(p * block.expansion for p in planes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int,
                    stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._in_channels != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._in_channels, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self._in_channels, planes, stride, downsample)]
        self._in_channels = planes * block.expansion
        layers += [block(self._in_channels, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


_ARCHITECTURES = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}
BACKBONE_NAMES = tuple(_ARCHITECTURES)


def build_backbone(name: str, width: float = 1.0) -> ResNet:
    """ResNet `name` (one of BACKBONE_NAMES) with channels scaled by `width`."""
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONE_NAMES)}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    block, layers = _ARCHITECTURES[name]
    return ResNet(block, layers, width)


def load_imagenet_weights(backbone: ResNet, path: str | Path) -> None:
    """Load a torchvision ImageNet checkpoint (a plain state_dict) into `backbone`.

    The classifier keys fc.* are dropped. Every other backbone key must be present with the
    same shape (num_batches_tracked may be absent: old torchvision files lack it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet weights not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or non-tensor pickles
        raise ValueError(f"cannot read ImageNet weights {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a torchvision ResNet state_dict, got {type(state).__name__}")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(f"{path} does not match this backbone: missing {missing[:5]} ({len(missing)} in all), "
                         f"unexpected {unexpected[:5]} ({len(unexpected)} in all); is it the right ResNet depth?")
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in state if state[k].shape != own[k].shape]
    if wrong:
        raise ValueError(f"{path}: tensor shapes differ (ImageNet weights need width 1.0): {wrong[:3]}")
    backbone.load_state_dict(state, strict=False)
