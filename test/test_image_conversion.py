"""Image conversion: every supported encoding decodes to the right RGB, malformed messages are refused."""

import array
import sys

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from panoptic_ros.ros.image_conversion import (
    ENCODING_ALIASES,
    SUPPORTED_ENCODINGS,
    ImageBuffer,
    ImageRejected,
    check_image,
    compressed_to_rgb,
    image_msg_to_array,
    image_to_rgb,
    to_image_msg,
)

MAX_PIXELS = 10_000_000


def make_msg(pixels: np.ndarray, encoding: str, padding: int = 0, bigendian: bool | None = None) -> Image:
    """An Image of `pixels` (rows as given), each row followed by `padding` junk bytes."""
    if bigendian is not None and pixels.itemsize > 1:
        pixels = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<"))
    height, width = pixels.shape[:2]
    row = pixels.reshape(height, -1).view(np.uint8).reshape(height, -1)
    rows = np.concatenate([row, np.full((height, padding), 0xAB, np.uint8)], axis=1)
    is_big = bigendian if bigendian is not None else sys.byteorder == "big"
    return Image(height=height, width=width, encoding=encoding, is_bigendian=is_big, step=rows.shape[1],
                 data=array.array("B", rows.tobytes()))


@pytest.fixture
def rgb(rng) -> np.ndarray:
    return rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)


def test_rgb8_is_a_view_of_the_message(rgb):
    msg = make_msg(rgb, "rgb8")
    out = image_to_rgb(msg, MAX_PIXELS)
    np.testing.assert_array_equal(out, rgb)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8)), "rgb8 without padding should not be copied"


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("padding", [0, 5])
def test_color_encodings_with_and_without_row_padding(rgb, encoding, padding):
    channels = {"rgb8": rgb, "bgr8": rgb[..., ::-1],
                "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]),
                "bgra8": np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 7, np.uint8)])}[encoding]
    out = image_to_rgb(make_msg(np.ascontiguousarray(channels), encoding, padding), MAX_PIXELS)
    assert out.shape == rgb.shape and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


def test_mono8_becomes_gray_rgb(rng):
    gray = rng.integers(0, 256, (4, 7), dtype=np.uint8)
    out = image_to_rgb(make_msg(gray, "mono8", padding=1), MAX_PIXELS)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], gray)


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_scales_to_8_bits_in_either_byte_order(bigendian):
    gray = np.array([[0, 257, 65535], [1000, 30000, 65280]], dtype=np.uint16)
    out = image_to_rgb(make_msg(gray, "mono16", padding=3, bigendian=bigendian), MAX_PIXELS)
    np.testing.assert_array_equal(out[..., 1], [[0, 1, 255], [3, 116, 254]])


def _uyvy_pair(y0: int, y1: int, u: int, v: int, order: str) -> np.ndarray:
    """One pixel pair of packed 4:2:2 as (1, 2, 2) bytes, in UYVY or YUYV byte order."""
    packed = [u, y0, v, y1] if order == "uyvy" else [y0, u, y1, v]
    return np.array(packed, dtype=np.uint8).reshape(1, 2, 2)


@pytest.mark.parametrize(("encoding", "order"), [("uyvy", "uyvy"), ("yuv422", "uyvy"), ("yuyv", "yuyv"),
                                                 ("yuv422_yuy2", "yuyv")])
def test_packed_yuv422_byte_orders(encoding, order):
    # BT.601 video range: Y=81, U=90, V=240 is saturated red; left pixel darker than right.
    pixels = np.concatenate([_uyvy_pair(60, 120, 90, 240, order)] * 3, axis=1)  # 1 x 6 pixels
    out = image_to_rgb(make_msg(np.ascontiguousarray(pixels), encoding), MAX_PIXELS).astype(int)
    assert out.shape == (1, 6, 3)
    red, green, blue = out[0, 1]
    assert red > 150 and green < 60 and blue < 60, f"expected red, got {out[0, 1]}"
    assert out[0, 0, 0] < out[0, 1, 0], "the second Y of a pair belongs to the right pixel"


def _bayer_mosaic(color: tuple[int, int, int], pattern: str, size: int, dtype=np.uint8) -> np.ndarray:
    """A constant-color scene as a raw Bayer image with the 2x2 pattern given top-left first, e.g. 'rggb'."""
    channel = {"r": color[0], "g": color[1], "b": color[2]}
    tile = np.array([[channel[pattern[0]], channel[pattern[1]]], [channel[pattern[2]], channel[pattern[3]]]])
    return np.tile(tile, (size // 2, size // 2)).astype(dtype)


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("depth", [8, 16])
def test_bayer_patterns_demosaic_to_the_scene_color(pattern, depth):
    color = (200, 100, 30)
    scale = 257 if depth == 16 else 1
    mosaic = _bayer_mosaic(tuple(c * scale for c in color), pattern, 8, np.uint16 if depth == 16 else np.uint8)
    out = image_to_rgb(make_msg(mosaic, f"bayer_{pattern}{depth}"), MAX_PIXELS)
    interior = out[2:-2, 2:-2].reshape(-1, 3).astype(int)
    np.testing.assert_allclose(interior, np.broadcast_to(color, interior.shape), atol=1)


@pytest.mark.parametrize(("change", "expected"), [
    ({"encoding": "32FC1"}, "unsupported encoding '32FC1'"),
    ({"encoding": "nv12"}, "data has 180 bytes, expected step x height x 1.5 = 30 x 6 x 1.5 = 270"),
    ({"width": 0}, "empty image: 0x6"),
    ({"height": 0, "data": array.array("B")}, "empty image"),
    ({"step": 29}, "step 29 is smaller than one row of 10 rgb8 pixels (30 bytes)"),
    ({"step": 40}, "data has 180 bytes, expected step x height = 40 x 6 = 240"),
    ({"data": array.array("B", bytes(100))}, "data has 100 bytes"),
    ({"data": array.array("B", bytes(200))}, "data has 200 bytes"),
])
def test_malformed_images_are_rejected_with_the_reason(rgb, change, expected):
    msg = make_msg(rgb, "rgb8")
    for field, value in change.items():
        setattr(msg, field, value)
    with pytest.raises(ImageRejected) as error:
        image_to_rgb(msg, MAX_PIXELS)
    assert expected in str(error.value)


def test_enormous_images_are_rejected_before_reading_data():
    # Header claims 100k x 100k pixels; no such buffer exists, the size check must come first.
    msg = Image(height=100_000, width=100_000, encoding="rgb8", step=300_000, data=array.array("B", bytes(12)))
    with pytest.raises(ImageRejected, match="exceeds max_pixels = 10000000"):
        check_image(msg, MAX_PIXELS)


def test_max_pixels_allows_exactly_the_limit_and_refuses_one_more(rgb):
    msg = make_msg(rgb, "rgb8")  # 10 x 6 = 60 pixels
    np.testing.assert_array_equal(image_to_rgb(msg, 60), rgb)
    with pytest.raises(ImageRejected, match="image of 10x6 = 60 pixels exceeds max_pixels = 59"):
        check_image(msg, 59)


def nv12_msg(rgb: np.ndarray, encoding: str = "nv12", padding: int = 0) -> Image:
    """The semi-planar message OpenCV's own RGB->YUV420 conversion makes of `rgb` (Y plane, then interleaved UV)."""
    height, width = rgb.shape[:2]
    planar = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).reshape(-1)  # Y, then U plane, then V plane
    area = height * width
    y, u, v = planar[:area], planar[area: area * 5 // 4], planar[area * 5 // 4:]
    uv = np.stack([u, v] if encoding == "nv12" else [v, u], axis=1).reshape(height // 2, width)
    return make_msg(np.concatenate([y.reshape(height, width), uv]), encoding, padding)


@pytest.mark.parametrize("encoding", ["nv12", "nv21"])
@pytest.mark.parametrize("padding", [0, 4])
def test_nv12_and_nv21_convert_to_the_scene_colors(encoding, padding):
    # 4x4 blocks of flat color: 4:2:0 chroma subsampling keeps them, and a U/V swap would not pass.
    colors = np.array([[[230, 20, 20], [20, 230, 20]], [[20, 20, 230], [230, 230, 20]]], dtype=np.uint8)
    rgb = np.repeat(np.repeat(colors, 4, axis=0), 4, axis=1)
    msg = nv12_msg(rgb, encoding, padding)
    msg.height = 8  # make_msg counted the UV rows as image rows
    out = image_to_rgb(msg, MAX_PIXELS)
    assert out.shape == (8, 8, 3)
    np.testing.assert_allclose(out.astype(int), rgb.astype(int), atol=6)


def test_nv12_needs_even_sizes():
    msg = Image(height=3, width=4, encoding="nv12", step=4, data=array.array("B", bytes(18)))
    with pytest.raises(ImageRejected, match="nv12 subsamples color 2x2, so width and height must be even, got 4x3"):
        image_to_rgb(msg, MAX_PIXELS)


def test_opencv_type_names_read_as_cv_bridge_does(rgb):
    np.testing.assert_array_equal(image_to_rgb(make_msg(np.ascontiguousarray(rgb[..., ::-1]), "8UC3"), MAX_PIXELS),
                                  rgb)
    gray = rgb[..., 0].copy()
    np.testing.assert_array_equal(image_to_rgb(make_msg(gray, "8UC1"), MAX_PIXELS), np.dstack([gray] * 3))


@pytest.mark.parametrize("hw", [(1, 1), (1, 9), (9, 1)])
def test_tiny_images_convert(rng, hw):
    pixels = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image_to_rgb(make_msg(pixels, "rgb8"), MAX_PIXELS), pixels)


def test_odd_width_packed_yuv_is_rejected():
    msg = make_msg(np.zeros((2, 3, 2), np.uint8), "uyvy")
    with pytest.raises(ImageRejected, match="width must be even"):
        image_to_rgb(msg, MAX_PIXELS)


def test_every_supported_encoding_converts(rng):
    from rosbags.image.image import ENCODINGMAP

    for encoding in SUPPORTED_ENCODINGS:
        if encoding in ("nv12", "nv21"):
            msg = nv12_msg(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8), encoding)
            msg.height = 4
        else:
            _, _, dtype, channels = ENCODINGMAP[ENCODING_ALIASES.get(encoding, encoding)]
            shape = (4, 6, channels) if channels > 1 else (4, 6)
            msg = make_msg(rng.integers(0, 200, shape).astype(dtype), encoding)
        out = image_to_rgb(msg, MAX_PIXELS)
        assert out.shape == (4, 6, 3) and out.dtype == np.uint8, encoding


@pytest.mark.parametrize("extension", [".png", ".jpg"])
def test_compressed_images_decode_to_rgb(extension):
    # 8x8 blocks of distinct saturated colors: JPEG keeps them closely, and a channel swap would not pass.
    colors = np.array([[[230, 20, 20], [20, 230, 20]], [[20, 20, 230], [230, 230, 20]]], dtype=np.uint8)
    rgb = np.repeat(np.repeat(colors, 8, axis=0), 8, axis=1)
    ok, encoded = cv2.imencode(extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    out = compressed_to_rgb(CompressedImage(format=extension[1:], data=array.array("B", encoded.tobytes())),
                            MAX_PIXELS)
    assert out.shape == rgb.shape
    if extension == ".png":
        np.testing.assert_array_equal(out, rgb)
    # JPEG subsamples chroma, so compare block centres.
    np.testing.assert_allclose(out[4::8, 4::8].astype(int), colors.astype(int), atol=12)


def test_compressed_garbage_empty_and_enormous_are_rejected(rgb):
    with pytest.raises(ImageRejected, match="cannot decode compressed image"):
        compressed_to_rgb(CompressedImage(format="jpeg", data=array.array("B", b"not a jpeg at all")), MAX_PIXELS)
    with pytest.raises(ImageRejected, match="no data"):
        compressed_to_rgb(CompressedImage(format="jpeg"), MAX_PIXELS)
    _, encoded = cv2.imencode(".png", rgb)
    with pytest.raises(ImageRejected, match="exceeds max_pixels = 59"):
        compressed_to_rgb(CompressedImage(format="png", data=array.array("B", encoded.tobytes())), 59)


@pytest.mark.parametrize(("encoding", "dtype", "shape"), [("32SC1", np.int32, (5, 7)), ("mono8", np.uint8, (5, 7)),
                                                          ("rgb8", np.uint8, (5, 7, 3))])
def test_output_images_round_trip(rng, encoding, dtype, shape):
    pixels = rng.integers(-5 if dtype == np.int32 else 0, 250, shape).astype(dtype)
    header = Header(frame_id="cam")
    msg = to_image_msg(pixels, encoding, header)
    assert (msg.encoding, msg.height, msg.width, msg.header.frame_id) == (encoding, 5, 7, "cam")
    assert msg.step == 7 * pixels.itemsize * (3 if encoding == "rgb8" else 1)
    np.testing.assert_array_equal(image_msg_to_array(msg), pixels)


def test_output_image_of_wrong_array_is_refused():
    with pytest.raises(ValueError, match="32SC1 needs a int32 array of 2 dimensions, got uint8"):
        to_image_msg(np.zeros((3, 4), np.uint8), "32SC1", Header())
    with pytest.raises(ValueError, match="rgb8 needs a uint8 array of 3 dimensions with 3 channels"):
        to_image_msg(np.zeros((3, 4, 4), np.uint8), "rgb8", Header())


def test_image_buffer_is_published_without_copies():
    buffer = ImageBuffer("32SC1", 3, 4)
    msg = buffer.message(Header(frame_id="a"))
    assert msg.data is buffer.data and (msg.step, msg.height, msg.width) == (16, 3, 4)
    buffer.pixels[1, 2] = -7  # filling the buffer after building the message is what gets published
    assert image_msg_to_array(msg)[1, 2] == -7
    assert buffer.message(Header(frame_id="b")).header.frame_id == "b"
    with pytest.raises(ValueError, match="output encoding must be one of rgb8, mono8, 32SC1, got 'bgr8'"):
        ImageBuffer("bgr8", 2, 2)
