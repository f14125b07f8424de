"""RTPS fusion: parameter-free mask construction from dense detections (Hou et al., section 3.2),
deciding every input pixel.

1. `query_boxes`: NMS of the dense per-level boxes, ranked by class probability x centerness (eq. 4).
2. `pixel_boxes`: the global box map B(x, y) (eq. 14): the semantic and levelness logits (stride 4)
   are bilinearly upsampled to input pixels; a pixel takes the box of the level its levelness
   arg-max names (0: no box), from the level's location whose stride cell contains the pixel.
3. `instance_masks`: M(x, y, j) = IoU(B(x, y), B_j) * P_sem(x, y, c_j) > mask_sigma (eqs. 5-7).
4. `paste`: "the conventional fusion strategy" of Panoptic FPN: masks pasted by confidence, a mask
   dropped when more than overlap_threshold of it is taken already; semantic stuff on the rest.

Every decision is per input pixel; the search is narrowed on CELL x CELL blocks (CELL = the finest
box level's stride, so that B(x, y) takes at most one box per level in a block): each block keeps
the CELL_CANDIDATES best queries whose mask can reach one of its pixels (an upper bound from the
block's largest IoU and probability), and each pixel evaluates those. Pasting is the sequential
rule itself, one query at a time: a query's overlap counts only pixels of blocks where two masks
meet, so those blocks' pixels (at most OVERLAP_BLOCKS of them) carry the "already taken" state.
Layouts follow ONNX Runtime's costs (broadcasts and transposes are slow when the innermost axis is
repeated or moved): per-block statistics are (blocks, queries), per-pixel work is on block rows
(static_ops.to_cells: a block's pixels contiguous), so candidates are gathered as whole rows.
`converged` is 0 when NMS did not converge or either bound was exceeded (then the result may
differ from the sequential rule's).
Overflow: the best QUERY_POOL * K queries are pasted; pixels of queries ranked beyond K become void
and those queries are counted in candidates_dropped.
center_threshold is not used by this method.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from panoptic_ros.classes import LabelSet
from panoptic_ros.fusion.base import DenseBoxFusion, Heads, RuntimeThresholds
from panoptic_ros.fusion.core import FUSION_STRIDE, Segments
from panoptic_ros.fusion.detections import Detections, level_boxes, quality_ranked_detections
from panoptic_ros.fusion.static_ops import (
    block_upsample,
    coordinate_iou,
    from_cells,
    index_op_input,
    to_cells,
    to_input_pixels,
)
from panoptic_ros.pipeline_io import HEAD_BOX_REG, HEAD_CENTERNESS, HEAD_LEVELNESS, HEAD_SEMANTIC

QUERY_POOL = 2  # queries pasted per K slot: pixels of queries beyond K become void, not stuff
CELL_CANDIDATES = 8  # queries each block's pixels evaluate (the shipped model reaches 7 at sigma 0.3)
# Blocks whose pixels carry the paste state: TensorRT's TopK picks fewer than 3840 (onnx_audit.TOPK_MAX):
# every block up to 256 x 512 at CELL 8, 12% of a 1024 x 2048 frame.
OVERLAP_BLOCKS = 3839


def query_boxes(heads: Heads, strides: tuple[int, ...], image_size: tuple[int, int], thresholds: RuntimeThresholds,
                count: int) -> Detections:
    """Eq. 4 (NMS of the dense boxes), "we multiply the bounding box confidence with predicted
    centerness" (sec. 4.1): the `count` best NMS survivors."""
    return quality_ranked_detections(heads, HEAD_CENTERNESS, strides, image_size, thresholds, count)


class PixelBoxes(NamedTuple):
    """B(x, y) without an (H, W, 4) map: level (H, W) the pixel's levelness arg-max (0: no box, l:
    level l - 1); boxes[l] (4, rows, cols) the box of level l on each CELL x CELL block (the box of
    the level-l location whose stride cell holds the block); native[l] (4, h, w) the same boxes on
    the level's own grid (each holds (stride / CELL)^2 blocks)."""

    level: Tensor
    boxes: list[Tensor]
    native: list[Tensor]


def pixel_boxes(heads: Heads, strides: tuple[int, ...], image_size: tuple[int, int]) -> PixelBoxes:
    """Eq. 14, B(x, y) = b_xy^(argmax I(x, y)), with the levelness upsampled to input pixels."""
    levelness = to_input_pixels(heads[HEAD_LEVELNESS], FUSION_STRIDE)
    level = index_op_input(levelness).argmax(dim=0)
    per_level = level_boxes(heads[HEAD_BOX_REG], strides, image_size)
    blocks, native = [], []
    for boxes, reg, stride in zip(per_level, heads[HEAD_BOX_REG], strides, strict=True):
        h, w = reg.shape[-2:]
        if h * stride != image_size[0] or w * stride != image_size[1]:
            raise ValueError(f"RTPS needs image sides that are multiples of {stride}, got {image_size}")
        native.append(boxes.T.reshape(4, h, w))
        blocks.append(block_upsample(native[-1], stride // strides[0]))
    return PixelBoxes(level, blocks, native)


def block_rows(index: Tensor) -> Tensor:
    """index (cells, ...) of per-block tables stacked in blocks of `cells` rows -> the row numbers
    index * cells + the block (row b of the result reads its own block's entry)."""
    cells = index.shape[0]
    block = torch.arange(cells, device=index.device).reshape(cells, *([1] * (index.dim() - 1)))
    return index * cells + block


class CandidateMasks(NamedTuple):
    """instance_masks' result, per CELL x CELL block (row-major): query (cells, C) the queries the
    block's pixels evaluate, best first (the pool size where none); slot (P, cells) each query's
    position among its block's candidates (C where it is none); masks (cells, C, CELL * CELL) the
    block's pixels (to_cells order) in candidate c's mask; exact 0-d bool: no block had more
    queries reaching it than C."""

    query: Tensor
    slot: Tensor
    masks: Tensor
    exact: Tensor


def in_mask(m: Tensor, sigma: Tensor) -> Tensor:
    """Eq. 7, M_j(x, y) = M(x, y, j) > sigma: a value exactly at sigma is not in the mask."""
    return m > sigma


def largest_iou(queries: Detections, boxes: PixelBoxes, present: Tensor) -> Tensor:
    """(cells, P): each block's largest IoU with each query over the levels its pixels take (present
    (L, cells) 1 where a pixel of the block takes level l's box, else 0). Each level's IoUs are
    computed on its own grid and repeated over its blocks; queries are the last axis, so the repeat
    is a broadcast over contiguous rows (ONNX Runtime is slow when the broadcast axis is innermost)."""
    pool = queries.valid.shape[0]
    rows, cols = boxes.boxes[0].shape[-2:]
    query_box = [c[None, :] for c in queries.boxes.unbind(dim=1)]  # (1, P) each
    bound = None
    for level, level_box in enumerate(boxes.native):
        h, w = level_box.shape[-2:]
        factor = rows // h
        iou = coordinate_iou(query_box, list(level_box.reshape(4, h * w, 1)))  # (h * w, P)
        here = present[level].reshape(h, factor, w, factor, 1)
        iou = (iou.reshape(h, 1, w, 1, pool) * here).reshape(rows * cols, pool)
        bound = iou if bound is None else torch.maximum(bound, iou)
    return bound


def reaching_queries(queries: Detections, boxes: PixelBoxes, probability: Tensor, sigma: Tensor,
                     cell: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The queries whose mask can reach each block, best first: (query (cells, C), taken (cells, C)
    bool, slot (P, cells), exact 0-d bool); see CandidateMasks."""
    cells = boxes.level.numel() // (cell * cell)
    pool = queries.valid.shape[0]
    levels = torch.arange(1, len(boxes.boxes) + 1, device=boxes.level.device)[:, None, None]
    present = F.max_pool2d((boxes.level[None] == levels).to(torch.float32)[None], cell).reshape(-1, cells)
    # Reach bound: a pixel's product is at most the block's largest IoU (over the levels its pixels
    # take) times the block's largest probability of the class (the same float32 values as below).
    bound = largest_iou(queries, boxes, present)  # (cells, P)
    block_probability = F.max_pool2d(probability[None], cell).reshape(probability.shape[0], cells)
    # (Rows gathered, then transposed: ONNX Runtime gathers single elements along axis 1 4x slower.)
    query_probability = block_probability[queries.thing].T  # (cells, P)
    reach = in_mask(bound * query_probability, sigma) & queries.valid[None, :]
    count = min(CELL_CANDIDATES, pool)
    rank = torch.arange(pool, 0, -1, device=bound.device, dtype=torch.float32)[None, :]  # best query first
    key, query = torch.topk(index_op_input(reach) * rank, count, dim=1)
    taken = key > 0
    query = torch.where(taken, query, query.new_tensor(pool))  # (0-d fills: full-size ones become constants)
    # Slots counted along the queries in (P, cells) layout: ONNX Runtime's CumSum is fast over an outer axis.
    reached = reach.T
    before = torch.cumsum(reached.to(torch.float32), dim=0)  # reaching queries up to each one
    slot = torch.where(reached & (before <= count), before - 1, before.new_tensor(float(count))).to(torch.int64)
    exact = before[-1].amax() <= count
    return query, taken, slot, exact


def instance_masks(queries: Detections, boxes: PixelBoxes, probability: Tensor, sigma: Tensor,
                   cell: int) -> CandidateMasks:
    """Eqs. 5-7, M(x, y, j) = IoU(B(x, y), B_j) * P_sem(x, y, c_j) > sigma, for the queries that
    can reach each block. probability (T, H, W): P_sem of each thing class (queries.thing indexes it)."""
    query, taken, slot, exact = reaching_queries(queries, boxes, probability, sigma, cell)
    cells, count = query.shape
    chosen = torch.where(taken, query, query.new_tensor(0))
    # Per pixel: the IoU of its own level's box (0 without a box), from a table of each level's box
    # IoU with each candidate, per block (rows level * cells + block; level 0: no box).
    chosen_box = [c[chosen] for c in queries.boxes.unbind(dim=1)]  # (cells, C) each
    table = torch.stack([coordinate_iou(chosen_box, list(level_box.reshape(4, cells, 1)))
                         for level_box in boxes.boxes]) * taken.to(torch.float32)  # (L, cells, C)
    table = F.pad(table, (0, 0, 0, 0, 1, 0)).reshape(-1, count)
    pixel_iou = table[block_rows(to_cells(boxes.level, cell))].transpose(1, 2)  # (cells, C, pixels)
    # times the probability of the candidate's class, gathered as block rows.
    class_blocks = to_cells(probability, cell).reshape(-1, cell * cell)  # rows class * cells + block
    pixel_probability = class_blocks[block_rows(queries.thing[chosen])]  # (cells, C, pixels)
    return CandidateMasks(query, slot, in_mask(pixel_iou * pixel_probability, sigma), exact)


def paste(candidates: CandidateMasks, valid: Tensor, overlap_threshold: Tensor, cell: int,
          rows: int) -> tuple[Tensor, Tensor, Tensor]:
    """Panoptic FPN's merge, one query at a time best first: a query is dropped when more than
    `overlap_threshold` of its mask's pixels are taken by queries kept before it, else it takes its
    free pixels; the frame is `rows` blocks high. -> (keep (P,) bool, owner (H, W) query index or P,
    exact 0-d bool: every block where masks meet carried its pixels' state)."""
    query, slot = candidates.query, candidates.slot
    cells, count, pixels = candidates.masks.shape
    pool = valid.shape[0]
    blocks = candidates.masks.to(torch.float32)  # (cells, C, pixels of the block)
    # Areas: each block's pixel count of each candidate, summed per query (column C: not a candidate).
    block_area = F.pad(blocks.sum(dim=2).T, (0, 0, 0, 1))
    area = torch.gather(block_area, 0, slot).sum(dim=1)

    # Only pixels two masks cover can be taken already: the state lives on the blocks holding them.
    meet = blocks.sum(dim=1).amax(dim=1) > 1
    state_blocks = min(OVERLAP_BLOCKS, cells)
    order = torch.arange(cells, 0, -1, device=blocks.device, dtype=torch.float32)
    _, picked = torch.topk(index_op_input(meet) * order, state_blocks)
    exact = meet.to(torch.int32).sum() <= state_blocks
    picked_blocks = F.pad(blocks[picked], (0, 0, 0, 1)).reshape(-1, pixels) > 0  # (bool: a quarter of the bytes)
    # Row of each query's pixels in each picked block (the empty row C where it is no candidate).
    row = torch.arange(state_blocks, device=blocks.device)[None] * (count + 1) + slot[:, picked]  # (P, B)
    candidate = valid & (area > 0)
    safe_area = area.clamp(min=1.0)
    taken = torch.zeros_like(picked_blocks[row[0]])  # (B, pixels) True where a kept query took the pixel
    keep = []
    for j in range(pool):
        mine = picked_blocks[row[j]]
        kept = candidate[j] & ~((taken & mine).to(torch.float32).sum() / safe_area[j] > overlap_threshold)
        taken = taken | (mine & kept)
        keep.append(kept)
    keep = torch.stack(keep)

    # Each pixel's owner: the first of its block's candidates that was kept and covers it, found as
    # the largest of C - c over the kept candidates c covering it (0: none, so C - 0 = C is "none").
    kept_query = torch.cat((keep, keep.new_zeros(1))).to(torch.float32)[query]  # (cells, C)
    weight = kept_query * torch.arange(count, 0, -1, device=blocks.device, dtype=torch.float32)
    first = (count - (blocks * weight[:, :, None]).amax(dim=1)).to(torch.int64)  # (cells, pixels)
    owner_of = torch.cat((query, torch.full((cells, 1), pool, device=blocks.device)), dim=1)
    return keep, from_cells(torch.gather(owner_of, 1, first), rows, cell), exact


def thing_probabilities(logits: Tensor, thing_ids: Tensor, top_class: Tensor) -> Tensor:
    """P_sem of the thing classes (T, H, W) from logits (classes, H, W) and their arg-max top_class
    (H, W). (A softmax written out: ONNX Runtime's Softmax over the first of three axes is several
    times slower; the largest logit read at the arg-max, which the stuff labels need anyway, is the
    same value as a maximum over the classes, one gather instead of a second reduction.)"""
    exp = torch.exp(logits - torch.gather(logits, 0, top_class[None]))
    return exp[thing_ids] / exp.sum(dim=0, keepdim=True)


class RTPSFusion(DenseBoxFusion):
    def __init__(self, label_set: LabelSet, strides: tuple[int, ...], max_instances: int = 100) -> None:
        super().__init__(label_set, strides, max_instances, label_stride=1)

    def segments(self, heads: Heads, thresholds: RuntimeThresholds) -> Segments:
        semantic = heads[HEAD_SEMANTIC]
        height, width = (FUSION_STRIDE * n for n in semantic.shape[-2:])
        k, cell = self.num_candidates, self.strides[0]
        if height % cell or width % cell:
            raise ValueError(f"RTPS needs image sides that are multiples of {cell}, got {height} x {width}")
        pool = QUERY_POOL * k

        queries = query_boxes(heads, self.strides, (height, width), thresholds, pool)
        boxes = pixel_boxes(heads, self.strides, (height, width))
        logits = to_input_pixels(semantic, FUSION_STRIDE)
        top_class = index_op_input(logits).argmax(dim=0)
        probability = thing_probabilities(logits, self.thing_ids, top_class)
        candidates = instance_masks(queries, boxes, probability, thresholds.mask_sigma, cell)
        keep, owner, pasted_exactly = paste(candidates, queries.valid, thresholds.overlap_threshold, cell,
                                            height // cell)

        stuff = self.semantic_labels(top_class)
        void = owner.new_tensor(k + len(self.label_set.stuff_ids))
        labels = torch.where(owner < k, owner, torch.where(owner < pool, void, stuff))
        survivors = queries.valid.to(torch.int64).sum() + queries.dropped
        dropped = torch.maximum(survivors - k, torch.zeros_like(survivors))
        converged = queries.converged & candidates.exact & pasted_exactly
        return Segments(labels, self.thing_ids[queries.thing[:k]], queries.score[:k], keep[:k], converged, dropped)
