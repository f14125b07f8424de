"""The node's messages built from one PanopticResult whose rows are already in camera pixels
(panoptic_ros.imaging.Resampler maps them there)."""

from __future__ import annotations

import numpy as np
from sensor_msgs.msg import RegionOfInterest
from std_msgs.msg import ColorRGBA, Header

from panoptic_ros.classes import LabelSet
from panoptic_ros.msg import PanopticClass, PanopticClassMap, PanopticInstance, PanopticInstanceArray
from panoptic_ros.pipeline_io import COL


def _segment_order(rows: np.ndarray, label_set: LabelSet) -> np.ndarray:
    """Things first by descending score, then stuff by class id (the PanopticInstanceArray convention)."""
    class_ids = rows[:, COL["class_id"]].astype(np.int64)
    is_thing = np.array([label_set.thing[c] for c in class_ids], dtype=bool)
    # lexsort: last key is primary. Stuff sorts after things; within things by -score, within stuff by class.
    return np.lexsort((class_ids, np.where(is_thing, -rows[:, COL["score"]], 0.0), ~is_thing))


def instance_array_msg(rows: np.ndarray, label_set: LabelSet, header: Header, camera_hw: tuple[int, int],
                       label_divisor: int, model_name: str, track_ids: dict[int, int] | None = None
                       ) -> PanopticInstanceArray:
    """PanopticInstanceArray of valid instance-table rows already in camera pixels (things and stuff);
    `track_ids` ({segment id: track id}, the tracker's) fill track_id, 0 for the others."""
    track_ids = track_ids or {}
    segments = []
    for row in rows[_segment_order(rows, label_set)]:
        class_id = int(row[COL["class_id"]])
        x1, y1, x2, y2 = (int(row[COL[k]]) for k in ("x1", "y1", "x2", "y2"))
        is_thing = label_set.thing[class_id]
        segments.append(PanopticInstance(
            id=int(row[COL["id"]]), class_id=class_id, class_name=label_set.names[class_id], is_thing=is_thing,
            score=float(row[COL["score"]]) if is_thing else 1.0,
            bbox=RegionOfInterest(x_offset=x1, y_offset=y1, width=x2 - x1 + 1, height=y2 - y1 + 1),
            area=int(row[COL["area"]]), centroid_x=float(row[COL["centroid_x"]]),
            centroid_y=float(row[COL["centroid_y"]]), track_id=track_ids.get(int(row[COL["id"]]), 0)))
    return PanopticInstanceArray(header=header, width=camera_hw[1], height=camera_hw[0], label_divisor=label_divisor,
                                 model_name=model_name, segments=segments)


def class_map_msg(label_set: LabelSet, header: Header, label_divisor: int, model_name: str) -> PanopticClassMap:
    """The model's classes with names, thing flags and overlay colors."""
    described = zip(label_set.names, label_set.thing, label_set.colors, strict=True)
    classes = [PanopticClass(id=i, name=name, is_thing=thing,
                             color=ColorRGBA(r=color[0] / 255.0, g=color[1] / 255.0, b=color[2] / 255.0, a=1.0))
               for i, (name, thing, color) in enumerate(described)]
    return PanopticClassMap(header=header, model_name=model_name, label_divisor=label_divisor, classes=classes)
