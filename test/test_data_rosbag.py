"""rosbag2 helpers: frames in both storages, raw and compressed, id images, our messages, bad bags."""

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from panoptic_ros.data.rosbag_io import (
    IMAGE_TYPE,
    BagError,
    BagFrame,
    BagWriter,
    SkippedMessage,
    header,
    list_topics,
    read_id_images,
    read_images,
    read_messages,
    write_frames,
)

STORAGE_PATHS = [("mcap", "bag.mcap"), ("sqlite3", "bag.db3"), ("mcap", "bag_dir"), ("sqlite3", "bag_dir")]


def frames(rng, count=3, size=(24, 40)):
    return [BagFrame(1_000_000_000 + i * 50_000_000, rng.integers(0, 256, (*size, 3), dtype=np.uint8),
                     rng.integers(-1, 8000, size).astype(np.int32)) for i in range(count)]


@pytest.mark.parametrize(("storage", "name"), STORAGE_PATHS)
def test_frames_round_trip(tmp_path, rng, storage, name):
    written = frames(rng)
    path = tmp_path / name
    assert write_frames(path, written, storage=storage) == 3
    assert path.is_dir() == (name == "bag_dir")
    assert [(t.name, t.msgtype, t.count) for t in list_topics(path)] == [
        ("/camera/image_raw", IMAGE_TYPE, 3), ("/camera/panoptic_gt", IMAGE_TYPE, 3)]
    images = list(read_images(path, "/camera/image_raw"))
    gts = list(read_id_images(path, "/camera/panoptic_gt"))
    for frame, image, gt in zip(written, images, gts, strict=True):
        assert image.stamp_ns == gt.stamp_ns == image.bag_time_ns == frame.stamp_ns
        assert image.frame_id == "camera"
        assert np.array_equal(image.pixels, frame.image)
        assert gt.pixels.dtype == np.int32 and np.array_equal(gt.pixels, frame.ground_truth)
    with Reader(path) as reader:  # and plain rosbags reads it too
        assert reader.message_count == 6


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_encodings_and_compressed_frames_read_as_rgb(tmp_path, rng, storage):
    rgb = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    smooth = cv2.GaussianBlur(rgb, (9, 9), 3)  # JPEG-friendly
    path = tmp_path / f"b.{'mcap' if storage == 'mcap' else 'db3'}"
    with BagWriter(path, storage) as bag:
        bag.write_image("/rgb", 1, rgb, "rgb8")
        bag.write_image("/bgr", 1, np.ascontiguousarray(rgb[..., ::-1]), "bgr8")
        bag.write_image("/mono", 1, rgb[..., 0].copy(), "mono8")
        bag.write_compressed("/png", 1, rgb, "png")
        bag.write_compressed("/jpeg", 1, smooth, "jpeg")
    read = {topic: next(read_images(path, topic)).pixels for topic in ("/rgb", "/bgr", "/mono", "/png", "/jpeg")}
    assert np.array_equal(read["/rgb"], rgb) and np.array_equal(read["/bgr"], rgb)
    assert np.array_equal(read["/png"], rgb)
    assert np.array_equal(read["/mono"], np.repeat(rgb[..., :1], 3, axis=2))
    assert np.abs(read["/jpeg"].astype(int) - smooth).mean() < 3


def test_panoptic_instance_array_in_bag(tmp_path):
    path = tmp_path / "inst.mcap"
    with BagWriter(path) as bag:
        types = bag.types
        roi = types["sensor_msgs/msg/RegionOfInterest"](x_offset=3, y_offset=4, height=5, width=6, do_rectify=False)
        segment = types["panoptic_ros/msg/PanopticInstance"](
            id=6001, class_id=6, class_name="car", is_thing=True, score=0.9, bbox=roi, area=30,
            centroid_x=5.5, centroid_y=6.0, track_id=0)
        msg = types["panoptic_ros/msg/PanopticInstanceArray"](
            header=header(7, "camera"), width=64, height=32, label_divisor=1000, model_name="psn",
            segments=[segment])
        bag.write("/panoptic/instances", "panoptic_ros/msg/PanopticInstanceArray", 7, msg)
    ((stamp, read),) = list(read_messages(path, "/panoptic/instances"))
    assert stamp == 7 and read.segments[0].class_name == "car" and read.segments[0].bbox.width == 6
    # the bag describes its own type: a fresh typestore learns it from the bag's definition
    with Reader(path) as reader:
        (connection,) = reader.connections
        store = get_typestore(Stores.ROS2_KILTED)
        store.register(get_types_from_msg(connection.msgdef.data, connection.msgtype))
        raw = next(reader.messages())[2]
        assert store.deserialize_cdr(raw, connection.msgtype).segments[0].id == 6001


def test_missing_topic_lists_topics(tmp_path, rng):
    path = tmp_path / "b.mcap"
    write_frames(path, frames(rng, 2))
    with pytest.raises(BagError, match=r"'/nope' is not in bag .*/camera/image_raw \(sensor_msgs/msg/Image, 2 msgs\), "
                                       r"/camera/panoptic_gt"):
        list(read_images(path, "/nope"))
    with pytest.raises(FileNotFoundError, match="bag not found"):
        list(read_images(tmp_path / "absent.mcap", "/camera/image_raw"))


def test_wrong_topic_type_is_named(tmp_path):
    path = tmp_path / "b.mcap"
    with BagWriter(path) as bag:
        bag.write("/info", "std_msgs/msg/String", 1, bag.types["std_msgs/msg/String"](data="x"))
    with pytest.raises(BagError, match="carries std_msgs/msg/String, expected sensor_msgs/msg/Image or"):
        list(read_images(path, "/info"))


@pytest.mark.parametrize("name", ["b.mcap", "b.db3"])
def test_truncated_bag_gives_clear_error(tmp_path, rng, name):
    path = tmp_path / name
    write_frames(path, frames(rng, 4), storage="mcap" if name.endswith("mcap") else "sqlite3")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BagError, match="cannot open bag .*(magic|malformed)"):
        list(read_images(path, "/camera/image_raw"))
    path.write_bytes(b"")
    with pytest.raises(BagError, match="cannot open bag"):
        list_topics(path)


def test_undecodable_frames_are_skipped_when_asked(tmp_path, rng):
    path = tmp_path / "b.mcap"
    good = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    with BagWriter(path) as bag:
        bag.write_image("/cam", 1, good)
        bad = bag.types[IMAGE_TYPE](header=header(2, "camera"), height=8, width=10, encoding="rgb8", is_bigendian=0,
                                    step=30, data=np.zeros(17, np.uint8))  # far too few bytes
        bag.write("/cam", IMAGE_TYPE, 2, bad)
        bag.write_image("/cam", 3, good)
    with pytest.raises(ValueError, match="at 2 ns: data has 17 bytes"):
        list(read_images(path, "/cam"))
    skipped: list[SkippedMessage] = []
    assert [f.stamp_ns for f in read_images(path, "/cam", skipped)] == [1, 3]
    assert skipped[0].bag_time_ns == 2 and "17 bytes" in skipped[0].reason


def test_writer_refuses_bad_requests(tmp_path, rng):
    with pytest.raises(ValueError, match="storage must be one of mcap, sqlite3"):
        BagWriter(tmp_path / "x.mcap", "rosbag1")
    with pytest.raises(ValueError, match="must end in .db3"):
        BagWriter(tmp_path / "x.mcap", "sqlite3")
    path = tmp_path / "x.mcap"
    with BagWriter(path) as bag:
        with pytest.raises(ValueError, match="rgb8 needs uint8 pixels with 3 channel"):
            bag.write_image("/cam", 1, np.zeros((4, 4), np.uint8), "rgb8")
        with pytest.raises(ValueError, match="encoding must be one of"):
            bag.write_image("/cam", 1, np.zeros((4, 4), np.uint8), "yuv9")
        bag.write_image("/cam", 1, np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="exists already"):
        BagWriter(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mcap"]  # no temporary folder left behind
