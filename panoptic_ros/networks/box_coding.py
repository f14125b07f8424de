"""Box geometry shared by training targets and inference decoding.

Pure torch functions with static shapes (only Python ints decide shapes), so they export to
ONNX and run inside the TensorRT engine. Boxes are x1y1x2y2 in input pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# Largest log-scale a box delta may take before exp, as in Detectron2: a box at most 1000/16 times
# its anchor, so an untrained or diverging regressor cannot overflow to inf.
DELTA_SCALE_CLAMP = math.log(1000.0 / 16)


def level_points(height: int, width: int, stride: int, device: torch.device | None = None) -> Tensor:
    """Pixel centres (x, y) of the cells of a (height, width) feature map, row-major: (h*w, 2) float32.

    Cell (i, j) sits at x = j*stride + stride//2, y = i*stride + stride//2, as in FCOS.
    """
    xs = torch.arange(width, dtype=torch.float32, device=device) * stride + stride // 2
    ys = torch.arange(height, dtype=torch.float32, device=device) * stride + stride // 2
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1)


def ltrb_to_boxes(points: Tensor, ltrb: Tensor) -> Tensor:
    """Distances (left, top, right, bottom) from `points` (N, 2) to box sides -> boxes (..., N, 4)."""
    x, y = points[:, 0], points[:, 1]
    return torch.stack((x - ltrb[..., 0], y - ltrb[..., 1], x + ltrb[..., 2], y + ltrb[..., 3]), dim=-1)


def boxes_to_ltrb(points: Tensor, boxes: Tensor) -> Tensor:
    """Inverse of `ltrb_to_boxes`: boxes (..., N, 4) seen from points (N, 2) -> (left, top, right, bottom)."""
    x, y = points[:, 0], points[:, 1]
    return torch.stack((x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y), dim=-1)


def retinanet_anchors(height: int, width: int, stride: int, sizes: Sequence[float], ratios: Sequence[float],
                      device: torch.device | None = None) -> Tensor:
    """RetinaNet anchors of one level: (h*w*A, 4) x1y1x2y2, location-major then anchor.

    A = len(sizes) * len(ratios); anchor index a = size_index * len(ratios) + ratio_index. A ratio
    is height / width and keeps the area size**2. Anchors are centred on `level_points`.
    """
    shapes = []
    for size in sizes:
        for ratio in ratios:
            w = size / math.sqrt(ratio)
            h = size * math.sqrt(ratio)
            shapes.append((-w / 2, -h / 2, w / 2, h / 2))
    cell = torch.tensor(shapes, dtype=torch.float32, device=device)  # (A, 4)
    centres = level_points(height, width, stride, device=device).repeat(1, 2)  # (h*w, 4) as x y x y
    return (centres[:, None, :] + cell[None, :, :]).reshape(-1, 4)


def encode_deltas(anchors: Tensor, boxes: Tensor) -> Tensor:
    """Standard box coding (dx, dy, dw, dh) of `boxes` relative to `anchors` (both (..., 4) x1y1x2y2)."""
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ax, ay = anchors[..., 0] + 0.5 * aw, anchors[..., 1] + 0.5 * ah
    bw, bh = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    bx, by = boxes[..., 0] + 0.5 * bw, boxes[..., 1] + 0.5 * bh
    return torch.stack(((bx - ax) / aw, (by - ay) / ah, torch.log(bw / aw), torch.log(bh / ah)), dim=-1)


def decode_deltas(anchors: Tensor, deltas: Tensor) -> Tensor:
    """Inverse of `encode_deltas`; dw, dh are clamped to DELTA_SCALE_CLAMP before exp."""
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ax, ay = anchors[..., 0] + 0.5 * aw, anchors[..., 1] + 0.5 * ah
    cx = ax + deltas[..., 0] * aw
    cy = ay + deltas[..., 1] * ah
    w = aw * torch.exp(deltas[..., 2].clamp(max=DELTA_SCALE_CLAMP))
    h = ah * torch.exp(deltas[..., 3].clamp(max=DELTA_SCALE_CLAMP))
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of boxes a (..., N, 4) and b (..., M, 4), both x1y1x2y2 -> (..., N, M).

    Degenerate boxes (zero or negative extent) have IoU 0 with everything.
    """
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    top_left = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    bottom_right = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[..., :, None] + area_b[..., None, :] - inter).clamp(min=1e-6)


def dense_level_boxes(box_reg: Sequence[Tensor], strides: Sequence[int], out_stride: int) -> Tensor:
    """Absolute boxes of every level's cells, repeated onto a finer grid: (B, L, 4, H/out_stride, W/out_stride).

    box_reg[l] is (B, 4, h, w) distances l, t, r, b at level l (stride strides[l]). Each cell's box
    is copied to the out_stride cells inside it (nearest upsampling), which is the per-level box
    B^(l)(x, y) that RTPS's levelness selects from (its eq. 14).
    """
    boxes = []
    for reg, stride in zip(box_reg, strides, strict=True):
        b, _, h, w = reg.shape
        points = level_points(h, w, stride, device=reg.device).to(reg.dtype)
        level = ltrb_to_boxes(points, reg.reshape(b, 4, h * w).transpose(1, 2))  # (B, h*w, 4)
        level = level.transpose(1, 2).reshape(b, 4, h, w)
        factor = stride // out_stride
        boxes.append(level if factor == 1 else F.interpolate(level, scale_factor=float(factor), mode="nearest"))
    return torch.stack(boxes, dim=1)
