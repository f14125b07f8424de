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
    CalibrationCache,
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


def test_images_from_dir_reads_rgb_sorted_and_sampled(tmp_path):
    for i in range(6):
        bgr = np.zeros((32, 64, 3), np.uint8)
        bgr[..., 0] = 10 * i  # blue channel carries the index
        cv2.imwrite(str(tmp_path / f"frame_{i:02d}.png"), bgr)
    (tmp_path / "notes.txt").write_text("not an image")
    count, frames = images_from_dir(tmp_path, HW, max_images=3)
    frames = list(frames)
    assert count == 3 == len(frames)
    assert all(f.shape == (*HW, 3) and f.dtype == np.uint8 for f in frames)
    assert [int(f[0, 0, 2]) for f in frames] == [0, 20, 50]  # RGB: blue is last; frames 0, 2, 5
    assert all(int(f[0, 0, 0]) == 0 for f in frames)


def test_images_from_dir_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        images_from_dir(tmp_path / "missing", HW)
    with pytest.raises(ValueError, match=f"no calibration images .* in {tmp_path}"):
        images_from_dir(tmp_path, HW)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    _, frames = images_from_dir(tmp_path, HW)
    with pytest.raises(ValueError, match="broken.png"):
        next(frames)


def test_images_from_bag_reads_the_topic_sampled(tmp_path, rng):
    from panoptic_ros.data.rosbag_io import BagWriter

    bag = tmp_path / "drive.mcap"
    with BagWriter(bag) as writer:
        for i in range(5):
            writer.write_image("/camera/image_raw", i * 100_000_000, np.full((32, 64, 3), 40 * i, np.uint8))
    count, frames = images_from_bag(bag, "/camera/image_raw", HW, max_images=3)
    frames = list(frames)
    assert count == 3 and [int(f[0, 0, 0]) for f in frames] == [0, 80, 160]
    assert all(f.shape == (*HW, 3) for f in frames)
    with pytest.raises(ValueError, match="no images on topic '/other'.*/camera/image_raw"):
        images_from_bag(bag, "/other", HW)


def test_feeder_hands_out_addresses_of_filled_buffers(rng):
    frames = [rng.integers(0, 256, (*HW, 3), dtype=np.uint8) for _ in range(2)]
    feeder = CalibrationFeeder(frames, info(), "cpu", Thresholds(score_threshold=0.25), label_divisor=1000)
    names = list(reversed(INPUT_NAMES))  # TensorRT decides the order
    pointers = feeder.next_batch(names)
    assert pointers == [feeder.buffers[n].data_ptr() for n in names]
    np.testing.assert_array_equal(feeder.buffers["image"].numpy(), frames[0])
    assert feeder.buffers["score_threshold"].item() == 0.25 and feeder.buffers["label_divisor"].item() == 1000
    assert feeder.buffers["label_divisor"].dtype == torch.int32
    assert feeder.next_batch(names) == pointers  # same buffers, next frame
    np.testing.assert_array_equal(feeder.buffers["image"].numpy(), frames[1])
    assert feeder.next_batch(names) is None and feeder.count == 2


def test_feeder_rejects_wrong_frames_and_names(rng):
    feeder = CalibrationFeeder([np.zeros((HW[0] + 1, HW[1], 3), np.uint8)], info(), "cpu")
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


@pytest.mark.parametrize("algorithm", ["entropy", "minmax"])
def test_calibrators_subclass_tensorrt(algorithm, tmp_path, rng):
    trt = pytest.importorskip("tensorrt")
    feeder = CalibrationFeeder([rng.integers(0, 256, (*HW, 3), dtype=np.uint8)], info(), "cpu")
    calibrator = make_calibrator(algorithm, feeder, CalibrationCache(tmp_path / "c.calib"))
    base = trt.IInt8EntropyCalibrator2 if algorithm == "entropy" else trt.IInt8MinMaxCalibrator
    assert isinstance(calibrator, base) and calibrator.get_batch_size() == 1
    assert len(calibrator.get_batch(["image"])) == 1 and calibrator.get_batch(["image"]) is None
