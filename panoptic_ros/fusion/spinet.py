"""SPINet fusion (Hwang et al., sections 3.2-3.4 and "Inference" in section 4), deciding every input pixel.

1. `sampling_locations`: locations of every level whose class confidence exceeds score_threshold
   (the paper uses 0.45), best first. Two declared deviations (models/README.md, with their PQ
   cost): only locations that are a PEAK_WINDOW x PEAK_WINDOW local maximum of their class's
   confidence are sampled, and at most SAMPLES_PER_INSTANCE * K of them (the static graph needs a
   fixed budget, and without the local-maximum test the many locations of one large object fill it).
2. `instance_masks`: the sampled filters' single-shot convolution with the Panoptic-Feature
   (network.dynamic_mask_logits), stride-4 mask logits.
3. `paste`: Panoptic FPN's merge, masks pasted by confidence, a mask dropped when more than
   overlap_threshold of it is already taken. The keep decisions count mask and overlap areas on
   the stride-4 cells (a cell is in a mask when sigmoid(logit) > mask_sigma; declared deviation).
4. `pixel_owner`: every input pixel takes the first kept mask (by confidence) whose bilinearly
   upsampled logit there has sigmoid > mask_sigma, and the arg-max of the bilinearly upsampled
   stuff logits where none does. Only the OWNER_CANDIDATES first kept masks that can reach a pixel's
   4 x 4 block are compared (exact while no more reach it: kept masks overlap little).
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
    index_op_input,
    paste_in_order,
    top_candidates,
)
from panoptic_ros.networks.spinet import FEATURE_STRIDE
from panoptic_ros.pipeline_io import HEAD_CLASS_LOGITS, HEAD_FILTERS, HEAD_PANOPTIC_FEATURE

SAMPLES_PER_INSTANCE = 2  # sampled filters per output instance slot
PEAK_WINDOW = 3  # cells
OWNER_CANDIDATES = 4  # kept masks each 4 x 4 pixel block compares (pixel_owner)


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


def cell_masks(logits: Tensor, mask_sigma: Tensor) -> Tensor:
    """(M, h, w) bool: the stride-4 cells whose mask logit has sigmoid > mask_sigma."""
    return torch.sigmoid(logits) > mask_sigma


def paste(cells: Tensor, samples: Samples, overlap_threshold: Tensor) -> tuple[Tensor, Tensor]:
    """Panoptic FPN's merge decisions on the stride-4 cell masks (M, h, w): (keep (M,) bool,
    converged 0-d bool).

    Pasted one mask at a time (static_ops.paste_in_order: 2K masks make Jacobi sweeps costly), so
    the result is always the sequential rule's: converged is true (computed from the frame so that
    it stays a graph output rather than a folded constant)."""
    keep = paste_in_order(cells.reshape(cells.shape[0], -1), samples.valid, overlap_threshold)
    return keep, (keep | ~keep).all()


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


def pixel_owner(logits: Tensor, cells: Tensor, kept: Tensor, mask_sigma: Tensor) -> Tensor:
    """(H, W) index of the first kept mask whose bilinearly upsampled logit has sigmoid > mask_sigma at
    the pixel, M where none has; logits (M, h, w) at stride FEATURE_STRIDE, their cell_masks, kept (M,)
    in paste order.

    Pixels between the centres of 2 x 2 cells interpolate those 4 cells only ("blocks"; edge cells are
    repeated, which is the edge clamp), so a mask reaches a block's pixels only if one of its 4 corner
    logits passes. Each block compares the OWNER_CANDIDATES first kept masks that reach it.
    """
    m, h, w = logits.shape
    s = FEATURE_STRIDE
    # Any of a block's corner cells in the mask (edge blocks: the corners inside the image, the others
    # repeat them).
    reach = F.max_pool2d((cells & kept[:, None, None]).to(torch.float32)[None], 2, stride=1, padding=1).squeeze(0)
    # The first candidates by paste order: a key falling with the index, 0 where the mask does not reach.
    order = (m - torch.arange(m, device=logits.device, dtype=torch.float32))[:, None, None]
    count = min(OWNER_CANDIDATES, m)
    key, candidate = torch.topk(reach * order, count, dim=0)  # (C, h + 1, w + 1)
    flat = logits.reshape(-1)
    corners = torch.stack([flat[candidate * (h * w) + offset] for offset in _corner_offsets(h, w, logits.device)])
    values = _crop(upsample_blocks(corners, s), s)  # (C, H, W)
    covers = (torch.sigmoid(values) > mask_sigma) & (_pixels_of_blocks(key, s) > 0)
    # The first covering candidate (arg-max takes the first maximum); 0-d fills keep (H, W) constants
    # out of the exported graph.
    as_float = index_op_input(covers)
    choice = torch.argmax(as_float, dim=0)
    owner = torch.gather(_pixels_of_blocks(candidate, s), 0, choice[None]).squeeze(0)
    return torch.where(as_float.amax(dim=0) > 0, owner, owner.new_tensor(m))


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
        cells = cell_masks(logits, thresholds.mask_sigma)
        keep, converged = paste(cells, samples, thresholds.overlap_threshold)
        m = keep.shape[0]

        # The first K kept masks fill the slots; the pixels of kept masks beyond K become void.
        slot, score, in_slot = top_candidates(samples.score, keep, min(k, m))
        slot_of = first_true((slot[:, None] == torch.arange(m, device=keep.device)[None, :]) & in_slot[:, None])
        void = torch.full((1,), k + len(self.label_set.stuff_ids), dtype=torch.int64, device=keep.device)
        label_of = torch.cat((torch.where(slot_of < min(k, m), slot_of, void), void))  # index m: no mask
        owner = pixel_owner(logits, cells, keep, thresholds.mask_sigma)
        stuff_logits = F.interpolate(self.network.stuff_mask_logits(feature), scale_factor=FEATURE_STRIDE,
                                     mode="bilinear", align_corners=False).squeeze(0)
        stuff = index_op_input(stuff_logits).argmax(dim=0) + k
        labels = torch.where(owner < m, label_of[owner], stuff)
        dropped = torch.maximum(keep.to(torch.int64).sum() - k, torch.zeros((), dtype=torch.int64))
        return _pad_segments(Segments(labels, self.thing_ids[samples.thing[slot]], score, in_slot, converged,
                                      dropped), k)


def _pad_segments(segments: Segments, k: int) -> Segments:
    """Fewer sampling locations than K (tiny images): append invalid candidates."""
    missing = k - segments.thing_valid.shape[0]
    if missing <= 0:
        return segments
    padded = (torch.cat((t, torch.zeros(missing, dtype=t.dtype, device=t.device))) for t in segments[1:4])
    return Segments(segments.labels, *padded, segments.converged, segments.candidates_dropped)
