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
   pixel-exact (`block_pixels`): between cell centres a mask holds all of a 4 x 4 block or none of
   it unless its boundary crosses the block (`corner_fraction`), and only crossed blocks are
   evaluated pixel by pixel (at most BOUNDARY_CHUNKS x BOUNDARY_BLOCKS blocks, BOUNDARY_MASKS
   masks each; beyond, `converged` is 0 and the masks left out count their corner fraction).
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

from typing import NamedTuple

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
    first_true_positions,
    index_op_input,
    to_input_pixels,
    top_candidates,
)
from panoptic_ros.networks.spinet import FEATURE_STRIDE
from panoptic_ros.pipeline_io import HEAD_CLASS_LOGITS, HEAD_FILTERS, HEAD_PANOPTIC_FEATURE

SAMPLES_PER_INSTANCE = 2  # sampled filters per output instance slot
PEAK_WINDOW = 3  # cells
OWNER_CANDIDATES = 4  # kept masks each 4 x 4 pixel block compares (pixel_owner)
# Blocks that mask boundaries cross, counted pixel by pixel for the merge: TopKs of fewer than
# onnx_audit.TOPK_MAX; the shipped model crosses at most 3544 of a 256 x 512 frame's 8385 blocks.
BOUNDARY_BLOCKS = 3839
BOUNDARY_CHUNKS = 2
BOUNDARY_MASKS = 48  # masks whose boundary crosses one block (the shipped model at 256 x 512: 29, 37 at score 0.3)


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


class MaskBlocks(NamedTuple):
    """The M masks' input pixels, counted on the (h + 1) x (w + 1) blocks between cell centres
    (`block_pixels`).

    A block's pixels interpolate its 4 corner cells only, so a mask holds all of a block's pixels
    when all its corner cells are in the mask and none when none is; only the blocks a mask's
    boundary crosses are counted pixel by pixel.
    whole (M, blocks) float32: the pixels of each block a mask holds, on the blocks counted whole
    (0 on the others); pixels (P * (BOUNDARY_MASKS + 2), s * s) float32: on each of the P
    pixel-counted blocks, the pixels (in the image) of each crossing mask, then all and none;
    row (M, P): each mask's row of `pixels` on each pixel-counted block; area (M,) float32: each
    mask's input pixels; exact 0-d bool: every crossed block was counted pixel by pixel (else the
    masks left out count the fraction of their corner cells in the mask on it).
    """

    whole: Tensor
    pixels: Tensor
    row: Tensor
    area: Tensor
    exact: Tensor


def block_pixels(logits: Tensor, fraction: Tensor, mask_sigma: Tensor) -> MaskBlocks:
    """Each mask's input pixels on the blocks between cell centres, from the stride-4 logits
    (M, h, w) and the masks' corner_fraction: the per-pixel masks of `pixel_owner`, evaluated only on
    the blocks a mask's boundary crosses.

    The crossed blocks counted are the first BOUNDARY_CHUNKS x BOUNDARY_BLOCKS in row-major order;
    on each, the first BOUNDARY_MASKS masks crossing it (in paste order) are evaluated pixel by pixel.
    """
    m, h, w = logits.shape
    s = FEATURE_STRIDE
    blocks = (h + 1) * (w + 1)
    fraction = fraction.reshape(m, blocks)
    crossed = fraction - torch.floor(fraction)  # > 0 where crossed
    in_image = _block_pixels_in_image(h, w, s, logits.device)  # (blocks, s * s)
    size = in_image.sum(dim=1)

    # The crossed blocks counted pixel by pixel, and the masks crossing each (M, P).
    any_crossed = crossed.amax(dim=0) > 0
    picked, found = first_true_positions(any_crossed, BOUNDARY_BLOCKS, BOUNDARY_CHUNKS)
    last = torch.where(found, picked, torch.full_like(picked, -1)).amax()
    counted = any_crossed & (torch.arange(blocks, device=logits.device) <= last)  # (blocks,): among picked
    on_picked = fraction[:, picked] * found.to(torch.float32)[None, :]
    crosses = (on_picked > 0) & (on_picked < 1)
    before = torch.cumsum(crosses.to(torch.float32), dim=0)  # crossing masks up to each one
    slots = min(BOUNDARY_MASKS, m)
    order = torch.arange(m, 0, -1, device=logits.device, dtype=torch.float32)[:, None]  # paste order first
    key, candidate = torch.topk(index_op_input(crosses) * order, slots, dim=0)  # (slots, P)
    flat = logits.reshape(-1)
    offsets = [o.reshape(-1)[picked] for o in _corner_offsets(h, w, logits.device)]
    corner_logits = [flat[candidate * (h * w) + o].reshape(-1) for o in offsets]  # (slots * P,) each
    inside = block_pixel_masks(corner_logits, s, mask_sigma).to(torch.float32).reshape(s * s, slots, -1)
    pixel_in_image = in_image[picked]
    evaluated = inside.permute(2, 1, 0) * (key > 0).to(torch.float32).T[..., None] * pixel_in_image[:, None, :]
    table = torch.cat((evaluated, pixel_in_image[:, None], torch.zeros_like(pixel_in_image)[:, None]),
                      dim=1)  # (P, slots + 2, s * s)

    # Each mask's row on each counted block: its slot where it crosses the block, the full row where
    # it holds all of it, else the empty one (also for crossing masks beyond the slots: not exact).
    full_row, empty_row = torch.full((), slots, device=logits.device), torch.full((), slots + 1, device=logits.device)
    row = torch.where(crosses & (before <= slots), before.to(torch.int64) - 1,
                      torch.where(on_picked == 1, full_row, empty_row))
    row = row + (slots + 2) * torch.arange(picked.shape[0], device=logits.device)[None, :]
    pixels = table.reshape(-1, s * s)
    # Blocks counted whole: all pixels where all corners are in; the corner fraction of them on
    # crossed blocks beyond the budget (not exact).
    whole = fraction * (size * (~counted).to(torch.float32))[None, :]
    area = whole.sum(dim=1) + pixels.sum(dim=1)[row].sum(dim=1)
    exact = (any_crossed.to(torch.int32).sum() <= picked.shape[0]) & (before[-1].amax() <= slots)
    return MaskBlocks(whole, pixels, row, area, exact)


def paste(blocks: MaskBlocks, valid: Tensor, overlap_threshold: Tensor) -> tuple[Tensor, Tensor]:
    """Panoptic FPN's merge on the masks' input pixels, one mask at a time by confidence: a mask is
    dropped when the fraction of its pixels taken by the masks kept before it, as float32, is >
    overlap_threshold (the reference's test), else it takes its free pixels. -> (keep (M,) bool,
    converged 0-d bool: every pixel was counted exactly, so the decisions are the sequential rule's).

    The "taken" state: on the blocks counted whole, the pixels a kept mask holds there (every mask
    reaching such a block holds all of it, so min(mine, taken) is the overlap); on the pixel-counted
    blocks, each pixel."""
    whole, pixels, row, area = blocks.whole, blocks.pixels, blocks.row, blocks.area
    candidate = valid & (area > 0)
    taken_blocks = torch.zeros_like(whole[0])
    taken_pixels = torch.zeros_like(pixels[row[0]])
    keep = []
    for n in range(whole.shape[0]):
        mine_blocks, mine_pixels = whole[n], pixels[row[n]]
        taken = torch.minimum(mine_blocks, taken_blocks).sum() + (mine_pixels * taken_pixels).sum()
        kept = candidate[n] & ~(taken / area[n].clamp(min=1.0) > overlap_threshold)
        claimed = kept.to(torch.float32)
        taken_blocks = torch.maximum(taken_blocks, mine_blocks * claimed)
        taken_pixels = torch.maximum(taken_pixels, mine_pixels * claimed)
        keep.append(kept)
    return torch.stack(keep), blocks.exact


def _block_pixels_in_image(h: int, w: int, stride: int, device: torch.device) -> Tensor:
    """(blocks, s * s) float32: 1 where pixel (u, v) of block (a, b) lies in the image (blocks start
    s / 2 pixels before the first cell's centre, _crop). Constants of the shape."""
    def side(size: int) -> Tensor:
        pixel = torch.arange(size + 1, device=device)[:, None] * stride - stride // 2 + torch.arange(stride,
                                                                                                 device=device)
        return ((pixel >= 0) & (pixel < size * stride)).to(torch.float32)  # (size + 1, s)

    rows, cols = side(h), side(w)
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


def block_pixel_masks(corners: list[Tensor], stride: int, mask_sigma: Tensor) -> Tensor:
    """(s, s, N) bool: sigmoid > mask_sigma of the bilinear values inside N blocks, given the 4 corner
    logits (N,) each (top-left, top-right, bottom-left, bottom-right): upsample_blocks' float
    operations, bit for bit, with the block axis last, where ONNX Runtime's elementwise broadcasts
    are fast (upsample_blocks' layout, pixels innermost, made them the fusion's main cost at 256 x 512)."""
    top_left, top_right, bottom_left, bottom_right = corners
    fraction = (torch.arange(stride, dtype=top_left.dtype, device=top_left.device) + 0.5) / stride
    fy = fraction[:, None]
    fx = fraction[None, :, None]
    left = top_left[None, :] * (1 - fy) + bottom_left[None, :] * fy  # (s, N)
    right = top_right[None, :] * (1 - fy) + bottom_right[None, :] * fy
    values = left[:, None, :] * (1 - fx) + right[:, None, :] * fx  # (s, s, N)
    return torch.sigmoid(values) > mask_sigma


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
        keep, converged = paste(block_pixels(logits, fraction, thresholds.mask_sigma), samples.valid,
                                thresholds.overlap_threshold)
        m = keep.shape[0]

        # The first K kept masks fill the slots; the pixels of kept masks beyond K become void.
        slot, score, in_slot = top_candidates(samples.score, keep, min(k, m))
        slot_of = first_true((slot[:, None] == torch.arange(m, device=keep.device)[None, :]) & in_slot[:, None])
        void = torch.full((1,), k + len(self.label_set.stuff_ids), dtype=torch.int64, device=keep.device)
        label_of = torch.cat((torch.where(slot_of < min(k, m), slot_of, void), void))  # index m: no mask
        owner, owners_exact = pixel_owner(logits, fraction, keep, thresholds.mask_sigma)
        stuff_logits = to_input_pixels(self.network.stuff_mask_logits(feature), FEATURE_STRIDE)
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
