"""LPSNet fusion: the parameter-free panoptic head (Hong et al., section 3.4), deciding every input pixel.

1. `lpsnet_boxes`: NMS of the dense per-level boxes, ranked by class probability x border-ness (sec. 3.2).
2. `box_masks`: a box's mask is the input pixels inside it (x1 <= j < x2, y1 <= i < y2) whose class, the
   arg-max of the bilinearly upsampled semantic logits (`semantic_classes`), is the box's class.
3. `paste_with_borderness`: boxes are pasted by confidence, high to low; a mask is dropped when more
   than overlap_threshold of it is taken by the masks kept before it. A pixel that several kept masks
   hold goes to the box whose border-ness there (eq. 1, from the pixel's distances to the box sides)
   is closest to the border-ness the network predicts at the pixel (the box's level, at the location
   whose stride cell contains the pixel); equal distances keep the earlier box.
4. The rest of the semantic map gives stuff; thing pixels no box claims are void.

Why it is cheap at input resolution: the box sides cut the image into an arrangement of at most
(2K + 1)^2 rectangles, each inside the same boxes at every pixel. Integral images count every
rectangle's pixels of each thing class exactly, so mask areas and the pasting's overlaps are sums
over rectangles: only rectangles inside two or more boxes of their class can be taken twice (at most
GROUP_CHUNKS x GROUPS of them are counted, and never more than the frame's pixels), the boxes are
pasted one at a time over those (the sequential rule itself, K steps of a few (groups,) operations),
and a pixel compares only the kept boxes of its class that hold pixels of its rectangle (at most
OWNER_CANDIDATES). Where more compete, `converged` is 0.
center_threshold and mask_sigma are not used by this method.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from panoptic_ros.classes import LabelSet
from panoptic_ros.fusion.base import DenseBoxFusion, Heads, RuntimeThresholds
from panoptic_ros.fusion.core import Segments
from panoptic_ros.fusion.detections import Detections, quality_ranked_detections
from panoptic_ros.fusion.static_ops import first_true_positions, index_op_input, paste_groups_in_order, to_input_pixels
from panoptic_ros.pipeline_io import HEAD_BORDERNESS, HEAD_SEMANTIC

SEMANTIC_STRIDE = 4  # the semantic logits' stride: upsampled by it to input pixels
GROUPS = 3839  # rectangles inside two or more boxes of one class that one TopK selects (TensorRT: K < 3840)
GROUP_CHUNKS = 3  # such TopKs: up to 11517 rectangles are counted (the shipped model: 8217 at score 0.05)
OWNER_CANDIDATES = 6  # kept boxes a pixel compares (the shipped model: at most 6 at score 0.05)


def semantic_classes(logits: Tensor) -> Tensor:
    """(1, C, h, w) stride-4 logits -> (4h, 4w) int64: the arg-max of the bilinearly upsampled logits."""
    upsampled = to_input_pixels(logits, SEMANTIC_STRIDE)
    return index_op_input(upsampled).argmax(dim=0)


def lpsnet_boxes(heads: Heads, strides: tuple[int, ...], image_size: tuple[int, int], thresholds: RuntimeThresholds,
                 k: int) -> Detections:
    """"we multiply the predicted border-ness with the confidence score of the detected bounding boxes"
    (sec. 3.2), then NMS: the K best boxes."""
    return quality_ranked_detections(heads, HEAD_BORDERNESS, strides, image_size, thresholds, k)


class BoxMasks(NamedTuple):
    """The K boxes' masks, described on the arrangement of their sides (module docstring).

    columns (W,) / rows (H,): the arrangement column / row of each pixel column / row; spans_x (A, K)
    / spans_y (B, K): box k covers arrangement column a / row b; pixels (T, B, A) float32: each
    rectangle's pixels of each thing class; thing (K,) each box's thing index; area (K,) float32 mask
    pixels; groups (R, K) bool and group_pixels (R,): rectangles inside two or more boxes of their
    class (an unused row has no box); exact 0-d bool: every such rectangle is a group.
    """

    columns: Tensor
    rows: Tensor
    spans_x: Tensor
    spans_y: Tensor
    pixels: Tensor
    thing: Tensor
    area: Tensor
    groups: Tensor
    group_pixels: Tensor
    exact: Tensor

    def mask(self, k: int, semantic_class: Tensor, thing_ids: Tensor) -> Tensor:
        """(H, W) bool: box k's mask, pixel by pixel (for tests; the fusion never builds one)."""
        inside = self.spans_y[self.rows, k][:, None] & self.spans_x[self.columns, k][None, :]
        return inside & (semantic_class == thing_ids[self.thing[k]])


def _arrangement(first: Tensor, end: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pixel ranges [first, end) (K,) along one axis of `size` pixels -> (edges (2K + 2,) ascending,
    index (size,) the interval [edges[a], edges[a + 1]) each pixel is in, spans (2K + 1, K) bool)."""
    bounds = torch.cat((first.new_tensor([0.0, float(size)]), first, end))
    edges = -torch.topk(index_op_input(-bounds), bounds.shape[0]).values
    positions = torch.arange(size, dtype=torch.float32, device=first.device)
    index = (edges[None, 1:] <= positions[:, None]).to(torch.float32).sum(dim=1).to(torch.int64)
    spans = (first[None, :] <= edges[:-1, None]) & (edges[1:, None] <= end[None, :])
    return edges, index, spans


def box_masks(boxes: Detections, semantic_class: Tensor, thing_ids: Tensor) -> BoxMasks:
    """"For a given bounding box of class C, the pixels within it are either of class C or not, and we
    consider those pixels of class C as the mask of this box." Pixel (i, j) is inside (x1, y1, x2, y2)
    when x1 <= j < x2 and y1 <= i < y2: columns ceil(x1) .. ceil(x2) - 1."""
    height, width = semantic_class.shape
    num_things = thing_ids.shape[0]
    valid = boxes.valid
    x1, y1, x2, y2 = boxes.boxes.unbind(dim=1)
    end_x, end_y = torch.ceil(x2), torch.ceil(y2)  # the first pixel not inside: j >= x2
    # (Boxes that are not valid cover nothing.)
    first_x, first_y, end_x, end_y = (torch.where(valid, c, torch.zeros_like(c))
                                      for c in (torch.ceil(x1), torch.ceil(y1), end_x, end_y))
    x_edges, columns, spans_x = _arrangement(first_x, end_x, width)
    y_edges, rows, spans_y = _arrangement(first_y, end_y, height)

    # Integral images of every thing class (exact in float32 below 2^24 pixels).
    one_hot = (semantic_class[None] == thing_ids[:, None, None]).to(torch.float32)
    integral = F.pad(torch.cumsum(torch.cumsum(one_hot, dim=1), dim=2), (1, 0, 1, 0))
    corners = integral.index_select(1, y_edges.to(torch.int64)).index_select(2, x_edges.to(torch.int64))
    pixels = corners[:, 1:, 1:] - corners[:, :-1, 1:] - corners[:, 1:, :-1] + corners[:, :-1, :-1]  # (T, B, A)
    flat = integral.reshape(-1)
    row_length, plane = width + 1, (height + 1) * (width + 1)

    def at(y: Tensor, x: Tensor) -> Tensor:
        return flat[boxes.thing * plane + y.to(torch.int64) * row_length + x.to(torch.int64)]

    area = at(end_y, end_x) - at(first_y, end_x) - at(end_y, first_x) + at(first_y, first_x)

    # Rectangles inside two or more boxes of one class, with pixels of that class.
    of_thing = (boxes.thing[None, :] == torch.arange(num_things, device=valid.device)[:, None]) & valid[None, :]
    covering = torch.matmul(spans_y.to(torch.float32)[None] * of_thing.to(torch.float32)[:, None, :],
                            spans_x.to(torch.float32).T)  # (T, B, A) boxes of the class covering the rectangle
    shared = ((covering >= 2) & (pixels > 0)).reshape(-1)
    # A group holds at least one pixel (a pixel has one class and lies in one rectangle): small frames need fewer.
    capacity = min(GROUPS * GROUP_CHUNKS, height * width, shared.shape[0])
    index, picked = first_true_positions(shared, min(GROUPS, capacity), -(-capacity // GROUPS))
    num_rows, num_columns = spans_y.shape[0], spans_x.shape[0]
    thing = torch.div(index, num_rows * num_columns, rounding_mode="floor")
    row = torch.div(index, num_columns, rounding_mode="floor") - thing * num_rows
    column = index - torch.div(index, num_columns, rounding_mode="floor") * num_columns
    groups = spans_y[row] & spans_x[column] & of_thing[thing] & picked[:, None]
    group_pixels = torch.where(picked, pixels.reshape(-1)[index], torch.zeros_like(pixels.reshape(-1)[index]))
    exact = shared.to(torch.int32).sum() <= index.shape[0]
    return BoxMasks(columns, rows, spans_x, spans_y, pixels, boxes.thing, area, groups, group_pixels, exact)


def predicted_borderness(borderness: list[Tensor], strides: tuple[int, ...], height: int, width: int) -> Tensor:
    """(L, H, W): each level's predicted border-ness at every input pixel, from the location whose
    stride cell contains the pixel (clamped to the level's map)."""
    levels = []
    for level, stride in zip(borderness, strides, strict=True):
        h, w = level.shape[-2:]
        rows = torch.tensor([min(i // stride, h - 1) for i in range(height)], device=level.device)
        cols = torch.tensor([min(j // stride, w - 1) for j in range(width)], device=level.device)
        levels.append(torch.sigmoid(level[0, 0]).index_select(0, rows).index_select(1, cols))
    return torch.stack(levels)


def _side_ratio(position: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """(K, P): min / max of the distances from pixel positions (P,) to two box sides (K,) (eq. 1's factors)."""
    near, far = position[None, :] - low[:, None], high[:, None] - position[None, :]
    return torch.minimum(near, far).clamp(min=0) / torch.maximum(near, far).clamp(min=1e-6)


class Pasting(NamedTuple):
    """paste_with_borderness' result: owner (H, W) int64 box index (K: none), keep (K,) bool, converged 0-d bool."""

    owner: Tensor
    keep: Tensor
    converged: Tensor


def paste_with_borderness(boxes: Detections, masks: BoxMasks, semantic_class: Tensor, thing_ids: Tensor,
                          predicted: Tensor, overlap_threshold: Tensor) -> Pasting:
    """"we iteratively 'paste' each box to the semantic segmentation prediction by confidence from
    high to low ... If the intersection between the current mask and those already existing is larger
    than a threshold ... we discard this mask", and pixels of same-class overlaps go to "the box whose
    computed border-ness is the closest to the predicted border-ness". predicted: (L, H, W)."""
    k = boxes.valid.shape[0]
    height, width = semantic_class.shape
    device = semantic_class.device
    keep = paste_groups_in_order(masks.groups, masks.group_pixels, masks.area, boxes.valid, overlap_threshold)

    # Each rectangle's candidates: the first OWNER_CANDIDATES kept boxes with pixels of their class in it.
    # Key (K, B, A): the box's rank (earlier boxes higher) where it holds pixels of its class, else 0.
    rank = torch.arange(k, 0, -1, dtype=torch.float32, device=device) * keep.to(torch.float32)
    holds = (masks.spans_y.T.to(torch.float32) * rank[:, None])[:, :, None] * masks.spans_x.T.to(torch.float32)[:, None]
    holds = holds * (masks.pixels > 0).to(torch.float32)[masks.thing]
    count = min(OWNER_CANDIDATES, k)
    # One more than the candidates: where it is a holder too, some rectangle has more than `count`.
    best, slot = torch.topk(holds, min(count + 1, k), dim=0)
    fits = best[count:].amax() == 0 if count < k else torch.ones((), dtype=torch.bool, device=device)
    best, slot = best[:count], slot[:count]
    candidates = torch.where(best > 0, slot, torch.full_like(slot, k)).reshape(count, -1)
    # ... split by class: row n of `table` keeps the candidates of thing n - 1 (row 0: pixels of no
    # thing class), so that a pixel looks up only boxes of its own class.
    thing_number = torch.cat((boxes.thing + 1, torch.zeros(1, dtype=torch.int64, device=device)))
    numbers = torch.arange(thing_ids.shape[0] + 1, device=device)[:, None, None]
    table = torch.where(thing_number[candidates][None] == numbers, candidates[None], torch.full_like(candidates, k))
    table = table.permute(1, 0, 2).reshape(count, -1)  # (count, (T + 1) * rectangles)

    # Per pixel: |computed - predicted| border-ness of each candidate (infinite where it is none);
    # the closest wins, equal ones the earlier box.
    is_thing = (semantic_class[None] == thing_ids[:, None, None]).to(torch.float32)
    pixel_number = (is_thing * numbers[1:].to(torch.float32)).sum(dim=0).to(torch.int64)  # 0: no thing
    rectangles = masks.spans_y.shape[0] * masks.spans_x.shape[0]
    lookup = pixel_number * rectangles + masks.rows[:, None] * masks.spans_x.shape[0] + masks.columns[None, :]
    candidate = table.index_select(1, lookup.reshape(-1)).reshape(count, height, width)
    x1, y1, x2, y2 = boxes.boxes.unbind(dim=1)
    xs = torch.arange(width, dtype=torch.float32, device=device)
    ys = torch.arange(height, dtype=torch.float32, device=device)
    none = torch.zeros((1, 1), device=device)
    horizontal = torch.cat((torch.sqrt(_side_ratio(xs, x1, x2)), none.expand(1, width))).reshape(-1)
    vertical = torch.cat((torch.sqrt(_side_ratio(ys, y1, y2)), none.expand(1, height))).reshape(-1)
    box_level = torch.cat((boxes.level, torch.zeros(1, dtype=torch.int64, device=device)))
    column = torch.arange(width, device=device)[None, None, :]
    row = torch.arange(height, device=device)[None, :, None]
    computed = horizontal[candidate * width + column] * vertical[candidate * height + row]
    expected = torch.gather(predicted, 0, box_level[candidate])
    mismatch = torch.where(candidate < k, (computed - expected).abs(), computed.new_tensor(float("inf")))
    choice = torch.argmin(index_op_input(mismatch), dim=0)
    # (Where no candidate holds the pixel, every slot is K: so is the owner, whichever slot is chosen.)
    owner = torch.gather(candidate, 0, choice[None])[0]
    return Pasting(owner, keep, masks.exact & fits)


class LPSNetFusion(DenseBoxFusion):
    def __init__(self, label_set: LabelSet, strides: tuple[int, ...], max_instances: int = 100) -> None:
        super().__init__(label_set, strides, max_instances, label_stride=1)

    def segments(self, heads: Heads, thresholds: RuntimeThresholds) -> Segments:
        semantic_class = semantic_classes(heads[HEAD_SEMANTIC])
        height, width = semantic_class.shape
        boxes = lpsnet_boxes(heads, self.strides, (height, width), thresholds, self.num_candidates)
        masks = box_masks(boxes, semantic_class, self.thing_ids)
        predicted = predicted_borderness(heads[HEAD_BORDERNESS], self.strides, height, width)
        pasting = paste_with_borderness(boxes, masks, semantic_class, self.thing_ids, predicted,
                                        thresholds.overlap_threshold)
        k = self.num_candidates
        labels = torch.where(pasting.owner < k, pasting.owner, self.semantic_labels(semantic_class))
        return Segments(labels, self.thing_ids[boxes.thing], boxes.score, pasting.keep,
                        boxes.converged & pasting.converged, boxes.dropped)
