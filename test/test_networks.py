"""Networks: box coding, backbones, the five networks' outputs, ONNX export, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from panoptic_ros.classes import CITYSCAPES, SYNTHETIC
from panoptic_ros.networks import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NETWORK_NAMES,
    build_network,
    gaussian_attention_masks,
)
from panoptic_ros.networks.backbones import build_backbone, load_imagenet_weights
from panoptic_ros.networks.box_coding import (
    boxes_to_ltrb,
    decode_deltas,
    dense_level_boxes,
    encode_deltas,
    level_points,
    ltrb_to_boxes,
    retinanet_anchors,
)
from panoptic_ros.networks.checkpoint import load_network, save_checkpoint
from panoptic_ros.networks.complexity import network_complexity
from panoptic_ros.networks.fpsnet import flatten_anchor_predictions
from panoptic_ros.networks.layers import ConcatUpsampledConv1x1

torch.set_num_threads(2)
TINY = 0.25


def _shapes(outputs: dict) -> dict:
    return {k: [tuple(t.shape) for t in v] if isinstance(v, list) else tuple(v.shape) for k, v in outputs.items()}


def expected_shapes(name: str, b: int, h: int, w: int, num_classes: int, num_things: int, net) -> dict:
    """The documented output shapes of each network for a (b, 3, h, w) input."""
    levels = [(h // s, w // s) for s in (8, 16, 32, 64, 128)]
    if name == "psn":
        return {"semantic": (b, num_classes, h, w), "center": (b, 1, h, w), "offset": (b, 2, h, w)}
    if name == "rtps":
        return {"semantic": (b, num_classes, h // 4, w // 4), "levelness": (b, 6, h // 4, w // 4),
                "box_cls": [(b, num_things, *s) for s in levels], "box_reg": [(b, 4, *s) for s in levels],
                "centerness": [(b, 1, *s) for s in levels]}
    if name == "lpsnet":
        return {"semantic": (b, num_classes, h // 4, w // 4), "box_cls": [(b, num_things, *s) for s in levels],
                "box_reg": [(b, 4, *s) for s in levels], "borderness": [(b, 1, *s) for s in levels]}
    if name == "fpsnet":
        return {"box_cls": [(b, 9 * num_things, *s) for s in levels], "box_reg": [(b, 36, *s) for s in levels],
                "features": (b, net.s3[0].out_channels, h // 8, w // 8)}
    spinet_levels = [(h // s, w // s) for s in (8, 8, 16, 32)]
    return {"class_logits": [(b, num_things, *s) for s in spinet_levels],
            "filters": [(b, net.filter_dim, *s) for s in spinet_levels],
            "panoptic_feature": (b, net.feature_dim, h // 4, w // 4)}


# ---------------------------------------------------------------- box coding

def test_level_points_are_cell_centres_row_major():
    points = level_points(2, 3, 8)
    assert points.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]


def test_ltrb_round_trip_and_hand_values():
    points = torch.tensor([[10.0, 20.0]])
    boxes = torch.tensor([[4.0, 5.0, 30.0, 26.0]])
    ltrb = boxes_to_ltrb(points, boxes)
    assert ltrb.tolist() == [[6.0, 15.0, 20.0, 6.0]]
    assert torch.equal(ltrb_to_boxes(points, ltrb), boxes)
    batched = ltrb_to_boxes(points, ltrb.expand(3, 1, 4))
    assert batched.shape == (3, 1, 4)


def test_retinanet_anchors_layout_sizes_and_ratios():
    anchors = retinanet_anchors(2, 3, 16, sizes=(32.0, 64.0), ratios=(0.5, 1.0, 2.0))
    assert anchors.shape == (2 * 3 * 6, 4)
    first_cell = anchors[:6]
    centres = (first_cell[:, :2] + first_cell[:, 2:]) / 2
    assert torch.allclose(centres, torch.tensor([8.0, 8.0]).expand(6, 2))
    widths, heights = first_cell[:, 2] - first_cell[:, 0], first_cell[:, 3] - first_cell[:, 1]
    assert torch.allclose(widths * heights, torch.tensor([32.0 ** 2] * 3 + [64.0 ** 2] * 3))
    assert torch.allclose(heights / widths, torch.tensor([0.5, 1.0, 2.0] * 2))
    second_cell_centre = (anchors[6, :2] + anchors[6, 2:]) / 2
    assert second_cell_centre.tolist() == [24.0, 8.0]  # location-major: next cell along x


def test_box_deltas_round_trip_and_clamp():
    anchors = torch.tensor([[0.0, 0.0, 32.0, 16.0], [10.0, 10.0, 20.0, 40.0]])
    boxes = torch.tensor([[4.0, -2.0, 40.0, 30.0], [12.0, 5.0, 15.0, 50.0]])
    deltas = encode_deltas(anchors, boxes)
    assert torch.allclose(decode_deltas(anchors, deltas), boxes, atol=1e-4)
    assert torch.allclose(encode_deltas(anchors, anchors), torch.zeros(2, 4))
    huge = decode_deltas(anchors[:1], torch.tensor([[0.0, 0.0, 100.0, 100.0]]))
    assert torch.isfinite(huge).all() and (huge[0, 2] - huge[0, 0]) <= 32 * 1000 / 16 + 1e-3


def test_dense_level_boxes_copy_each_cell_box_to_the_finer_cells():
    reg = torch.zeros(1, 4, 1, 2)
    reg[0, :, 0, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    dense = dense_level_boxes([reg], [8], out_stride=4)
    assert dense.shape == (1, 1, 4, 2, 4)
    assert dense[0, 0, :, 1, 3].tolist() == [11.0, 2.0, 15.0, 8.0]  # cell centre (12, 4)
    assert dense[0, 0, :, 0, 0].tolist() == [4.0, 4.0, 4.0, 4.0]


# ---------------------------------------------------------------- backbones

@pytest.mark.parametrize(("name", "params"), [("resnet18", 11_176_512), ("resnet34", 21_284_672),
                                              ("resnet50", 23_508_032)])
def test_backbone_parameter_count_is_torchvision_without_fc(name, params):
    # torchvision's counts (11.69 M, 21.80 M, 25.56 M) minus the 1000-way fc layer.
    with torch.device("meta"):
        backbone = build_backbone(name)
    assert sum(p.numel() for p in backbone.parameters()) == params


def test_backbone_keys_follow_torchvision_names():
    keys = set(build_backbone("resnet50", width=TINY).state_dict())
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.conv3.weight", "layer1.0.downsample.0.weight",
                "layer1.0.downsample.1.num_batches_tracked", "layer4.2.bn3.bias"):
        assert key in keys
    assert not any(k.startswith("fc.") for k in keys)


def _fake_imagenet_file(tmp_path, backbone_name: str, width: float = 1.0, drop: str | None = None):
    state = build_backbone(backbone_name, width=width).state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked") and k != drop}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 8), torch.zeros(1000)
    path = tmp_path / f"{backbone_name}.pth"
    torch.save(state, path)
    return path, state


def test_load_imagenet_weights_loads_every_tensor(tmp_path):
    torch.manual_seed(0)
    path, state = _fake_imagenet_file(tmp_path, "resnet18", width=TINY)
    # A tiny width is enough to check the mechanics; real files are width 1.0.
    backbone = build_backbone("resnet18", width=TINY)
    load_imagenet_weights(backbone, path)
    loaded = backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith("fc."))


def test_load_imagenet_weights_errors(tmp_path):
    backbone = build_backbone("resnet18", width=TINY)
    with pytest.raises(FileNotFoundError):
        load_imagenet_weights(backbone, tmp_path / "absent.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        load_imagenet_weights(backbone, corrupt)
    missing, _ = _fake_imagenet_file(tmp_path, "resnet18", width=TINY, drop="layer2.0.conv1.weight")
    with pytest.raises(ValueError, match="missing.*layer2.0.conv1.weight"):
        load_imagenet_weights(backbone, missing)
    deeper, _ = _fake_imagenet_file(tmp_path, "resnet34", width=TINY)
    with pytest.raises(ValueError, match="unexpected"):
        load_imagenet_weights(backbone, deeper)
    wider, _ = _fake_imagenet_file(tmp_path, "resnet18", width=0.5)
    with pytest.raises(ValueError, match="shapes differ"):
        load_imagenet_weights(backbone, wider)


# ---------------------------------------------------------------- networks

def test_registry_names_and_constants():
    assert NETWORK_NAMES == ("psn", "rtps", "fpsnet", "spinet", "lpsnet")
    assert len(IMAGENET_MEAN) == len(IMAGENET_STD) == 3
    with pytest.raises(ValueError, match="unknown network"):
        build_network("maskrcnn", SYNTHETIC)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_network("psn", SYNTHETIC, backbone="vgg16")


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_tiny_network_outputs_at_512x1024(name):
    torch.manual_seed(0)
    net = build_network(name, CITYSCAPES, width=TINY).eval()
    assert net.label_set == CITYSCAPES and net.thing_ids == CITYSCAPES.thing_ids
    with torch.no_grad():
        outputs = net(torch.randn(1, 3, 512, 1024))
    assert _shapes(outputs) == expected_shapes(name, 1, 512, 1024, 19, 8, net)
    for value in outputs.values():
        assert all(torch.isfinite(t).all() for t in (value if isinstance(value, list) else [value]))
    if name in ("rtps", "lpsnet"):
        assert all((reg >= 0).all() for reg in outputs["box_reg"])


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_full_width_network_outputs_at_512x1024(name):
    # Shapes are propagated on the meta device: the full-width graph is built and traced, no arithmetic is done.
    with torch.device("meta"):
        net = build_network(name, CITYSCAPES).eval()
        outputs = net(torch.empty(2, 3, 512, 1024))
    assert _shapes(outputs) == expected_shapes(name, 2, 512, 1024, 19, 8, net)


def test_complexity_of_full_width_models():
    psn = network_complexity("psn")
    assert 12e6 < psn["parameters"] < 15e6  # ResNet-18 11.2 M + 256-channel upsampling path
    assert 300 < psn["gflops"] < 500
    spinet = network_complexity("spinet")
    assert spinet["inference_parameters"] < spinet["parameters"]  # contour head and triplet FC are training-only
    with_head = network_complexity("fpsnet")["gflops"]
    assert with_head > network_complexity("fpsnet", image_hw=(512, 1024))["gflops"] * 3.5


def test_input_size_is_checked():
    net = build_network("psn", SYNTHETIC, width=TINY)
    with pytest.raises(ValueError, match="multiples of 128"):
        net(torch.zeros(1, 3, 100, 256))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net(torch.zeros(3, 128, 256))


def test_concat_upsampled_conv_equals_conv_over_the_concatenation():
    torch.manual_seed(0)
    module = ConcatUpsampledConv1x1([3, 5], 4, factors=[1, 2])
    a, b = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)
    up = torch.nn.functional.interpolate(b, scale_factor=2.0, mode="bilinear", align_corners=False)
    weight = torch.cat([module.convs[0].weight, module.convs[1].weight], dim=1)
    expected = torch.nn.functional.conv2d(torch.cat([a, up], dim=1), weight, module.convs[0].bias)
    assert torch.allclose(module([a, b]), expected, atol=1e-5)


def test_gaussian_attention_masks_hand_values():
    boxes = torch.tensor([[[0.0, 0.0, 32.0, 16.0], [0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 8.0, 8.0]]])
    valid = torch.tensor([[1.0, 1.0, 0.0]])
    masks = gaussian_attention_masks(boxes, valid, (4, 8), stride=8, scale=2.0)
    assert masks.shape == (1, 3, 4, 8)
    # Box 0: centre (16, 8), sigmas (8, 4); cells sampled at x = 4, 12, 20, 28, y = 4, 12.
    sx, sy = 8.0, 4.0
    expect = [[2 * math.exp(-0.5 * (((x - 16) / sx) ** 2 + ((y - 8) / sy) ** 2)) for x in (4, 12, 20, 28)]
              for y in (4, 12)]
    assert torch.allclose(masks[0, 0, :2, :4], torch.tensor(expect))
    assert masks[0, 0, 2:].abs().sum() == 0 and masks[0, 0, :, 4:].abs().sum() == 0
    assert masks[0, 1, 0, 0] > 0  # a box smaller than a cell still marks its cell
    assert masks[0, 2].abs().sum() == 0  # invalid


def test_fpsnet_panoptic_head_and_anchor_layout():
    torch.manual_seed(0)
    net = build_network("fpsnet", SYNTHETIC, width=TINY).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 128, 256))
        masks = gaussian_attention_masks(torch.tensor([[[8.0, 8.0, 64.0, 48.0]]]).expand(1, 50, 4),
                                         torch.ones(1, 50), (16, 32), 8)
        logits = net.panoptic_head(out["features"], masks)
        extra = net.panoptic_head(out["features"], masks, include_extra=True)
    assert logits.shape == (1, 50 + 5, 16, 32) and extra.shape == (1, 57, 16, 32)
    assert torch.equal(extra[:, :55], logits)
    with pytest.raises(ValueError, match="attention masks"):
        net.panoptic_head(out["features"], masks[:, :10])
    x = torch.arange(2 * 6 * 2 * 3, dtype=torch.float32).reshape(2, 6, 2, 3)  # A=2 anchors, K=3
    flat = flatten_anchor_predictions(x, 3)
    assert flat.shape == (2, 2 * 3 * 2, 3)
    assert flat[0, 1].tolist() == x[0, 3:6, 0, 0].tolist()  # cell (0, 0), anchor 1
    assert flat[0, 2].tolist() == x[0, 0:3, 0, 1].tolist()  # cell (0, 1), anchor 0


def test_spinet_dynamic_convolution_and_training_only_heads():
    torch.manual_seed(0)
    net = build_network("spinet", SYNTHETIC, width=TINY)
    image = torch.randn(1, 3, 128, 256)
    assert "contour" in net.train()(image)
    with torch.no_grad():
        out = net.eval()(image)
        filters = torch.randn(1, 7, net.filter_dim)
        logits = net.dynamic_mask_logits(out["panoptic_feature"], filters)
        expected = torch.einsum("bnf,bfhw->bnhw", net.filter_fc(filters), out["panoptic_feature"])
        stuff = net.stuff_mask_logits(out["panoptic_feature"])
    assert "contour" not in out
    assert torch.allclose(logits, expected, atol=1e-4)
    assert stuff.shape == (1, 5, 32, 64) and net.stuff_filters.shape == (5, net.filter_dim)


# ---------------------------------------------------------------- ONNX

def _export_outputs(net, name):
    class Graph(torch.nn.Module):
        """The network plus its inference-time extra step, flattened to a tuple of tensors."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            out = self.net(x)
            flat = [t for v in out.values() for t in (v if isinstance(v, list) else [v])]
            if name == "fpsnet":
                boxes = torch.tensor([[[8.0, 8.0, 64.0, 48.0]]]).expand(1, 50, 4)
                masks = gaussian_attention_masks(boxes, torch.ones(1, 50), (16, 32), 8)
                flat.append(self.net.panoptic_head(out["features"], masks))
            if name == "spinet":
                flat.append(self.net.stuff_mask_logits(out["panoptic_feature"]))
            return tuple(flat)

    return Graph().eval()


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter: fast and enough here
@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_onnx_export_static_and_matches_torch(name, tmp_path):
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    graph = _export_outputs(build_network(name, SYNTHETIC, width=TINY).eval(), name)
    image = torch.randn(1, 3, 128, 256)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(graph, (image,), str(path), opset_version=17, dynamo=False, input_names=["image"])
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert not ops & {"NonZero", "Loop", "If", "Scan", "DeformConv", "TopK"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": image.numpy()})
    with torch.no_grad():
        want = graph(image)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    net = build_network("lpsnet", SYNTHETIC, width=TINY, backbone="resnet18").eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, net, "lpsnet", extra={"steps": 12})
    loaded, info = load_network(path)
    assert info["model"] == "lpsnet" and info["backbone"] == "resnet18" and info["steps"] == 12
    assert loaded.label_set == SYNTHETIC and not loaded.training
    image = torch.randn(1, 3, 128, 256)
    with torch.no_grad():
        assert torch.equal(net(image)["semantic"], loaded(image)["semantic"])


def test_checkpoint_errors(tmp_path):
    net = build_network("psn", SYNTHETIC, width=TINY)
    with pytest.raises(ValueError, match="does not match"):
        save_checkpoint(tmp_path / "x.pt", net, "rtps")
    with pytest.raises(FileNotFoundError):
        load_network(tmp_path / "absent.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt"):
        load_network(corrupt)
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a panoptic_ros checkpoint"):
        load_network(tmp_path / "other.pt")
    save_checkpoint(tmp_path / "psn.pt", net, "psn")
    checkpoint = torch.load(tmp_path / "psn.pt", weights_only=True)
    checkpoint["model"] = "rtps"  # weights of one network under another's name
    torch.save(checkpoint, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="do not fit"):
        load_network(tmp_path / "mismatch.pt")
