"""Panoptic datasets in one sample format: Cityscapes panoptic, COCO panoptic, synthetic scenes.

Every dataset is a sequence of samples, dicts with
    "image"    uint8 (H, W, 3) RGB
    "semantic" int64 (H, W) train ids, 255 void
    "instance" int64 (H, W) 0 for stuff, void and crowd; 1..N, unique per thing instance of the image
    "name"     str, the frame's name
and a `label_set` whose class ids are the semantic values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from panoptic_ros.classes import LABEL_SETS, SYNTHETIC, LabelSet
from panoptic_ros.data import formats
from panoptic_ros.data.synthetic import generate_scene

# Seed ranges of the synthetic splits: far apart, so a training run never sees a validation scene.
SYNTHETIC_SPLIT_SEEDS = {"train": 0, "val": 1_000_000_000, "test": 2_000_000_000}


def sample_from_annotation(image: np.ndarray, annotation: formats.PanopticAnnotation,
                           label_set: LabelSet) -> dict:
    """A sample of an RGB image and its annotation (categories = train ids of `label_set`)."""
    if image.shape[:2] != annotation.ids.shape:
        raise ValueError(f"{annotation.file_name}: image is {image.shape[:2]} but its annotation is "
                         f"{annotation.ids.shape}")
    semantic, instance = formats.semantic_and_instance(annotation, label_set)
    return {"image": image, "semantic": semantic.astype(np.int64), "instance": instance.astype(np.int64),
            "name": Path(annotation.file_name).stem}


def label_set_from_categories(categories: list[dict], name: str) -> LabelSet:
    """The label set of COCO categories with train ids: a known set (cityscapes, synthetic) when every
    category is that set's class of the same id and name (a JSON may list only some), else a new set
    named `name`, which needs ids 0..K-1."""
    categories = sorted(categories, key=lambda c: c["id"])
    for known in LABEL_SETS.values():
        if all(0 <= c["id"] < known.num_classes and known.names[c["id"]] == c["name"] for c in categories):
            return known
    if [c["id"] for c in categories] != list(range(len(categories))):
        raise ValueError(f"category ids must be 0..{len(categories) - 1} (train ids), got "
                         f"{[c['id'] for c in categories]}")
    return LabelSet(name=name, names=tuple(c["name"] for c in categories),
                    thing=tuple(bool(c.get("isthing", 0)) for c in categories),
                    colors=tuple(tuple(c.get("color", (128, 128, 128))) for c in categories))


class _AnnotatedImages(Sequence):
    """Images and their annotations, read when an item is asked for."""

    def __init__(self, annotations: formats.AnnotationList, image_paths: list[Path], label_set: LabelSet) -> None:
        self.annotations = annotations
        self.image_paths = image_paths
        self.label_set = label_set

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int) -> dict:  # type: ignore[override]
        return sample_from_annotation(formats.read_rgb(self.image_paths[index]), self.annotations[index],
                                      self.label_set)


def _image_files(json_path: Path, annotations: formats.AnnotationList) -> list[str]:
    """The image file name of every annotation, from the JSON's "images" entries."""
    by_id = {image["id"]: image["file_name"] for image in formats.read_coco_images(json_path)}
    missing = [e["image_id"] for e in annotations.entries if e.get("image_id") not in by_id]
    if missing:
        raise ValueError(f"{json_path}: no \"images\" entry for image ids {missing[:5]}")
    return [by_id[e["image_id"]] for e in annotations.entries]


class CityscapesPanoptic(_AnnotatedImages):
    """Cityscapes panoptic (gtFine/cityscapes_panoptic_<split>.json + PNGs, leftImg8bit images), with
    the 19 train ids; also reads folders written by `panoptic-ros synth`, in their own label set."""

    def __init__(self, root: str | Path, split: str = "val") -> None:
        root = Path(root)
        json_path, png_dir = formats.cityscapes_panoptic_paths(root, split)
        categories, annotations = formats.read_cityscapes_panoptic(json_path, png_dir)
        label_set = label_set_from_categories(categories, "cityscapes")
        paths = [formats.cityscapes_image_path(root, split, name) for name in _image_files(json_path, annotations)]
        super().__init__(annotations, paths, label_set)


class CocoPanoptic(_AnnotatedImages):
    """COCO panoptic (JSON + PNG folder + image folder); category ids become train ids 0..K-1 in
    increasing category id order."""

    def __init__(self, json_path: str | Path, image_dir: str | Path, png_dir: str | Path | None = None) -> None:
        json_path = Path(json_path)
        categories, annotations = formats.read_coco_panoptic(json_path, png_dir)
        ordered = sorted(categories, key=lambda c: c["id"])
        mapping = {c["id"]: i for i, c in enumerate(ordered)}
        label_set = label_set_from_categories([{**c, "id": mapping[c["id"]]} for c in ordered], "coco")
        annotations = formats.AnnotationList(annotations.entries, annotations.png_dir, mapping)
        paths = [Path(image_dir) / name for name in _image_files(json_path, annotations)]
        super().__init__(annotations, paths, label_set)


class SyntheticScenes(Sequence):
    """Synthetic street scenes generated on the fly, one per seed."""

    label_set = SYNTHETIC

    def __init__(self, seeds: Sequence[int], height: int, width: int) -> None:
        self.seeds = seeds
        self.height = height
        self.width = width

    @classmethod
    def split(cls, name: str, count: int, height: int, width: int) -> SyntheticScenes:
        """`count` scenes of the split `name` (train, val or test; disjoint seed ranges)."""
        if name not in SYNTHETIC_SPLIT_SEEDS:
            raise ValueError(f"unknown synthetic split {name!r}; expected one of {', '.join(SYNTHETIC_SPLIT_SEEDS)}")
        start = SYNTHETIC_SPLIT_SEEDS[name]
        return cls(range(start, start + count), height, width)

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, index: int) -> dict:  # type: ignore[override]
        seed = self.seeds[index]
        scene = generate_scene(seed, self.height, self.width)
        return {"image": scene.image, "semantic": scene.semantic.astype(np.int64),
                "instance": scene.instance.astype(np.int64), "name": f"synth_{seed}"}


def open_dataset(kind: str, root: str | Path, split: str = "val", image_dir: str | Path | None = None) -> Sequence:
    """A dataset by kind: "cityscapes" or "synth-folder" (root = the folder), or "coco" (root = the
    panoptic JSON, image_dir = the images)."""
    if kind in ("cityscapes", "synth-folder"):
        return CityscapesPanoptic(root, split)
    if kind == "coco":
        if image_dir is None:
            raise ValueError("a COCO panoptic dataset needs image_dir (the folder of its images)")
        return CocoPanoptic(root, image_dir)
    raise ValueError(f"unknown dataset kind {kind!r}; expected cityscapes, synth-folder or coco")
