"""PyTorch side of the datasets: a map-style dataset with seeded augmentation, and its collate.

Augmentation of item i in epoch e draws from the generator seeded by (seed, e, i), so a run is
reproducible whatever the number of DataLoader workers. Call `set_epoch` before each epoch (with
persistent workers, recreate the DataLoader instead: workers hold their own copy).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from panoptic_ros.data.augment import Augment, check_sample


class PanopticDataset(torch.utils.data.Dataset):
    """Samples of `source` (any dataset of panoptic_ros.data.datasets) as tensors:
    image uint8 (3, H, W), semantic int64 (H, W), instance int64 (H, W), name str."""

    def __init__(self, source: Sequence[dict], augment: Augment | None = None, seed: int = 0) -> None:
        self.source = source
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        sample = self.source[index]
        check_sample(sample)
        if self.augment is not None:
            sample = self.augment(sample, np.random.default_rng((self.seed, self.epoch, index)))
        return {"image": torch.from_numpy(np.ascontiguousarray(sample["image"].transpose(2, 0, 1))),
                "semantic": torch.from_numpy(sample["semantic"].astype(np.int64, copy=False)),
                "instance": torch.from_numpy(sample["instance"].astype(np.int64, copy=False)),
                "name": sample.get("name", str(index))}


def collate(batch: list[dict]) -> dict:
    """Stack samples of one size into image (B, 3, H, W) uint8, semantic and instance (B, H, W), names."""
    sizes = {tuple(item["image"].shape) for item in batch}
    if len(sizes) > 1:
        raise ValueError(f"cannot batch samples of different sizes {sorted(sizes)}; crop them to one size "
                         "(Augment(crop_size=...))")
    return {"image": torch.stack([item["image"] for item in batch]),
            "semantic": torch.stack([item["semantic"] for item in batch]),
            "instance": torch.stack([item["instance"] for item in batch]),
            "name": [item["name"] for item in batch]}
