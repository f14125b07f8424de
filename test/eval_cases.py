"""Shared parts of the eval-bag tests: the model they evaluate (session fixtures `model_path` and
`backend`, registered for every test module by conftest.py), synthetic frames whose ground truth is
the model's own shifted prediction, and writers of bags and ground-truth folders.

The model is a tiny untrained Panoptic SwiftNet exported to ONNX (seeded); its car and person
semantic logits track those of two stuff classes so that thing instances appear in its output.
Ground truth is the model's prediction, shifted and with a void band, so that true positives
(IoU < 1), false positives and false negatives all occur: against the scenes' true labels an
untrained model scores PQ 0, which would test little. Predictions resize with OpenCV as the node's
contract says (bilinear in, nearest out).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.data.formats import CocoPanopticWriter, from_id_map, label_set_categories
from panoptic_ros.data.rosbag_io import IMAGE_TYPE, BagFrame, BagWriter, header, read_id_images, read_images, typestore
from panoptic_ros.data.synthetic import generate_scene
from panoptic_ros.evaluation.fleet import BagTask, GroundTruthSpec, ModelSpec
from panoptic_ros.evaluation.pq import PQAccumulator
from panoptic_ros.pipeline_io import Thresholds

MODEL_HW = (128, 256)
DIVISOR = 1000
START_NS = 1_700_000_000_000_000_000
PERIOD_NS = 100_000_000
IMAGE_TOPIC, GT_TOPIC = "/camera/image_raw", "/camera/panoptic_gt"
DEFAULT_THRESHOLDS = Thresholds()


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    """A tiny untrained Panoptic SwiftNet exported to ONNX (seeded), and its checkpoint beside it."""
    import torch

    from panoptic_ros.fusion.pipeline import build_pipeline
    from panoptic_ros.networks import build_network
    from panoptic_ros.networks.checkpoint import save_checkpoint
    from panoptic_ros.runtime.export import export_onnx

    torch.manual_seed(0)
    network = build_network("psn", SYNTHETIC, width=0.25)
    with torch.no_grad():  # car follows vegetation-like logits, person sidewalk-like ones (see module doc)
        weight = network.semantic_head[2].weight
        weight[SYNTHETIC.names.index("car")] = weight[SYNTHETIC.names.index("vegetation")] * 1.05
        weight[SYNTHETIC.names.index("person")] = weight[SYNTHETIC.names.index("sidewalk")] * 1.05
    pipeline = build_pipeline("psn", SYNTHETIC, *MODEL_HW, network=network, max_instances=16)
    directory = tmp_path_factory.mktemp("model")
    save_checkpoint(directory / "psn.pt", network, "psn")  # the same network for the torch backend
    return export_onnx(pipeline, directory / "psn.onnx")


@pytest.fixture(scope="session")
def backend(model_path):
    """That model on ONNX Runtime (CPU)."""
    from panoptic_ros.runtime.backends import create_backend

    return create_backend("onnxruntime", model_path, device="cpu")


def predict(backend, image: np.ndarray, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> np.ndarray:
    """The pipeline's id map at the image's size: bilinear to the model, nearest back."""
    height, width = backend.input_hw
    model_image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    panoptic = backend.run(model_image, thresholds, DIVISOR).panoptic
    return cv2.resize(panoptic, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)


def scene_frames(backend, count: int, hw: tuple[int, int] = MODEL_HW, first_seed: int = 0,
                 thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[BagFrame]:
    """Synthetic frames with the model's prediction, shifted 2 rows and 5 columns and a void band, as ground truth."""
    frames = []
    for i in range(count):
        image = generate_scene(first_seed + i, *hw).image
        ground_truth = np.roll(predict(backend, image, thresholds), (2, 5), axis=(0, 1))
        ground_truth[:, :8] = -1
        frames.append(BagFrame(START_NS + i * PERIOD_NS, image, ground_truth))
    return frames


def direct_metrics(backend, pairs, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> dict:
    accumulator = PQAccumulator.from_label_set(SYNTHETIC)
    for image, gt in pairs:
        accumulator.add_id_maps(gt, predict(backend, image, thresholds), DIVISOR)
    return accumulator.result().to_dict()


def bag_pairs(path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(decoded image, ground truth) of a bag written by write_frames, as a reader sees them."""
    return [(image.pixels, gt.pixels) for image, gt in
            zip(read_images(path, IMAGE_TOPIC), read_id_images(path, GT_TOPIC), strict=True)]


def write_folder(root, frames, name_of) -> None:
    json_path = root / "panoptic.json"
    with CocoPanopticWriter(json_path, root / "panoptic", label_set_categories(SYNTHETIC)) as writer:
        for i, frame in enumerate(frames):
            writer.add(from_id_map(frame.ground_truth, DIVISOR, SYNTHETIC, name_of(i, frame)))


def image_msg(stamp_ns: int, pixels: np.ndarray, encoding: str):
    """A rosbags sensor_msgs/Image of rgb8 (H, W, 3) uint8 or 32SC1 (H, W) int32 pixels."""
    height, width = pixels.shape[:2]
    data = np.ascontiguousarray(pixels).view(np.uint8).reshape(-1)
    return typestore().types[IMAGE_TYPE](header=header(stamp_ns, "camera"), height=height, width=width,
                                         encoding=encoding, is_bigendian=0, step=data.size // height, data=data)


def write_bag_with_undecodable(path: Path, frames: list[BagFrame], undecodable: int) -> None:
    """The frames' images and ground truth, the image message at position `undecodable` cut to 10 bytes of data."""
    with BagWriter(path) as writer:
        for i, frame in enumerate(frames):
            if i == undecodable:
                broken = image_msg(frame.stamp_ns, frame.image, "rgb8")
                broken.data = broken.data[:10]
                writer.write(IMAGE_TOPIC, IMAGE_TYPE, frame.stamp_ns, broken)
            else:
                writer.write_image(IMAGE_TOPIC, frame.stamp_ns, frame.image)
            writer.write_image(GT_TOPIC, frame.stamp_ns, frame.ground_truth, "32SC1")


def tasks_of(paths, model_path, **options) -> list[BagTask]:
    model = ModelSpec("onnxruntime", str(model_path), "cpu", (("threads", 1),))
    return [BagTask(str(path), IMAGE_TOPIC, model, GroundTruthSpec(topic=GT_TOPIC), label_divisor=DIVISOR, **options)
            for path in paths]


def without_latency(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key != "total p50 ms"} for row in rows]
