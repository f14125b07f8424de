"""Label sets: class ids, names, thing/stuff flags and display colors.

A model is trained for one label set; the set travels with the model (checkpoint, ONNX
metadata) and is what the node publishes on panoptic/class_map.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LabelSet:
    """Train-id label set. Class id i is names[i]; void is 255 in semantic maps."""

    name: str
    names: tuple[str, ...]
    thing: tuple[bool, ...]
    colors: tuple[tuple[int, int, int], ...]

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.thing) == len(self.colors)):
            raise ValueError(f"label set {self.name!r}: names, thing flags and colors differ in length")
        if len(self.names) > 255:
            raise ValueError(f"label set {self.name!r}: at most 255 classes (255 is void)")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def thing_ids(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.thing) if t)

    @property
    def stuff_ids(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.thing) if not t)

    def to_dict(self) -> dict:
        return {"name": self.name, "names": list(self.names), "thing": list(self.thing),
                "colors": [list(c) for c in self.colors]}

    @classmethod
    def from_dict(cls, data: dict) -> LabelSet:
        return cls(name=data["name"], names=tuple(data["names"]), thing=tuple(bool(t) for t in data["thing"]),
                   colors=tuple(tuple(int(v) for v in c) for c in data["colors"]))


VOID_CLASS = 255  # value of void pixels in semantic maps
VOID_ID = -1  # value of void pixels in panoptic id maps
DEFAULT_LABEL_DIVISOR = 1000  # Cityscapes convention: id = class * 1000 + instance

# Cityscapes' 19 train classes (8 things), with the official colors.
CITYSCAPES = LabelSet(
    name="cityscapes",
    names=("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
           "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
           "motorcycle", "bicycle"),
    thing=(False,) * 11 + (True,) * 8,
    colors=((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
            (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
            (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
            (0, 80, 100), (0, 0, 230), (119, 11, 32)),
)

# The synthetic street scenes of `panoptic-ros synth` (demo models are trained on these).
# Stuff first, then things, with Cityscapes' colors for the same classes.
SYNTHETIC = LabelSet(
    name="synthetic",
    names=("road", "sidewalk", "building", "vegetation", "sky", "person", "car", "bicycle"),
    thing=(False, False, False, False, False, True, True, True),
    colors=((128, 64, 128), (244, 35, 232), (70, 70, 70), (107, 142, 35), (70, 130, 180),
            (220, 20, 60), (0, 0, 142), (119, 11, 32)),
)

LABEL_SETS = {s.name: s for s in (CITYSCAPES, SYNTHETIC)}


def get_label_set(name: str) -> LabelSet:
    """The label set called `name`; a clear error lists the known ones."""
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise ValueError(f"unknown label set {name!r}; known: {', '.join(sorted(LABEL_SETS))}") from None
