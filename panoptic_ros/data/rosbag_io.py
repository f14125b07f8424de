"""rosbag2 (mcap and sqlite3) reading and writing with `rosbags`: camera frames, id images, our messages.

No ROS installation is needed. Pixels are decoded by the node's own image conversion (every ROS
encoding, row padding, endianness; JPEG/PNG CompressedImage), so a bag frame and a live frame
become the same RGB array. A bag is a rosbag2 directory, or a single `.mcap` / `.db3` file.
"""

from __future__ import annotations

import functools
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from panoptic_ros.ros.image_conversion import compressed_to_rgb, image_msg_to_array, image_to_rgb

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
PACKAGE = "panoptic_ros"
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
_SUFFIX = {"mcap": ".mcap", "sqlite3": ".db3"}
_MAX_PIXELS = 1 << 28  # a bag frame is not a live stream: accept any sane size
# Encodings `BagWriter.write_image` writes: (dtype, channels).
WRITE_ENCODINGS = {"rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
                   "mono8": (np.uint8, 1), "mono16": (np.uint16, 1), "8UC1": (np.uint8, 1),
                   "16UC1": (np.uint16, 1), "32SC1": (np.int32, 1), "32FC1": (np.float32, 1)}


class BagError(ValueError):
    """A bag that cannot be read as asked: missing, truncated, corrupt, or without the topic."""


# ---------------------------------------------------------------------------------------------
# Message types


def find_msg_dir() -> Path:
    """The folder with our .msg files: the source checkout's `msg/`, else the installed share dir."""
    candidates = [Path(__file__).resolve().parents[2] / "msg"]
    try:  # a colcon/ament install
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory(PACKAGE)) / "msg")
    except Exception:  # not installed with ament, or ament_index_python missing
        pass
    candidates.append(Path(sys.prefix) / "share" / PACKAGE / "msg")  # pip / `make setup` install
    for folder in candidates:
        if any(folder.glob("*.msg")):
            return folder
    raise FileNotFoundError(f"no {PACKAGE} .msg files found; looked in {', '.join(map(str, candidates))}")


@functools.lru_cache(maxsize=1)
def typestore() -> Typestore:
    """ROS 2 Kilted message types plus panoptic_ros/msg/* (PanopticInstanceArray, ...)."""
    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for path in sorted(find_msg_dir().glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"{PACKAGE}/msg/{path.stem}"))
    store.register(types)
    return store


def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def header(stamp_ns: int, frame_id: str):
    """A std_msgs/Header (rosbags type) for a time in nanoseconds."""
    types = typestore().types
    time = types["builtin_interfaces/msg/Time"](sec=int(stamp_ns // 1_000_000_000),
                                                 nanosec=int(stamp_ns % 1_000_000_000))
    return types["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)


# ---------------------------------------------------------------------------------------------
# Writing


class BagWriter:
    """Write a rosbag2 with images, id images and any registered message; use as a context manager.

    `path` ending in `.mcap` / `.db3` gives one self-contained storage file (rosbags reads it as a
    bag); any other path gives a rosbag2 directory with metadata.yaml, as `ros2 bag record` does.
    """

    def __init__(self, path: str | Path, storage: str = "mcap") -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        self.path = Path(path)
        if self.path.exists():
            raise ValueError(f"{self.path} exists already; rosbag2 writers do not overwrite")
        self.storage = storage
        self.single_file = self.path.suffix in (".mcap", ".db3")
        if self.single_file and self.path.suffix != _SUFFIX[storage]:
            raise ValueError(f"a {storage} bag file must end in {_SUFFIX[storage]}, got {self.path.name}")
        self._tmp: Path | None = None
        self._writer: Writer | None = None
        self._connections: dict[str, object] = {}
        self.types = typestore().types

    def __enter__(self) -> BagWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        bag_dir = self.path
        if self.single_file:  # rosbags writes a directory; the storage file is moved out on close
            self._tmp = Path(tempfile.mkdtemp(prefix=".bag-", dir=self.path.parent))
            bag_dir = self._tmp / self.path.stem
        self._writer = Writer(bag_dir, version=9, storage_plugin=STORAGES[self.storage])
        self._writer.open()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._writer.close()
            if self._tmp is not None and exc[0] is None:
                files = sorted(self._writer.path.glob(f"*{_SUFFIX[self.storage]}"))
                shutil.move(files[0], self.path)
        finally:
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)

    def write(self, topic: str, msgtype: str, stamp_ns: int, msg) -> None:
        """Serialize and write one message of a registered type, received at stamp_ns."""
        if self._writer is None:
            raise RuntimeError("BagWriter writes only inside its `with` block")
        if topic not in self._connections:
            self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=typestore())
        connection = self._connections[topic]
        if connection.msgtype != msgtype:
            raise ValueError(f"topic {topic} carries {connection.msgtype}, cannot write a {msgtype} on it")
        self._writer.write(connection, int(stamp_ns), typestore().serialize_cdr(msg, msgtype))

    def write_image(self, topic: str, stamp_ns: int, pixels: np.ndarray, encoding: str = "rgb8",
                    frame_id: str = "camera") -> None:
        """A sensor_msgs/Image of `pixels` in `encoding` (one of WRITE_ENCODINGS), header stamp = stamp_ns."""
        if encoding not in WRITE_ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(WRITE_ENCODINGS)}, got {encoding!r}")
        dtype, channels = WRITE_ENCODINGS[encoding]
        pixels = np.asarray(pixels)
        shape_ok = pixels.ndim == 2 and channels == 1 or pixels.ndim == 3 and pixels.shape[2] == channels
        if pixels.dtype != dtype or not shape_ok:
            raise ValueError(f"{encoding} needs {np.dtype(dtype).name} pixels with {channels} channel(s), got "
                             f"{pixels.dtype} {pixels.shape}")
        height, width = pixels.shape[:2]
        data = np.frombuffer(np.ascontiguousarray(pixels).tobytes(), dtype=np.uint8)
        msg = self.types[IMAGE_TYPE](header=header(stamp_ns, frame_id), height=height, width=width,
                                     encoding=encoding, is_bigendian=int(sys.byteorder == "big"),
                                     step=width * channels * pixels.itemsize, data=data)
        self.write(topic, IMAGE_TYPE, stamp_ns, msg)

    def write_compressed(self, topic: str, stamp_ns: int, rgb: np.ndarray, image_format: str = "jpeg",
                         frame_id: str = "camera") -> None:
        """A sensor_msgs/CompressedImage (jpeg or png) of an RGB uint8 (H, W, 3) image."""
        if image_format not in ("jpeg", "png"):
            raise ValueError(f"image_format must be jpeg or png, got {image_format!r}")
        ok, encoded = cv2.imencode(".jpg" if image_format == "jpeg" else ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise ValueError(f"cannot encode a {rgb.dtype} {rgb.shape} image as {image_format}")
        msg = self.types[COMPRESSED_TYPE](header=header(stamp_ns, frame_id),
                                          format=f"rgb8; {image_format} compressed bgr8", data=encoded.ravel())
        self.write(topic, COMPRESSED_TYPE, stamp_ns, msg)


@dataclass
class BagFrame:
    """One camera frame for `write_frames`: RGB image and, optionally, its ground-truth id map."""

    stamp_ns: int
    image: np.ndarray  # uint8 (H, W, 3) RGB
    ground_truth: np.ndarray | None = None  # int32 (H, W): class * label_divisor + instance, -1 void


def write_frames(path: str | Path, frames: Iterable[BagFrame], storage: str = "mcap",
                 image_topic: str = "/camera/image_raw", gt_topic: str = "/camera/panoptic_gt",
                 compressed: bool = False, frame_id: str = "camera") -> int:
    """Write frames (rgb8 Image, or jpeg CompressedImage) and their 32SC1 ground truth with the same stamp.

    Returns the number of frames written.
    """
    count = 0
    with BagWriter(path, storage) as bag:
        for frame in frames:
            if compressed:
                bag.write_compressed(image_topic, frame.stamp_ns, frame.image, frame_id=frame_id)
            else:
                bag.write_image(image_topic, frame.stamp_ns, frame.image, "rgb8", frame_id)
            if frame.ground_truth is not None:
                bag.write_image(gt_topic, frame.stamp_ns, frame.ground_truth.astype(np.int32), "32SC1", frame_id)
            count += 1
    return count


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class TopicInfo:
    name: str
    msgtype: str
    count: int


@dataclass
class ImageFrame:
    """A decoded frame: header stamp (ns), bag receive time (ns), frame_id and pixels."""

    stamp_ns: int
    bag_time_ns: int
    frame_id: str
    pixels: np.ndarray  # uint8 (H, W, 3) RGB for camera images; int32 (H, W) for id images


@dataclass(frozen=True)
class SkippedMessage:
    bag_time_ns: int
    reason: str


def _open(path: str | Path) -> Reader:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag not found: {path}")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as error:  # rosbags raises many kinds for damaged files; all mean the same here
        raise BagError(f"cannot open bag {path}: {error} (is it a complete rosbag2 directory, .mcap or .db3?)"
                       ) from error
    return reader


def list_topics(path: str | Path) -> list[TopicInfo]:
    """Topics of a bag with their message types and counts."""
    reader = _open(path)
    try:
        return _topics(reader)
    finally:
        reader.close()


def _topics(reader: Reader) -> list[TopicInfo]:
    return [TopicInfo(name, info.msgtype or "", info.msgcount) for name, info in sorted(reader.topics.items())]


def _describe(topics: list[TopicInfo]) -> str:
    return ", ".join(f"{t.name} ({t.msgtype}, {t.count} msgs)" for t in topics) or "none"


def read_messages(path: str | Path, topic: str, msgtypes: Iterable[str] | None = None) -> Iterator[tuple[int, object]]:
    """(bag time ns, deserialized message) of every message on `topic`, in bag time order.

    A missing topic, or one of another type than `msgtypes`, raises BagError naming the bag's
    topics. A bag that ends early or is damaged raises BagError after the messages before the damage.
    """
    reader = _open(path)
    try:
        connections = [c for c in reader.connections if c.topic == topic]
        if not connections:
            raise BagError(f"topic {topic!r} is not in bag {path}; its topics: {_describe(_topics(reader))}")
        msgtypes = tuple(msgtypes) if msgtypes is not None else None
        if msgtypes is not None and connections[0].msgtype not in msgtypes:
            raise BagError(f"topic {topic!r} in bag {path} carries {connections[0].msgtype}, expected "
                           f"{' or '.join(msgtypes)}")
        store = typestore()
        count = 0
        messages = reader.messages(connections=connections)
        while True:
            try:
                connection, bag_time, raw = next(messages)
                msg = store.deserialize_cdr(raw, connection.msgtype)
            except StopIteration:
                return
            except Exception as error:
                raise BagError(f"bag {path} is truncated or corrupt: reading {topic!r} failed after {count} "
                               f"messages: {type(error).__name__}: {error}") from error
            count += 1
            yield bag_time, msg
    finally:
        reader.close()


def read_image_messages(path: str | Path, topic: str) -> Iterator[tuple[int, object]]:
    """(bag time ns, message) of an Image or CompressedImage topic, not decoded (see read_messages)."""
    return read_messages(path, topic, (IMAGE_TYPE, COMPRESSED_TYPE))


def decode_image(msg) -> np.ndarray:
    """An Image (any ROS encoding) or CompressedImage message as RGB uint8 (H, W, 3); ValueError if it cannot be."""
    return image_to_rgb(msg, _MAX_PIXELS) if hasattr(msg, "encoding") else compressed_to_rgb(msg, _MAX_PIXELS)


def read_images(path: str | Path, topic: str, skipped: list[SkippedMessage] | None = None) -> Iterator[ImageFrame]:
    """RGB uint8 frames of an Image (any ROS encoding) or CompressedImage topic.

    A message that cannot be decoded raises ValueError, or, when a `skipped` list is given, is
    recorded there and skipped.
    """
    yield from _decoded_frames(path, topic, (IMAGE_TYPE, COMPRESSED_TYPE), decode_image, skipped)


def read_id_images(path: str | Path, topic: str, skipped: list[SkippedMessage] | None = None) -> Iterator[ImageFrame]:
    """int32 (H, W) id maps of a 32SC1 Image topic (ground truth or predictions, -1 void)."""

    def decode(msg) -> np.ndarray:
        if msg.encoding != "32SC1":
            raise ValueError(f"expected a 32SC1 id image, got encoding {msg.encoding!r}")
        return np.array(image_msg_to_array(msg), dtype=np.int32)

    yield from _decoded_frames(path, topic, (IMAGE_TYPE,), decode, skipped)


def _decoded_frames(path: str | Path, topic: str, msgtypes: tuple[str, ...], decode,
                    skipped: list[SkippedMessage] | None) -> Iterator[ImageFrame]:
    """Frames of `topic` decoded by `decode`; a message it refuses (ValueError) raises, or with a
    `skipped` list is recorded there and passed over."""
    for bag_time, msg in read_messages(path, topic, msgtypes):
        try:
            pixels = decode(msg)
        except ValueError as error:
            if skipped is None:
                raise ValueError(f"{topic} message at {bag_time} ns: {error}") from error
            skipped.append(SkippedMessage(bag_time, str(error)))
            continue
        yield ImageFrame(stamp_to_ns(msg.header.stamp), bag_time, msg.header.frame_id, pixels)
