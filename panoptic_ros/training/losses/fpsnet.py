"""FPSNet training step and loss (de Geus et al. sec. III-A.3, IV-C): L = l_det L_det + l_pan L_pan.

`fpsnet_training_forward` runs the network, turns detections into attention masks the way the
paper trains the panoptic head, and runs the head:
1. detections: per-level top candidates above a score threshold, decoded, class-wise NMS, the
   N_att best (no gradient: the paper's dotted path);
2. matching: each ground-truth instance takes the detection with the highest IoU > 0.5, one
   detection per instance; unmatched detections are discarded;
3. shuffling: the kept masks go to random channels among the N_att;
4. the panoptic target names, per pixel, the channel of its matched instance, its stuff class,
   the "unmatched instance" channel or the "unlabeled" channel (`panoptic_target`).
With attention="ground_truth" the ground-truth boxes are the attention boxes (the paper's
ablation setting; useful when a detector trained from scratch finds nothing yet).

L_det: RetinaNet's focal loss and smooth-L1 box loss, both / number of positive anchors;
L_pan: softmax cross entropy of the panoptic logits (upsampled to the input) over the
N_att + N_stuff + 2 channels. l_det = 0.5, l_pan = 1.0 as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from panoptic_ros.networks.box_coding import box_iou, decode_deltas, retinanet_anchors
from panoptic_ros.networks.fpsnet import FEATURE_STRIDE, FPSNet, flatten_anchor_predictions, gaussian_attention_masks
from panoptic_ros.training.losses.common import greedy_nms, resize_logits, sigmoid_focal_loss, weighted_sum
from panoptic_ros.training.targets.fpsnet import IGNORED, panoptic_target

WEIGHTS = {"box_cls": 0.5, "box_reg": 0.5, "panoptic": 1.0}
SMOOTH_L1_BETA = 0.1
SCORE_THRESHOLD = 0.05
CANDIDATES_PER_LEVEL = 1000
DETECTION_NMS_IOU = 0.5
MATCH_IOU = 0.5
ATTENTION_SOURCES = ("detections", "ground_truth")


@torch.no_grad()
def detect(network: FPSNet, outputs: dict, image: int, image_hw: tuple[int, int]) -> Tensor:
    """Detections of one image as (N, 4) boxes, best first, at most N_att (RetinaNet inference)."""
    boxes, scores, labels = [], [], []
    for level, stride in enumerate(network.strides):
        cls = flatten_anchor_predictions(outputs["box_cls"][level][image:image + 1], network.num_things)[0]
        deltas = flatten_anchor_predictions(outputs["box_reg"][level][image:image + 1], 4)[0]
        h, w = outputs["box_cls"][level].shape[-2:]
        anchors = retinanet_anchors(h, w, stride, network.anchor_sizes[level], network.anchor_ratios[level],
                                    device=cls.device)
        score, label = torch.sigmoid(cls).max(dim=1)
        top = score.topk(min(CANDIDATES_PER_LEVEL, len(score))).indices
        top = top[score[top] > SCORE_THRESHOLD]
        boxes.append(decode_deltas(anchors[top], deltas[top]))
        scores.append(score[top])
        labels.append(label[top])
    boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
    if len(boxes) == 0:
        return boxes
    h, w = image_hw
    boxes = torch.stack((boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w),
                         boxes[:, 3].clamp(0, h)), dim=1)
    # Class-wise NMS by shifting each class to its own region of the plane.
    shifted = boxes + labels[:, None].to(boxes.dtype) * (2.0 * max(h, w))
    return boxes[greedy_nms(shifted, scores, DETECTION_NMS_IOU, network.num_attention)]


def match_detections(detections: Tensor, gt_boxes: Tensor, gt_valid: Tensor) -> tuple[Tensor, Tensor]:
    """Pairs (detection index, ground-truth index) by descending IoU > 0.5, each used at most once."""
    if len(detections) == 0 or not gt_valid.any():
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    iou = box_iou(detections, gt_boxes) * gt_valid[None, :]
    pairs_det, pairs_gt = [], []
    while True:
        best = iou.max()
        if best <= MATCH_IOU:
            break
        d, g = divmod(int(iou.argmax()), iou.shape[1])
        pairs_det.append(d)
        pairs_gt.append(g)
        iou[d, :] = 0
        iou[:, g] = 0
    return torch.as_tensor(pairs_det, dtype=torch.int64), torch.as_tensor(pairs_gt, dtype=torch.int64)


def attention_slots(network: FPSNet, outputs: dict, targets: dict, image_hw: tuple[int, int],
                    attention: str) -> tuple[Tensor, Tensor, Tensor]:
    """Shuffled attention boxes (B, N_att, 4), valid flags (B, N_att) and the instance id of each slot (B, N_att)."""
    b = targets["gt_ids"].shape[0]
    n_att = network.num_attention
    device = targets["gt_boxes"].device
    boxes = torch.zeros(b, n_att, 4, device=device)
    slot_ids = torch.zeros(b, n_att, dtype=torch.int64, device=device)
    for i in range(b):
        gt_boxes, gt_valid, gt_ids = targets["gt_boxes"][i], targets["gt_valid"][i], targets["gt_ids"][i]
        if attention == "ground_truth":
            chosen = torch.nonzero(gt_valid).flatten()[:n_att]
            kept_boxes, kept_ids = gt_boxes[chosen], gt_ids[chosen]
        else:
            detections = detect(network, outputs, i, image_hw)
            det_index, gt_index = match_detections(detections, gt_boxes, gt_valid)
            kept_boxes, kept_ids = detections[det_index], gt_ids[gt_index.to(device)]
        slots = torch.randperm(n_att, device=device)[:len(kept_ids)]
        boxes[i, slots] = kept_boxes
        slot_ids[i, slots] = kept_ids
    return boxes, (slot_ids > 0).float(), slot_ids


def fpsnet_training_forward(network: FPSNet, images: Tensor, targets: dict,
                            attention: str = "detections") -> dict:
    """Network outputs plus "panoptic" (B, N_att+N_stuff+2, H/8, W/8) logits and their "panoptic_target" (B, H, W)."""
    if attention not in ATTENTION_SOURCES:
        raise ValueError(f"attention must be one of {ATTENTION_SOURCES}, got {attention!r}")
    outputs = network(images)
    features = outputs["features"]
    boxes, valid, slot_ids = attention_slots(network, outputs, targets, tuple(images.shape[-2:]), attention)
    masks = gaussian_attention_masks(boxes, valid, tuple(features.shape[-2:]), FEATURE_STRIDE, network.attention_scale)
    outputs["panoptic"] = network.panoptic_head(features, masks, include_extra=True)
    outputs["panoptic_target"] = panoptic_target(targets["class_map"], targets["instance_map"], network.thing_ids,
                                                 network.stuff_ids, slot_ids, network.num_attention)
    return outputs


def fpsnet_loss(outputs: dict, targets: dict) -> tuple[Tensor, dict[str, Tensor]]:
    """(total, weighted terms "box_cls", "box_reg", "panoptic"); outputs from `fpsnet_training_forward`."""
    if "panoptic" not in outputs:
        raise ValueError("fpsnet loss needs the panoptic head's logits: produce outputs with training_forward")
    num_things = outputs["box_cls"][0].shape[1] // (outputs["box_reg"][0].shape[1] // 4)
    cls = torch.cat([flatten_anchor_predictions(x, num_things) for x in outputs["box_cls"]], dim=1)
    deltas = torch.cat([flatten_anchor_predictions(x, 4) for x in outputs["box_reg"]], dim=1)
    labels = torch.cat(targets["anchor_cls"], dim=1)
    target_deltas = torch.cat(targets["anchor_deltas"], dim=1)
    positive = labels >= 0
    count = positive.sum().clamp(min=1).to(cls.dtype)
    one_hot = F.one_hot(labels.clamp(min=0), num_things).to(cls.dtype) * positive[..., None]
    box_cls = (sigmoid_focal_loss(cls, one_hot) * (labels != IGNORED)[..., None]).sum() / count
    box_reg = F.smooth_l1_loss(deltas[positive], target_deltas[positive], beta=SMOOTH_L1_BETA, reduction="sum") / count
    target = outputs["panoptic_target"]
    panoptic = F.cross_entropy(resize_logits(outputs["panoptic"], target.shape[-2:]), target)
    return weighted_sum({"box_cls": box_cls, "box_reg": box_reg, "panoptic": panoptic}, WEIGHTS)
