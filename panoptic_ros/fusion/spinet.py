"""SPINet fusion (Hwang et al., sections 3.2-3.4 and "Inference" in section 4).

1. Filter sampling: locations of every level whose class confidence exceeds score_threshold
   (the paper uses 0.45). To keep the fixed candidate budget from being spent on the many
   neighbouring locations of one large object, only locations that are a 3 x 3 local maximum of
   their class's confidence are sampled (our addition), the best SAMPLES_PER_INSTANCE * K of them.
2. Single-shot convolution: the sampled filters are applied to the Panoptic-Feature
   (network.dynamic_mask_logits); instance mask = sigmoid(logit) > mask_sigma.
3. Mask NMS (class-aware, mask IoU > nms_iou), keeping the best K.
4. Panoptic FPN merge: instances pasted by confidence (dropped when more than overlap_threshold of
   the mask is taken), then the arg-max of the learned stuff filters' logits on the rest.
center_threshold is not used by this method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panoptic_ros.classes import LabelSet
from panoptic_ros.fusion.base import Heads, NetworkFusion, RuntimeThresholds
from panoptic_ros.fusion.core import Segments
from panoptic_ros.fusion.detections import flatten_locations
from panoptic_ros.fusion.static_ops import greedy_nms, index_op_input, paste_by_confidence, top_candidates
from panoptic_ros.pipeline_io import HEAD_CLASS_LOGITS, HEAD_FILTERS, HEAD_PANOPTIC_FEATURE

SAMPLES_PER_INSTANCE = 2  # sampled filters per output instance slot, before mask NMS
PEAK_WINDOW = 3  # cells


def mask_iou(masks: Tensor) -> Tensor:
    """Pairwise IoU of binary masks (M, N) -> (M, M), by one matmul.

    Each mask enters as 1/4 so that intersection counts are 1/16 of the cell counts and stay below
    FP16's 65504 up to 1M-cell grids; the IoU ratio does not change.
    """
    scaled = masks.to(torch.float32) * 0.25
    inter = torch.matmul(scaled, scaled.T)
    area = masks.to(torch.int32).sum(dim=1, dtype=torch.int32).to(torch.float32) / 16.0
    return inter / (area[:, None] + area[None, :] - inter).clamp(min=1e-6)


def sampling_confidence(class_logits: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per location of all levels: (confidence (N,), thing index (N,)) over the classes it is a local maximum of."""
    peaks = []
    for logits in class_logits:
        probability = torch.sigmoid(logits)
        pooled = F.max_pool2d(probability, PEAK_WINDOW, stride=1, padding=PEAK_WINDOW // 2)
        peaks.append(probability * (probability == pooled).to(probability.dtype))
    confidence, thing = index_op_input(flatten_locations(peaks)).max(dim=1)
    return confidence, thing


class SPINetFusion(NetworkFusion):
    def __init__(self, network: nn.Module, label_set: LabelSet, max_instances: int = 100) -> None:
        super().__init__(network, label_set, num_candidates=max_instances, max_instances=max_instances)

    @classmethod
    def for_network(cls, network: nn.Module, max_instances: int, nms_kernel: int) -> SPINetFusion:
        return cls(network, network.label_set, max_instances)

    def segments(self, heads: Heads, thresholds: RuntimeThresholds) -> Segments:
        feature = heads[HEAD_PANOPTIC_FEATURE]
        h, w = feature.shape[-2:]
        k = self.num_candidates

        # 1. Filter sampling.
        confidence, thing = sampling_confidence(heads[HEAD_CLASS_LOGITS])
        filters = flatten_locations(heads[HEAD_FILTERS])
        samples = min(SAMPLES_PER_INSTANCE * k, confidence.shape[0])
        index, score, valid = top_candidates(confidence, confidence > thresholds.score_threshold, samples)
        thing = thing[index]

        # 2. Dynamic convolution -> instance masks.
        logits = self.network.dynamic_mask_logits(feature, filters[index][None])[0]
        masks = (torch.sigmoid(logits) > thresholds.mask_sigma).reshape(samples, -1)

        # 3. Mask NMS within each class, then the best K.
        same_class = (thing[:, None] == thing[None, :]).to(torch.float32)
        keep, nms_converged = greedy_nms(mask_iou(masks) * same_class,
                                         valid & (masks.to(torch.int32).amax(dim=1) > 0), thresholds.nms_iou)
        slots = min(k, samples)
        best, _, kept = top_candidates(score, keep, slots)
        dropped = torch.maximum(keep.to(torch.int64).sum() - slots, torch.zeros((), dtype=torch.int64))
        masks, thing, score = masks[best], thing[best], score[best]

        # 4. Merge: instances by confidence, then stuff where no instance is.
        keep, owner, pasted = paste_by_confidence(masks, kept, thresholds.overlap_threshold)
        stuff = index_op_input(self.network.stuff_mask_logits(feature)[0]).argmax(dim=0) + k
        labels = torch.where(owner.reshape(h, w) < masks.shape[0], owner.reshape(h, w), stuff)
        return _pad_segments(Segments(labels, self.thing_ids[thing], score, keep, nms_converged & pasted, dropped), k)


def _pad_segments(segments: Segments, k: int) -> Segments:
    """Fewer sampling locations than K (tiny images): append invalid candidates."""
    missing = k - segments.thing_valid.shape[0]
    if missing <= 0:
        return segments
    padded = (torch.cat((t, torch.zeros(missing, dtype=t.dtype, device=t.device))) for t in segments[1:4])
    return Segments(segments.labels, *padded, segments.converged, segments.candidates_dropped)
