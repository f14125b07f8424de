"""Edges of the fusions' decisions, at the level of their output: a value exactly at a threshold, a
pixel exactly on a box side, a levelness that says "no instance", boxes of two classes overlapping.

Each scene is built so that the decided quantity is exact in float32 (IoU 1.0 of identical boxes,
softmax 1.0 of a 100-logit margin, sigmoid(0) = 0.5, box sides on integers or half pixels), so the
graph and the reference must both land on the stated side of the threshold.
"""

import numpy as np
import pytest
import torch
from test_fusion_methods import BANDS, CAR, PERSON, run_method
from test_fusion_scenes import (
    DIVISOR,
    FCOS_STRIDES,
    LABEL_SET,
    lpsnet_heads,
    make_scene,
    rtps_heads,
    sample,
    spinet_heads,
)

from panoptic_ros.fusion.detections import select_detections
from panoptic_ros.fusion.static_ops import pairwise_box_iou
from panoptic_ros.networks.box_coding import box_iou
from panoptic_ros.pipeline_io import COL, Thresholds

CAR_ID = CAR * DIVISOR + 1
CAR_BOX = (64, 64, 127, 111)  # pixels x 64..127, y 64..111: a 64 x 48 car, on FCOS level 1 (stride 16)


# --- pairwise box IoU and per-class NMS --------------------------------------------------------------

def test_boxes_apart_along_one_axis_have_iou_zero():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    apart = torch.tensor([[20.0, 0.0, 30.0, 10.0],  # right of a, same rows
                          [0.0, 20.0, 10.0, 30.0],  # below a, same columns
                          [10.0, 0.0, 20.0, 10.0],  # touching a's right side
                          [30.0, 30.0, 40.0, 40.0]])  # apart along both axes
    assert pairwise_box_iou(a, apart).tolist() == [[0.0, 0.0, 0.0, 0.0]]
    assert pairwise_box_iou(a, torch.tensor([[5.0, 0.0, 15.0, 10.0]])).item() == pytest.approx(50 / 150)


def test_pairwise_box_iou_equals_box_iou_on_random_boxes():
    rng = np.random.default_rng(3)
    corners = rng.uniform(0, 100, (2, 40, 2))
    boxes = torch.tensor(np.concatenate([corners[0], corners[0] + rng.uniform(-5, 30, (40, 2))], axis=1),
                         dtype=torch.float32)  # some degenerate (negative extent), many disjoint
    a, b = boxes[:15], boxes[15:]
    iou = pairwise_box_iou(a, b)
    assert (iou == 0).float().mean() > 0.3  # the disjoint pairs are a large part of the test
    torch.testing.assert_close(iou, box_iou(a, b))


def test_nms_is_per_class_a_box_of_another_class_is_not_suppressed():
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0],  # person
                          [0.0, 0.0, 40.0, 40.0],  # car, the same box
                          [2.0, 0.0, 40.0, 40.0]])  # person, IoU 0.95 with the first
    person, car = LABEL_SET.thing_ids.index(PERSON), LABEL_SET.thing_ids.index(CAR)
    class_prob = torch.zeros(3, len(LABEL_SET.thing_ids))
    class_prob[[0, 1, 2], [person, car, person]] = torch.tensor([0.9, 0.8, 0.7])
    detections = select_detections(boxes, class_prob, class_prob.amax(dim=1), torch.zeros(3, dtype=torch.int64),
                                   torch.tensor(0.3), torch.tensor(0.5), k=3)
    kept = detections.valid.tolist()
    assert kept == [True, True, False]
    assert detections.thing[:2].tolist() == [person, car]
    assert detections.score[:2].tolist() == pytest.approx([0.9, 0.8])


def test_detections_beyond_k_are_counted_as_dropped():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [40.0, 0.0, 50.0, 10.0],
                          [41.0, 0.0, 50.0, 10.0]])  # the last one is suppressed by the third (IoU 0.9)
    class_prob = torch.zeros(4, len(LABEL_SET.thing_ids))
    class_prob[:, 0] = torch.tensor([0.9, 0.8, 0.7, 0.6])

    def select(k):
        return select_detections(boxes, class_prob, class_prob[:, 0], torch.zeros(4, dtype=torch.int64),
                                 torch.tensor(0.3), torch.tensor(0.5), k=k)

    assert [int(select(k).dropped) for k in (1, 2, 3, 4)] == [2, 1, 0, 0]  # 3 survive NMS; a suppressed box is no drop
    assert select(2).valid.tolist() == [True, True] and bool(select(2).converged)


# --- RTPS: the mask threshold and the levelness --------------------------------------------------------

def _certain_rtps_heads() -> dict:
    """Ideal RTPS heads of one car: every car pixel's box is the query box (IoU 1.0) and the
    semantic head is certain (softmax 1.0 in float32), so M = IoU x P_sem is exactly 1.0 there."""
    scene = make_scene(128, 256, BANDS, [(CAR, *CAR_BOX)])
    heads = rtps_heads(scene, np.random.default_rng(0), noise=0.0)
    cells = sample(scene.semantic, 4, 2)
    heads["semantic"] = (100.0 * (cells[None] == np.arange(LABEL_SET.num_classes)[:, None, None]))[None].astype(
        np.float32)
    return heads


def test_rtps_mask_excludes_a_pixel_exactly_at_mask_sigma():
    heads = _certain_rtps_heads()
    for result in run_method("rtps", heads, Thresholds(mask_sigma=1.0)):  # M = 1.0 = sigma: not in the mask
        assert CAR_ID not in result.panoptic
    for result in run_method("rtps", heads, Thresholds(mask_sigma=0.9999)):
        assert (result.panoptic[68:108, 68:124] == CAR_ID).all()


def test_rtps_pixels_whose_levelness_says_no_instance_join_no_mask():
    heads = _certain_rtps_heads()
    # Level 0 boxes are the car's box too, so only the levelness can keep those pixels out.
    reg = heads["box_reg"][0][0]
    ys, xs = np.mgrid[0:reg.shape[1], 0:reg.shape[2]] * 8 + 4
    inside = (xs >= 64) & (xs <= 127) & (ys >= 64) & (ys <= 111)
    for side, distance in enumerate((xs - 64, ys - 64, 128 - xs, 112 - ys)):
        reg[side][inside] = distance[inside]
    # The car's left half (cells centred left of x = 96) says "no instance" (levelness arg-max 0).
    levelness = heads["levelness"][0]
    cell_y, cell_x = np.mgrid[0:levelness.shape[1], 0:levelness.shape[2]] * 4 + 2
    left = (cell_x >= 64) & (cell_x < 96) & (cell_y >= 64) & (cell_y <= 111)
    levelness[:, left] = 0.0
    levelness[0, left] = 4.0
    for result in run_method("rtps", heads):
        assert not (result.panoptic[66:110, 64:92] == CAR_ID).any()
        assert (result.panoptic[68:108, 100:124] == CAR_ID).all()


# --- LPSNet: a box's right side ----------------------------------------------------------------------

def _lpsnet_box_ending_at(x2: float) -> dict:
    """Ideal LPSNet heads of a car whose semantic pixels reach x = 135 while every predicted box ends at x2."""
    scene = make_scene(128, 256, BANDS, [(CAR, 64, 64, 135, 111)])  # 72 px wide: FCOS level 1 (stride 16)
    heads = lpsnet_heads(scene, np.random.default_rng(0), noise=0.0)
    stride, cls, reg = FCOS_STRIDES[1], heads["box_cls"][1][0], heads["box_reg"][1][0]
    xs = np.mgrid[0:reg.shape[1], 0:reg.shape[2]][1] * stride + stride // 2
    car_locations = cls[LABEL_SET.thing_ids.index(CAR)] > 0
    assert car_locations.sum() >= 10
    reg[2][car_locations] = x2 - xs[car_locations]
    return heads


def test_lpsnet_box_holds_the_pixels_left_of_its_right_side():
    # x2 = 128: pixel 127 is inside (x < x2), pixel 128 is not, though its class is the box's.
    for result in run_method("lpsnet", _lpsnet_box_ending_at(128.0)):
        assert (result.panoptic[66:110, 64:128] == CAR_ID).all()
        assert not (result.panoptic[:, 128:] == CAR_ID).any()
    # x2 = 125.5: pixel 125 is still inside, pixel 126 is not (the paper's convention, per input pixel).
    for result in run_method("lpsnet", _lpsnet_box_ending_at(125.5)):
        assert (result.panoptic[66:110, 64:126] == CAR_ID).all()
        assert not (result.panoptic[:, 126:] == CAR_ID).any()


# --- SPINet: the sampling threshold ------------------------------------------------------------------

def test_spinet_samples_no_filter_exactly_at_score_threshold():
    scene = make_scene(128, 256, BANDS, [(CAR, *CAR_BOX)])
    heads = spinet_heads(scene, np.random.default_rng(0), noise=0.0)
    car = LABEL_SET.thing_ids.index(CAR)
    for logits in heads["class_logits"]:
        logits[0, car][logits[0, car] > 0] = 0.0  # the car's locations: confidence sigmoid(0) = 0.5 exactly
    for result in run_method("spinet", heads, Thresholds(score_threshold=0.5)):
        assert CAR_ID not in result.panoptic and CAR not in result.valid_instances[:, COL["class_id"]]
    for result in run_method("spinet", heads, Thresholds(score_threshold=0.49)):
        assert (result.panoptic[68:108, 68:124] == CAR_ID).all()
