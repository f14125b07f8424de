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
from panoptic_ros.runtime.atomic_files import atomic_write
from panoptic_ros.runtime.backends.base import check_image
from panoptic_ros.runtime.backends.model_info import ModelInfo

CALIBRATION_ALGORITHMS = ("entropy", "minmax")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DEFAULT_MAX_IMAGES = 500
# Entropy calibration builds activation histograms per tensor: a handful of frames gives ranges
# that fit those frames, not the camera. Fewer than this is refused rather than built badly.
MIN_FRAMES = 10


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


def check_frame_count(count: int, source: str) -> None:
    if count < MIN_FRAMES:
        raise ValueError(f"{count} calibration frames from {source}: INT8 calibration needs at least {MIN_FRAMES} "
                         "(a few hundred frames of your cameras are best)")


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
    check_frame_count(len(chosen), str(directory))

    def frames() -> Iterator[np.ndarray]:
        for path in chosen:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"cannot read calibration image {path} (not an image, or damaged)")
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
    check_frame_count(len(wanted), f"{bag}:{topic}")
    frames = (fit_to_input(frame.pixels, input_hw) for i, frame in enumerate(read_images(bag, topic)) if i in wanted)
    return len(wanted), frames


class CalibrationFeeder:
    """Copies one frame per batch into input buffers and hands TensorRT their addresses.

    The buffers are torch tensors on `device` ('cuda:N' for TensorRT), allocated once; the scalar
    inputs are filled once with `thresholds` and `label_divisor`.
    """

    def __init__(self, frames: Iterable[np.ndarray], info: ModelInfo, device: str, expected: int,
                 thresholds: Thresholds | None = None, label_divisor: int = DEFAULT_LABEL_DIVISOR) -> None:
        """`expected`: how many frames `frames` announced; fewer fed is an error (check_complete)."""
        import torch

        from panoptic_ros.runtime.backends.cuda_io import allocate

        self._frames = iter(frames)
        self.expected = expected
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

    def check_complete(self) -> None:
        """ValueError unless every announced frame was fed (TensorRT stops asking early only on error)."""
        if self.count < self.expected:
            raise ValueError(f"calibration used {self.count} of {self.expected} frames: too few for INT8 "
                             f"(at least {MIN_FRAMES}, and all of those announced)")


class CalibrationCache:
    """TensorRT's calibration table on disk: reused by later builds, so calibration runs once."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None

    def read(self) -> bytes | None:
        """The stored table; None when there is none or it cannot be read (then calibration runs)."""
        if self.path is None:
            return None
        try:
            return self.path.read_bytes()
        except OSError:
            return None

    def write(self, data: bytes) -> None:
        if self.path is not None:
            atomic_write(self.path, bytes(data))


class CalibrationErrors:
    """What went wrong inside TensorRT's calibrator callbacks. TensorRT's Python wrapper swallows an
    exception raised in get_batch and takes it for "no more batches", so the callbacks store it
    here and the builder raises it once the build returns (`raise_stored_error`)."""

    def __init__(self, feeder: CalibrationFeeder | None) -> None:
        self.feeder = feeder
        self.error: BaseException | None = None
        self.cache_used = False

    def call(self, function, *args):
        """`function(*args)`, storing (not raising) its exception; None after an error."""
        if self.error is not None:
            return None
        try:
            return function(*args)
        except Exception as error:  # noqa: BLE001 - every error must reach the user, after TensorRT returns
            self.error = error
            return None

    def raise_stored_error(self) -> None:
        if self.error is not None:
            raise ValueError(f"INT8 calibration failed: {self.error}") from self.error
        if self.feeder is not None and not self.cache_used:
            self.feeder.check_complete()


def make_calibrator(algorithm: str, feeder: CalibrationFeeder | None, cache: CalibrationCache, trt=None):
    """A TensorRT IInt8EntropyCalibrator2 ('entropy') or IInt8MinMaxCalibrator ('minmax') of the
    module `trt` (default: the installed one); it has `raise_stored_error()` for the builder.

    `feeder` may be None when `cache` holds a table (TensorRT then reads only the cache).
    """
    from panoptic_ros.runtime.backends.trt_api import has_int8_calibrators, import_tensorrt

    if algorithm not in CALIBRATION_ALGORITHMS:
        raise ValueError(f"unknown calibration algorithm {algorithm!r}; valid: {', '.join(CALIBRATION_ALGORITHMS)}")
    if feeder is None and cache.read() is None:
        raise ValueError("INT8 calibration needs images (--calib-images/--calib-bag) or an existing --calib-cache")
    trt = trt or import_tensorrt()
    if not has_int8_calibrators(trt):
        raise ValueError(f"{trt.__name__} {trt.__version__} has no INT8 calibrators (TensorRT 11 and TensorRT for "
                         "RTX removed them; calibrated INT8 needs TensorRT 8.5 to 10.x)")
    base = trt.IInt8EntropyCalibrator2 if algorithm == "entropy" else trt.IInt8MinMaxCalibrator
    errors = CalibrationErrors(feeder)

    class Calibrator(base):
        def __init__(self) -> None:
            base.__init__(self)
            self.raise_stored_error = errors.raise_stored_error

        def get_batch_size(self) -> int:
            return 1  # the graph has no batch dimension: one frame per batch

        def get_batch(self, names):
            return None if feeder is None else errors.call(feeder.next_batch, names)

        def read_calibration_cache(self):
            table = cache.read()
            errors.cache_used = table is not None
            return table

        def write_calibration_cache(self, data) -> None:
            errors.call(cache.write, data)

    return Calibrator()
