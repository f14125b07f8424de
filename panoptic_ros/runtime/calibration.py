"""INT8 calibration: frames from an image folder or a rosbag, fed to TensorRT's calibrators.

The graph's input is the uint8 camera image itself (normalisation is inside the graph), so a
calibration batch is exactly what the node feeds at run time: one uint8 (H, W, 3) RGB frame,
resized to the model's input size, plus the scalar threshold inputs (at their defaults; they only
steer the FP32 post-processing). TensorRT takes uint8 only as network I/O and never quantizes
it; it calibrates the float tensors after the graph's first Cast, which is what we want.

The frame source, the resizing and the device buffers are plain code (tested without TensorRT);
only the two calibrator subclasses need TensorRT.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from panoptic_ros.classes import DEFAULT_LABEL_DIVISOR
from panoptic_ros.pipeline_io import IMAGE_INPUT, Thresholds
from panoptic_ros.runtime.backends.base import check_image
from panoptic_ros.runtime.backends.model_info import ModelInfo

CALIBRATION_ALGORITHMS = ("entropy", "minmax")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DEFAULT_MAX_IMAGES = 500


def even_sample(count: int, max_items: int) -> list[int]:
    """Up to `max_items` indices spread evenly over range(count) (a bag's first minutes are not all of it)."""
    if max_items < 1:
        raise ValueError(f"max images must be at least 1, got {max_items}")
    if count <= max_items:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, max_items).round()})


def fit_to_input(image: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """Resize an RGB uint8 image to the model's input size (area filter down, linear up)."""
    import cv2

    height, width = input_hw
    if image.shape[:2] == (height, width):
        return image
    shrinking = image.shape[0] * image.shape[1] > height * width
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def images_from_dir(directory: str | Path, input_hw: tuple[int, int],
                    max_images: int = DEFAULT_MAX_IMAGES) -> tuple[int, Iterator[np.ndarray]]:
    """(number of frames, lazy iterator of RGB frames of input size) from the images in `directory`."""
    import cv2

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"calibration image folder not found: {directory}")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no calibration images ({', '.join(IMAGE_SUFFIXES)}) in {directory}")
    chosen = [files[i] for i in even_sample(len(files), max_images)]

    def frames() -> Iterator[np.ndarray]:
        for path in chosen:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"cannot read calibration image {path}")
            yield fit_to_input(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), input_hw)

    return len(chosen), frames()


def images_from_bag(bag: str | Path, topic: str, input_hw: tuple[int, int],
                    max_images: int = DEFAULT_MAX_IMAGES) -> tuple[int, Iterator[np.ndarray]]:
    """(number of frames, lazy iterator of RGB frames of input size) from an image topic of a rosbag."""
    from panoptic_ros.data.rosbag_io import list_topics, read_images

    counts = {t.name: t.count for t in list_topics(bag)}
    if not counts.get(topic):
        raise ValueError(f"no images on topic {topic!r} in {bag}; its topics: {', '.join(sorted(counts)) or 'none'}")
    wanted = set(even_sample(counts[topic], max_images))
    frames = (fit_to_input(frame.pixels, input_hw) for i, frame in enumerate(read_images(bag, topic)) if i in wanted)
    return len(wanted), frames


class CalibrationFeeder:
    """Copies one frame per batch into input buffers and hands TensorRT their addresses.

    The buffers are torch tensors on `device` ('cuda:N' for TensorRT), allocated once; the scalar
    inputs are filled once with `thresholds` and `label_divisor`.
    """

    def __init__(self, frames: Iterable[np.ndarray], info: ModelInfo, device: str,
                 thresholds: Thresholds | None = None, label_divisor: int = DEFAULT_LABEL_DIVISOR) -> None:
        import torch

        from panoptic_ros.runtime.backends.cuda_io import allocate

        self._frames = iter(frames)
        self.input_hw = info.input_hw
        self.device = torch.device(device)
        self.buffers = allocate(info.inputs, device=self.device)
        for name, value in (thresholds or Thresholds()).as_inputs(label_divisor).items():
            self.buffers[name].fill_(value.item())
        self.count = 0

    def next_batch(self, names: Iterable[str]) -> list[int] | None:
        """Device addresses of the inputs `names` holding the next frame; None when the frames are used up."""
        import torch

        names = list(names)
        unknown = [n for n in names if n not in self.buffers]
        if unknown:
            raise ValueError(f"calibrator asked for unknown inputs {unknown}; the model has {list(self.buffers)}")
        frame = next(self._frames, None)
        if frame is None:
            return None
        check_image(frame, self.input_hw)
        self.buffers[IMAGE_INPUT].copy_(torch.from_numpy(np.ascontiguousarray(frame)))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # TensorRT reads the buffer on its own stream
        self.count += 1
        return [self.buffers[n].data_ptr() for n in names]


class CalibrationCache:
    """TensorRT's calibration table on disk: reused by later builds, so calibration runs once."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None

    def read(self) -> bytes | None:
        if self.path is not None and self.path.is_file():
            return self.path.read_bytes()
        return None

    def write(self, data: bytes) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(bytes(data))


def make_calibrator(algorithm: str, feeder: CalibrationFeeder | None, cache: CalibrationCache):
    """A TensorRT IInt8EntropyCalibrator2 ('entropy') or IInt8MinMaxCalibrator ('minmax').

    `feeder` may be None when `cache` holds a table (TensorRT then reads only the cache).
    """
    from panoptic_ros.runtime.backends.trt_api import import_tensorrt

    if algorithm not in CALIBRATION_ALGORITHMS:
        raise ValueError(f"unknown calibration algorithm {algorithm!r}; valid: {', '.join(CALIBRATION_ALGORITHMS)}")
    if feeder is None and cache.read() is None:
        raise ValueError("INT8 calibration needs images (--calib-images/--calib-bag) or an existing --calib-cache")
    trt = import_tensorrt()
    base = trt.IInt8EntropyCalibrator2 if algorithm == "entropy" else trt.IInt8MinMaxCalibrator

    class Calibrator(base):
        def __init__(self) -> None:
            base.__init__(self)

        def get_batch_size(self) -> int:
            return 1  # the graph has no batch dimension: one frame per batch

        def get_batch(self, names):
            return None if feeder is None else feeder.next_batch(names)

        def read_calibration_cache(self):
            return cache.read()

        def write_calibration_cache(self, data) -> None:
            cache.write(data)

    return Calibrator()
