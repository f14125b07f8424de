"""sensor_msgs Image / CompressedImage <-> NumPy, with the checks a node needs against bad input.

Color conversion itself is rosbags-image's (`convert_color`, OpenCV codes for RGB/BGR/alpha,
gray, 16-bit, YUV 4:2:2 and Bayer demosaicing). What it leaves to the caller, and we do here:
honour `step` (padded rows), `is_bigendian`, and refuse malformed messages with a reason instead
of crashing or reading past the buffer. ROS 2 has no cv_bridge on PyPI; this is the part of it
the node needs.
"""

from __future__ import annotations

import array
import sys
from typing import TYPE_CHECKING

import cv2
import numpy as np
from rosbags.image.image import ENCODINGMAP, ImageError, convert_color

if TYPE_CHECKING:  # decoding reads fields only (bag messages are rosbags types): the message code loads to build one
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Header

# NV12/NV21 (Jetson camera pipelines) are a full-size Y plane then a half-size interleaved UV plane:
# 1.5 rows of `step` bytes per image row, which ENCODINGMAP's shape cannot express; converted here.
_SEMI_PLANAR = {"nv12": cv2.COLOR_YUV2RGB_NV12, "nv21": cv2.COLOR_YUV2RGB_NV21}
# OpenCV type names some drivers publish: read as cv_bridge does (8UC3 is BGR, 8UC1 is gray).
ENCODING_ALIASES = {"8UC3": "bgr8", "8UC1": "mono8"}
_PACKED = tuple(e for e in ENCODINGMAP if e not in _SEMI_PLANAR)
SUPPORTED_ENCODINGS: tuple[str, ...] = (*_PACKED, *_SEMI_PLANAR, *ENCODING_ALIASES)
_PACKED_YUV = frozenset(e for e in _PACKED if ENCODINGMAP[e][1].name.startswith("YUV"))
_BAYER = frozenset(e for e in _PACKED if e.startswith("bayer_"))

# Encodings of the images the node publishes: (dtype, channels).
OUTPUT_ENCODINGS = {"rgb8": (np.uint8, 3), "mono8": (np.uint8, 1), "32SC1": (np.int32, 1)}


class ImageRejected(ValueError):
    """An input image the node refuses; the message says why."""


def _layout(encoding: str) -> tuple[np.dtype, int]:
    """(element dtype, elements per pixel) of a packed encoding (for NV12/NV21: of the Y plane)."""
    if encoding in _SEMI_PLANAR:
        return np.dtype(np.uint8), 1
    _, _, typestr, channels = ENCODINGMAP[ENCODING_ALIASES.get(encoding, encoding)]
    return np.dtype(typestr), channels


def _rows(encoding: str, height: int) -> int:
    """Rows of `step` bytes in the data: 1.5 per image row for NV12/NV21."""
    return height * 3 // 2 if encoding in _SEMI_PLANAR else height


def _pixel_view(msg: Image, dtype: np.dtype, channels: int) -> np.ndarray:
    """The pixels of a checked Image as (H, W) or (H, W, C) of `dtype`, skipping row padding, in native byte order."""
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
    pixels = rows[:, : msg.width * channels * dtype.itemsize].view(dtype)
    if dtype.itemsize > 1 and msg.is_bigendian != (sys.byteorder == "big"):
        pixels = pixels.byteswap()
    return pixels.reshape(msg.height, msg.width, channels) if channels > 1 else pixels


def check_image(msg: Image, max_pixels: int) -> None:
    """Refuse a malformed Image before any pixel is touched (cheap: header fields and length only)."""
    if msg.encoding not in SUPPORTED_ENCODINGS:
        raise ImageRejected(f"unsupported encoding {msg.encoding!r}; expected one of {', '.join(SUPPORTED_ENCODINGS)}")
    if msg.width == 0 or msg.height == 0:
        raise ImageRejected(f"empty image: {msg.width}x{msg.height} pixels")
    if msg.width * msg.height > max_pixels:
        raise ImageRejected(f"image of {msg.width}x{msg.height} = {msg.width * msg.height} pixels exceeds "
                            f"max_pixels = {max_pixels}")
    dtype, channels = _layout(msg.encoding)
    row_bytes = msg.width * channels * dtype.itemsize
    if msg.step < row_bytes:
        raise ImageRejected(f"step {msg.step} is smaller than one row of {msg.width} {msg.encoding} pixels "
                            f"({row_bytes} bytes)")
    if msg.encoding in _SEMI_PLANAR and (msg.width % 2 or msg.height % 2):
        raise ImageRejected(f"{msg.encoding} subsamples color 2x2, so width and height must be even, got "
                            f"{msg.width}x{msg.height}")
    rows = _rows(msg.encoding, msg.height)
    if len(msg.data) != msg.step * rows:
        what = f"step x height x 1.5 = {msg.step} x {msg.height} x 1.5" if rows != msg.height else \
            f"step x height = {msg.step} x {msg.height}"
        raise ImageRejected(f"data has {len(msg.data)} bytes, expected {what} = {msg.step * rows}")
    if msg.encoding in _PACKED_YUV and msg.width % 2:
        raise ImageRejected(f"{msg.encoding} packs pixel pairs, so its width must be even, got {msg.width}")
    if msg.encoding in _BAYER and (msg.width < 2 or msg.height < 2):
        raise ImageRejected(f"a Bayer image needs at least 2x2 pixels, got {msg.width}x{msg.height}")


def image_to_rgb(msg: Image, max_pixels: int) -> np.ndarray:
    """The image as uint8 (H, W, 3) RGB, C-contiguous. rgb8 without padding is a view, not a copy."""
    check_image(msg, max_pixels)
    try:
        if msg.encoding in _SEMI_PLANAR:
            planes = np.frombuffer(msg.data, dtype=np.uint8).reshape(-1, msg.step)[:, : msg.width]
            return cv2.cvtColor(np.ascontiguousarray(planes), _SEMI_PLANAR[msg.encoding])
        encoding = ENCODING_ALIASES.get(msg.encoding, msg.encoding)
        rgb = convert_color(_pixel_view(msg, *_layout(msg.encoding)), encoding, "rgb8")
    except (ImageError, cv2.error) as error:
        raise ImageRejected(f"cannot convert {msg.encoding} to rgb8: {error}") from error
    return np.ascontiguousarray(rgb)


def compressed_to_rgb(msg: CompressedImage, max_pixels: int) -> np.ndarray:
    """A JPEG/PNG/... CompressedImage decoded to uint8 (H, W, 3) RGB."""
    if len(msg.data) == 0:
        raise ImageRejected("compressed image has no data")
    bgr = cv2.imdecode(np.frombuffer(msg.data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageRejected(f"cannot decode compressed image (format {msg.format!r}, {len(msg.data)} bytes)")
    height, width = bgr.shape[:2]
    if height * width > max_pixels:
        raise ImageRejected(f"image of {width}x{height} = {width * height} pixels exceeds max_pixels = {max_pixels}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class ImageBuffer:
    """A reusable output image: `pixels` (a NumPy view to fill) over `data` (the array.array an Image
    message carries as it is). Filling it in place and publishing saves a copy and an allocation of the
    whole image per frame; rclpy has copied the data by the time publish() returns, so the buffer can be
    refilled for the next frame."""

    def __init__(self, encoding: str, height: int, width: int) -> None:
        from sensor_msgs.msg import Image

        if encoding not in OUTPUT_ENCODINGS:
            raise ValueError(f"output encoding must be one of {', '.join(OUTPUT_ENCODINGS)}, got {encoding!r}")
        dtype, channels = OUTPUT_ENCODINGS[encoding]
        self.encoding, self.height, self.width = encoding, height, width
        self.step = width * channels * np.dtype(dtype).itemsize
        self.data = array.array("B", bytes(self.step * height))
        shape = (height, width, channels) if channels > 1 else (height, width)
        self.pixels = np.frombuffer(self.data, dtype=dtype).reshape(shape)
        # Image(data=...) copies the array; with check_fields the data setter keeps an array.array as it is.
        self._msg = Image(check_fields=True, height=height, width=width, encoding=encoding,
                          is_bigendian=sys.byteorder == "big", step=self.step)
        self._msg.data = self.data

    def message(self, header: Header) -> Image:
        """The Image of the buffer's current pixels, stamped with `header` (no copy; the same message object
        each call, so publish it before refilling the buffer)."""
        self._msg.header = header
        return self._msg


def to_image_msg(pixels: np.ndarray, encoding: str, header: Header) -> Image:
    """An Image message of `pixels` (rgb8 (H, W, 3) uint8, mono8 (H, W) uint8 or 32SC1 (H, W) int32), copied."""
    dtype, channels = OUTPUT_ENCODINGS[encoding]
    expected_ndim = 3 if channels > 1 else 2
    if pixels.dtype != dtype or pixels.ndim != expected_ndim or (channels > 1 and pixels.shape[2] != channels):
        raise ValueError(f"{encoding} needs a {np.dtype(dtype).name} array of {expected_ndim} dimensions"
                         f"{f' with {channels} channels' if channels > 1 else ''}, got {pixels.dtype} {pixels.shape}")
    buffer = ImageBuffer(encoding, pixels.shape[0], pixels.shape[1])
    buffer.pixels[...] = pixels
    return buffer.message(header)


def image_msg_to_array(msg: Image) -> np.ndarray:
    """The pixels of one of the node's own output images (rgb8, mono8, 32SC1) as an array (for consumers, tests)."""
    if msg.encoding not in OUTPUT_ENCODINGS:
        raise ValueError(f"expected one of {', '.join(OUTPUT_ENCODINGS)}, got encoding {msg.encoding!r}")
    dtype, channels = OUTPUT_ENCODINGS[msg.encoding]
    if len(msg.data) != msg.step * msg.height:
        raise ValueError(f"data has {len(msg.data)} bytes, expected step x height = {msg.step * msg.height}")
    return _pixel_view(msg, np.dtype(dtype), channels)
