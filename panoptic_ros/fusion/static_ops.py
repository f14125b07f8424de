"""Static-shape building blocks shared by the fusions: top-k candidates, box IoU, greedy NMS and
confidence-ordered pasting, written so that they export to ONNX and build into TensorRT.

Rules every function here keeps: shapes depend only on Python ints (never on tensor values); no
NonZero, Loop, If or data-dependent Python branching; no ScatterElements/ScatterND with a
reduction (TensorRT only has those as a plugin); pixel counts are summed as int32 or float32, never
FP16 (which overflows at 65504: engines keep the fusion FP32); TopK, ArgMax and ArgMin only see
float32 inputs (`index_op_input`: TensorRT 8.5's parser rejects INT32 inputs to them, TensorRT has
no bool ArgMax, and float32 is exact for integers below 2^24).

Greedy NMS, an inherently sequential rule, is computed as unrolled Jacobi sweeps of the sequential
recurrence. Sweep t makes the decisions of the first t candidates
exact, and a fixed point is the sequential result (decision j depends only on decisions before j),
so the sweeps needed are the longest chain of flipping decisions, not the number of candidates.
NMS_SWEEPS covers adversarial chains of 32; greedy_nms also says whether its last sweep changed
nothing (`converged`), which the graph outputs. Pasting masks by confidence is unrolled one mask at
a time (`paste_groups_in_order`), the sequential rule itself. The references in
panoptic_ros/fusion/reference are the literal sequential versions the tests compare with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Unrolled sweeps of greedy NMS (see above): a chain of n decisions, each flipping the next, needs
# n - 1 sweeps; one more shows the fixed point. A sweep costs one (M, M) mat-vec.
NMS_SWEEPS = 34
# Float32 represents every integer below 2^24 exactly: the largest index TopK/ArgMax may rank by.
FLOAT_EXACT_INTEGERS = 2**24


def index_op_input(x: Tensor) -> Tensor:
    """`x` as the float32 input of a TopK, ArgMax or ArgMin (see the module docstring); integer
    inputs must stay below FLOAT_EXACT_INTEGERS in magnitude."""
    return x.to(torch.float32)


def block_upsample(x: Tensor, stride: int) -> Tensor:
    """(..., h, w) -> (..., h*stride, w*stride), each cell repeated as a stride x stride block.

    A broadcast add + Reshape rather than Resize: TensorRT resizes only float tensors, and blocks
    keep per-segment pixel statistics exact multiples of the cell statistics. (A broadcast add,
    unlike the exported Expand, keeps the shape static for ONNX shape inference.)
    """
    *lead, h, w = (int(n) for n in x.shape)
    blocks = x[..., :, None, :, None] + torch.zeros((stride, 1, stride), dtype=x.dtype, device=x.device)
    return blocks.reshape(*lead, h * stride, w * stride)


def to_input_pixels(logits: Tensor, stride: int) -> Tensor:
    """Stride-`stride` logits (1, C, h, w) bilinearly upsampled to input pixels (C, H, W), as the
    papers upsample their heads. (Squeeze, not [0]: ONNX Runtime copies the stride^2 larger map for a
    Gather, not for a Squeeze.)"""
    return F.interpolate(logits, scale_factor=stride, mode="bilinear", align_corners=False).squeeze(0)


def to_cells(x: Tensor, s: int) -> Tensor:
    """(..., H, W) -> (..., cells, s * s): the pixels of each s x s cell as one row, cells row-major."""
    *lead, height, width = x.shape
    cells = x.reshape(*lead, height // s, s, width // s, s).transpose(-3, -2)
    return cells.reshape(*lead, (height // s) * (width // s), s * s)


def from_cells(x: Tensor, h: int, s: int) -> Tensor:
    """to_cells' inverse for one map: (cells, s * s) -> (h * s, W), h cells high."""
    w = x.shape[0] // h
    return x.reshape(h, w, s, s).transpose(1, 2).reshape(h * s, w * s)


def place_table(codes: int, bits: int, rows: int, device: torch.device) -> Tensor:
    """(rows, channels) float32: row d < codes is code d's one-hot packed into places of radix 2^bits,
    24 // bits codes per float32 channel (code d writes 2^(bits * (d % per)) in channel d // per); rows
    past `codes` are zero (codes that count nowhere). Sums of gathered rows add counts below 2^bits per
    place without carries, exact in float32; `read_places` reads them back."""
    per = 24 // bits
    channels = -(-codes // per)
    return torch.tensor([[float(2 ** (bits * (d % per))) if d < codes and d // per == c else 0.0
                          for c in range(channels)] for d in range(rows)], device=device)


def read_places(sums: Tensor, bits: int) -> Tensor:
    """Sums (..., channels) of place_table rows -> the counts (..., channels * (24 // bits)), code order."""
    per = 24 // bits
    scale = torch.tensor([float(2 ** (bits * n)) for n in range(per + 1)], device=sums.device)
    shifted = torch.floor(sums[..., None] / scale)  # the places from each one up
    counts = shifted[..., :-1] - shifted[..., 1:] * float(2**bits)
    return counts.reshape(*sums.shape[:-1], sums.shape[-1] * per)


def pairwise_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes a (M, 4) and b (N, 4), x1y1x2y2 -> (M, N). Degenerate boxes have IoU 0.

    The same function as networks.box_coding.box_iou, computed per coordinate as (M, 1) vs (1, N)
    broadcasts: ONNX Runtime's Min/Max run those ~10x faster than box_iou's (M, 1, 2) vs (1, N, 2)
    (RTPS's fusion at 1024x2048 on CPU: 0.4 s instead of 0.6 s).
    """
    return coordinate_iou([a[:, i:i + 1] for i in range(4)], [b[:, i][None, :] for i in range(4)])


def coordinate_iou(a: list[Tensor], b: list[Tensor]) -> Tensor:
    """pairwise_box_iou on boxes given as coordinate tensors (x1, y1, x2, y2) that broadcast
    against each other: the same float operations, so the same values bit for bit."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    width = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    height = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = width * height
    area_a = (ax2 - ax1).clamp(min=0) * (ay2 - ay1).clamp(min=0)
    area_b = (bx2 - bx1).clamp(min=0) * (by2 - by1).clamp(min=0)
    return inter / (area_a + area_b - inter).clamp(min=1e-6)


def top_candidates(scores: Tensor, valid: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The k best of `scores` (N,) among `valid` ones, best first: (index, score, valid), each (k,).

    Order: descending score, equal scores by lower index, compared exactly. Runtimes' TopK differ
    in how they order ties, so TopK only supplies the k-th best value: the entries above it come
    first (TopK's values are sorted), the entries equal to it follow lowest index first (a second
    TopK, on -index, which has no ties), and the k picked are put in order by pairwise comparison.
    Scores must be >= 0 where valid; invalid entries come last (valid False). N must stay below
    FLOAT_EXACT_INTEGERS.
    """
    n = scores.shape[0]
    position = torch.arange(n, device=scores.device)
    masked = torch.where(valid, scores, scores.new_tensor(-1.0))
    top_value, top_index = torch.topk(index_op_input(masked), k)
    kth = top_value[k - 1]
    above = (top_value > kth).to(torch.int64).sum()
    tied = masked == kth
    tie_key = torch.where(tied, -position.to(torch.float32), torch.full((), -float(n), device=scores.device))
    _, tie_index = torch.topk(index_op_input(tie_key), k)
    slot = position[:k]
    from_ties = torch.where(slot < above, torch.zeros_like(slot), slot - above)  # (no integer Clip: TensorRT has none)
    picked = torch.where(slot < above, top_index, tie_index[from_ties])
    index = picked[rank_order(masked[picked], picked)]
    return index, scores[index], valid[index]


def rank_order(score: Tensor, index: Tensor) -> Tensor:
    """Positions (k,) into `score` (k,) by descending score, equal scores by lower `index`: a
    pairwise rank, then a one-hot pick of rank r."""
    k = score.shape[0]
    tie = (score[:, None] == score[None, :]) & (index[:, None] < index[None, :])
    before = (score[:, None] > score[None, :]) | tie
    # Ranks and positions < 2^24 are exact as float sums (no integer ReduceSum, which ONNX Runtime
    # runs in int64; and no MatMul with a constant, which engine building would take for a learned layer).
    rank = before.to(torch.float32).sum(dim=0)
    wanted = torch.arange(k, device=score.device, dtype=torch.float32)
    pick = rank[None, :] == wanted[:, None]
    position = torch.arange(k, device=score.device, dtype=torch.float32)
    return (pick.to(torch.float32) * position[None, :]).sum(dim=1).to(torch.int64)


def greedy_nms(overlap: Tensor, valid: Tensor, threshold: Tensor, sweeps: int = NMS_SWEEPS) -> tuple[Tensor, Tensor]:
    """Greedy NMS over candidates sorted best first: (keep (M,) bool, converged 0-d bool).

    overlap (M, M) is the pairwise IoU (zero between candidates that must not suppress each other,
    e.g. of different classes). Candidate j is suppressed when a kept candidate i < j overlaps it
    by more than `threshold` (exactly at it is no suppression).
    """
    m = overlap.shape[0]
    order = torch.arange(m, device=overlap.device)
    earlier = order[:, None] < order[None, :]
    suppresses = ((overlap > threshold) & earlier & valid[:, None]).to(torch.float32)  # [i, j]: i suppresses j
    keep = previous = valid
    for _ in range(sweeps):
        previous = keep
        # Counts <= M stay exact in FP16 too.
        suppressed = torch.matmul(keep.to(torch.float32)[None, :], suppresses)[0] > 0
        keep = valid & ~suppressed
    return keep, unchanged(keep, previous)


def unchanged(new: Tensor, old: Tensor) -> Tensor:
    """0-d bool: the last sweep changed no decision."""
    # Xor, not Equal: TensorRT compares no bool tensors.
    return (new ^ old).to(torch.int32).amax() == 0


def first_true(mask: Tensor) -> Tensor:
    """Index of the first True along dim 0 of mask (K, N) -> (N,) int64; K where none."""
    k = mask.shape[0]
    as_float = index_op_input(mask)
    first = torch.argmax(as_float, dim=0)
    return torch.where(as_float.amax(dim=0) > 0, first, first.new_tensor(k))  # (a 0-d fill: no (N,) constant)


def first_true_positions(flags: Tensor, chunk: int, chunks: int) -> tuple[Tensor, Tensor]:
    """(index, found) (chunks * chunk,): the positions of the first True entries of `flags` (N,),
    lowest first, in TopKs of at most `chunk` (TensorRT: < onnx_audit.TOPK_MAX); found is False on
    slots beyond the last True. The keys are distinct, so every runtime picks the same entries.
    N must stay below FLOAT_EXACT_INTEGERS."""
    n = flags.shape[0]
    count = min(chunk, n)
    position = torch.arange(n, device=flags.device)
    key = torch.where(flags, float(n) - position.to(torch.float32), torch.zeros((), device=flags.device))
    indices, found = [], []
    for _ in range(chunks):
        value, index = torch.topk(key, count)
        indices.append(index)
        found.append(value > 0)
        last = torch.where(value > 0, index, torch.full_like(index, -1)).amax()
        key = torch.where(position > last, key, torch.zeros((), device=flags.device))
    return torch.cat(indices), torch.cat(found)


def paste_groups_in_order(member: Tensor, count: Tensor, area: Tensor, valid: Tensor,
                          overlap_threshold: Tensor) -> Tensor:
    """Panoptic FPN's paste by confidence: keep decisions (K,) when pixels come in groups covered by the
    same masks, one mask at a time (the sequential rule itself: always exact).

    member (R, K) bool: the masks (sorted best first) that hold group r's `count` (R,) pixels;
    area (K,) each mask's pixels in all. A pixel of one mask only is never taken before it, so only
    groups of two or more masks are needed. A mask is dropped when the fraction of its pixels taken
    by kept masks before it, as float32, is > overlap_threshold (the references' test). A step costs
    a few (R,) operations: K steps are cheaper than Jacobi sweeps over (R, K).
    """
    held = member.T.to(torch.float32)  # (K, R): rows are contiguous slices
    weighted = held * count[None, :]
    candidate = valid & (area > 0)
    safe_area = area.clamp(min=1.0)
    covered = torch.zeros_like(count)  # 1 on the groups a kept mask holds
    keep = []
    for k in range(held.shape[0]):
        ratio = (weighted[k] * covered).sum() / safe_area[k]
        keep.append(candidate[k] & ~(ratio > overlap_threshold))
        covered = torch.maximum(covered, held[k] * keep[-1].to(torch.float32))
    return torch.stack(keep)
