"""Ground-truth helpers shared by the per-method target generators.

A panoptic ground truth is a class map (B, H, W) int64 with VOID_CLASS = 255 for unlabeled
pixels, and an instance map (B, H, W) int64 with 0 = no instance and a unique positive id per
thing instance. Thing-class pixels with instance 0 (e.g. Cityscapes crowd regions) belong to no
instance and are ignored wherever a target needs one.

Conventions: pixel (i, j) covers [j, j+1) x [i, i+1); a box is x1y1x2y2 with x2 = last column
+ 1, so a one-pixel instance has width 1. A feature cell of stride s is sampled at pixel
(i*s + s//2, j*s + s//2), which is `level_points` of the box coding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from panoptic_ros.classes import VOID_CLASS
from panoptic_ros.networks.box_coding import boxes_to_ltrb, level_points

# FCOS size ranges m_{i-1} <= max(l, t, r, b) <= m_i for P3..P7, used by RTPS and LPSNet.
FCOS_SIZE_RANGES = ((0.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, float("inf")))


def check_ground_truth(class_map: Tensor, instance_map: Tensor, multiple: int = 1) -> None:
    """Raise ValueError unless both maps are int64 (B, H, W) of the same shape with H, W multiples of `multiple`."""
    for name, m in (("class_map", class_map), ("instance_map", instance_map)):
        if m.dim() != 3 or m.dtype != torch.int64:
            raise ValueError(f"{name} must be an int64 tensor (B, H, W), got {m.dtype} {tuple(m.shape)}")
    if class_map.shape != instance_map.shape:
        raise ValueError(f"class_map {tuple(class_map.shape)} and instance_map {tuple(instance_map.shape)} differ")
    h, w = class_map.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(f"ground truth {h}x{w}: height and width must be multiples of {multiple}")


def sample_at_stride(maps: Tensor, stride: int) -> Tensor:
    """Values of (B, H, W) maps at the cell centres of a stride-`stride` grid: (B, H/stride, W/stride)."""
    return maps[..., stride // 2::stride, stride // 2::stride]


def thing_index_map(class_map: Tensor, thing_ids: Sequence[int]) -> Tensor:
    """Per pixel: index t of the class in thing_ids, or -1 (stuff or void)."""
    lut = torch.full((256,), -1, dtype=torch.int64, device=class_map.device)
    lut[torch.as_tensor(thing_ids, dtype=torch.int64, device=class_map.device)] = torch.arange(
        len(thing_ids), device=class_map.device)
    return lut[class_map.clamp(0, 255)]


def instance_pixels(class_map: Tensor, instance_map: Tensor, thing_ids: Sequence[int]) -> Tensor:
    """Instance ids where a pixel belongs to a thing instance, else 0 (stuff, void, crowd)."""
    return torch.where(thing_index_map(class_map, thing_ids) >= 0, instance_map, torch.zeros_like(instance_map))


def ignored_pixels(class_map: Tensor, instance_map: Tensor, thing_ids: Sequence[int]) -> Tensor:
    """True at void pixels and at thing pixels without an instance (crowd)."""
    crowd = (thing_index_map(class_map, thing_ids) >= 0) & (instance_map <= 0)
    return (class_map == VOID_CLASS) | crowd


@dataclass
class InstanceTable:
    """The thing instances of a batch, padded to M rows per image.

    ids (B, M) instance ids (0 in padding), classes (B, M) thing index t (-1 in padding),
    boxes (B, M, 4) x1y1x2y2, areas (B, M) pixel counts, valid (B, M) bool.
    """

    ids: Tensor
    classes: Tensor
    boxes: Tensor
    areas: Tensor
    valid: Tensor

    def as_dict(self, prefix: str = "gt_") -> dict[str, Tensor]:
        return {f"{prefix}{k}": getattr(self, k) for k in ("ids", "classes", "boxes", "areas", "valid")}


def instance_table(class_map: Tensor, instance_map: Tensor, thing_ids: Sequence[int]) -> InstanceTable:
    """Boxes, thing classes (majority vote over the instance's pixels) and areas of every instance."""
    inst = instance_pixels(class_map, instance_map, thing_ids)
    things = thing_index_map(class_map, thing_ids)
    b, h, w = inst.shape
    ys = torch.arange(h, device=inst.device).view(h, 1).expand(h, w).reshape(-1)
    xs = torch.arange(w, device=inst.device).view(1, w).expand(h, w).reshape(-1)
    rows = []
    for i in range(b):
        flat = inst[i].reshape(-1)
        ids, inverse = torch.unique(flat, return_inverse=True)
        n = len(ids)
        box = torch.stack([
            torch.full((n,), w, device=inst.device).scatter_reduce(0, inverse, xs, "amin"),
            torch.full((n,), h, device=inst.device).scatter_reduce(0, inverse, ys, "amin"),
            torch.zeros(n, dtype=torch.int64, device=inst.device).scatter_reduce(0, inverse, xs + 1, "amax"),
            torch.zeros(n, dtype=torch.int64, device=inst.device).scatter_reduce(0, inverse, ys + 1, "amax"),
        ], dim=1)
        votes = torch.zeros(n, len(thing_ids), dtype=torch.int64, device=inst.device)
        votes.index_put_((inverse, things[i].reshape(-1).clamp(min=0)), torch.ones_like(flat), accumulate=True)
        keep = ids > 0
        rows.append((ids[keep], votes[keep].argmax(1), box[keep].float(), torch.bincount(inverse, minlength=n)[keep]))
    m = max(1, max(len(r[0]) for r in rows))
    dev = inst.device
    table = InstanceTable(ids=torch.zeros(b, m, dtype=torch.int64, device=dev),
                          classes=torch.full((b, m), -1, dtype=torch.int64, device=dev),
                          boxes=torch.zeros(b, m, 4, device=dev),
                          areas=torch.zeros(b, m, dtype=torch.int64, device=dev),
                          valid=torch.zeros(b, m, dtype=torch.bool, device=dev))
    for i, (ids, classes, boxes, areas) in enumerate(rows):
        k = len(ids)
        table.ids[i, :k], table.classes[i, :k], table.boxes[i, :k], table.areas[i, :k] = ids, classes, boxes, areas
        table.valid[i, :k] = True
    return table


def lookup_boxes(instance_ids: Tensor, table: InstanceTable) -> Tensor:
    """Box (..., 4) of the instance each entry of `instance_ids` (B, ...) names; zeros where the id is 0."""
    b = instance_ids.shape[0]
    flat = instance_ids.reshape(b, -1)
    match = (flat[:, :, None] == table.ids[:, None, :]) & table.valid[:, None, :]  # (B, P, M)
    boxes = torch.einsum("bpm,bmk->bpk", match.float(), table.boxes)
    return boxes.reshape(*instance_ids.shape, 4)


def box_distances(instance_ids: Tensor, table: InstanceTable, stride: int) -> Tensor:
    """(B, h, w, 4) distances l, t, r, b from each cell's point to the box of the instance it samples."""
    b, h, w = instance_ids.shape
    points = level_points(h, w, stride, device=instance_ids.device)
    return boxes_to_ltrb(points, lookup_boxes(instance_ids, table).reshape(b, h * w, 4)).reshape(b, h, w, 4)


def fcos_level_targets(class_map: Tensor, instance_map: Tensor, thing_ids: Sequence[int], strides: Sequence[int],
                       size_ranges: Sequence[tuple[float, float]] = FCOS_SIZE_RANGES,
                       table: InstanceTable | None = None) -> dict[str, list[Tensor]]:
    """FCOS-style per-level targets with in-mask foreground (RTPS sec. 4.1, LPSNet sec. 3.2).

    A cell is positive at level i if its sample pixel lies in a thing instance's mask and
    m_{i-1} <= max(l, t, r, b) <= m_i for that instance's box. Per level:
    "cls" (B, h, w) thing index or -1, "cls_weight" (B, h, w) 0 at void/crowd cells,
    "reg" (B, 4, h, w) l, t, r, b in pixels (0 off positives), "pos" (B, h, w) bool,
    "instance" (B, h, w) id of the instance the positive cell regresses (0 off positives).
    """
    if len(size_ranges) != len(strides):
        raise ValueError(f"{len(strides)} strides need as many size ranges, got {len(size_ranges)}")
    table = table if table is not None else instance_table(class_map, instance_map, thing_ids)
    inst = instance_pixels(class_map, instance_map, thing_ids)
    ignored = ignored_pixels(class_map, instance_map, thing_ids)
    out: dict[str, list[Tensor]] = {"cls": [], "cls_weight": [], "reg": [], "pos": [], "instance": []}
    for stride, (low, high) in zip(strides, size_ranges, strict=True):
        ids = sample_at_stride(inst, stride)
        ltrb = box_distances(ids, table, stride)
        largest = ltrb.max(dim=-1).values
        pos = (ids > 0) & (largest >= low) & (largest <= high)
        cls = torch.where(pos, sample_at_stride(thing_index_map(class_map, thing_ids), stride), -1)
        out["cls"].append(cls)
        out["cls_weight"].append((~sample_at_stride(ignored, stride)).float())
        out["reg"].append(ltrb.permute(0, 3, 1, 2) * pos[:, None].float())
        out["pos"].append(pos)
        out["instance"].append(torch.where(pos, ids, 0))
    return out


def level_of_size(largest: Tensor, size_ranges: Sequence[tuple[float, float]]) -> Tensor:
    """Index of the first size range containing each value of `largest` (the last level if none does)."""
    level = torch.full_like(largest, len(size_ranges) - 1, dtype=torch.int64)
    for i in range(len(size_ranges) - 1, -1, -1):
        low, high = size_ranges[i]
        level = torch.where((largest >= low) & (largest <= high), i, level)
    return level


def ratio_quality(ltrb: Tensor) -> Tensor:
    """sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) over the last dim (l, t, r, b).

    FCOS centerness of box distances, LPSNet border-ness of distances to the mask border.
    """
    left, top, right, bottom = ltrb.unbind(-1)
    horizontal = torch.minimum(left, right) / torch.maximum(left, right).clamp(min=1e-6)
    vertical = torch.minimum(top, bottom) / torch.maximum(top, bottom).clamp(min=1e-6)
    return torch.sqrt((horizontal * vertical).clamp(min=0.0))
