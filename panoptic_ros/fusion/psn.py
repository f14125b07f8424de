"""Panoptic SwiftNet's fusion (the Panoptic-DeepLab post-processing the paper uses, section 2.3).

1. Instance centres: non-maximum suppression of the centre heatmap by max-pooling (a pixel is a
   centre where it equals the maximum of its nms_kernel x nms_kernel window and exceeds
   center_threshold), then the top K by heatmap value.
2. Every thing cell joins the centre closest to its position plus its predicted offset.
3. Each instance's class is the majority vote of the semantic labels of its cells.
4. The panoptic map joins instances (with their voted class) and the semantic stuff.

The heads come at input resolution (the network upsamples its stride-4 predictions 4x); grouping
and voting run on the stride-4 fusion grid, on the heads averaged over each 4x4 block, while the
centres are found at input resolution so that nms_kernel keeps its pixel meaning.
score_threshold, nms_iou, mask_sigma and overlap_threshold are not used by this method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panoptic_ros.classes import LabelSet
from panoptic_ros.fusion.base import Fusion, Heads, RuntimeThresholds
from panoptic_ros.fusion.core import FUSION_STRIDE, Segments
from panoptic_ros.fusion.static_ops import cell_centres, top_candidates

# Votes are counted as 1/VOTE_SCALE per cell so that a vote histogram stays below FP16's 65504
# up to a 4-Mpixel grid (only the argmax of a histogram matters).
VOTE_SCALE = 16.0


class PSNFusion(Fusion):
    def __init__(self, label_set: LabelSet, max_instances: int = 100, nms_kernel: int = 7) -> None:
        super().__init__(label_set, num_candidates=max_instances, max_instances=max_instances)
        if nms_kernel < 1 or nms_kernel % 2 == 0:
            raise ValueError(f"nms_kernel must be a positive odd number of pixels, got {nms_kernel}")
        self.nms_kernel = nms_kernel

    @classmethod
    def for_network(cls, network: nn.Module, max_instances: int, nms_kernel: int) -> PSNFusion:
        return cls(network.label_set, max_instances, nms_kernel)

    def segments(self, network: nn.Module, heads: Heads, thresholds: RuntimeThresholds) -> Segments:
        s, k = FUSION_STRIDE, self.num_candidates
        center = heads["center"][0, 0]
        width = center.shape[1]

        # 1. Centres at input resolution.
        pooled = F.max_pool2d(center[None, None], self.nms_kernel, stride=1, padding=self.nms_kernel // 2)[0, 0]
        peak = (center == pooled) & (center > thresholds.center_threshold)
        index, score, valid = top_candidates(center.reshape(-1), peak.reshape(-1), k)
        centre_y = torch.div(index, width, rounding_mode="floor")
        centre_x = (index - centre_y * width).to(torch.float32)
        centre_y = centre_y.to(torch.float32)
        valid = valid & ~self._plateau_duplicate(centre_y, centre_x, score, valid)

        # 2. Grouping on the fusion grid: cell position + mean offset (dy, dx) -> nearest valid centre.
        semantic_class = F.avg_pool2d(heads["semantic"], s)[0].argmax(dim=0)
        offset = F.avg_pool2d(heads["offset"], s)[0]
        h, w = semantic_class.shape
        cell_y, cell_x = cell_centres(h, w, s, (s - 1) / 2, center.device)
        target_y, target_x = cell_y + offset[0], cell_x + offset[1]
        distance = (target_y[None] - centre_y[:, None, None]) ** 2 + (target_x[None] - centre_x[:, None, None]) ** 2
        # A 0-d fill value: a full-size one would be folded into a K x h x w constant in the ONNX file.
        distance = torch.where(valid[:, None, None], distance, distance.new_tensor(float("inf")))
        nearest = torch.argmin(distance, dim=0)
        has_centre = valid.to(torch.int32).amax() > 0
        thing_cell = self.is_thing[semantic_class] & has_centre

        # 3. Majority vote: (K, cells) membership x (cells, T) thing-class one-hot.
        member = (nearest.reshape(1, -1) == torch.arange(k, device=center.device)[:, None]) & thing_cell.reshape(1, -1)
        is_class = semantic_class.reshape(-1, 1) == self.thing_ids[None, :]
        votes = torch.matmul(member.to(torch.float32) / VOTE_SCALE, is_class.to(torch.float32))
        thing_class = self.thing_ids[torch.argmax(votes, dim=1)]

        labels = torch.where(thing_cell, nearest, self.semantic_labels(semantic_class))
        return Segments(labels, thing_class, score, valid)

    def _plateau_duplicate(self, y: Tensor, x: Tensor, score: Tensor, valid: Tensor) -> Tensor:
        """Centres (best first) sharing their peak value with an earlier centre inside their NMS window.

        Max-pool NMS keeps every pixel of a flat-topped peak (e.g. where the heads' bilinear
        upsampling clamps at the image border); one centre per plateau is kept.
        """
        radius = self.nms_kernel // 2
        near = ((y[:, None] - y[None, :]).abs() <= radius) & ((x[:, None] - x[None, :]).abs() <= radius)
        order = torch.arange(y.shape[0], device=y.device)
        earlier = (order[:, None] < order[None, :]) & valid[:, None]
        return (near & earlier & (score[:, None] == score[None, :])).to(torch.int32).amax(dim=0) > 0
