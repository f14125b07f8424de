"""Training targets on hand-made scenes whose targets are worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from panoptic_ros.classes import SYNTHETIC, VOID_CLASS
from panoptic_ros.networks import build_network
from panoptic_ros.training.targets import (
    build_targets,
    fpsnet_targets,
    lpsnet_targets,
    panoptic_target,
    psn_targets,
    rtps_targets,
    spinet_targets,
)
from panoptic_ros.training.targets.common import instance_table
from panoptic_ros.training.targets.lpsnet import mask_border_distances

THINGS = SYNTHETIC.thing_ids  # person 5, car 6, bicycle 7
STUFF = SYNTHETIC.stuff_ids
ROAD, SIDEWALK, CAR = 0, 1, 6
STRIDES = (8, 16, 32, 64, 128)


def scene(height: int = 128, width: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Road everywhere, one car (instance 7) covering rows 16..47, columns 32..95: box (32, 16, 96, 48)."""
    class_map = torch.full((1, height, width), ROAD, dtype=torch.int64)
    instance_map = torch.zeros_like(class_map)
    class_map[0, 16:48, 32:96] = CAR
    instance_map[0, 16:48, 32:96] = 7
    return class_map, instance_map


# ---------------------------------------------------------------- common

def test_instance_table_boxes_classes_areas():
    class_map, instance_map = scene()
    class_map[0, 100:110, 200:204] = 5  # a person, instance 3
    instance_map[0, 100:110, 200:204] = 3
    class_map[0, 100, 200] = CAR  # one mislabelled pixel: the majority vote keeps "person"
    table = instance_table(class_map, instance_map, THINGS)
    assert table.ids.tolist() == [[3, 7]]
    assert table.classes.tolist() == [[0, 1]]
    assert table.boxes.tolist() == [[[200, 100, 204, 110], [32, 16, 96, 48]]]
    assert table.areas.tolist() == [[40, 32 * 64]] and table.valid.all()


def test_bad_ground_truth_is_rejected():
    class_map, instance_map = scene()
    with pytest.raises(ValueError, match="int64"):
        psn_targets(class_map.float(), instance_map, THINGS)
    with pytest.raises(ValueError, match="differ"):
        psn_targets(class_map, instance_map[:, :64], THINGS)
    with pytest.raises(ValueError, match="multiples of 128"):
        rtps_targets(class_map[:, :, :200], instance_map[:, :, :200], THINGS, STRIDES)


# ---------------------------------------------------------------- PSN

def test_psn_center_and_offsets_of_a_rectangle():
    class_map, instance_map = scene()
    class_map[0, :4] = VOID_CLASS
    t = psn_targets(class_map, instance_map, THINGS)
    # Center of mass (31.5, 63.5), rounded half up to (32, 64).
    assert t["center"][0, 0, 32, 64] == 1.0
    assert math.isclose(t["center"][0, 0, 32, 74].item(), math.exp(-100 / 200), rel_tol=1e-6)
    assert t["center"][0, 0, 32, 64 + 31].item() == 0.0  # beyond 3 sigma
    assert t["offset"][0, :, 16, 32].tolist() == [16.0, 32.0]  # (dy, dx) from the top-left pixel
    assert t["offset"][0, :, 47, 95].tolist() == [-15.0, -31.0]
    assert t["offset"][0, :, 60, 60].tolist() == [0.0, 0.0]  # road
    assert torch.equal(t["semantic"], class_map)
    assert t["center_weight"][0, 0, :4].sum() == 0 and t["center_weight"][0, 0, 4:].min() == 1


def test_psn_boundary_aware_offset_weights_by_distance_band():
    class_map = torch.full((1, 256, 512), ROAD, dtype=torch.int64)
    instance_map = torch.zeros_like(class_map)
    class_map[0, 40:200, 100:260] = CAR  # 160 x 160
    instance_map[0, 40:200, 100:260] = 1
    weight = psn_targets(class_map, instance_map, THINGS)["offset_weight"][0, 0]
    # Distance to the boundary along row 120: column c has distance min(c - 99, 260 - c).
    assert weight[120, 100] == 8  # d = 1
    assert weight[120, 102] == 8  # d = 3
    assert weight[120, 103] == 4  # d = 4
    assert weight[120, 114] == 4  # d = 15
    assert weight[120, 115] == 2  # d = 16
    assert weight[120, 162] == 2  # d = 63
    assert weight[120, 163] == 1  # d = 64
    assert weight[120, 99] == 0 and weight[20, 20] == 0  # stuff pixels do not count


# ---------------------------------------------------------------- FCOS-style (RTPS, LPSNet)

def test_rtps_fcos_targets_of_a_rectangle():
    class_map, instance_map = scene()
    t = rtps_targets(class_map, instance_map, THINGS, STRIDES)
    # P3 cell (3, 7) samples pixel (60, 28): l, t, r, b = 28, 12, 36, 20 to box (32, 16, 96, 48).
    assert t["pos"][0][0, 3, 7] and t["cls"][0][0, 3, 7] == 1
    assert t["reg"][0][0, :, 3, 7].tolist() == [28.0, 12.0, 36.0, 20.0]
    assert math.isclose(t["centerness"][0][0, 3, 7].item(), math.sqrt(28 / 36 * 12 / 20), rel_tol=1e-5)
    assert t["pos"][0].sum() == 4 * 8  # cells sampling pixels inside the car: rows 2..5, columns 4..11
    assert not t["pos"][0][0, 1, 7] and t["cls"][0][0, 1, 7] == -1
    assert sum(int(p.sum()) for p in t["pos"][1:]) == 0  # the car is smaller than 64: P3 only
    # Levelness at stride 4: 1 (= P3) inside the car, 0 on the road.
    assert t["levelness"][0, 4, 8] == 1 and t["levelness"][0, 3, 8] == 0 and t["levelness"][0, 10, 30] == 0
    assert (t["instance_s4"][0] == 7).sum() == 8 * 16


def test_fcos_level_ranges_send_large_objects_up():
    class_map = torch.full((1, 256, 512), ROAD, dtype=torch.int64)
    instance_map = torch.zeros_like(class_map)
    class_map[0, 0:200, 0:300] = CAR
    instance_map[0, 0:200, 0:300] = 1
    t = rtps_targets(class_map, instance_map, THINGS, STRIDES)
    # Every point of a 300 x 200 box has max(l, t, r, b) >= 150: levels P5 (128-256) or P6 (256-512).
    assert int(t["pos"][0].sum()) == int(t["pos"][1].sum()) == 0
    assert t["pos"][2].sum() > 0 and t["pos"][3].sum() > 0
    # P5 cell (2, 4) samples (144, 80): l, t, r, b = 144, 80, 156, 120 -> max 156 is in [128, 256].
    assert t["pos"][2][0, 2, 4] and t["levelness"][0, 20, 36] == 3  # pixel (146, 82): max 154 -> P5


def test_void_and_crowd_are_ignored():
    class_map, instance_map = scene()
    class_map[0, 64:80, 0:32] = CAR  # a crowd region: a thing class without an instance
    class_map[0, 100:128] = VOID_CLASS
    t = rtps_targets(class_map, instance_map, THINGS, STRIDES)
    assert t["cls_weight"][0][0, 8, 1] == 0 and t["cls"][0][0, 8, 1] == -1  # crowd cell (pixel 68, 12)
    assert t["cls_weight"][0][0, 13, 10] == 0  # void
    assert t["cls_weight"][0][0, 11, 10] == 1
    assert t["levelness"][0, 17, 2] == VOID_CLASS and t["levelness"][0, 30, 10] == VOID_CLASS


def test_lpsnet_borderness_uses_the_mask_border():
    class_map, instance_map = scene()
    t = lpsnet_targets(class_map, instance_map, THINGS, STRIDES)
    assert t["reg"][0][0, :, 3, 7].tolist() == [28.0, 12.0, 36.0, 20.0]
    # For a rectangle the mask border is the box: border-ness = centerness.
    assert math.isclose(t["borderness"][0][0, 3, 7].item(), math.sqrt(28 / 36 * 12 / 20), rel_tol=1e-5)
    # Cut the top-right quarter away (rows 16..31, columns 64..95): the box stays, the mask border moves.
    class_map[0, 16:32, 64:96] = ROAD
    instance_map[0, 16:32, 64:96] = 0
    t = lpsnet_targets(class_map, instance_map, THINGS, STRIDES)
    # P3 cell (4, 9) samples (76, 36): row run 32..95 -> l*, r* = 44, 20; column run 32..47 -> t*, b* = 4, 12.
    assert t["reg"][0][0, :, 4, 9].tolist() == [44.0, 20.0, 20.0, 12.0]
    assert math.isclose(t["borderness"][0][0, 4, 9].item(), math.sqrt(20 / 44 * 4 / 12), rel_tol=1e-5)
    assert t["borderness"][0][0, 0, 0] == 0  # off the positives
    assert torch.equal(t["semantic"], class_map)


def test_mask_border_distances_on_a_small_grid():
    ids = torch.zeros(1, 6, 8, dtype=torch.int64)
    ids[0, 1:5, 2:7] = 1
    ids[0, 2, 4] = 0  # a hole
    d = mask_border_distances(ids)
    assert d[0, 3, 4].tolist() == [2.0, 0.0, 3.0, 2.0]  # column 4 above is the hole: its run starts at row 3
    assert d[0, 2, 5].tolist() == [0.0, 1.0, 2.0, 3.0]


# ---------------------------------------------------------------- FPSNet

def test_fpsnet_anchor_targets():
    net = build_network("fpsnet", SYNTHETIC, width=0.25)
    class_map = torch.full((1, 128, 256), ROAD, dtype=torch.int64)
    instance_map = torch.zeros_like(class_map)
    # Exactly the P3 anchor of size 32, ratio 1 at cell (4, 4), centre (36, 36).
    class_map[0, 20:52, 20:52] = CAR
    instance_map[0, 20:52, 20:52] = 5
    t = fpsnet_targets(class_map, instance_map, THINGS, net.strides, net.anchor_sizes, net.anchor_ratios)
    assert t["anchor_cls"][0].shape == (1, 16 * 32 * 9)
    index = (4 * 32 + 4) * 9 + 1  # cell-major, then anchor (size 0, ratio 1.0)
    assert t["anchor_cls"][0][0, index] == 1
    assert t["anchor_deltas"][0][0, index].abs().max() < 1e-6
    assert t["anchor_cls"][0][0, 0] == -1  # far away: negative
    labels = torch.cat(t["anchor_cls"], dim=1)
    assert (labels == -2).any() and (labels >= 0).sum() >= 1
    assert torch.equal(t["gt_boxes"][0, 0], torch.tensor([20.0, 20.0, 52.0, 52.0]))


def test_fpsnet_small_objects_still_get_an_anchor():
    net = build_network("fpsnet", SYNTHETIC, width=0.25)
    class_map = torch.full((1, 128, 256), ROAD, dtype=torch.int64)
    instance_map = torch.zeros_like(class_map)
    class_map[0, 60:66, 60:64] = 5  # 4 x 6 px: IoU < 0.5 with every anchor
    instance_map[0, 60:66, 60:64] = 1
    t = fpsnet_targets(class_map, instance_map, THINGS, net.strides, net.anchor_sizes, net.anchor_ratios)
    assert (torch.cat(t["anchor_cls"], dim=1) == 0).sum() >= 1


def test_fpsnet_panoptic_target_channels():
    class_map, instance_map = scene()
    class_map[0, 100:, :100] = SIDEWALK
    class_map[0, 120:, :] = VOID_CLASS
    class_map[0, 60:70, 200:210] = 5
    instance_map[0, 60:70, 200:210] = 9  # an instance no attention mask is matched to
    slots = torch.tensor([[0, 0, 7, 0]])  # instance 7 in channel 2 of N_att = 4
    target = panoptic_target(class_map, instance_map, THINGS, STUFF, slots, num_attention=4)
    assert target[0, 30, 60] == 2  # the car
    assert target[0, 10, 10] == 4 + 0  # road = stuff 0
    assert target[0, 110, 10] == 4 + 1  # sidewalk = stuff 1
    assert target[0, 65, 205] == 4 + 5  # unmatched instance
    assert target[0, 125, 10] == 4 + 5 + 1  # unlabeled


# ---------------------------------------------------------------- SPINet

def test_spinet_targets():
    class_map, instance_map = scene()
    class_map[0, 64:, 128:] = SIDEWALK
    class_map[0, 120:, :64] = VOID_CLASS
    net = build_network("spinet", SYNTHETIC, width=0.25)
    t = spinet_targets(class_map, instance_map, THINGS, STUFF, net.strides)
    # All levels see the car, each at its own cells; P5 (stride 32) cell (0, 1) samples (48, 16).
    assert t["instance"][0][0, 3, 7] == 7 and t["instance"][1][0, 3, 7] == 7
    assert t["instance"][3][0, 0, 1] == 7 and t["cls"][3][0, 0, 1] == 1
    assert t["stuff_s4"][0, 20, 20] == 0 and t["stuff_s4"][0, 20, 40] == 1  # road, sidewalk
    assert t["stuff_s4"][0, 6, 12] == VOID_CLASS  # car pixel
    assert t["stuff_s4"][0, 31, 2] == VOID_CLASS  # void
    assert t["instance_s4"][0, 6, 12] == 7 and t["class_s4"][0, 6, 12] == CAR
    contour = t["contour"][0, 0]
    # Road | sidewalk boundary between columns 127 and 128 (rows 64..119).
    assert contour[80, 127] == 1 and contour[80, 128] == 1
    assert math.isclose(contour[80, 126].item(), math.exp(-0.5), rel_tol=1e-4)
    assert math.isclose(contour[80, 125].item(), math.exp(-2.0), rel_tol=1e-4)
    assert contour[119, 30] < 1e-6  # road above void: void is no class, so no contour
    assert contour[16, 50] == 1 and contour[15, 50] == 1  # road | car


def test_build_targets_dispatches_by_network():
    class_map, instance_map = scene()
    for name in ("psn", "rtps", "fpsnet", "spinet", "lpsnet"):
        t = build_targets(build_network(name, SYNTHETIC, width=0.25), class_map, instance_map)
        assert isinstance(t, dict) and t
