"""Each method's default thresholds as its paper states them, with the sentence and the section.

`kind` says how sure a value is:
- "stated": the paper's own text gives it,
- "cited": the paper defers to another paper for this step, and that paper (or its released
  configuration, where so noted) gives the value,
- "not stated": neither does; the value is this project's default (pipeline_io.Thresholds), which
  the shipped models were tuned with.
Only the thresholds a method uses are listed (`used_thresholds`); the others do not affect it.
"""

from __future__ import annotations

from dataclasses import dataclass

from panoptic_ros.pipeline_io import Thresholds


@dataclass(frozen=True)
class Source:
    value: float
    kind: str  # "stated" | "cited" | "not stated"
    where: str
    quote: str


_PROJECT = Thresholds()


def _not_stated(field: str, note: str = "") -> Source:
    return Source(float(getattr(_PROJECT, field)), "not stated", "", note)


_FCOS_SCORE = Source(0.05, "cited", "LPSNet sec. 4 'Inference' -> FCOS sec. 3.1",
                     "LPSNet: \"Unless specified, our post-processing procedure on bounding boxes is also the same "
                     "with [31].\" FCOS: \"we choose the location with p_x,y > 0.05 as positive samples\"")
_FCOS_NMS = Source(0.6, "cited", "LPSNet sec. 4 'Inference' -> FCOS released configuration (NMS_TH)",
                   "\"Unless specified, our post-processing procedure on bounding boxes is also the same with [31].\"")

DEFAULT_SOURCES: dict[str, dict[str, Source]] = {
    "psn": {
        "center_threshold": _not_stated("center_threshold", "Panoptic-DeepLab's value (0.1), whose instance "
                                        "grouping PSN adopts: \"as in [3]\" (sec. 2)"),
        "min_stuff_area": _not_stated("min_stuff_area"),
    },
    "rtps": {
        "score_threshold": _not_stated("score_threshold"),
        "nms_iou": _not_stated("nms_iou"),
        "mask_sigma": Source(0.3, "stated", "appendix A (per-class results)",
                             "\"For both datasets, sigma=0.3 is used as the foreground mask acceptance probability "
                             "in Eq. 8, which is determined through hyper-parameter grid search.\""),
        "overlap_threshold": _not_stated("overlap_threshold", "\"we follow the conventional fusion strategy in "
                                         "[14]\" (sec. 3.2), which gives no value"),
        "min_stuff_area": _not_stated("min_stuff_area"),
    },
    "fpsnet": {
        "score_threshold": Source(0.05, "cited", "sec. III-B-3 -> RetinaNet sec. 4 'Inference'",
                                  "FPSNet: \"The object detection head of the network is trained in the usual "
                                  "fashion, as explained in [20].\" RetinaNet: \"after thresholding detector "
                                  "confidence at 0.05\""),
        "nms_iou": Source(0.5, "cited", "sec. III-B-3 -> RetinaNet sec. 4 'Inference'",
                          "RetinaNet: \"non-maximum suppression with a threshold of 0.5 is applied to yield the "
                          "final detections\""),
        "min_stuff_area": Source(0.0, "stated", "sec. IV-A",
                                 "\"Since FPSNet does not require such rule-based merging, the total time required "
                                 "for a prediction is directly given by the network inference time.\""),
    },
    "spinet": {
        "score_threshold": Source(0.45, "stated", "sec. 4 'Inference'",
                                  "\"give the confidence threshold of 0.45 for the sampling of dynamic filters for "
                                  "instances\""),
        "mask_sigma": _not_stated("mask_sigma"),
        "overlap_threshold": _not_stated("overlap_threshold", "\"follows that of PanopticFPN [14]\", which gives "
                                         "no value"),
        "min_stuff_area": _not_stated("min_stuff_area"),
    },
    "lpsnet": {
        "score_threshold": _FCOS_SCORE,
        "nms_iou": _FCOS_NMS,
        "overlap_threshold": Source(0.3, "stated", "sec. 3.4",
                                    "\"If the intersection between the current mask and those already existing is "
                                    "larger than a threshold (0.3 in our experiments), we discard this mask.\""),
        "min_stuff_area": _not_stated("min_stuff_area"),
    },
}


def used_thresholds(model: str) -> tuple[str, ...]:
    """The Thresholds fields that `model`'s fusion uses."""
    return tuple(DEFAULT_SOURCES[model])


def paper_defaults(model: str) -> Thresholds:
    """`model`'s default thresholds: the paper's where it has them, the project's elsewhere."""
    return Thresholds(**{name: source.value for name, source in DEFAULT_SOURCES[model].items()})


# Build-time parameters (they fix graph shapes, so they are not runtime thresholds).
BUILD_SOURCES: dict[str, dict[str, Source]] = {
    "psn": {"nms_kernel": Source(7.0, "not stated", "", "Panoptic-DeepLab's max-pooling kernel (7)")},
    "fpsnet": {
        "num_attention": Source(50.0, "stated", "sec. IV-C", "\"By default, we use N_att = 50 and C_att = 50\""),
        "attention_scale": Source(50.0, "stated", "sec. IV-C", "\"By default, we use N_att = 50 and C_att = 50\""),
    },
}
