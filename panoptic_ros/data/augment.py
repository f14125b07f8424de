"""Training augmentation of panoptic samples: scale jitter, random crop, horizontal flip.

A sample is a dict with "image" uint8 (H, W, 3), "semantic" int64 (H, W) (255 void) and
"instance" int64 (H, W) (0 none). Geometry changes apply identically to the three: bilinear for
the image, nearest for the labels, so no new label values appear.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from panoptic_ros.classes import VOID_CLASS

# Crop padding of the image: ImageNet's mean colour, so padding normalises to about zero.
PAD_COLOUR = (124, 116, 104)


def check_sample(sample: dict) -> None:
    """ValueError unless the sample has the keys, types and matching sizes of the sample format."""
    missing = [k for k in ("image", "semantic", "instance") if k not in sample]
    if missing:
        raise ValueError(f"sample lacks {', '.join(missing)}; expected image, semantic and instance")
    image, semantic, instance = sample["image"], sample["semantic"], sample["instance"]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"sample image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if semantic.shape != image.shape[:2] or instance.shape != image.shape[:2]:
        raise ValueError(f"semantic {semantic.shape} and instance {instance.shape} must be the image's size "
                         f"{image.shape[:2]}")


def resize(sample: dict, height: int, width: int) -> dict:
    """The sample at height x width: bilinear (area when shrinking) image, nearest labels."""
    image = sample["image"]
    if image.shape[:2] == (height, width):
        return dict(sample)
    shrink = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return {**sample,
            "image": cv2.resize(image, (width, height), interpolation=interpolation),
            # cv2 resizes int32 but not int64; every id fits int32
            "semantic": cv2.resize(sample["semantic"].astype(np.int32), (width, height),
                                   interpolation=cv2.INTER_NEAREST_EXACT).astype(np.int64),
            "instance": cv2.resize(sample["instance"].astype(np.int32), (width, height),
                                   interpolation=cv2.INTER_NEAREST_EXACT).astype(np.int64)}


def crop(sample: dict, top: int, left: int, height: int, width: int) -> dict:
    """The window [top, top + height) x [left, left + width), padded (image: PAD_COLOUR, labels: void)
    where it leaves the sample."""
    image = sample["image"]
    h, w = image.shape[:2]
    pad_bottom, pad_right = max(top + height - h, 0), max(left + width - w, 0)
    pad_top, pad_left = max(-top, 0), max(-left, 0)
    if pad_bottom or pad_right or pad_top or pad_left:
        borders = (pad_top, pad_bottom, pad_left, pad_right)
        sample = {**sample,
                  "image": cv2.copyMakeBorder(image, *borders, cv2.BORDER_CONSTANT, value=PAD_COLOUR),
                  "semantic": np.pad(sample["semantic"], (borders[:2], borders[2:]), constant_values=VOID_CLASS),
                  "instance": np.pad(sample["instance"], (borders[:2], borders[2:]), constant_values=0)}
        top, left = top + pad_top, left + pad_left
    window = (slice(top, top + height), slice(left, left + width))
    return {**sample, **{k: np.ascontiguousarray(sample[k][window]) for k in ("image", "semantic", "instance")}}


def hflip(sample: dict) -> dict:
    return {**sample, **{k: np.ascontiguousarray(sample[k][:, ::-1]) for k in ("image", "semantic", "instance")}}


@dataclass(frozen=True)
class Augment:
    """Scale jitter by a factor in `scale`, a random `crop_size` (h, w) window, and a flip with
    probability `flip`. Without a crop size the output keeps the input's size (crop after zoom-in,
    pad after zoom-out), so batches stack."""

    scale: tuple[float, float] = (0.5, 2.0)
    crop_size: tuple[int, int] | None = None
    flip: float = 0.5

    def __post_init__(self) -> None:
        low, high = self.scale
        if not 0 < low <= high:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {self.scale}")
        if self.crop_size is not None and (len(self.crop_size) != 2 or min(self.crop_size) <= 0):
            raise ValueError(f"crop_size must be (height, width) > 0, got {self.crop_size}")
        if not 0.0 <= self.flip <= 1.0:
            raise ValueError(f"flip is a probability in [0, 1], got {self.flip}")

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        check_sample(sample)
        height, width = sample["image"].shape[:2]
        out_h, out_w = self.crop_size or (height, width)
        factor = rng.uniform(*self.scale)
        scaled_h, scaled_w = max(round(height * factor), 1), max(round(width * factor), 1)
        sample = resize(sample, scaled_h, scaled_w)
        sample = crop(sample, _offset(rng, scaled_h, out_h), _offset(rng, scaled_w, out_w), out_h, out_w)
        return hflip(sample) if rng.random() < self.flip else sample


def _offset(rng: np.random.Generator, size: int, window: int) -> int:
    """Random start of a window along an axis: inside the sample if it fits, else covering all of it."""
    if size >= window:
        return int(rng.integers(0, size - window + 1))
    return -int(rng.integers(0, window - size + 1))
