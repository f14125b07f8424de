"""Panoptic SwiftNet's fusion (the Panoptic-DeepLab post-processing the paper uses, section 2.3),
deciding every input pixel.

1. `find_instance_centres`: non-maximum suppression of the centre heatmap by max-pooling (a pixel
   is a centre where it equals the maximum of its nms_kernel x nms_kernel window and exceeds
   center_threshold; of a flat-topped peak only the first pixel counts), best first.
2. `group_pixels`: every thing pixel joins the centre closest to its position plus its offset.
3. `vote_classes`: each instance's class is the majority vote of the semantic labels of its pixels.
4. The panoptic map joins instances (with their voted class) and the semantic stuff.

The heads come at input resolution (the network upsamples its stride-4 predictions 4x) and every
decision is per input pixel. Only the search for a pixel's closest centre is narrowed on the
GROUP_STRIDE grid: each cell keeps the CANDIDATES centres nearest to the box of its pixels' targets
among those that can be closest to one of them (group_pixels), and each pixel compares those. That is
exact unless a cell has more such centres and the nearest one left out is as close to the box as some
thing pixel of the cell is to its pick: the frame's `converged` output is then 0 (the only way PSN's
is; it has no sequential rule).
Overflow: the best CENTRE_POOL * K centres are grouped; pixels of centres ranked beyond K become
void and those centres are counted in candidates_dropped.
score_threshold, nms_iou, mask_sigma and overlap_threshold are not used by this method.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panoptic_ros.classes import LabelSet
from panoptic_ros.fusion.base import Fusion, Heads, RuntimeThresholds
from panoptic_ros.fusion.core import Segments
from panoptic_ros.fusion.static_ops import first_true, index_op_input, top_candidates
from panoptic_ros.pipeline_io import HEAD_CENTER, HEAD_OFFSET, HEAD_SEMANTIC

CENTRE_POOL = 2  # centres grouped per K slot: pixels of centres beyond K become void, not another instance
GROUP_STRIDE = 8  # pixels per side of the cells that narrow the closest-centre search
CANDIDATES = 5  # centres each cell's pixels compare (group_pixels): 4 left 4 of the 50 held-out frames crowded


class Centres:
    """Instance centres best first: y, x (P,) float32 pixel coordinates, score (P,), valid (P,)."""

    def __init__(self, y: Tensor, x: Tensor, score: Tensor, valid: Tensor) -> None:
        self.y, self.x, self.score, self.valid = y, x, score, valid


def find_instance_centres(center: Tensor, threshold: Tensor, kernel: int, count: int) -> tuple[Centres, Tensor]:
    """(the `count` best centres of heatmap `center` (H, W), how many centres there are in all).

    A centre is a pixel above threshold that is the maximum of its kernel x kernel window and has
    no earlier pixel (raster order) of the same value in the window: one centre per flat-topped
    peak (e.g. where the heads' bilinear upsampling clamps at the image border).
    """
    width = center.shape[1]
    # The window's maximum as a row maximum of column maxima: the same values, a fraction of the work.
    rows = F.max_pool2d(center[None, None], (kernel, 1), stride=1, padding=(kernel // 2, 0))
    pooled = F.max_pool2d(rows, (1, kernel), stride=1, padding=(0, kernel // 2))[0, 0]
    peak = (center == pooled) & (center > threshold)
    index, score, valid = top_candidates(center.reshape(-1), peak.reshape(-1), count)
    y = torch.div(index, width, rounding_mode="floor")
    x = index - y * width
    duplicate = plateau_followers(center, y, x, score, kernel // 2) & valid
    total = peak.to(torch.int64).sum() - duplicate.to(torch.int64).sum()
    return Centres(y.to(torch.float32), x.to(torch.float32), score, valid & ~duplicate), total


def plateau_followers(center: Tensor, y: Tensor, x: Tensor, score: Tensor, radius: int) -> Tensor:
    """(P,) bool: the pixel (y, x) has a pixel of value `score` before it, in raster order, within
    `radius` (its window's earlier half: rows above, and pixels to the left in its row)."""
    width = center.shape[1]
    flat = center.reshape(-1)
    earlier = [(dy, dx) for dy in range(-radius, 1) for dx in range(-radius, radius + 1) if (dy, dx) < (0, 0)]
    found = torch.zeros_like(score, dtype=torch.bool)
    for dy, dx in earlier:
        ny, nx = y + dy, x + dx
        inside = (ny >= 0) & (nx >= 0) & (nx < width)
        # (Where, not Clip: TensorRT clips float tensors only.)
        row = torch.where(inside, ny, torch.zeros_like(ny))
        column = torch.where(inside, nx, torch.zeros_like(nx))
        neighbour = flat[row * width + column]
        found = found | (inside & (neighbour == score))
    return found


class Grouping(NamedTuple):
    """group_pixels' result: taken (H, W) the value of every pixel's closest centre; how it was
    found: candidates (C, h, w) the centres each GROUP_STRIDE cell compares, choice (H, W) int32 the
    pixel's pick among them; crowded 0-d bool: some cell had more than C centres that could be
    closest to one of its pixels (the pick is then the closest of the C nearest, maybe not of all)."""

    taken: Tensor
    candidates: Tensor
    choice: Tensor
    crowded: Tensor


def group_pixels(offset: Tensor, centres: Centres, values: Tensor, thing: Tensor) -> Grouping:
    """Each pixel takes `values` (P,) of the centre closest to its position + offset (dy, dx) (2, H, W);
    only the picks of `thing` (H, W) pixels are certified (`crowded`).

    The search is narrowed on a coarse grid of GROUP_STRIDE-pixel cells (module docstring): for
    each cell, the box around its pixels' targets. A centre farther from the box than some centre
    is from the box's farthest corner is closer to no target in it; of the centres left, the
    CANDIDATES nearest to the box are compared per pixel (exact while no more are left: `crowded`
    says when more were). Pixels are compared in cells, (h, s, w, s) views of the (H, W) maps, so
    that each cell's candidates broadcast over its pixels without being repeated; a running minimum
    over the candidates (first one on ties, as an arg-min) keeps the pick and its value.
    """
    s = GROUP_STRIDE
    _, height, width = offset.shape
    h, w = height // s, width // s
    device = offset.device
    ys = torch.arange(height, dtype=torch.float32, device=device)[:, None]
    xs = torch.arange(width, dtype=torch.float32, device=device)[None, :]
    target_y, target_x = ys + offset[0], xs + offset[1]
    # Per cell (rows of a (cells, 1) column against (1, P) centres: broadcasts ONNX Runtime runs fast).
    target = torch.stack((target_y, target_x))[None]
    high = F.max_pool2d(target, s)[0].reshape(2, -1, 1)
    low = -F.max_pool2d(-target, s)[0].reshape(2, -1, 1)
    mean = F.avg_pool2d(target, s)[0].reshape(2, -1, 1)
    centre_y, centre_x = centres.y[None, :], centres.x[None, :]
    inf = offset.new_tensor(float("inf"))
    to_mean = torch.where(centres.valid[None, :], (mean[0] - centre_y) ** 2 + (mean[1] - centre_x) ** 2, inf)
    closest_to_mean = torch.argmin(index_op_input(to_mean), dim=1)  # (cells,): bounds the others
    anchor_y, anchor_x = centres.y[closest_to_mean], centres.x[closest_to_mean]
    bound_y = torch.maximum((high[0, :, 0] - anchor_y).abs(), (low[0, :, 0] - anchor_y).abs())
    bound_x = torch.maximum((high[1, :, 0] - anchor_x).abs(), (low[1, :, 0] - anchor_x).abs())
    bound = (bound_y**2 + bound_x**2)[:, None]
    outside_y = F.relu(low[0] - centre_y) + F.relu(centre_y - high[0])  # (cells, P) distance to the box
    outside_x = F.relu(low[1] - centre_x) + F.relu(centre_x - high[1])
    to_box = outside_y ** 2 + outside_x ** 2
    key = torch.where(centres.valid[None, :] & (to_box <= bound), to_box, inf)
    count = min(CANDIDATES, key.shape[1])
    # One more than compared: the nearest centre left out, to certify the picks (below).
    nearest_keys, nearest = torch.topk(index_op_input(-key), min(count + 1, key.shape[1]), dim=1)
    candidates = nearest[:, :count].T.reshape(count, h, w)
    # Each cell's candidates as (C, h, 1, w, 1), against its pixels' targets (h, s, w, s);
    # invalid centres sit infinitely far away.
    far = torch.where(centres.valid, centres.y, inf)
    cell_y, cell_x = far[candidates][:, :, None, :, None], centres.x[candidates][:, :, None, :, None]
    cell_value = values[candidates][:, :, None, :, None]
    target_y, target_x = target_y.reshape(h, s, w, s), target_x.reshape(h, s, w, s)
    best = (target_y - cell_y[0]) ** 2 + (target_x - cell_x[0]) ** 2
    choice = torch.zeros_like(best, dtype=torch.int32)
    taken = cell_value[0] + torch.zeros_like(choice, dtype=values.dtype)
    for c in range(1, count):
        distance = (target_y - cell_y[c]) ** 2 + (target_x - cell_x[c]) ** 2
        closer = distance < best
        best = torch.minimum(distance, best)
        choice = torch.where(closer, torch.full_like(choice, c), choice)
        taken = torch.where(closer, cell_value[c], taken)
    # A centre left out is no closer to any target in the box than to the box: the picks are exact
    # unless it is as close to the box as some pixel of the cell is to its pick.
    crowded = torch.zeros((), dtype=torch.bool, device=device)
    if nearest_keys.shape[1] > count:
        left_out = -nearest_keys[:, count]
        counted = torch.where(thing.reshape(h, s, w, s), best, torch.zeros_like(best))
        farthest_pick = F.max_pool2d(counted.reshape(1, 1, height, width), s).reshape(-1)
        crowded = ((left_out < inf) & (left_out <= farthest_pick)).to(torch.int32).amax() > 0
    return Grouping(taken.reshape(height, width), candidates, choice.reshape(height, width), crowded)


def vote_classes(grouping: Grouping, instance_of: Tensor, thing_index: Tensor, thing_ids: Tensor,
                 count: int) -> Tensor:
    """(count,) class id of each instance: the thing class most of its pixels have (ties: lower class).

    instance_of (P,) maps centres to instances (count: none); thing_index (H, W) is a pixel's index
    into thing_ids, len(thing_ids) or more for pixels that join no instance. Votes are counted per
    cell and candidate (a one-hot of candidate x class per pixel, summed over each cell), then per
    instance.
    """
    s = GROUP_STRIDE
    num_things = thing_ids.shape[0]
    candidates = grouping.candidates.shape[0]
    codes = torch.arange(candidates * num_things, device=thing_index.device, dtype=torch.int32)
    # Pixels of no thing class get a code beyond the one-hot's.
    code = torch.where(thing_index < num_things, grouping.choice * num_things + thing_index,
                       torch.full_like(thing_index, candidates * num_things))
    one_hot = (code[None] == codes[:, None, None]).to(torch.float32)
    # Block sums (exact: at most s * s per cell) -> (C, classes, cells).
    per_cell = (F.avg_pool2d(one_hot[None], s)[0] * float(s * s)).reshape(candidates, num_things,
                                                                          grouping.candidates[0].numel())
    instance = instance_of[grouping.candidates].reshape(candidates, 1, -1)  # (C, 1, cells)
    member = (instance == torch.arange(count, device=code.device)[None, :, None]).to(torch.float32)  # (C, K, cells)
    votes = torch.matmul(member, per_cell.transpose(1, 2)).sum(dim=0)  # (K, T)
    return thing_ids[index_op_input(votes).argmax(dim=1)]


def semantic_codes(logits: Tensor, class_codes: list[int]) -> Tensor:
    """(C, H, W) class logits -> (H, W) int32: class_codes[c] of each pixel's arg-max class c (ties:
    the lower class). A running maximum over the classes: a pixel's code without an (H, W) class
    map to look it up from (cheaper than ArgMax + Gather in ONNX Runtime and eager PyTorch)."""
    best = logits[0]
    code = torch.full(best.shape, class_codes[0], dtype=torch.int32, device=logits.device)
    for c in range(1, logits.shape[0]):
        better = logits[c] > best
        best = torch.maximum(logits[c], best)
        code = torch.where(better, torch.full_like(code, class_codes[c]), code)
    return code


class PSNFusion(Fusion):
    def __init__(self, label_set: LabelSet, max_instances: int = 100, nms_kernel: int = 7) -> None:
        super().__init__(label_set, num_candidates=max_instances, max_instances=max_instances, label_stride=1)
        if nms_kernel < 1 or nms_kernel % 2 == 0:
            raise ValueError(f"nms_kernel must be a positive odd number of pixels, got {nms_kernel}")
        self.nms_kernel = nms_kernel
        # A pixel's semantic code: the index into thing_ids of a thing class, T + s for the s-th stuff class.
        num_things = len(label_set.thing_ids)
        self.class_codes = [label_set.thing_ids.index(c) if label_set.thing[c]
                            else num_things + label_set.stuff_ids.index(c) for c in range(label_set.num_classes)]

    @classmethod
    def for_network(cls, network: nn.Module, max_instances: int, nms_kernel: int) -> PSNFusion:
        return cls(network.label_set, max_instances, nms_kernel)

    def segments(self, heads: Heads, thresholds: RuntimeThresholds) -> Segments:
        k, num_things = self.num_candidates, len(self.label_set.thing_ids)
        # Batch 1: flattened, not indexed (an exported index is a Gather, a copy of the whole head).
        center = heads[HEAD_CENTER].flatten(0, 2)
        pool = min(CENTRE_POOL * k, center.numel())
        centres, total = find_instance_centres(center, thresholds.center_threshold, self.nms_kernel, pool)
        # The first K valid centres fill the slots; the rest of the pool only claims pixels to make them void.
        slot, score, in_slot = top_candidates(centres.score, centres.valid, k)
        # Pool position -> instance (K for a valid centre beyond K): slots hold pool positions in order.
        pool_slot = (slot[:, None] == torch.arange(pool, device=center.device)[None, :]) & in_slot[:, None]
        instance_of = first_true(pool_slot)
        void = k + len(self.label_set.stuff_ids)
        label_of = torch.where(instance_of < k, instance_of, torch.full_like(instance_of, void)).to(torch.int32)
        code = semantic_codes(heads[HEAD_SEMANTIC].flatten(0, 1), self.class_codes)
        grouping = group_pixels(heads[HEAD_OFFSET].flatten(0, 1), centres, label_of, code < num_things)
        thing_class = vote_classes(grouping, instance_of, code, self.thing_ids, k)
        # Thing pixels take their centre's label (void beyond K), stuff pixels their stuff segment.
        labels = torch.where(code < num_things, grouping.taken, code + (k - num_things))
        dropped = torch.maximum(total - k, torch.zeros_like(total))
        # No sequential rule: converged unless a crowded cell made the closest-centre search inexact.
        return Segments(labels, thing_class, score, in_slot, ~grouping.crowded, dropped)
