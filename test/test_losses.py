"""Losses: building blocks by hand, every method's loss at a perfect prediction, and 20 training steps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from panoptic_ros.classes import SYNTHETIC, VOID_CLASS
from panoptic_ros.networks import NETWORK_NAMES, build_network
from panoptic_ros.training.losses import compute_loss, training_forward
from panoptic_ros.training.losses.common import (
    dice_loss,
    greedy_nms,
    hard_pixel_cross_entropy,
    iou_loss,
    sigmoid_focal_loss,
)
from panoptic_ros.training.losses.fpsnet import match_detections
from panoptic_ros.training.targets import build_targets, panoptic_target
from panoptic_ros.training.targets.common import sample_at_stride

torch.set_num_threads(2)
TINY = 0.25
MARGIN = 100.0  # logit margin of a "perfect" prediction


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 128 x 256 street-like scenes, edges on the 8-pixel grid (so stride-8 and stride-4 maps are exact)."""
    class_map = torch.zeros(2, 128, 256, dtype=torch.int64)  # road
    instance_map = torch.zeros_like(class_map)
    class_map[:, :32] = 4  # sky
    class_map[:, 32:64, 160:] = 2  # building
    class_map[:, 120:, :64] = VOID_CLASS
    for image, instance, cls, (y0, y1, x0, x1) in [(0, 1, 6, (40, 72, 16, 80)), (0, 2, 6, (48, 80, 96, 144)),
                                                    (0, 3, 5, (32, 80, 200, 216)), (1, 4, 6, (64, 112, 120, 200)),
                                                    (1, 5, 7, (72, 96, 32, 64))]:
        class_map[image, y0:y1, x0:x1] = cls
        instance_map[image, y0:y1, x0:x1] = instance
    return class_map, instance_map


def one_hot_logits(labels: torch.Tensor, num: int, margin: float = MARGIN) -> torch.Tensor:
    """(B, num, h, w) logits +margin/2 at `labels`, -margin/2 elsewhere (labels outside 0..num-1: all negative)."""
    valid = (labels >= 0) & (labels < num)
    hot = F.one_hot(labels.clamp(0, num - 1), num).permute(0, 3, 1, 2).float() * valid[:, None]
    return (hot - 0.5) * margin


def logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))


def perfect_outputs(name: str, net, targets: dict, class_map: torch.Tensor) -> dict:
    """Outputs that predict the targets exactly (up to the interpolation of low-resolution maps)."""
    c, t = SYNTHETIC.num_classes, len(SYNTHETIC.thing_ids)
    if name == "psn":
        return {"semantic": one_hot_logits(class_map, c), "center": targets["center"].clone(),
                "offset": targets["offset"].clone()}
    if name in ("rtps", "lpsnet"):
        quality = "centerness" if name == "rtps" else "borderness"
        out = {"semantic": one_hot_logits(sample_at_stride(class_map, 4), c),
               "box_cls": [one_hot_logits(cls, t) for cls in targets["cls"]],
               "box_reg": [torch.where(pos[:, None], reg, torch.ones_like(reg))
                           for reg, pos in zip(targets["reg"], targets["pos"], strict=True)],
               quality: [logit(q)[:, None] for q in targets[quality]]}
        if name == "rtps":
            out["levelness"] = one_hot_logits(targets["levelness"], 6)
        return out
    if name == "fpsnet":
        def unflatten(x: torch.Tensor, h: int, w: int) -> torch.Tensor:  # inverse of flatten_anchor_predictions
            b, _, k = x.shape
            return x.reshape(b, h, w, 9, k).permute(0, 3, 4, 1, 2).reshape(b, 9 * k, h, w)

        sizes = [(128 // s, 256 // s) for s in net.strides]
        box_cls = [unflatten((F.one_hot(lab.clamp(min=0), t).float() * (lab >= 0)[..., None] - 0.5) * MARGIN, *hw)
                   for lab, hw in zip(targets["anchor_cls"], sizes, strict=True)]
        box_reg = [unflatten(d, *hw) for d, hw in zip(targets["anchor_deltas"], sizes, strict=True)]
        slots = torch.zeros(2, net.num_attention, dtype=torch.int64)
        slots[:, :3] = targets["gt_ids"]
        target = panoptic_target(class_map, targets["instance_map"], net.thing_ids, net.stuff_ids, slots,
                                 net.num_attention)
        return {"box_cls": box_cls, "box_reg": box_reg, "panoptic_target": target,
                "panoptic": one_hot_logits(sample_at_stride(target, 8), net.num_attention + 5 + 2)}
    # spinet
    ids = targets["gt_ids"]  # sample every instance once
    masks = (targets["instance_s4"][:, None] == ids[:, :, None, None]).float()
    vectors = torch.zeros(1, 4)
    return {"class_logits": [one_hot_logits(cls, t) for cls in targets["cls"]],
            "thing_logits": (masks - 0.5) * MARGIN, "thing_ids": ids, "thing_valid": ids > 0,
            "stuff_logits": one_hot_logits(targets["stuff_s4"], 5), "contour": logit(targets["contour"]),
            "triplet_anchor": vectors, "triplet_positive": vectors, "triplet_negative": vectors + 100.0,
            "panoptic_feature": torch.zeros(1)}


def perturbed(outputs: dict, generator: torch.Generator) -> dict:
    """The same outputs with noise on every float map (regressions stay positive)."""
    def noisy(x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point() or x.dim() < 2:
            return x
        return x + torch.randn(x.shape, generator=generator) * (1.0 + x.abs().mean())

    return {k: [noisy(v).abs() if k == "box_reg" else noisy(v) for v in value] if isinstance(value, list)
            else noisy(value) for k, value in outputs.items()}


# ---------------------------------------------------------------- building blocks

def test_iou_loss_hand_values():
    target = torch.tensor([[2.0, 2.0, 2.0, 2.0]])
    assert iou_loss(target, target).item() == 0.0
    # Predicted box 2 x 4 inside the 4 x 4 target: IoU (8 + 1) / (16 + 1).
    pred = torch.tensor([[0.0, 2.0, 2.0, 2.0]])
    assert math.isclose(iou_loss(pred, target).item(), -math.log(9 / 17), rel_tol=1e-6)


def test_hard_pixel_cross_entropy_keeps_the_worst_fraction():
    logits = torch.zeros(1, 2, 1, 10)
    logits[0, 0, 0, :] = torch.arange(10.0)  # class 0 gets easier along the row
    target = torch.zeros(1, 1, 10, dtype=torch.int64)
    target[0, 0, 9] = VOID_CLASS
    per_pixel = F.cross_entropy(logits, target.clamp(max=1), reduction="none")[0, 0]
    expected = per_pixel[:2].mean()  # 20% of the 9 labelled pixels -> the 1 worst; 30% -> 2
    assert torch.isclose(hard_pixel_cross_entropy(logits, target, 0.3), expected)
    assert torch.isclose(hard_pixel_cross_entropy(logits, target, 1.0), per_pixel[:9].mean())


def test_focal_dice_and_nms():
    assert sigmoid_focal_loss(torch.tensor([20.0, -20.0]), torch.tensor([1.0, 0.0])).max() < 1e-8
    assert sigmoid_focal_loss(torch.tensor([0.0]), torch.tensor([1.0])) < F.binary_cross_entropy_with_logits(
        torch.tensor([0.0]), torch.tensor([1.0]))
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert dice_loss(mask, mask).item() == 0.0
    assert math.isclose(dice_loss(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), mask).item(), 1 - 3 / 4, rel_tol=1e-6)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    assert greedy_nms(boxes, torch.tensor([0.9, 0.95, 0.5]), 0.5, 10).tolist() == [1, 2]
    assert greedy_nms(boxes, torch.tensor([0.9, 0.95, 0.5]), 0.5, 1).tolist() == [1]


def test_fpsnet_matching_is_one_to_one_above_half_iou():
    detections = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 9.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    gt = torch.tensor([[0.0, 0.0, 9.0, 10.0], [100.0, 100.0, 110.0, 110.0], [0.0, 0.0, 10.0, 10.0]])
    det, g = match_detections(detections, gt, torch.tensor([True, True, True]))
    assert sorted(zip(det.tolist(), g.tolist(), strict=True)) == [(0, 2), (1, 0)]
    det, g = match_detections(detections, gt, torch.tensor([True, True, False]))
    assert list(zip(det.tolist(), g.tolist(), strict=True)) == [(1, 0)]


# ---------------------------------------------------------------- every method

@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_loss_is_minimal_at_the_perfect_prediction(name):
    torch.manual_seed(0)
    class_map, instance_map = batch()
    net = build_network(name, SYNTHETIC, width=TINY)
    targets = build_targets(net, class_map, instance_map)
    perfect = perfect_outputs(name, net, targets, class_map)
    total, terms = compute_loss(name, perfect, targets)
    assert torch.isfinite(total) and math.isclose(total.item(), sum(v.item() for v in terms.values()), rel_tol=1e-5)
    # Terms whose minimum is 0 reach it. Not so: BCE on soft targets (centerness, border-ness, contours); the
    # RTPS mask loss (pixels near borders read coarse cells' boxes); and cross entropy of maps predicted at
    # stride 4 or 8 but scored at full resolution, whose bilinear upsampling misses convex object corners.
    inexact = {"centerness", "borderness", "contour", "mask"}
    if name in ("rtps", "lpsnet", "fpsnet"):
        inexact |= {"semantic", "panoptic"}
    for term, value in terms.items():
        if term not in inexact:
            assert value.item() < 1e-3, f"{name} {term} = {value.item()} at the perfect prediction"
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        worse, _ = compute_loss(name, perturbed(perfect, generator), targets)
        assert worse > total


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_loss_decreases_over_20_steps_on_a_fixed_batch(name):
    torch.manual_seed(0)
    class_map, instance_map = batch()
    images = torch.randn(2, 3, 128, 256)
    net = build_network(name, SYNTHETIC, width=TINY).train()
    targets = build_targets(net, class_map, instance_map)
    options = {"attention": "ground_truth"} if name == "fpsnet" else {}
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    history = []
    for _ in range(20):
        total, terms = compute_loss(name, training_forward(net, images, targets, **options), targets)
        assert torch.isfinite(total), terms
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    assert sum(history[-3:]) / 3 < 0.8 * history[0], history


def test_fpsnet_detections_path_runs_and_shuffles():
    torch.manual_seed(0)
    class_map, instance_map = batch()
    net = build_network("fpsnet", SYNTHETIC, width=TINY).train()
    targets = build_targets(net, class_map, instance_map)
    outputs = training_forward(net, torch.randn(2, 3, 128, 256), targets)  # the paper's default: detections
    total, _ = compute_loss("fpsnet", outputs, targets)
    assert torch.isfinite(total)
    assert outputs["panoptic"].shape == (2, 50 + 5 + 2, 16, 32)
    # With ground-truth boxes every instance gets a random channel of its own.
    outputs = training_forward(net, torch.randn(2, 3, 128, 256), targets, attention="ground_truth")
    channels = outputs["panoptic_target"][0][instance_map[0] > 0].unique()
    assert len(channels) == 3 and (channels < 50).all()


def test_entry_point_errors():
    class_map, instance_map = batch()
    with pytest.raises(ValueError, match="unknown model"):
        compute_loss("yolo", {}, {})
    for name in ("fpsnet", "spinet"):
        net = build_network(name, SYNTHETIC, width=TINY).train()
        targets = build_targets(net, class_map, instance_map)
        with pytest.raises(ValueError, match="training_forward"):
            compute_loss(name, net(torch.randn(2, 3, 128, 256)), targets)
    net = build_network("spinet", SYNTHETIC, width=TINY).eval()
    with pytest.raises(ValueError, match="train"):
        training_forward(net, torch.randn(2, 3, 128, 256), build_targets(net, class_map, instance_map))
    net = build_network("psn", SYNTHETIC, width=TINY)
    with pytest.raises(ValueError, match="no options"):
        training_forward(net, torch.randn(1, 3, 128, 256), {}, attention="ground_truth")
    with pytest.raises(ValueError, match="attention"):
        fps = build_network("fpsnet", SYNTHETIC, width=TINY)
        training_forward(fps, torch.randn(2, 3, 128, 256), build_targets(fps, class_map, instance_map),
                         attention="oracle")
