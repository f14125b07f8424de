"""FPSNet fusion (de Geus et al., section III-A): detections -> attention masks -> panoptic head -> argmax.

1. RetinaNet boxes: anchors decoded per level, class-aware NMS, the best min(K, N_att) boxes by
   class probability ("If there are more than N_att objects detected ... we pick the N_att
   bounding boxes with the highest class scores"); remaining attention channels are all zero.
2. Soft Gaussian attention masks are generated in the graph (networks.fpsnet.gaussian_attention_masks)
   and fed with the stride-8 features to the network's panoptic head.
3. Every input pixel takes the arg-max of the head's N_att + N_stuff logits, bilinearly upsampled
   to the input image; channel n < N_att is the instance of box n, whose class and score are the
   box's, channel N_att + s the s-th stuff class. Channels of empty attention masks are void.
Boxes need no shuffling at inference (the head is trained with shuffled masks to be order-free).
center_threshold, mask_sigma and overlap_threshold are not used by this method.
"""

from __future__ import annotations

import torch
from torch import nn

from panoptic_ros.classes import LabelSet
from panoptic_ros.fusion.base import Heads, NetworkFusion, RuntimeThresholds
from panoptic_ros.fusion.core import Segments
from panoptic_ros.fusion.detections import clip_boxes, level_index, select_detections
from panoptic_ros.fusion.static_ops import index_op_input, to_input_pixels
from panoptic_ros.networks.box_coding import decode_deltas, retinanet_anchors
from panoptic_ros.networks.fpsnet import FEATURE_STRIDE, flatten_anchor_predictions, gaussian_attention_masks
from panoptic_ros.pipeline_io import HEAD_BOX_CLS, HEAD_BOX_REG, HEAD_FEATURES


class FPSNetFusion(NetworkFusion):
    def __init__(self, network: nn.Module, label_set: LabelSet, strides: tuple[int, ...],
                 anchor_sizes: tuple[tuple[float, ...], ...], anchor_ratios: tuple[tuple[float, ...], ...],
                 num_attention: int, attention_scale: float,
                 max_instances: int = 100) -> None:
        # One candidate per attention channel: channel n of the head is candidate n.
        super().__init__(network, label_set, num_candidates=num_attention, max_instances=max_instances,
                         label_stride=1)
        self.strides = tuple(strides)
        self.anchor_sizes, self.anchor_ratios = anchor_sizes, anchor_ratios
        self.num_anchors = len(anchor_sizes[0]) * len(anchor_ratios[0])
        self.attention_scale = attention_scale
        self.num_boxes = min(max_instances, num_attention)

    @classmethod
    def for_network(cls, network: nn.Module, max_instances: int, nms_kernel: int) -> FPSNetFusion:
        return cls(network, network.label_set, network.strides, network.anchor_sizes, network.anchor_ratios,
                   network.num_attention, network.attention_scale, max_instances)

    def segments(self, heads: Heads, thresholds: RuntimeThresholds) -> Segments:
        features = heads[HEAD_FEATURES]
        h8, w8 = features.shape[-2:]
        device = features.device

        # 1. Detections: every anchor of every level, in the row order of retinanet_anchors.
        anchors = torch.cat([retinanet_anchors(m.shape[-2], m.shape[-1], stride, sizes, ratios, device=device)
                             for m, stride, sizes, ratios in zip(heads[HEAD_BOX_REG], self.strides, self.anchor_sizes,
                                                                 self.anchor_ratios, strict=True)])
        deltas = torch.cat([flatten_anchor_predictions(m, 4)[0] for m in heads[HEAD_BOX_REG]])
        boxes = clip_boxes(decode_deltas(anchors, deltas), h8 * FEATURE_STRIDE, w8 * FEATURE_STRIDE)
        num_things = len(self.label_set.thing_ids)
        class_logits = torch.cat([flatten_anchor_predictions(m, num_things)[0] for m in heads[HEAD_BOX_CLS]])
        class_prob = torch.sigmoid(class_logits)
        levels = level_index([m.shape[-2] * m.shape[-1] * self.num_anchors for m in heads[HEAD_BOX_REG]], device)
        detections = select_detections(boxes, class_prob, class_prob.amax(dim=1), levels,
                                       thresholds.score_threshold, thresholds.nms_iou, self.num_boxes)

        # 2. Attention masks (empty channels beyond the boxes) and the panoptic head.
        empty = self.num_candidates - self.num_boxes
        att_boxes = torch.cat((detections.boxes, torch.zeros(empty, 4, device=device)))
        att_valid = torch.cat((detections.valid, torch.zeros(empty, dtype=torch.bool, device=device)))
        masks = gaussian_attention_masks(att_boxes[None], att_valid[None], (h8, w8), FEATURE_STRIDE,
                                         self.attention_scale)
        logits = self.network.panoptic_head(features, masks)

        # 3. Arg-max per input pixel: channel index == segment label (things first, then stuff).
        upsampled = to_input_pixels(logits, FEATURE_STRIDE)
        labels = index_op_input(upsampled).argmax(dim=0)
        no_thing = torch.zeros(empty, dtype=torch.int64, device=device)
        thing_class = self.thing_ids[torch.cat((detections.thing, no_thing))]
        score = torch.cat((detections.score, torch.zeros(empty, device=device)))
        return Segments(labels, thing_class, score, att_valid, detections.converged, detections.dropped)
