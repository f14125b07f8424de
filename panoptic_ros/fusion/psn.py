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
GROUP_STRIDE grid: each block of SUPER_CELLS x SUPER_CELLS cells shortlists the SUPER_CANDIDATES
centres nearest to the box of its thing pixels' targets among those that can be closest to one of
them, each cell keeps the CANDIDATES of those nearest to its own box (group_pixels), and each pixel
compares those. That is exact unless more such centres exist and the nearest one left out is as close
to the cell's box as some thing pixel of the cell is to its pick: the frame's `converged` output is
then 0 (the only way PSN's is; it has no sequential rule).
Overflow: the best CENTRE_POOL * K centres are grouped; pixels of centres ranked beyond K become
void and those centres are counted in candidates_dropped.
score_threshold, nms_iou, mask_sigma and overlap_threshold are not used by this method.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panoptic_ros.classes import LabelSet
from panoptic_ros.fusion.base import Fusion, Heads, RuntimeThresholds
from panoptic_ros.fusion.core import Segments, lookup_columns
from panoptic_ros.fusion.static_ops import (
    first_true,
    from_cells,
    index_op_input,
    place_table,
    read_places,
    to_cells,
    top_candidates,
)
from panoptic_ros.pipeline_io import HEAD_CENTER, HEAD_OFFSET, HEAD_SEMANTIC

CENTRE_POOL = 2  # centres grouped per K slot: pixels of centres beyond K become void, not another instance
GROUP_STRIDE = 8  # pixels per side of the cells that narrow the closest-centre search
CANDIDATES = 5  # centres each cell's pixels compare (group_pixels): 4 left 4 of the 50 held-out frames crowded
SUPER_CELLS = 4  # cells per side of the blocks that shortlist centres for their cells (group_pixels)
SUPER_CANDIDATES = 16  # centres each block shortlists: the cells then search 16, not all CENTRE_POOL * K


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
    pooled = window_max(window_max(center, kernel, 0), kernel, 1)
    peak = (center == pooled) & (center > threshold)
    index, score, valid = top_candidates(center.reshape(-1), peak.reshape(-1), count)
    y = torch.div(index, width, rounding_mode="floor")
    x = index - y * width
    duplicate = plateau_followers(center, y, x, score, kernel // 2) & valid
    # Counted in float32 (exact below 2^24 pixels): ONNX Runtime sums int64 several times slower.
    total = (peak.to(torch.float32).sum() - duplicate.to(torch.float32).sum()).to(torch.int64)
    return Centres(y.to(torch.float32), x.to(torch.float32), score, valid & ~duplicate), total


def window_max(x: Tensor, kernel: int, dim: int) -> Tensor:
    """The maximum of the `kernel` (odd) entries centred on each entry of x along dim, entries beyond
    the edges ignored: max-pooling with stride 1, as a few element-wise maxima of shifted slices
    (windows doubling in length), several times cheaper than MaxPool's sliding window."""
    length = x.shape[dim]
    pad_shape = list(x.shape)
    pad_shape[dim] = kernel // 2
    pad = torch.full(pad_shape, -float("inf"), dtype=x.dtype, device=x.device)
    span, spans = 1, torch.cat((pad, x, pad), dim=dim)  # spans[i]: the maximum of padded[i : i + span]
    while 2 * span <= kernel:
        size = spans.shape[dim] - span
        spans = torch.maximum(spans.narrow(dim, 0, size), spans.narrow(dim, span, size))
        span *= 2
    # Two overlapping spans cover the window (span <= kernel < 2 * span).
    return torch.maximum(spans.narrow(dim, 0, length), spans.narrow(dim, kernel - span, length))


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


def nearest_centres(low: Tensor, high: Tensor, centre_y: Tensor, centre_x: Tensor, valid: Tensor,
                    count: int) -> tuple[Tensor, Tensor]:
    """For each box (low, high (2, n, 1): the corners of a block's thing-pixel targets), the `count`
    centres nearest to the box among the (n or 1, M) given that can be closest to some target in it:
    (keys (n, count) squared distances to the box, ascending, inf where none; index (n, count) into M).

    A centre farther from the box than some centre is from the box's farthest corner is closer to
    no target in it. An empty box (low +inf, high -inf) has only infinite keys.
    """
    inf = centre_y.new_tensor(float("inf"))
    above_y, below_y = high[0] - centre_y, centre_y - low[0]  # both >= 0 when the centre's row is in the box
    above_x, below_x = high[1] - centre_x, centre_x - low[1]
    near_y = torch.minimum(above_y, below_y).clamp(max=0.0)
    near_x = torch.minimum(above_x, below_x).clamp(max=0.0)
    far_y, far_x = torch.maximum(above_y, below_y), torch.maximum(above_x, below_x)
    bound = torch.where(valid, far_y * far_y + far_x * far_x, inf).amin(dim=1, keepdim=True)
    near = near_y * near_y + near_x * near_x
    key = torch.where(valid & (near <= bound), near, inf)
    keys, index = torch.topk(index_op_input(-key), count, dim=1)
    return -keys, index


def block_repeat(x: Tensor, factor: int) -> Tensor:
    """(hs, ws, ...) -> (hs * factor * ws * factor, ...): each block's entry for each of its cells, row-major."""
    hs, ws, *rest = x.shape
    spread = x[:, None, :, None] + torch.zeros((factor, 1, factor, *([1] * len(rest))), dtype=x.dtype, device=x.device)
    return spread.reshape(hs * factor * ws * factor, *rest)


def squared_distance(y: Tensor, x: Tensor, centre_y: Tensor, centre_x: Tensor) -> Tensor:
    """(y - centre_y)^2 + (x - centre_x)^2, squares as products: the values PyTorch's and ONNX
    Runtime's Pow of 2 give (both multiply), one op cheaper per square."""
    dy, dx = y - centre_y, x - centre_x
    return dy * dy + dx * dx


def group_pixels(offset: Tensor, centres: Centres, values: Tensor, thing: Tensor) -> Grouping:
    """Each `thing` (H, W) pixel takes `values` (P,) of the centre closest to its position + offset
    (dy, dx) (2, H, W) (ties: the earlier centre); other pixels take any centre's.

    The search is narrowed in two steps (module docstring): each block of SUPER_CELLS x SUPER_CELLS
    GROUP_STRIDE-pixel cells keeps the SUPER_CANDIDATES centres nearest to the box of its thing
    pixels' targets (`nearest_centres`), and each cell the CANDIDATES of those nearest to its own
    box. Exact unless the nearest centre left out at either step is as close to the cell's box as
    some thing pixel of the cell is to its pick (`crowded`). Pixels are compared in cells: the maps
    as (cells, s * s) rows, one per cell (`to_cells`), so that each cell's candidate broadcasts over
    its row (ONNX Runtime runs that broadcast several times faster than an (h, 1, w, 1) one over
    (h, s, w, s)); a running minimum over the candidates, in centre order, keeps the pick and its value.
    """
    s = GROUP_STRIDE
    _, height, width = offset.shape
    h, w = height // s, width // s
    f = max(n for n in (SUPER_CELLS, 2, 1) if h % n == 0 and w % n == 0)
    device = offset.device
    inf = offset.new_tensor(float("inf"))
    ys = torch.arange(height, dtype=torch.float32, device=device)[:, None]
    xs = torch.arange(width, dtype=torch.float32, device=device)[None, :]
    target = to_cells(torch.stack((ys + offset[0], xs + offset[1])), s)  # (2, cells, s * s)
    in_thing = to_cells(thing, s)
    # Box of each cell's thing-pixel targets, (2, h, w): empty (+inf low, -inf high) without thing pixels.
    high = torch.where(in_thing, target, -inf).amax(dim=2).reshape(2, h, w)
    low = torch.where(in_thing, target, inf).amin(dim=2).reshape(2, h, w)
    # Step 1, per block: the SUPER_CANDIDATES nearest centres, and one more to bound those left out.
    pool = centres.y.shape[0]
    kept = min(SUPER_CANDIDATES, pool)
    block_high = F.max_pool2d(high[None], f)[0].reshape(2, -1, 1)
    block_low = -F.max_pool2d(-low[None], f)[0].reshape(2, -1, 1)
    block_keys, block_nearest = nearest_centres(block_low, block_high, centres.y[None], centres.x[None],
                                                centres.valid[None], min(kept + 1, pool))
    block_hs, block_ws = h // f, w // f
    shortlist = block_repeat(block_nearest[:, :kept].reshape(block_hs, block_ws, kept), f)  # (cells, kept)
    # Step 2, per cell: the CANDIDATES nearest of its block's shortlist.
    count = min(CANDIDATES, kept)
    listed = lookup_columns([centres.y, centres.x, centres.valid.to(torch.float32)], shortlist)  # one Gather
    cell_keys, cell_nearest = nearest_centres(low.reshape(2, -1, 1), high.reshape(2, -1, 1), listed[0], listed[1],
                                              listed[2] > 0, min(count + 1, kept))
    picked = torch.gather(shortlist, 1, cell_nearest[:, :count])
    # In centre order (lower pool index first), so that ties go to the earlier centre as in the paper's loop.
    picked = -torch.topk(index_op_input(-picked), count, dim=1).values.to(picked.dtype)
    candidates = picked.T.reshape(count, h, w)
    # Each cell's candidates as (C, cells, 1), against its pixels' targets (cells, s * s);
    # invalid centres sit infinitely far away.
    far = torch.where(centres.valid, centres.y, inf)
    cell_y, cell_x = (c.reshape(count, -1, 1) for c in lookup_columns([far, centres.x], candidates))
    target_y, target_x = target
    # The pick's value is carried along (a Where per candidate is cheaper than one Gather per pixel).
    cell_value = values[candidates].reshape(count, -1, 1)
    best = squared_distance(target_y, target_x, cell_y[0], cell_x[0])
    choice = torch.zeros_like(best, dtype=torch.int32)
    taken = cell_value[0]
    for c in range(1, count):
        distance = squared_distance(target_y, target_x, cell_y[c], cell_x[c])
        closer = distance < best
        best = torch.minimum(distance, best)
        choice = torch.where(closer, torch.tensor(c, dtype=torch.int32, device=device), choice)
        taken = torch.where(closer, cell_value[c], taken)
    # A centre left out is no closer to any target in the box than to the box: the picks are exact
    # unless the nearest one left out (by the cell or by its block) is as close to the box as some
    # thing pixel of the cell is to its pick.
    left_out = inf.expand(h * w)
    if cell_keys.shape[1] > count:
        left_out = cell_keys[:, count]
    if block_keys.shape[1] > kept:
        left_out = torch.minimum(left_out, block_repeat(block_keys[:, kept].reshape(block_hs, block_ws), f))
    farthest_pick = torch.where(in_thing, best, torch.zeros_like(best)).amax(dim=1)
    crowded = ((left_out < inf) & (left_out <= farthest_pick)).to(torch.int32).amax() > 0
    if count == 1:  # (otherwise the Wheres made it full size already)
        taken = taken.expand(best.shape)
    return Grouping(from_cells(taken, h, s), candidates, from_cells(choice, h, s), crowded)


def vote_classes(grouping: Grouping, instance_of: Tensor, thing_index: Tensor, thing_ids: Tensor,
                 count: int) -> Tensor:
    """(count,) class id of each instance: the thing class most of its pixels have (ties: lower class).

    instance_of (P,) maps centres to instances (count: none); thing_index (H, W) is a pixel's index
    into thing_ids, len(thing_ids) or more for pixels that join no instance. Votes are counted per
    cell and (candidate, class) pair (`cell_pair_counts`), then per instance (`instance_votes`).
    """
    candidates, num_things = grouping.candidates.shape[0], thing_ids.shape[0]
    pairs = candidates * num_things
    # Pixels of no thing class get the code past the pairs, which counts nowhere.
    code = torch.where(thing_index < num_things, grouping.choice * num_things + thing_index,
                       torch.full_like(thing_index, pairs))
    per_cell = cell_pair_counts(code, pairs, GROUP_STRIDE)  # (pairs, cells)
    instance = instance_of[grouping.candidates].reshape(-1)  # (C * cells,)
    votes = instance_votes(instance, per_cell.reshape(candidates, num_things, -1).transpose(0, 1)
                           .reshape(num_things, -1), count)
    return thing_ids[index_op_input(votes).argmax(dim=1)]


def cell_pair_counts(code: Tensor, codes: int, s: int) -> Tensor:
    """(H, W) codes in [0, codes] -> (codes, cells) float32: how many pixels of each s x s cell hold
    each code below `codes` (code `codes` counts nowhere).

    Without a per-pixel one-hot over the codes: several codes share one float32 channel as digits
    of base 2^bits (a cell has fewer than 2^bits pixels), so a pixel writes one value per channel
    (a Gather from a small table), block sums add the digits without carries (exact: below 2^24),
    and the digits are read back per cell.
    """
    bits = (s * s).bit_length()
    table = place_table(codes, bits, codes + 1, code.device)  # (codes + 1, channels)
    # Gathered along the table's first axis (rows of `channels` values: ONNX Runtime's fast Gather), the block
    # sums taken in that pixel-major layout, so only the per-cell sums are transposed. The cells' rows are
    # added first, a sum of s contiguous slices of whole pixel rows (several times faster in ONNX Runtime
    # than first adding each row's s pixels, a reduction over an axis only `channels` apart).
    height, width = code.shape
    packed = torch.index_select(table, 0, code.reshape(-1)).reshape(height // s, s, width // s, s, -1)
    sums = packed.sum(dim=1).sum(dim=2).reshape(-1, table.shape[1])  # (cells, channels)
    return read_places(sums, bits)[:, :codes].T


def instance_votes(instance: Tensor, counts: Tensor, count: int) -> Tensor:
    """(count, T) float32: counts (T, N) summed per instance (N,) in [0, count] (count: none).

    A histogram without scatter-add and without an (N, count) one-hot: the instance as two digits,
    hi * base + lo, and one batched mat-mul, per class, of the hi one-hot times that class's counts
    with the lo one-hot. (Weighting the hi side, (T, 1, N) by (1, base, N), broadcasts along one
    axis only: ONNX Runtime multiplies that several times faster than an (N, base, 1) by (N, 1, T).)
    """
    base = math.isqrt(count) + 1
    digits = torch.arange(base, device=instance.device, dtype=instance.dtype)
    hi = torch.div(instance, base, rounding_mode="trunc")  # (instance >= 0: one Div, not floor's six ops)
    lo = instance - hi * base
    hi_one_hot = (hi[None, :] == digits[:, None]).to(torch.float32)  # (base, N)
    lo_one_hot = (lo[None, :] == digits[:, None]).to(torch.float32)  # (base, N)
    hi_weighted = hi_one_hot[None, :, :] * counts[:, None, :]  # (T, base, N)
    votes = torch.matmul(hi_weighted, lo_one_hot.T)  # (T, hi, lo)
    return votes.permute(1, 2, 0).reshape(base * base, counts.shape[0])[:count]


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
