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
from torch import Tensor, nn

from panoptic_ros.classes import LabelSet
from panoptic_ros.fusion.base import DenseBoxFusion, Heads, RuntimeThresholds
from panoptic_ros.fusion.core import FUSION_STRIDE, Segments
from panoptic_ros.fusion.detections import (
    Detections,
    flatten_locations,
    level_boxes,
    level_index,
    select_detections,
)
from panoptic_ros.fusion.static_ops import block_upsample, first_true, index_op_input, pairwise_box_iou
from panoptic_ros.pipeline_io import HEAD_BOX_CLS, HEAD_BOX_REG, HEAD_CENTERNESS, HEAD_LEVELNESS, HEAD_SEMANTIC

QUERY_POOL = 2  # queries pasted per K slot: pixels of queries beyond K become void, not stuff
CELL_CANDIDATES = 8  # queries each block's pixels evaluate (the shipped model reaches 7 at sigma 0.3)
OVERLAP_BLOCKS = 4096  # blocks whose pixels carry the paste state (all of them up to 512 x 1024 at CELL 8)


def query_boxes(heads: Heads, strides: tuple[int, ...], image_size: tuple[int, int], thresholds: RuntimeThresholds,
                count: int) -> Detections:
    """Eq. 4 (NMS of the dense boxes), "we multiply the bounding box confidence with predicted
    centerness" (sec. 4.1): the `count` best NMS survivors."""
    per_level = level_boxes(heads[HEAD_BOX_REG], strides, image_size)
    class_prob = torch.sigmoid(flatten_locations(heads[HEAD_BOX_CLS]))
    centerness = torch.sigmoid(flatten_locations(heads[HEAD_CENTERNESS]))[:, 0]
    levels = level_index([b.shape[0] for b in per_level], class_prob.device)
    return select_detections(torch.cat(per_level), class_prob, class_prob.amax(dim=1) * centerness, levels,
                             thresholds.score_threshold, thresholds.nms_iou, count)


class PixelBoxes(NamedTuple):
    """B(x, y) without an (H, W, 4) map: level (H, W) the pixel's levelness arg-max (0: no box, l:
    level l - 1), boxes[l] (n_l, 4) level l's boxes, location[l] (cells,) the level-l location
    whose stride cell holds each CELL x CELL block (row-major blocks)."""

    level: Tensor
    boxes: list[Tensor]
    location: list[Tensor]


def pixel_boxes(heads: Heads, strides: tuple[int, ...], image_size: tuple[int, int]) -> PixelBoxes:
    """Eq. 14, B(x, y) = b_xy^(argmax I(x, y)), with the levelness upsampled to input pixels."""
    levelness = F.interpolate(heads[HEAD_LEVELNESS], scale_factor=FUSION_STRIDE, mode="bilinear",
                              align_corners=False)[0]
    level = index_op_input(levelness).argmax(dim=0)
    cell = strides[0]
    rows, cols = image_size[0] // cell, image_size[1] // cell
    locations = []
    for reg, stride in zip(heads[HEAD_BOX_REG], strides, strict=True):
        h, w = reg.shape[-2:]
        row = torch.tensor([min(i * cell // stride, h - 1) for i in range(rows)], device=level.device)
        col = torch.tensor([min(j * cell // stride, w - 1) for j in range(cols)], device=level.device)
        locations.append((row[:, None] * w + col[None, :]).reshape(-1))
    return PixelBoxes(level, level_boxes(heads[HEAD_BOX_REG], strides, image_size), locations)


class CandidateMasks(NamedTuple):
    """instance_masks' result: query (C, rows, cols) the queries each CELL block's pixels evaluate,
    best first (the pool size where none); masks (C, H, W) pixel of the block in candidate c's mask;
    exact 0-d bool: no block had more queries reaching it than C."""

    query: Tensor
    masks: Tensor
    exact: Tensor


def instance_masks(queries: Detections, boxes: PixelBoxes, probability: Tensor, sigma: Tensor,
                   cell: int) -> CandidateMasks:
    """Eqs. 5-7, M(x, y, j) = IoU(B(x, y), B_j) * P_sem(x, y, c_j) > sigma, for the queries that
    can reach each block. probability (T, H, W): P_sem of each thing class (queries.thing indexes it)."""
    height, width = boxes.level.shape
    rows, cols = height // cell, width // cell
    pool = queries.valid.shape[0]
    num_levels = len(boxes.boxes)
    # Per block and query: IoU with the box of each level (0 for a level no pixel of the block takes).
    present = F.max_pool2d((boxes.level[None] == torch.arange(1, num_levels + 1, device=boxes.level.device)[:, None,
                                                                                                             None])
                           .to(torch.float32)[None], cell)[0].reshape(num_levels, 1, -1) > 0
    iou = torch.stack([pairwise_box_iou(queries.boxes, level_boxes)[:, location]
                       for level_boxes, location in zip(boxes.boxes, boxes.location, strict=True)])  # (L, P, cells)
    iou = iou * (present & queries.valid[None, :, None]).to(torch.float32)
    # Reach bound: a pixel's product is at most the block's largest IoU times its largest probability.
    block_probability = F.max_pool2d(probability[None], cell)[0].reshape(probability.shape[0], -1)
    reach = iou.amax(dim=0) * block_probability[queries.thing] > sigma  # (P, cells)
    count = min(CELL_CANDIDATES, pool)
    rank = torch.arange(pool, 0, -1, device=iou.device, dtype=torch.float32)[:, None]  # best query first
    key, query = torch.topk(index_op_input(reach) * rank, count, dim=0)  # (C, cells)
    taken = key > 0
    query = torch.where(taken, query, torch.full_like(query, pool))
    exact = reach.to(torch.int32).sum(dim=0).amax() <= count

    # Per pixel: the IoU of its own level's box (0 without a box), times the probability of the class.
    no_box = torch.zeros((1, count, rows * cols), device=iou.device)
    table = torch.cat((no_box, torch.gather(iou, 1, torch.where(taken, query, 0)[None].expand(num_levels, -1, -1))))
    table = table * taken[None].to(torch.float32)  # (L + 1, C, cells)
    block = block_upsample(torch.arange(rows * cols, device=iou.device).reshape(rows, cols), cell)
    pixel_iou = table.transpose(0, 1).reshape(count, -1)[:, (boxes.level * (rows * cols) + block).reshape(-1)]
    thing = block_upsample(queries.thing[torch.where(taken, query, 0)].reshape(count, rows, cols), cell)
    pixel_probability = torch.gather(probability, 0, thing)
    masks = pixel_iou.reshape(count, height, width) * pixel_probability > sigma
    return CandidateMasks(query.reshape(count, rows, cols), masks, exact)


def paste(candidates: CandidateMasks, valid: Tensor, overlap_threshold: Tensor, cell: int) -> tuple[Tensor, Tensor,
                                                                                                      Tensor]:
    """Panoptic FPN's merge, one query at a time best first: a query is dropped when more than
    `overlap_threshold` of its mask's pixels are taken by queries kept before it, else it takes its
    free pixels. -> (keep (P,) bool, owner (H, W) query index or P, exact 0-d bool: every block
    where masks meet carried its pixels' state)."""
    masks, query = candidates.masks, candidates.query
    count, height, width = masks.shape
    rows, cols = height // cell, width // cell
    pool = valid.shape[0]
    pool_index = torch.arange(pool, device=masks.device)
    blocks = masks.to(torch.float32).reshape(count, rows, cell, cols, cell).permute(1, 3, 0, 2, 4)
    blocks = blocks.reshape(rows * cols, count, cell * cell)  # (cells, C, pixels of the block)
    block_query = query.reshape(count, -1).T  # (cells, C)
    # Areas: each block's pixel count of each candidate, summed per query.
    member = (block_query[None] == pool_index[:, None, None]).to(torch.float32)  # (P, cells, C)
    area = (member * blocks.sum(dim=2)[None]).sum(dim=(1, 2))

    # Only pixels two masks cover can be taken already: the state lives on the blocks holding them.
    meet = blocks.sum(dim=1).amax(dim=1) > 1
    state_blocks = min(OVERLAP_BLOCKS, rows * cols)
    order = torch.arange(rows * cols, 0, -1, device=masks.device, dtype=torch.float32)
    _, picked = torch.topk(index_op_input(meet) * order, state_blocks)
    exact = meet.to(torch.int32).sum() <= state_blocks
    picked_blocks = torch.cat((blocks[picked], torch.zeros_like(blocks[picked][:, :1])), dim=1)  # (B, C + 1, px)
    picked_blocks = picked_blocks.reshape(-1, cell * cell)
    # Row of each query's pixels in each picked block (the empty row C where it is no candidate).
    slot = (member[:, picked] * torch.arange(count, device=masks.device, dtype=torch.float32)).sum(dim=2)
    slot = torch.where(member[:, picked].amax(dim=2) > 0, slot, torch.full_like(slot, float(count)))
    row = torch.arange(state_blocks, device=masks.device)[None] * (count + 1) + slot.to(torch.int64)  # (P, B)
    taken = torch.zeros((state_blocks, cell * cell), device=masks.device)
    keep = []
    for j in range(pool):
        mine = picked_blocks[row[j]]
        overlap = (taken * mine).sum() / area[j].clamp(min=1.0)
        kept = valid[j] & (area[j] > 0) & ~(overlap > overlap_threshold)
        taken = torch.maximum(taken, mine * kept.to(torch.float32))
        keep.append(kept)
    keep = torch.stack(keep)

    # Each pixel's owner: the first of its block's candidates that was kept and covers it.
    kept_query = torch.cat((keep, keep.new_zeros(1)))[query]  # (C, rows, cols)
    first = first_true(masks & block_upsample(kept_query, cell))  # (H, W), C where none
    owner_of = torch.cat((query.reshape(count, -1), torch.full((1, rows * cols), pool, device=masks.device)))
    block = block_upsample(torch.arange(rows * cols, device=masks.device).reshape(rows, cols), cell)
    owner = owner_of.reshape(-1)[first * (rows * cols) + block]
    return keep, owner, exact


class RTPSFusion(DenseBoxFusion):
    def __init__(self, label_set: LabelSet, strides: tuple[int, ...], max_instances: int = 100) -> None:
        super().__init__(label_set, strides, max_instances, label_stride=1)

    def segments(self, network: nn.Module, heads: Heads, thresholds: RuntimeThresholds) -> Segments:
        semantic = heads[HEAD_SEMANTIC]
        height, width = (FUSION_STRIDE * n for n in semantic.shape[-2:])
        k, cell = self.num_candidates, self.strides[0]
        if height % cell or width % cell:
            raise ValueError(f"RTPS needs image sides that are multiples of {cell}, got {height} x {width}")
        pool = QUERY_POOL * k

        queries = query_boxes(heads, self.strides, (height, width), thresholds, pool)
        boxes = pixel_boxes(heads, self.strides, (height, width))
        logits = F.interpolate(semantic, scale_factor=FUSION_STRIDE, mode="bilinear", align_corners=False)[0]
        probability = torch.softmax(logits, dim=0)[self.thing_ids]
        candidates = instance_masks(queries, boxes, probability, thresholds.mask_sigma, cell)
        keep, owner, pasted_exactly = paste(candidates, queries.valid, thresholds.overlap_threshold, cell)

        stuff = self.semantic_labels(index_op_input(logits).argmax(dim=0))
        void = torch.full_like(owner, k + len(self.label_set.stuff_ids))
        labels = torch.where(owner < k, owner, torch.where(owner < pool, void, stuff))
        survivors = queries.valid.to(torch.int64).sum() + queries.dropped
        dropped = torch.maximum(survivors - k, torch.zeros_like(survivors))
        converged = queries.converged & candidates.exact & pasted_exactly
        return Segments(labels, self.thing_ids[queries.thing[:k]], queries.score[:k], keep[:k], converged, dropped)
