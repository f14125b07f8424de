"""The per-frame pipeline module: contract shapes and dtypes, consistency of maps and table,
runtime thresholds, checkpoints, and clear errors for bad input."""

import numpy as np
import pytest
import torch

from panoptic_ros.classes import CITYSCAPES, SYNTHETIC
from panoptic_ros.fusion.pipeline import MODEL_NAMES, build_pipeline, pipeline_from_checkpoint
from panoptic_ros.networks import IMAGENET_MEAN, IMAGENET_STD, build_network
from panoptic_ros.networks.checkpoint import save_checkpoint
from panoptic_ros.pipeline_io import COL, INSTANCE_COLUMNS, Thresholds

H, W, K = 128, 256, 16


def spread_weights(network: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Re-draw conv/linear weights (He-normal) and biases (unit normal) so that an untrained network's
    scores spread over (0, 1) instead of all sitting at its initial priors: the fusion then has real
    decisions to make (detections pass thresholds, masks and NMS matter)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in network.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
                m.weight.normal_(0.0, (2.0 / m.weight[0].numel()) ** 0.5, generator=generator)
                if m.bias is not None:
                    m.bias.normal_(0.0, 1.0, generator=generator)
    return network


@pytest.fixture(scope="module")
def pipelines():
    torch.manual_seed(0)
    return {m: build_pipeline(m, SYNTHETIC, H, W, network=spread_weights(build_network(m, SYNTHETIC, width=0.125)),
                              max_instances=K) for m in MODEL_NAMES}


@pytest.fixture
def image(rng):
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_outputs_follow_the_contract(pipelines, image, model):
    result = pipelines[model].run(image, Thresholds(min_stuff_area=0))
    assert result.num_instances > 0
    assert result.panoptic.shape == (H, W) and result.panoptic.dtype == np.int32
    assert result.semantic.shape == (H, W) and result.semantic.dtype == np.uint8
    assert result.instances.shape == (K + len(SYNTHETIC.stuff_ids), len(INSTANCE_COLUMNS))
    assert result.instances.dtype == np.float32
    rows = result.valid_instances
    assert (rows[:, COL["valid"]] == 1).all() and not result.instances[result.num_instances:].any()
    # Every id in the map has a row, with the same class as the semantic map and the pixel count as area.
    for row in rows:
        pixels = result.panoptic == int(row[COL["id"]])
        assert pixels.sum() == row[COL["area"]]
        assert (result.semantic[pixels] == int(row[COL["class_id"]])).all()
    assert set(np.unique(result.panoptic)) <= {-1, *rows[:, COL["id"]].astype(int)}
    assert ((result.panoptic == -1) == (result.semantic == 255)).all()


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_only_fpsnet_and_spinet_fusions_hold_the_network(pipelines, model):
    # FPSNet runs its panoptic head and SPINet its mask convolution on the fusion's own results;
    # the other fusions see the network's outputs only. The network is shared, never copied.
    fusion = pipelines[model].fusion
    if model in ("fpsnet", "spinet"):
        assert fusion.network is pipelines[model].network
    else:
        assert not hasattr(fusion, "network") and not list(fusion.parameters())


def test_normalisation_uses_imagenet_statistics(pipelines, image):
    x = pipelines["psn"].normalize(torch.from_numpy(image))
    expected = (image.transpose(2, 0, 1) / 255.0 - np.array(IMAGENET_MEAN)[:, None, None]) / np.array(
        IMAGENET_STD)[:, None, None]
    np.testing.assert_allclose(x[0].numpy(), expected, atol=1e-5)


def test_thresholds_are_runtime_inputs(pipelines, image):
    pipeline = pipelines["rtps"]
    few = pipeline.run(image, Thresholds(score_threshold=1.0, min_stuff_area=1e7))
    assert few.num_instances == 0 and (few.panoptic == -1).all()  # nothing passes, stuff all too small
    assert pipeline.run(image, Thresholds(score_threshold=0.0, min_stuff_area=0)).num_instances > 0


def test_pipeline_from_checkpoint_gives_the_same_outputs(tmp_path, image):
    torch.manual_seed(1)
    network = build_network("lpsnet", CITYSCAPES, width=0.125)
    save_checkpoint(tmp_path / "lpsnet.pt", network, "lpsnet")
    loaded = pipeline_from_checkpoint(tmp_path / "lpsnet.pt", H, W, max_instances=K)
    built = build_pipeline("lpsnet", CITYSCAPES, H, W, network=network.eval(), max_instances=K)
    assert loaded.label_set == CITYSCAPES and loaded.model == "lpsnet"
    thresholds = Thresholds(score_threshold=0.0)
    np.testing.assert_array_equal(loaded.run(image, thresholds).panoptic, built.run(image, thresholds).panoptic)


def inputs(pipeline, frame, **changes):
    values = list(pipeline.make_inputs(frame, Thresholds()))
    names = ("image", "score_threshold", "center_threshold", "nms_iou", "mask_sigma", "overlap_threshold",
             "min_stuff_area", "label_divisor")
    for name, value in changes.items():
        values[names.index(name)] = value
    return values


@pytest.mark.parametrize(("change", "message"), [
    ({"image": torch.zeros(H, W, 3)}, r"uint8 tensor of shape \(128, 256, 3\).*got dtype torch.float32"),
    ({"image": torch.zeros(H, W, dtype=torch.uint8)}, r"uint8 tensor of shape \(128, 256, 3\).*got rank 2"),
    ({"image": torch.zeros(H, W, 4, dtype=torch.uint8)}, r"\(128, 256, 3\).*got 4 channels"),
    ({"image": torch.zeros(256, 256, 3, dtype=torch.uint8)}, r"the size this pipeline was built for.*got 256x256"),
    ({"nms_iou": torch.tensor(1.5)}, r"nms_iou must be in \[0.0, 1.0\], got 1.5"),
    ({"min_stuff_area": torch.tensor(-1.0)}, r"min_stuff_area must be in"),
    ({"score_threshold": torch.tensor(0.5, dtype=torch.float64)}, r"score_threshold must be a 0-d float32 tensor"),
    ({"mask_sigma": torch.tensor([0.5])}, r"mask_sigma must be a 0-d float32 tensor, got .*shape \(1,\)"),
    ({"label_divisor": torch.tensor(1000)}, r"label_divisor must be a 0-d int32 tensor"),
    ({"label_divisor": torch.tensor(10, dtype=torch.int32)},
     r"label_divisor must be greater than max_instances \(16\)"),
])
def test_bad_input_gets_a_clear_error(pipelines, image, change, message):
    with pytest.raises(ValueError, match=message):
        pipelines["psn"](*inputs(pipelines["psn"], image, **change))


def test_a_huge_label_divisor_that_would_overflow_int32_is_refused(pipelines, image):
    with pytest.raises(ValueError, match="overflow int32"):
        pipelines["psn"].run(image, label_divisor=2**30)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"model": "yolo"}, "unknown model 'yolo'; expected one of psn, rtps, lpsnet, fpsnet, spinet"),
    ({"height": 100}, "multiples of 128, got 100x256"),
    ({"network": "other label set"}, "built for label set 'cityscapes', not 'synthetic'"),
    ({"nms_kernel": 4}, "nms_kernel must be a positive odd number"),
    ({"max_instances": 0}, "max_instances must be >= 1"),
])
def test_build_pipeline_refuses_bad_settings(kwargs, message):
    settings = {"model": "psn", "label_set": SYNTHETIC, "height": H, "width": W, "width_mult": 0.125}
    if kwargs.pop("network", None):
        kwargs["network"] = build_network("psn", CITYSCAPES, width=0.125)
    with pytest.raises(ValueError, match=message):
        build_pipeline(**{**settings, **kwargs})
