"""LPSNet fusion: the parameter-free panoptic head (Hong et al., section 3.4).

1. Boxes: NMS of the dense per-level boxes, ranked by class probability x border-ness.
2. Boxes are pasted onto the semantic map by confidence, high to low. A box's mask is the cells
   inside it whose semantic class is the box's class; a mask is dropped when more than
   overlap_threshold of it intersects masks pasted before, otherwise it is kept.
3. Cells that several kept boxes (necessarily of one class) claim go to the box whose border-ness
   at the cell, computed from the cell's distances to the box sides as in the paper's eq. (1),
   is closest to the border-ness the network predicts there (at the level the box came from).
4. The rest of the semantic map gives stuff; thing cells no box claims are void.
center_threshold and mask_sigma are not used by this method.
"""

from __future__ import annotations

import torch
from torch import Tensor

from panoptic_ros.fusion.base import DenseBoxFusion, Heads, RuntimeThresholds
from panoptic_ros.fusion.core import FUSION_STRIDE, Segments
from panoptic_ros.fusion.detections import flatten_locations, level_boxes, level_index, select_detections
from panoptic_ros.fusion.static_ops import block_upsample, cell_centres, index_op_input, paste_by_confidence
from panoptic_ros.pipeline_io import HEAD_BORDERNESS, HEAD_BOX_CLS, HEAD_BOX_REG, HEAD_SEMANTIC


def borderness(left: Tensor, top: Tensor, right: Tensor, bottom: Tensor) -> Tensor:
    """LPSNet's border-ness of a point from its distances to the four box sides (eq. 1), in [0, 1]."""
    distances = [d.clamp(min=0) for d in (left, top, right, bottom)]
    horizontal = torch.minimum(distances[0], distances[2]) / torch.maximum(distances[0], distances[2]).clamp(min=1e-6)
    vertical = torch.minimum(distances[1], distances[3]) / torch.maximum(distances[1], distances[3]).clamp(min=1e-6)
    return torch.sqrt(horizontal * vertical)


class LPSNetFusion(DenseBoxFusion):
    def segments(self, heads: Heads, thresholds: RuntimeThresholds) -> Segments:
        semantic = heads[HEAD_SEMANTIC][0]
        h, w = semantic.shape[-2:]
        k, s = self.num_candidates, FUSION_STRIDE

        # 1. Boxes.
        per_level = level_boxes(heads[HEAD_BOX_REG], self.strides, (h * s, w * s))
        class_prob = torch.sigmoid(flatten_locations(heads[HEAD_BOX_CLS]))
        predicted = torch.sigmoid(flatten_locations(heads[HEAD_BORDERNESS]))[:, 0]
        levels = level_index([b.shape[0] for b in per_level], semantic.device)
        boxes = select_detections(torch.cat(per_level), class_prob, class_prob.amax(dim=1) * predicted, levels,
                                  thresholds.score_threshold, thresholds.nms_iou, k)
        box_class = self.thing_ids[boxes.thing]

        # 2. Masks (cells inside the box with the box's class), pasted by confidence.
        semantic_class = index_op_input(semantic).argmax(dim=0)
        cell_y, cell_x = cell_centres(h, w, s, (s - 1) / 2, semantic.device)
        x1, y1, x2, y2 = (c[:, None, None] for c in boxes.boxes.unbind(dim=1))
        inside = (cell_x >= x1) & (cell_x <= x2) & (cell_y >= y1) & (cell_y <= y2)
        masks = (inside & (semantic_class[None] == box_class[:, None, None])).reshape(k, -1)
        keep, _, pasted = paste_by_confidence(masks, boxes.valid, thresholds.overlap_threshold)

        # 3. Border-ness tie-break among the kept boxes claiming a cell.
        computed = borderness(cell_x - x1, cell_y - y1, x2 - cell_x, y2 - cell_y).reshape(k, -1)
        predicted_grid = torch.stack([block_upsample(torch.sigmoid(b[0, 0]), stride // s)
                                      for b, stride in zip(heads[HEAD_BORDERNESS], self.strides, strict=True)])
        expected = predicted_grid.reshape(len(self.strides), -1)[boxes.level]
        claims = masks & keep[:, None]
        # A 0-d fill value: a full-size one would be folded into a K x HW constant in the ONNX file.
        mismatch = torch.where(claims, (computed - expected).abs(), computed.new_tensor(float("inf")))
        owner = torch.argmin(index_op_input(mismatch), dim=0).reshape(h, w)
        claimed = (claims.to(torch.int32).amax(dim=0) > 0).reshape(h, w)

        # 4. Stuff from the semantic map.
        labels = torch.where(claimed, owner, self.semantic_labels(semantic_class))
        return Segments(labels, box_class, boxes.score, keep, boxes.converged & pasted, boxes.dropped)
