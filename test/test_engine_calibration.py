"""INT8 calibration without TensorRT: frame sources, resizing, the buffers handed to TensorRT, the
calibration cache; the calibrators themselves where TensorRT exists."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.pipeline_io import INPUT_NAMES, Thresholds
from panoptic_ros.runtime.backends.model_info import ModelInfo, contract_specs
from panoptic_ros.runtime.calibration import (
    MIN_FRAMES,
    CalibrationCache,
    CalibrationErrors,
    CalibrationFeeder,
    even_sample,
    fit_to_input,
    images_from_bag,
    images_from_dir,
    make_calibrator,
)

HW = (64, 128)


def info() -> ModelInfo:
    inputs, outputs = contract_specs(*HW, 10 + len(SYNTHETIC.stuff_ids))
    return ModelInfo("psn", SYNTHETIC, 10, inputs, outputs)


def test_even_sample_spreads_over_the_whole_source():
    assert even_sample(5, 10) == [0, 1, 2, 3, 4]
    assert even_sample(100, 5) == [0, 25, 50, 74, 99]
    assert len(even_sample(1000, 500)) == 500
    with pytest.raises(ValueError, match="at least 1"):
        even_sample(10, 0)


def test_fit_to_input_resizes_only_when_needed(rng):
    image = rng.integers(0, 256, (*HW, 3), dtype=np.uint8)
    assert fit_to_input(image, HW) is image
    big = fit_to_input(np.repeat(np.repeat(image, 2, 0), 2, 1), HW)
    assert big.shape == (*HW, 3) and big.dtype == np.uint8
    np.testing.assert_array_equal(big, image)  # 2x2 area average of equal pixels
    assert fit_to_input(image[::2, ::2], HW).shape == (*HW, 3)


def write_frames(folder, count: int) -> None:
    for i in range(count):
        bgr = np.zeros((32, 64, 3), np.uint8)
        bgr[..., 0] = 10 * i  # blue channel carries the index
        cv2.imwrite(str(folder / f"frame_{i:02d}.png"), bgr)


def test_images_from_dir_reads_rgb_sorted_and_sampled(tmp_path):
    write_frames(tmp_path, 12)
    (tmp_path / "notes.txt").write_text("not an image")
    count, frames = images_from_dir(tmp_path, HW, max_images=MIN_FRAMES)
    frames = list(frames)
    assert count == MIN_FRAMES == len(frames)
    assert all(f.shape == (*HW, 3) and f.dtype == np.uint8 for f in frames)
    # RGB: blue is last; frames spread over all 12, first and last included
    assert [int(f[0, 0, 2]) for f in frames] == [10 * i for i in even_sample(12, MIN_FRAMES)]
    assert [int(f[0, 0, 2]) for f in frames][::9] == [0, 110]
    assert all(int(f[0, 0, 0]) == 0 for f in frames)


def test_images_from_dir_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        images_from_dir(tmp_path / "missing", HW)
    with pytest.raises(ValueError, match=f"no calibration images .* in {tmp_path}"):
        images_from_dir(tmp_path, HW)
    write_frames(tmp_path, MIN_FRAMES - 1)
    (tmp_path / "a_broken.png").write_bytes(b"not a png")
    _, frames = images_from_dir(tmp_path, HW)
    with pytest.raises(ValueError, match="a_broken.png"):
        next(frames)


def test_too_few_calibration_frames_is_an_error(tmp_path):
    write_frames(tmp_path, MIN_FRAMES)
    assert images_from_dir(tmp_path, HW)[0] == MIN_FRAMES  # exactly the minimum is enough
    with pytest.raises(ValueError, match=f"{MIN_FRAMES - 1} calibration frames .* at least {MIN_FRAMES}"):
        images_from_dir(tmp_path, HW, max_images=MIN_FRAMES - 1)


def test_images_from_bag_reads_the_topic_sampled(tmp_path, rng):
    from panoptic_ros.data.rosbag_io import BagWriter

    bag = tmp_path / "drive.mcap"
    with BagWriter(bag) as writer:
        for i in range(12):
            writer.write_image("/camera/image_raw", i * 100_000_000, np.full((32, 64, 3), 20 * i, np.uint8))
    count, frames = images_from_bag(bag, "/camera/image_raw", HW, max_images=MIN_FRAMES)
    frames = list(frames)
    assert count == MIN_FRAMES and [int(f[0, 0, 0]) for f in frames] == [20 * i for i in even_sample(12, MIN_FRAMES)]
    with pytest.raises(ValueError, match="too few|at least"):
        images_from_bag(bag, "/camera/image_raw", HW, max_images=MIN_FRAMES - 1)
    assert all(f.shape == (*HW, 3) for f in frames)
    with pytest.raises(ValueError, match="no images on topic '/other'.*/camera/image_raw"):
        images_from_bag(bag, "/other", HW)


def test_feeder_hands_out_addresses_of_filled_buffers(rng):
    frames = [rng.integers(0, 256, (*HW, 3), dtype=np.uint8) for _ in range(2)]
    feeder = CalibrationFeeder(frames, info(), "cpu", 2, Thresholds(score_threshold=0.25), label_divisor=1000)
    names = list(reversed(INPUT_NAMES))  # TensorRT decides the order
    pointers = feeder.next_batch(names)
    assert pointers == [feeder.buffers[n].data_ptr() for n in names]
    np.testing.assert_array_equal(feeder.buffers["image"].numpy(), frames[0])
    assert feeder.buffers["score_threshold"].item() == 0.25 and feeder.buffers["label_divisor"].item() == 1000
    assert feeder.buffers["label_divisor"].dtype == torch.int32
    assert feeder.next_batch(names) == pointers  # same buffers, next frame
    np.testing.assert_array_equal(feeder.buffers["image"].numpy(), frames[1])
    assert feeder.next_batch(names) is None and feeder.count == 2
    feeder.check_complete()


def test_feeder_rejects_wrong_frames_and_names(rng):
    feeder = CalibrationFeeder([np.zeros((HW[0] + 1, HW[1], 3), np.uint8)], info(), "cpu", 1)
    with pytest.raises(ValueError, match="unknown inputs"):
        feeder.next_batch(["images"])
    with pytest.raises(ValueError, match="resize"):
        feeder.next_batch(["image"])


def test_calibration_cache_file(tmp_path):
    cache = CalibrationCache(tmp_path / "sub" / "psn.calib")
    assert cache.read() is None
    cache.write(memoryview(b"TRT-8601-EntropyCalibration2\nimage: 3c010a14\n"))
    assert cache.read().startswith(b"TRT-8601")
    assert CalibrationCache(None).read() is None


def test_calibrator_needs_images_or_a_cache(tmp_path):
    with pytest.raises(ValueError, match="valid: entropy, minmax"):
        make_calibrator("percentile", None, CalibrationCache(None))
    with pytest.raises(ValueError, match="needs images"):
        make_calibrator("entropy", None, CalibrationCache(tmp_path / "none.calib"))


def test_an_error_while_feeding_is_stored_and_raised_after_the_build(tmp_path):
    """TensorRT's wrapper swallows exceptions in get_batch; the error must still reach the user."""
    write_frames(tmp_path, MIN_FRAMES - 1)
    (tmp_path / "frame_05_damaged.png").write_bytes(b"not a png")
    count, frames = images_from_dir(tmp_path, HW)
    feeder = CalibrationFeeder(frames, info(), "cpu", count)
    errors = CalibrationErrors(feeder)
    batches = [errors.call(feeder.next_batch, ["image"]) for _ in range(count)]
    assert all(b is not None for b in batches[:6]) and batches[6:] == [None] * (count - 6)  # stops at the damage
    with pytest.raises(ValueError, match="INT8 calibration failed: cannot read calibration image .*frame_05_damaged"):
        errors.raise_stored_error()


def test_calibration_that_ends_early_is_an_error(rng):
    frames = [rng.integers(0, 256, (*HW, 3), dtype=np.uint8) for _ in range(3)]
    feeder = CalibrationFeeder(iter(frames), info(), "cpu", expected=4)  # the source announced one more
    errors = CalibrationErrors(feeder)
    while errors.call(feeder.next_batch, ["image"]) is not None:
        pass
    with pytest.raises(ValueError, match="used 3 of 4 frames"):
        errors.raise_stored_error()
    errors.cache_used = True  # TensorRT read the stored table instead: no frames needed
    errors.raise_stored_error()


@pytest.mark.parametrize("algorithm", ["entropy", "minmax"])
def test_calibrators_subclass_tensorrt(algorithm, tmp_path, rng):
    trt = pytest.importorskip("tensorrt")
    feeder = CalibrationFeeder([rng.integers(0, 256, (*HW, 3), dtype=np.uint8)], info(), "cpu", 1)
    calibrator = make_calibrator(algorithm, feeder, CalibrationCache(tmp_path / "c.calib"))
    base = trt.IInt8EntropyCalibrator2 if algorithm == "entropy" else trt.IInt8MinMaxCalibrator
    assert isinstance(calibrator, base) and calibrator.get_batch_size() == 1
    assert len(calibrator.get_batch(["image"])) == 1 and calibrator.get_batch(["image"]) is None
    calibrator.raise_stored_error()


@pytest.mark.tensorrt_rtx
def test_calibration_is_refused_where_tensorrt_has_no_calibrators(tmp_path):
    trt = pytest.importorskip("tensorrt_rtx_bindings")
    (tmp_path / "c.calib").write_bytes(b"table")
    with pytest.raises(ValueError, match="has no INT8 calibrators .* TensorRT 8.5 to 10.x"):
        make_calibrator("entropy", None, CalibrationCache(tmp_path / "c.calib"), trt)
