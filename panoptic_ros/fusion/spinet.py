"""SPINet fusion (Hwang et al., sections 3.2-3.4 and "Inference" in section 4), deciding every input pixel.

1. `sampling_locations`: locations of every level whose class confidence exceeds score_threshold
   (the paper uses 0.45), best first. Two declared deviations (models/README.md, with their PQ
   cost): only locations that are a PEAK_WINDOW x PEAK_WINDOW local maximum of their class's
   confidence are sampled, and at most SAMPLES_PER_INSTANCE * K of them (the static graph needs a
   fixed budget, and without the local-maximum test the many locations of one large object fill it).
2. `instance_masks`: the sampled filters' single-shot convolution with the Panoptic-Feature
   (network.dynamic_mask_logits), stride-4 mask logits.
3. `paste`: Panoptic FPN's merge, masks pasted by confidence one at a time, a mask dropped when
   more than overlap_threshold of its input pixels are already taken. Mask and overlap areas are
   pixel-exact (`mask_pairs`): between cell centres a mask holds all of a 4 x 4 block or none of
   it unless its boundary crosses the block (`corner_fraction`), and only the crossing pairs
   (mask, block) are evaluated pixel by pixel (at most B per mask and Q in all, shares of the
   frame's blocks, `pair_budgets`; beyond, `converged` is 0 and the pairs left out count no pixels).
4. `pixel_owner`: every input pixel takes the first kept mask (by confidence) whose bilinearly
   upsampled logit there has sigmoid > mask_sigma, and the arg-max of the bilinearly upsampled
   stuff logits where none does. Only the OWNER_CANDIDATES first kept masks that can reach a pixel's
   4 x 4 block are compared; where more reach a block and a pixel of it is left uncovered,
   `converged` is 0.
Kept masks ranked beyond K are dropped: their pixels become void and they are counted in
candidates_dropped (samples beyond the sampling budget are not counted).
center_threshold and nms_iou are not used by this method.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panoptic_ros.classes import LabelSet
from panoptic_ros.fusion.base import Heads, NetworkFusion, RuntimeThresholds
from panoptic_ros.fusion.core import Segments
from panoptic_ros.fusion.detections import flatten_locations
from panoptic_ros.fusion.static_ops import (
    block_upsample,
    first_true,
    index_op_input,
    top_candidates,
)
from panoptic_ros.networks.spinet import FEATURE_STRIDE
from panoptic_ros.pipeline_io import HEAD_CLASS_LOGITS, HEAD_FILTERS, HEAD_PANOPTIC_FEATURE

SAMPLES_PER_INSTANCE = 2  # sampled filters per output instance slot
PEAK_WINDOW = 3  # cells
OWNER_CANDIDATES = 4  # kept masks each 4 x 4 pixel block compares (pixel_owner)
# Crossing pairs (a mask, a block its boundary crosses) evaluated pixel by pixel for the merge, as shares of
# a frame's blocks (the budgets grow with the input): per mask, a quarter of the blocks (the shipped model's
# noisiest mask crosses 8% of them at 256 x 512, 20% at 1024 x 2048, on the held-out frames), and in all
# PAIRS_PER_BLOCK per block (the shipped model: at most 1.7 at 256 x 512, 9.3 at 1024 x 2048).
MASK_BLOCK_SHARE = 4
PAIRS_PER_BLOCK = 12


class Samples(NamedTuple):
    """Sampled locations best first: index (M,) into the flattened locations of all levels, thing
    index (M,) into thing_ids, score (M,) confidence, valid (M,) bool."""

    index: Tensor
    thing: Tensor
    score: Tensor
    valid: Tensor


def sampling_locations(class_logits: list[Tensor], threshold: Tensor, count: int) -> Samples:
    """The `count` best locations (all levels, flattened row-major, levels in order) whose confidence
    of a thing class they are a local maximum of exceeds `threshold`; ties: lower location first."""
    peaks = []
    for logits in class_logits:
        probability = torch.sigmoid(logits)
        pooled = F.max_pool2d(probability, PEAK_WINDOW, stride=1, padding=PEAK_WINDOW // 2)
        peaks.append(probability * (probability == pooled).to(probability.dtype))
    confidence, thing = index_op_input(flatten_locations(peaks)).max(dim=1)
    index, score, valid = top_candidates(confidence, confidence > threshold, min(count, confidence.shape[0]))
    return Samples(index, thing[index], score, valid)


def instance_masks(network: nn.Module, feature: Tensor, filters: list[Tensor], samples: Samples) -> Tensor:
    """"single-shot convolution with dynamic filters for things": stride-4 mask logits (M, h, w) of
    the sampled filters."""
    return network.dynamic_mask_logits(feature, flatten_locations(filters)[samples.index][None]).squeeze(0)


def cell_masks(logits: Tensor, mask_sigma: Tensor, valid: Tensor) -> Tensor:
    """(M, h, w) bool: the stride-4 cells whose mask logit has sigmoid > mask_sigma, none for
    invalid samples (valid (M,))."""
    # Invalid samples compare with 1, which no sigmoid exceeds: one pass over the masks.
    return torch.sigmoid(logits) > torch.where(valid, mask_sigma, torch.ones_like(mask_sigma))[:, None, None]


def corner_fraction(cells: Tensor) -> Tensor:
    """(M, h + 1, w + 1) float32: the fraction of each block's corner cells in the mask, from the
    cell_masks (M, h, w). Block (a, b) lies between the centres of cells (a - 1, b - 1) and (a, b)
    and its pixels interpolate those 4 cells only; edge blocks take the fraction of their corners
    inside the image (the others repeat them: the edge clamp). Averages of 1, 2 or 4 zeros and
    ones, so exact: 0 where a mask reaches none of the block's pixels, 1 where it holds all of them
    (bilinear values lie between the corner values), fractional where its boundary crosses the block."""
    return F.avg_pool2d(cells.to(torch.float32)[None], 2, stride=1, padding=1, count_include_pad=False).squeeze(0)


class MaskPairs(NamedTuple):
    """The M masks' input pixels on the (h + 1) x (w + 1) blocks between cell centres (`mask_pairs`).

    A block's pixels interpolate its 4 corner cells only, so a mask holds all of a block's pixels
    when all its corner cells are in the mask and none when none is; only the blocks a mask's
    boundary crosses, its crossing pairs, are evaluated pixel by pixel. Per-block tensors have B
    spare rows after the blocks (one per pair slot, so that a step's writes never collide).
    whole (M, blocks + B) float32: each mask's pixels on the blocks it holds whole, 0 elsewhere;
    size (blocks + B,) float32: each block's pixels in the image (0 on spare rows);
    row (M, B) int64: the blocks each mask's boundary crosses, row-major (spare rows past them);
    low, high (M, B) float32: the mask's pixels on each, bit u * s + v of the block's 16 pixels,
    in two bytes; count (M, B) float32: how many; area (M,) float32: each mask's input pixels;
    exact 0-d bool: every crossing pair was evaluated (else the pairs left out count no pixels).
    """

    whole: Tensor
    size: Tensor
    row: Tensor
    low: Tensor
    high: Tensor
    count: Tensor
    area: Tensor
    exact: Tensor


def pair_budgets(masks: int, h: int, w: int) -> tuple[int, int]:
    """(B, Q): the crossing pairs evaluated per mask and in all, for `masks` masks on (h, w) cells,
    shares of the frame's (h + 1) x (w + 1) blocks."""
    blocks = (h + 1) * (w + 1)
    per_mask = -(-blocks // MASK_BLOCK_SHARE)
    return per_mask, min(PAIRS_PER_BLOCK * blocks, masks * per_mask)


def mask_pairs(logits: Tensor, fraction: Tensor, mask_sigma: Tensor) -> MaskPairs:
    """Each mask's input pixels on the blocks between cell centres, from the stride-4 logits
    (M, h, w) and the masks' corner_fraction: the per-pixel masks of `pixel_owner`, evaluated only on
    the blocks a mask's boundary crosses.

    Each mask's first B crossed blocks (row-major) are its pairs, listed mask by mask (paste
    order), and the first Q of the list are evaluated (`pair_budgets`).
    """
    m, h, w = logits.shape
    s = FEATURE_STRIDE
    blocks = (h + 1) * (w + 1)
    per_mask, budget = pair_budgets(m, h, w)
    device = logits.device
    fraction = fraction.reshape(m, blocks)
    size = torch.cat((_block_pixels_in_image(h, w, s, device).sum(dim=1), torch.zeros(per_mask, device=device)))
    whole = F.pad((fraction == 1).to(torch.float32), (0, per_mask)) * size

    # The list: slot start[n] + j holds mask n's j-th crossed block (float32 counts: exact below 2^24).
    crossing = (fraction > 0) & (fraction < 1)
    rank = torch.cumsum(crossing.to(torch.float32), dim=1)  # crossed blocks up to each block
    crossed = rank[:, -1]
    counted = torch.minimum(crossed, torch.full((), float(per_mask), device=device))
    start = torch.cumsum(counted, dim=0) - counted
    listed = crossing & (rank <= per_mask) & (start[:, None] + rank <= budget)
    slot = torch.where(listed, start[:, None] + rank - 1, torch.full((), float(budget), device=device))
    # Each listed pair writes its (mask, block) position into its own slot; the others all write into the
    # spare slot Q, which nothing reads. (A computed zero keeps export from storing the (M, blocks) positions
    # as a constant.)
    zero = (fraction[:1] * 0).to(torch.int64)
    position = torch.arange(m, device=device)[:, None] * blocks + (torch.arange(blocks, device=device)[None, :] + zero)
    # (ScatterND: TensorRT's ScatterElements takes no more indices than the data has entries.)
    pair = zero[0, :1].expand(budget + 1).index_put((slot.reshape(-1).to(torch.int64),), position.reshape(-1))
    used = torch.arange(budget + 1, device=device, dtype=torch.float32) < counted.sum().clamp(max=float(budget))
    mask_of = pair // blocks
    block_of = pair - mask_of * blocks

    # The listed pairs' pixels.
    flat = logits.reshape(-1)
    corners = [flat[mask_of * (h * w) + o.reshape(-1)[block_of]] for o in _corner_offsets(h, w, device)]
    rows_in, cols_in = (_side_in_image(n, s, device).T for n in (h, w))  # (s, n + 1)
    inside = ((rows_in[:, block_of // (w + 1)] * used.to(torch.float32))[:, None, :]
              * cols_in[:, block_of % (w + 1)][None, :, :]) > 0
    bits = (_pair_pixels(corners, s, mask_sigma) & inside).to(torch.float32)  # (s, s, Q + 1)
    place = torch.tensor([float(2**p) for p in range(8)], device=device)
    low, high = (bits.reshape(2, 8, -1) * place[None, :, None]).sum(dim=1)  # block rows 0-1, 2-3
    count = bits.sum(dim=(0, 1))

    # Each mask's window of B slots: its pairs, then the spare slot.
    j = torch.arange(per_mask, device=device, dtype=torch.float32)
    in_window = j[None, :] < torch.minimum(counted, budget - start)[:, None]
    window = torch.where(in_window, start[:, None] + j[None, :], torch.full((), float(budget), device=device))
    window = window.to(torch.int64)
    row = torch.where(in_window, block_of[window],
                      blocks + torch.arange(per_mask, device=device)[None, :])
    count = count[window]
    area = whole.sum(dim=1) + count.sum(dim=1)
    exact = ((crossed - counted).amax() == 0) & (counted.sum() <= budget)
    return MaskPairs(whole, size, row, low[window], high[window], count, area, exact)


def paste(pairs: MaskPairs, valid: Tensor, overlap_threshold: Tensor) -> tuple[Tensor, Tensor]:
    """Panoptic FPN's merge on the masks' input pixels, one mask at a time by confidence: a mask is
    dropped when the fraction of its pixels taken by the masks kept before it, as float32, is >
    overlap_threshold (the reference's test), else it takes its free pixels. -> (keep (M,) bool,
    converged 0-d bool: every pixel was counted exactly, so the decisions are the sequential rule's).

    The "taken" state, per block: how many of its pixels are taken (the overlap of a mask holding
    the block whole), and which (16 bits, read on the blocks a mask's boundary crosses; all of them
    where the count is the block's size). A step reads and writes the bits of its mask's B pair
    blocks only (bytes combined by table lookups), and the counts of all blocks."""
    whole, row = pairs.whole, pairs.row
    device = whole.device
    and_count, union = (t.to(device) for t in _byte_tables())
    candidate = valid & (pairs.area > 0)
    safe_area = pairs.area.clamp(min=1.0)
    size = pairs.size[row]  # (M, B)
    taken_count = torch.zeros_like(pairs.size)
    taken_bits = torch.zeros_like(pairs.size)
    all_bits = torch.full((), float(2**16 - 1), device=device)
    keep = []
    for n in range(whole.shape[0]):
        here = row[n]
        count_here, bits_here = taken_count[here], taken_bits[here]
        bits = torch.where(count_here >= size[n], all_bits, bits_here)
        high = torch.floor(bits / 256.0)
        low_index = ((bits - high * 256.0) * 256.0 + pairs.low[n]).to(torch.int64)
        high_index = (high * 256.0 + pairs.high[n]).to(torch.int64)
        overlap_here = and_count[low_index] + and_count[high_index]
        taken = torch.minimum(whole[n], taken_count).sum() + overlap_here.sum()
        kept = candidate[n] & ~(taken / safe_area[n] > overlap_threshold)
        claimed = kept.to(torch.float32)
        taken_count = torch.maximum(taken_count, whole[n] * claimed)
        taken_count = taken_count.index_put((here,), count_here + claimed * (pairs.count[n] - overlap_here))
        taken_bits = taken_bits.index_put((here,), torch.where(kept, union[high_index] * 256.0 + union[low_index],
                                                                bits_here))
        keep.append(kept)
    return torch.stack(keep), pairs.exact


@cache
def _byte_tables() -> tuple[Tensor, Tensor]:
    """(and_count, union) (65536,) float32: at a * 256 + b, the bits set in both bytes a and b, and a | b."""
    a, b = np.divmod(np.arange(65536), 256)
    both = np.bitwise_and(a, b)
    and_count = sum((both >> bit) & 1 for bit in range(8))
    return (torch.from_numpy(and_count.astype(np.float32)), torch.from_numpy(np.bitwise_or(a, b).astype(np.float32)))


def _pair_pixels(corners: list[Tensor], stride: int, mask_sigma: Tensor) -> Tensor:
    """(s, s, N) bool: sigmoid > mask_sigma of the bilinear values inside N blocks given their 4 corner
    logits (N,) each (top-left, top-right, bottom-left, bottom-right): upsample_blocks' float
    operations with the block axis last, where elementwise ops broadcast fastest."""
    top_left, top_right, bottom_left, bottom_right = corners
    fraction = (torch.arange(stride, dtype=top_left.dtype, device=top_left.device) + 0.5) / stride
    fy = fraction[:, None]
    fx = fraction[None, :, None]
    left = top_left[None, :] * (1 - fy) + bottom_left[None, :] * fy  # (s, N)
    right = top_right[None, :] * (1 - fy) + bottom_right[None, :] * fy
    values = left[:, None, :] * (1 - fx) + right[:, None, :] * fx  # (s, s, N)
    return torch.sigmoid(values) > mask_sigma


def _side_in_image(size: int, stride: int, device: torch.device) -> Tensor:
    """(size + 1, s) float32: 1 where pixel u of the blocks in row (column) a lies in the image (blocks
    start s / 2 pixels before the first cell's centre, _crop). Constants of the shape."""
    pixel = torch.arange(size + 1, device=device)[:, None] * stride - stride // 2 + torch.arange(stride, device=device)
    return ((pixel >= 0) & (pixel < size * stride)).to(torch.float32)


def _block_pixels_in_image(h: int, w: int, stride: int, device: torch.device) -> Tensor:
    """(blocks, s * s) float32: 1 where pixel (u, v) of block (a, b) lies in the image. Constants of the shape."""
    rows, cols = _side_in_image(h, stride, device), _side_in_image(w, stride, device)
    return (rows[:, None, :, None] * cols[None, :, None, :]).reshape((h + 1) * (w + 1), stride * stride)


def upsample_blocks(corners: Tensor, stride: int) -> Tensor:
    """Bilinear values inside blocks between cell centres: corners (4, C, a, b) = the values at the
    top-left, top-right, bottom-left and bottom-right cell centres of each block -> (C, a*s, b*s),
    pixel (u, v) of a block at fractions ((u + 0.5) / s, (v + 0.5) / s) from its top-left centre
    (PyTorch's align_corners=False weights: rows first, then columns)."""
    top_left, top_right, bottom_left, bottom_right = corners
    fraction = (torch.arange(stride, dtype=corners.dtype, device=corners.device) + 0.5) / stride
    fy = fraction[None, None, :, None, None]
    fx = fraction[None, None, None, None, :]
    left = top_left[:, :, None, :, None] * (1 - fy) + bottom_left[:, :, None, :, None] * fy  # (C, a, s, b, 1)
    right = top_right[:, :, None, :, None] * (1 - fy) + bottom_right[:, :, None, :, None] * fy
    values = left * (1 - fx) + right * fx  # (C, a, s, b, s)
    c, a, _, b, _ = values.shape
    return values.reshape(c, a * stride, b * stride)


def pixel_owner(logits: Tensor, fraction: Tensor, kept: Tensor, mask_sigma: Tensor) -> tuple[Tensor, Tensor]:
    """(owner, exact): owner (H, W) index of the first kept mask whose bilinearly upsampled logit has
    sigmoid > mask_sigma at the pixel, M where none has; logits (M, h, w) at stride FEATURE_STRIDE, their
    corner_fraction, kept (M,) in paste order.

    A mask reaches a block's pixels (corner_fraction) only if one of its 4 corner logits passes. Each
    block compares the OWNER_CANDIDATES first kept masks that reach it; exact (0-d bool) is False when
    a pixel none of them covers lies in a block that more masks reach (a later one might cover it).
    """
    m, h, w = logits.shape
    s = FEATURE_STRIDE
    # The first candidates by paste order: a key falling with the index, 0 where the mask does not reach.
    order = (kept.to(torch.float32) * (m - torch.arange(m, device=logits.device, dtype=torch.float32)))[:, None, None]
    count = min(OWNER_CANDIDATES, m)
    key, candidate = torch.topk(torch.ceil(fraction) * order, min(count + 1, m), dim=0)  # (C [+ 1], h + 1, w + 1)
    more = key[count] > 0 if m > count else torch.zeros_like(key[0], dtype=torch.bool)
    key, candidate = key[:count], candidate[:count]
    flat = logits.reshape(-1)
    corners = torch.stack([flat[candidate * (h * w) + offset] for offset in _corner_offsets(h, w, logits.device)])
    values = _crop(upsample_blocks(corners, s), s)  # (C, H, W)
    covers = (torch.sigmoid(values) > mask_sigma) & (_pixels_of_blocks(key, s) > 0)
    # The first covering candidate (arg-max takes the first maximum); 0-d fills keep (H, W) constants
    # out of the exported graph.
    as_float = index_op_input(covers)
    choice = torch.argmax(as_float, dim=0)
    owner = torch.gather(_pixels_of_blocks(candidate, s), 0, choice[None]).squeeze(0)
    covered = as_float.amax(dim=0) > 0
    unproven = (~covered & (_pixels_of_blocks(more.to(torch.float32), s) > 0)).to(torch.int32).amax() > 0
    return torch.where(covered, owner, owner.new_tensor(m)), ~unproven


def _crop(x: Tensor, stride: int) -> Tensor:
    """Block maps (..., (h + 1) * s, (w + 1) * s) -> the input pixels (..., h * s, w * s): the first
    block starts s / 2 pixels before the image (at the first cell's centre, mirrored)."""
    *_, rows, cols = x.shape
    half = stride // 2
    return x[..., half:rows - half, half:cols - half]


def _pixels_of_blocks(x: Tensor, stride: int) -> Tensor:
    """Per-block values (..., h + 1, w + 1) -> per input pixel (..., h * s, w * s)."""
    return _crop(block_upsample(x, stride), stride)


def _corner_offsets(h: int, w: int, device: torch.device) -> list[Tensor]:
    """Row-major positions (h + 1, w + 1) in an (h, w) map of each block's top-left, top-right,
    bottom-left and bottom-right corner cell; blocks over the edge take the edge cells (the clamp).
    Constants of the shape."""
    def grid(size: int) -> tuple[Tensor, Tensor]:
        return (torch.tensor([max(i - 1, 0) for i in range(size + 1)], device=device),
                torch.tensor([min(i, size - 1) for i in range(size + 1)], device=device))

    (top, bottom), (left, right) = grid(h), grid(w)
    return [(y * w)[:, None] + x[None, :] for y, x in ((top, left), (top, right), (bottom, left), (bottom, right))]


class SPINetFusion(NetworkFusion):
    def __init__(self, network: nn.Module, label_set: LabelSet, max_instances: int = 100) -> None:
        super().__init__(network, label_set, num_candidates=max_instances, max_instances=max_instances,
                         label_stride=1)

    @classmethod
    def for_network(cls, network: nn.Module, max_instances: int, nms_kernel: int) -> SPINetFusion:
        return cls(network, network.label_set, max_instances)

    def segments(self, heads: Heads, thresholds: RuntimeThresholds) -> Segments:
        feature = heads[HEAD_PANOPTIC_FEATURE]
        k = self.num_candidates
        samples = sampling_locations(heads[HEAD_CLASS_LOGITS], thresholds.score_threshold, SAMPLES_PER_INSTANCE * k)
        logits = instance_masks(self.network, feature, heads[HEAD_FILTERS], samples)
        fraction = corner_fraction(cell_masks(logits, thresholds.mask_sigma, samples.valid))
        keep, converged = paste(mask_pairs(logits, fraction, thresholds.mask_sigma), samples.valid,
                                thresholds.overlap_threshold)
        m = keep.shape[0]

        # The first K kept masks fill the slots; the pixels of kept masks beyond K become void.
        slot, score, in_slot = top_candidates(samples.score, keep, min(k, m))
        slot_of = first_true((slot[:, None] == torch.arange(m, device=keep.device)[None, :]) & in_slot[:, None])
        void = torch.full((1,), k + len(self.label_set.stuff_ids), dtype=torch.int64, device=keep.device)
        label_of = torch.cat((torch.where(slot_of < min(k, m), slot_of, void), void))  # index m: no mask
        owner, owners_exact = pixel_owner(logits, fraction, keep, thresholds.mask_sigma)
        stuff_logits = F.interpolate(self.network.stuff_mask_logits(feature), scale_factor=FEATURE_STRIDE,
                                     mode="bilinear", align_corners=False).squeeze(0)
        stuff = index_op_input(stuff_logits).argmax(dim=0) + k
        labels = torch.where(owner < m, label_of[owner], stuff)
        dropped = torch.maximum(keep.to(torch.int64).sum() - k, torch.zeros((), dtype=torch.int64))
        return _pad_segments(Segments(labels, self.thing_ids[samples.thing[slot]], score, in_slot,
                                      converged & owners_exact, dropped), k)


def _pad_segments(segments: Segments, k: int) -> Segments:
    """Fewer sampling locations than K (tiny images): append invalid candidates."""
    missing = k - segments.thing_valid.shape[0]
    if missing <= 0:
        return segments
    padded = (torch.cat((t, torch.zeros(missing, dtype=t.dtype, device=t.device))) for t in segments[1:4])
    return Segments(segments.labels, *padded, segments.converged, segments.candidates_dropped)
