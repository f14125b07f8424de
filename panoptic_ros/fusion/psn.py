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
stride-4 grid: each cell finds the closest centre to its mean target, and a pixel compares the
closest centres of its own and its 8 neighbouring cells (a pixel's target lies among its
neighbours' targets wherever offsets are smooth, so its closest centre is among theirs).
Overflow: the best CENTRE_POOL * K centres are grouped; pixels of centres ranked beyond K become
void and those centres are counted in candidates_dropped.
score_threshold, nms_iou, mask_sigma and overlap_threshold are not used by this method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panoptic_ros.classes import LabelSet
from panoptic_ros.fusion.base import Fusion, Heads, RuntimeThresholds
from panoptic_ros.fusion.core import FUSION_STRIDE, Segments, label_counts_per_row
from panoptic_ros.fusion.static_ops import block_upsample, first_true, index_op_input, top_candidates
from panoptic_ros.pipeline_io import HEAD_CENTER, HEAD_OFFSET, HEAD_SEMANTIC

CENTRE_POOL = 2  # centres grouped per K slot: pixels of centres beyond K become void, not another instance
NEIGHBOURHOOD = 3  # cells (per side) whose closest centres a pixel compares


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
        neighbour = flat[(ny.clamp(min=0) * width + nx.clamp(0, width - 1))]
        found = found | (inside & (neighbour == score))
    return found


def group_pixels(offset: Tensor, centres: Centres) -> Tensor:
    """(H, W) index of the centre closest to each pixel's position + offset (dy, dx) (2, H, W).

    Candidates come from the stride-4 grid (module docstring): the closest centre of each cell's
    mean target, gathered from the cell and its neighbours, then compared per pixel.
    """
    s = FUSION_STRIDE
    _, height, width = offset.shape
    device = offset.device
    ys = torch.arange(height, dtype=torch.float32, device=device)[:, None]
    xs = torch.arange(width, dtype=torch.float32, device=device)[None, :]
    target_y, target_x = ys + offset[0], xs + offset[1]
    cell_y = F.avg_pool2d(target_y[None, None], s)[0, 0]
    cell_x = F.avg_pool2d(target_x[None, None], s)[0, 0]
    cell_nearest = closest_centre(cell_y[None], cell_x[None], centres.y[:, None, None], centres.x[:, None, None],
                                  centres.valid[:, None, None])
    candidates = block_upsample(neighbourhood(cell_nearest, NEIGHBOURHOOD), s)  # (9, H, W) centre indices
    slot = closest_centre(target_y[None], target_x[None], centres.y[candidates], centres.x[candidates],
                          centres.valid[candidates])
    return torch.gather(candidates, 0, slot[None])[0]


def closest_centre(target_y: Tensor, target_x: Tensor, centre_y: Tensor, centre_x: Tensor, valid: Tensor) -> Tensor:
    """Arg-min over dim 0 of the squared distance between targets and valid centres (broadcast)."""
    distance = (target_y - centre_y) ** 2 + (target_x - centre_x) ** 2
    # A 0-d fill value: a full-size one would be folded into a large constant in the ONNX file.
    distance = torch.where(valid, distance, distance.new_tensor(float("inf")))
    return torch.argmin(index_op_input(distance), dim=0)


def neighbourhood(grid: Tensor, size: int) -> Tensor:
    """(h, w) -> (size * size, h, w): each cell's value and its neighbours' (edges repeated)."""
    radius = size // 2
    h, w = grid.shape
    # Edge padding by concatenation (TensorRT 8.x pads with constants only).
    rows = torch.cat([grid[:1]] * radius + [grid] + [grid[-1:]] * radius, dim=0)
    padded = torch.cat([rows[:, :1]] * radius + [rows] + [rows[:, -1:]] * radius, dim=1)
    return torch.stack([padded[dy:dy + h, dx:dx + w] for dy in range(size) for dx in range(size)])


def vote_classes(owner: Tensor, semantic_class: Tensor, is_thing_pixel: Tensor, thing_ids: Tensor,
                 count: int) -> Tensor:
    """(count,) class id of each instance: the thing class most of its pixels have (ties: lower class)."""
    num_things = thing_ids.shape[0]
    thing_index = index_op_input(semantic_class[..., None] == thing_ids).argmax(dim=-1)
    member = is_thing_pixel & (owner < count)
    # One histogram of (instance, class) pairs; everything else counts in the last bin.
    code = torch.where(member, owner * num_things + thing_index, torch.full_like(owner, count * num_things))
    votes = label_counts_per_row(code.reshape(1, -1), count * num_things + 1)[:-1, 0].reshape(count, num_things)
    return thing_ids[index_op_input(votes).argmax(dim=1)]


class PSNFusion(Fusion):
    def __init__(self, label_set: LabelSet, max_instances: int = 100, nms_kernel: int = 7) -> None:
        super().__init__(label_set, num_candidates=max_instances, max_instances=max_instances, label_stride=1)
        if nms_kernel < 1 or nms_kernel % 2 == 0:
            raise ValueError(f"nms_kernel must be a positive odd number of pixels, got {nms_kernel}")
        self.nms_kernel = nms_kernel

    @classmethod
    def for_network(cls, network: nn.Module, max_instances: int, nms_kernel: int) -> PSNFusion:
        return cls(network.label_set, max_instances, nms_kernel)

    def segments(self, network: nn.Module, heads: Heads, thresholds: RuntimeThresholds) -> Segments:
        k = self.num_candidates
        center = heads[HEAD_CENTER][0, 0]
        pool = min(CENTRE_POOL * k, center.numel())
        centres, total = find_instance_centres(center, thresholds.center_threshold, self.nms_kernel, pool)
        # The first K valid centres fill the slots; the rest of the pool only claims pixels to make them void.
        slot, score, in_slot = top_candidates(centres.score, centres.valid, k)
        semantic_class = index_op_input(heads[HEAD_SEMANTIC][0]).argmax(dim=0)
        is_thing_pixel = self.is_thing[semantic_class] & (centres.valid.to(torch.int32).amax() > 0)
        nearest = group_pixels(heads[HEAD_OFFSET][0], centres)
        # Pool position -> slot (K for a valid centre beyond K): slots hold pool positions in order.
        pool_slot = (slot[:, None] == torch.arange(pool, device=center.device)[None, :]) & in_slot[:, None]
        owner = first_true(pool_slot)[nearest]
        thing_class = vote_classes(owner, semantic_class, is_thing_pixel, self.thing_ids, k)
        void = torch.full_like(owner, k + len(self.label_set.stuff_ids))
        labels = torch.where(is_thing_pixel, torch.where(owner < k, owner, void), self.semantic_labels(semantic_class))
        dropped = (total - k).clamp(min=0)
        return Segments(labels, thing_class, score, in_slot, torch.ones((), dtype=torch.bool, device=center.device),
                        dropped)
