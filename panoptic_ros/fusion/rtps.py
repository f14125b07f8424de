"""RTPS fusion: parameter-free mask construction from dense detections (Hou et al., section 3.2).

1. Query boxes: NMS of the dense per-level boxes, ranked by class probability x centerness.
2. The global box map B(x, y) takes, at every stride-4 cell, the box of the level its levelness
   arg-max names (level 0: no box).
3. M(x, y, j) = IoU(B(x, y), B_j) * P_sem(x, y, c_j); instance mask j is M > mask_sigma.
4. "Conventional fusion" of Panoptic FPN: masks pasted by confidence, a mask dropped when more than
   overlap_threshold of it is taken already, then semantic stuff on the rest.
center_threshold is not used by this method.
"""

from __future__ import annotations

import torch

from panoptic_ros.fusion.base import DenseBoxFusion, Heads, RuntimeThresholds
from panoptic_ros.fusion.core import FUSION_STRIDE, Segments
from panoptic_ros.fusion.detections import clip_boxes, flatten_locations, level_boxes, level_index, select_detections
from panoptic_ros.fusion.static_ops import index_op_input, pairwise_box_iou, paste_by_confidence
from panoptic_ros.networks.box_coding import dense_level_boxes
from panoptic_ros.pipeline_io import HEAD_BOX_CLS, HEAD_BOX_REG, HEAD_CENTERNESS, HEAD_LEVELNESS, HEAD_SEMANTIC


class RTPSFusion(DenseBoxFusion):
    def segments(self, heads: Heads, thresholds: RuntimeThresholds) -> Segments:
        semantic = heads[HEAD_SEMANTIC][0]
        h, w = semantic.shape[-2:]
        image_size = (h * FUSION_STRIDE, w * FUSION_STRIDE)

        # 1. Query boxes.
        per_level = level_boxes(heads[HEAD_BOX_REG], self.strides, image_size)
        boxes = torch.cat(per_level, dim=0)
        class_prob = torch.sigmoid(flatten_locations(heads[HEAD_BOX_CLS]))
        centerness = torch.sigmoid(flatten_locations(heads[HEAD_CENTERNESS]))[:, 0]
        levels = level_index([b.shape[0] for b in per_level], semantic.device)
        queries = select_detections(boxes, class_prob, class_prob.amax(dim=1) * centerness, levels,
                                    thresholds.score_threshold, thresholds.nms_iou, self.num_candidates)
        query_class = self.thing_ids[queries.thing]

        # 2. B(x, y): each cell's box from the level its levelness picks (clipped, like the queries).
        level = index_op_input(heads[HEAD_LEVELNESS][0]).argmax(dim=0)  # 0 = no instance, l = level l - 1
        grid_boxes = dense_level_boxes(heads[HEAD_BOX_REG], self.strides, FUSION_STRIDE)[0]  # (L, 4, h, w)
        picked_level = torch.where(level > 0, level - 1, torch.zeros_like(level))  # (no Clip: TensorRT's is float-only)
        pick = picked_level[None, None].expand(1, 4, h, w)
        cell_box = clip_boxes(torch.gather(grid_boxes, 0, pick)[0].reshape(4, -1).T, *image_size)  # (cells, 4)
        has_box = (level > 0).reshape(1, -1)

        # 3. Masks: IoU with the query box times the probability of the query's class.
        location = pairwise_box_iou(queries.boxes, cell_box)  # (K, cells)
        probability = torch.softmax(semantic, dim=0).reshape(semantic.shape[0], -1)[query_class]
        masks = (location * probability > thresholds.mask_sigma) & has_box

        # 4. Panoptic FPN merge.
        keep, owner, pasted = paste_by_confidence(masks, queries.valid, thresholds.overlap_threshold)
        stuff = self.semantic_labels(index_op_input(semantic).argmax(dim=0))
        labels = torch.where(owner.reshape(h, w) < self.num_candidates, owner.reshape(h, w), stuff)
        return Segments(labels, query_class, queries.score, keep, queries.converged & pasted, queries.dropped)
