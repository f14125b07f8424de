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


RESIZE_MODES = ("stretch", "letterbox")


class Resampler:
    """Image and output resampling between one camera size and one model input size (both (H, W)).

    stretch fills the model input with the whole image (the aspect ratio changes when the two differ);
    letterbox scales the image to fit, keeping its aspect ratio, and pads the rest with black. Either
    way the outputs come back at the camera's size (letterbox: from the image's part of the model input).
    """

    def __init__(self, camera_hw: tuple[int, int], model_hw: tuple[int, int], mode: str = "stretch") -> None:
        if mode not in RESIZE_MODES:
            raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
        self.camera_hw = (int(camera_hw[0]), int(camera_hw[1]))
        self.model_hw = (int(model_hw[0]), int(model_hw[1]))
        self.mode = mode
        # The image's box in the model input: (top, left, height, width).
        if mode == "stretch":
            self.content = (0, 0, *self.model_hw)
        else:
            scale = min(self.model_hw[0] / self.camera_hw[0], self.model_hw[1] / self.camera_hw[1])
            height = min(self.model_hw[0], max(1, round(self.camera_hw[0] * scale)))
            width = min(self.model_hw[1], max(1, round(self.camera_hw[1] * scale)))
            self.content = ((self.model_hw[0] - height) // 2, (self.model_hw[1] - width) // 2, height, width)

    @property
    def identity(self) -> bool:
        return self.camera_hw == self.model_hw

    def to_model(self, rgb: np.ndarray) -> np.ndarray:
        """The camera image at the model's input size (bilinear; letterbox pads with black), C-contiguous."""
        if self.identity:
            return np.ascontiguousarray(rgb)
        top, left, height, width = self.content
        resized = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
        if (height, width) == self.model_hw:
            return resized
        bottom, right = self.model_hw[0] - height - top, self.model_hw[1] - width - left
        return cv2.copyMakeBorder(resized, top, bottom, left, right, cv2.BORDER_CONSTANT, value=0)

    def to_camera(self, label_image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """A model-resolution id or class map (or color image) at the camera's size, nearest neighbour (no
        mixed labels); written into `out` when given (an ImageBuffer's pixels)."""
        if self.identity:
            if out is None:
                return label_image
            np.copyto(out, label_image)
            return out
        top, left, content_h, content_w = self.content
        height, width = self.camera_hw
        return cv2.resize(label_image[top: top + content_h, left: left + content_w], (width, height), dst=out,
                          interpolation=cv2.INTER_NEAREST)

    @cached_property
    def _source_rows(self) -> np.ndarray:
        """Model row that each camera row takes its labels from (exactly what `to_camera` does)."""
        return self.content[0] + self._source_index(self.content[2], self.camera_hw[0])

    @cached_property
    def _source_cols(self) -> np.ndarray:
        return self.content[1] + self._source_index(self.content[3], self.camera_hw[1])

    @staticmethod
    def _source_index(model_size: int, camera_size: int) -> np.ndarray:
        # Ask OpenCV rather than re-deriving its rounding rule: resize a ramp the same way.
        ramp = np.arange(model_size, dtype=np.int32).reshape(-1, 1)
        return cv2.resize(ramp, (1, camera_size), interpolation=cv2.INTER_NEAREST).ravel()

    def segments_to_camera(self, rows: np.ndarray, panoptic: np.ndarray | None = None) -> np.ndarray:
        """Instance-table rows with box, area and centroid in camera pixels; rows with no camera pixel left out.

        Boxes are exact (nearest-neighbour mapping is monotonic, so the camera pixels that show a
        model row or column form one run). Areas scale by the pixel-count ratio and centroids by
        the size ratio: exact for integer scale factors, within the resampling error otherwise.
        With letterbox padding, pass the model-resolution `panoptic` map: area and centroid are then
        measured on the image's part only (the table counts padding pixels too).
        """
        rows = np.array(rows, dtype=np.float64).reshape(-1, len(INSTANCE_COLUMNS))
        if self.identity or len(rows) == 0:
            return rows
        if panoptic is not None and self.content != (0, 0, *self.model_hw):
            rows = self._measure_in_content(rows, panoptic)
        for lo, hi, source in ((COL["x1"], COL["x2"], self._source_cols), (COL["y1"], COL["y2"], self._source_rows)):
            rows[:, lo] = np.searchsorted(source, rows[:, lo], side="left")
            rows[:, hi] = np.searchsorted(source, rows[:, hi], side="right") - 1
        top, left, content_h, content_w = self.content
        scale_y = self.camera_hw[0] / content_h
        scale_x = self.camera_hw[1] / content_w
        rows[:, COL["area"]] = np.round(rows[:, COL["area"]] * scale_x * scale_y)
        rows[:, COL["centroid_x"]] = (rows[:, COL["centroid_x"]] - left + 0.5) * scale_x - 0.5
        rows[:, COL["centroid_y"]] = (rows[:, COL["centroid_y"]] - top + 0.5) * scale_y - 0.5
        visible = (rows[:, COL["x2"]] >= rows[:, COL["x1"]]) & (rows[:, COL["y2"]] >= rows[:, COL["y1"]])
        return rows[visible]

    def _measure_in_content(self, rows: np.ndarray, panoptic: np.ndarray) -> np.ndarray:
        """The rows of segments with pixels inside the image's box, with area and centroid (model pixels) of
        those pixels only."""
        top, left, height, width = self.content
        crop = panoptic[top: top + height, left: left + width]
        values, inverse, counts = np.unique(crop, return_inverse=True, return_counts=True)
        ys, xs = np.indices(crop.shape)
        sum_x = np.bincount(inverse.ravel(), weights=xs.ravel(), minlength=len(values))
        sum_y = np.bincount(inverse.ravel(), weights=ys.ravel(), minlength=len(values))
        ids = rows[:, COL["id"]].astype(np.int64)
        position = np.clip(np.searchsorted(values, ids), 0, len(values) - 1)
        present = values[position] == ids
        rows, position = rows[present], position[present]
        rows[:, COL["area"]] = counts[position]
        rows[:, COL["centroid_x"]] = sum_x[position] / counts[position] + left
        rows[:, COL["centroid_y"]] = sum_y[position] / counts[position] + top
        return rows


@lru_cache(maxsize=4)
def _shade_table(label_divisor: int) -> np.ndarray:
    """uint16 brightness (256 = unchanged) of each instance number 0..label_divisor-1; 0 (stuff) keeps its color."""
    instance = np.arange(label_divisor)
    shade = np.where(instance > 0, 1.0 - SHADE_DEPTH * ((instance * _GOLDEN) % 1.0), 1.0)
    return np.round(256 * shade).astype(np.uint16)


def class_colors(semantic: np.ndarray, label_set: LabelSet) -> np.ndarray:
    """uint8 (H, W, 3) class color of every pixel of a semantic map (void black): the semantic map for eyes."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: label_set.num_classes] = label_set.colors
    return palette[semantic]


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
    # NumPy's comparison, not cv2.compare: OpenCV takes a 1x1 image for a scalar and refuses the pair.
    void = (semantic == VOID_CLASS).view(np.uint8)
    return cv2.copyTo(camera_rgb, void, dst=blended)
