"""Image-space helpers shared by the node, bag evaluation and reports (no ROS needed).

The model runs at its fixed input size; the camera may differ. `Resampler` shrinks the image to
the model (bilinear) and maps the outputs back (nearest, so ids stay ids), and maps the instance
table's boxes, areas and centroids into camera pixels, so everything published lines up with the
source image. `segment_colors` and `overlay_image` draw the colored overlay.
"""

from __future__ import annotations

from functools import cached_property, lru_cache

import cv2
import numpy as np

from panoptic_ros.classes import VOID_CLASS, LabelSet
from panoptic_ros.pipeline_io import COL, INSTANCE_COLUMNS

# Brightness of a thing instance's color: instance i gets 1 - SHADE_DEPTH * frac(i * golden ratio),
# so neighbouring instance numbers get clearly different shades of their class color.
SHADE_DEPTH = 0.55
_GOLDEN = 0.6180339887


class Resampler:
    """Image and output resampling between one camera size and one model input size (both (H, W))."""

    def __init__(self, camera_hw: tuple[int, int], model_hw: tuple[int, int]) -> None:
        self.camera_hw = (int(camera_hw[0]), int(camera_hw[1]))
        self.model_hw = (int(model_hw[0]), int(model_hw[1]))

    @property
    def identity(self) -> bool:
        return self.camera_hw == self.model_hw

    def to_model(self, rgb: np.ndarray) -> np.ndarray:
        """The camera image at the model's input size (bilinear), C-contiguous."""
        if self.identity:
            return np.ascontiguousarray(rgb)
        height, width = self.model_hw
        return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)

    def to_camera(self, label_image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """A model-resolution id or class map (or color image) at the camera's size, nearest neighbour (no
        mixed labels); written into `out` when given (an ImageBuffer's pixels)."""
        if self.identity:
            if out is None:
                return label_image
            np.copyto(out, label_image)
            return out
        height, width = self.camera_hw
        return cv2.resize(label_image, (width, height), dst=out, interpolation=cv2.INTER_NEAREST)

    @cached_property
    def _source_rows(self) -> np.ndarray:
        """Model row that each camera row takes its labels from (exactly what `to_camera` does)."""
        return self._source_index(self.model_hw[0], self.camera_hw[0])

    @cached_property
    def _source_cols(self) -> np.ndarray:
        return self._source_index(self.model_hw[1], self.camera_hw[1])

    @staticmethod
    def _source_index(model_size: int, camera_size: int) -> np.ndarray:
        # Ask OpenCV rather than re-deriving its rounding rule: resize a ramp the same way.
        ramp = np.arange(model_size, dtype=np.int32).reshape(-1, 1)
        return cv2.resize(ramp, (1, camera_size), interpolation=cv2.INTER_NEAREST).ravel()

    def segments_to_camera(self, rows: np.ndarray) -> np.ndarray:
        """Instance-table rows with box, area and centroid in camera pixels; rows with no camera pixel left out.

        Boxes are exact (nearest-neighbour mapping is monotonic, so the camera pixels that show a
        model row or column form one run). Areas scale by the pixel-count ratio and centroids by
        the size ratio: exact for integer scale factors, within the resampling error otherwise.
        """
        rows = np.array(rows, dtype=np.float64).reshape(-1, len(INSTANCE_COLUMNS))
        if self.identity or len(rows) == 0:
            return rows
        for lo, hi, source in ((COL["x1"], COL["x2"], self._source_cols), (COL["y1"], COL["y2"], self._source_rows)):
            rows[:, lo] = np.searchsorted(source, rows[:, lo], side="left")
            rows[:, hi] = np.searchsorted(source, rows[:, hi], side="right") - 1
        scale_y = self.camera_hw[0] / self.model_hw[0]
        scale_x = self.camera_hw[1] / self.model_hw[1]
        rows[:, COL["area"]] = np.round(rows[:, COL["area"]] * scale_x * scale_y)
        rows[:, COL["centroid_x"]] = (rows[:, COL["centroid_x"]] + 0.5) * scale_x - 0.5
        rows[:, COL["centroid_y"]] = (rows[:, COL["centroid_y"]] + 0.5) * scale_y - 0.5
        visible = (rows[:, COL["x2"]] >= rows[:, COL["x1"]]) & (rows[:, COL["y2"]] >= rows[:, COL["y1"]])
        return rows[visible]


@lru_cache(maxsize=4)
def _shade_table(label_divisor: int) -> np.ndarray:
    """uint16 brightness (256 = unchanged) of each instance number 0..label_divisor-1; 0 (stuff) keeps its color."""
    instance = np.arange(label_divisor)
    shade = np.where(instance > 0, 1.0 - SHADE_DEPTH * ((instance * _GOLDEN) % 1.0), 1.0)
    return np.round(256 * shade).astype(np.uint16)


def segment_colors(panoptic: np.ndarray, semantic: np.ndarray, label_set: LabelSet, label_divisor: int) -> np.ndarray:
    """uint8 (H, W, 3) color of every pixel: its class color, darkened per thing instance; void is black."""
    palette = np.zeros((256, 3), dtype=np.uint16)
    palette[: label_set.num_classes] = label_set.colors
    instance = np.where(panoptic > 0, panoptic % label_divisor, 0)
    shaded = palette[semantic] * _shade_table(label_divisor)[instance][..., None]
    return (shaded >> 8).astype(np.uint8)


def overlay_image(camera_rgb: np.ndarray, colors: np.ndarray, semantic: np.ndarray, alpha: float,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Blend segment colors onto the camera image (all at camera size), into `out` when given (may be `colors`);
    void pixels (semantic 255) show the plain image."""
    blended = cv2.addWeighted(camera_rgb, 1.0 - alpha, colors, alpha, 0.0, dst=out)
    void = cv2.compare(semantic, VOID_CLASS, cv2.CMP_EQ)
    return cv2.copyTo(camera_rgb, void, dst=blended)
