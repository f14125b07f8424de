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
GROUP_STRIDE grid: each cell keeps the few centres that can be closest to one of its pixels' targets
(group_pixels), and each pixel compares those.
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
from panoptic_ros.fusion.static_ops import block_upsample, first_true, index_op_input, top_candidates
from panoptic_ros.pipeline_io import HEAD_CENTER, HEAD_OFFSET, HEAD_SEMANTIC

CENTRE_POOL = 2  # centres grouped per K slot: pixels of centres beyond K become void, not another instance
GROUP_STRIDE = 8  # pixels per side of the cells that narrow the closest-centre search
CANDIDATES = 4  # centres each cell's pixels compare (group_pixels)


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
    pooled = F.max_pool2d(center[None, None], kernel, stride=1, padding=kernel // 2)[0, 0]
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
    """group_pixels' result: nearest (H, W) centre index of every pixel; how it was found:
    candidates (C, h, w) the centres each GROUP_STRIDE cell compares, choice (H, W) the pixel's pick."""

    nearest: Tensor
    candidates: Tensor
    choice: Tensor


def group_pixels(offset: Tensor, centres: Centres) -> Grouping:
    """The centre closest to each pixel's position + offset (dy, dx) (2, H, W).

    The search is narrowed on a coarse grid of GROUP_STRIDE-pixel cells (module docstring): for
    each cell, the box around its pixels' targets. A centre farther from the box than some centre
    is from the box's farthest corner is closer to no target in it; of the centres left, the
    CANDIDATES nearest to the box are compared per pixel (exact while no more are left).
    """
    s = GROUP_STRIDE
    _, height, width = offset.shape
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
    _, candidates = torch.topk(index_op_input(-key), count, dim=1)  # (cells, C)
    candidates = candidates.T.reshape(count, height // s, width // s)
    # Gathered per cell, then repeated over its pixels; invalid centres sit infinitely far away.
    far = torch.where(centres.valid, centres.y, inf)
    candidate_y, candidate_x = block_upsample(far[candidates], s), block_upsample(centres.x[candidates], s)
    distance = (target_y - candidate_y) ** 2 + (target_x - candidate_x) ** 2  # (C, H, W)
    choice = torch.argmin(index_op_input(distance), dim=0)
    return Grouping(torch.gather(block_upsample(candidates, s), 0, choice[None])[0], candidates, choice)


def vote_classes(grouping: Grouping, instance_of: Tensor, thing_index: Tensor, thing_ids: Tensor,
                 count: int) -> Tensor:
    """(count,) class id of each instance: the thing class most of its pixels have (ties: lower class).

    instance_of (P,) maps centres to instances (count: none); thing_index (H, W) is a pixel's index
    into thing_ids, len(thing_ids) for pixels that join no instance. Votes are counted per cell and
    candidate (a one-hot of candidate x class per pixel, summed over each cell), then per instance.
    """
    s = GROUP_STRIDE
    num_things = thing_ids.shape[0]
    codes = torch.arange(grouping.candidates.shape[0] * (num_things + 1), device=thing_index.device)
    code = grouping.choice * (num_things + 1) + thing_index
    one_hot = (code[None] == codes[:, None, None]).to(torch.float32)
    # Block sums (exact: at most s * s per cell) -> (C, classes, cells), the "no class" row dropped.
    per_cell = (F.avg_pool2d(one_hot[None], s)[0] * float(s * s)).reshape(-1, num_things + 1,
                                                                          grouping.candidates[0].numel())
    instance = instance_of[grouping.candidates].reshape(grouping.candidates.shape[0], 1, -1)  # (C, 1, cells)
    member = (instance == torch.arange(count, device=code.device)[None, :, None]).to(torch.float32)  # (C, K, cells)
    votes = torch.matmul(member, per_cell[:, :num_things].transpose(1, 2)).sum(dim=0)  # (K, T)
    return thing_ids[index_op_input(votes).argmax(dim=1)]


class PSNFusion(Fusion):
    def __init__(self, label_set: LabelSet, max_instances: int = 100, nms_kernel: int = 7) -> None:
        super().__init__(label_set, num_candidates=max_instances, max_instances=max_instances, label_stride=1)
        if nms_kernel < 1 or nms_kernel % 2 == 0:
            raise ValueError(f"nms_kernel must be a positive odd number of pixels, got {nms_kernel}")
        self.nms_kernel = nms_kernel
        thing_index = torch.zeros(label_set.num_classes, dtype=torch.int64)  # class id -> index into thing_ids
        thing_index[torch.tensor(label_set.thing_ids, dtype=torch.int64)] = torch.arange(len(label_set.thing_ids))
        self.register_buffer("thing_index", thing_index, persistent=False)

    @classmethod
    def for_network(cls, network: nn.Module, max_instances: int, nms_kernel: int) -> PSNFusion:
        return cls(network.label_set, max_instances, nms_kernel)

    def segments(self, heads: Heads, thresholds: RuntimeThresholds) -> Segments:
        k = self.num_candidates
        center = heads[HEAD_CENTER][0, 0]
        pool = min(CENTRE_POOL * k, center.numel())
        centres, total = find_instance_centres(center, thresholds.center_threshold, self.nms_kernel, pool)
        # The first K valid centres fill the slots; the rest of the pool only claims pixels to make them void.
        slot, score, in_slot = top_candidates(centres.score, centres.valid, k)
        semantic_class = index_op_input(heads[HEAD_SEMANTIC][0]).argmax(dim=0)
        is_thing_pixel = self.is_thing[semantic_class] & (centres.valid.to(torch.int32).amax() > 0)
        grouping = group_pixels(heads[HEAD_OFFSET][0], centres)
        # Pool position -> instance (K for a valid centre beyond K): slots hold pool positions in order.
        pool_slot = (slot[:, None] == torch.arange(pool, device=center.device)[None, :]) & in_slot[:, None]
        instance_of = first_true(pool_slot)
        owner = instance_of[grouping.nearest]
        num_things = len(self.label_set.thing_ids)
        thing_index = torch.where(is_thing_pixel, self.thing_index[semantic_class],
                                  torch.full_like(semantic_class, num_things))
        thing_class = vote_classes(grouping, instance_of, thing_index, self.thing_ids, k)
        void = torch.full_like(owner, k + len(self.label_set.stuff_ids))
        labels = torch.where(is_thing_pixel, torch.where(owner < k, owner, void), self.semantic_labels(semantic_class))
        dropped = torch.maximum(total - k, torch.zeros_like(total))
        # No sequential rule: always converged (computed from the frame so that the output stays a graph
        # tensor rather than a constant the exporter folds away).
        any_centre = in_slot.to(torch.int32).amax() > 0
        return Segments(labels, thing_class, score, in_slot, any_centre | ~any_centre, dropped)
