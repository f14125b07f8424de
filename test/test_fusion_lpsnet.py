"""LPSNet's graph steps (fusion/lpsnet.py) against the matching steps of its literal reference
(fusion/reference/lpsnet.py): boxes, box masks per input pixel, pasting with the border-ness
tie-break; the grouped pasting on adversarial chains; and `converged` when a bound is exceeded."""

import numpy as np
import pytest
import torch
from fusion_cases import chain_keep, paste_chain, seeded_scenes
from test_fusion_scenes import FCOS_STRIDES, LABEL_SET, lpsnet_heads, to_torch

from panoptic_ros.fusion import lpsnet
from panoptic_ros.fusion.base import RuntimeThresholds
from panoptic_ros.fusion.detections import PRE_NMS_TOP, Detections
from panoptic_ros.fusion.lpsnet import (
    box_masks,
    lpsnet_boxes,
    paste_with_borderness,
    predicted_borderness,
    semantic_classes,
)
from panoptic_ros.fusion.reference import lpsnet as reference
from panoptic_ros.fusion.reference.common import paste_by_confidence, upsample_bilinear
from panoptic_ros.fusion.reference.detections import Detection
from panoptic_ros.fusion.static_ops import paste_groups_in_order
from panoptic_ros.pipeline_io import Thresholds

K = 24
THING_IDS = torch.tensor(LABEL_SET.thing_ids)
CAR = LABEL_SET.thing_ids.index(6)


def scene_heads(seed: int) -> dict:
    """Heads of a random scene whose boxes are predicted 1.5 times too large: neighbours' masks overlap."""
    scene = seeded_scenes(1, seed=seed, objects=10)[0]
    heads = lpsnet_heads(scene, np.random.default_rng(seed))
    for reg in heads["box_reg"]:
        reg *= 1.5
    return heads


def graph_steps(heads: dict):
    torch_heads = to_torch(heads)
    semantic = semantic_classes(torch_heads["semantic"])
    thresholds = RuntimeThresholds.from_thresholds(Thresholds())
    boxes = lpsnet_boxes(torch_heads, FCOS_STRIDES, tuple(semantic.shape), thresholds, K)
    return torch_heads, semantic, boxes, box_masks(boxes, semantic, THING_IDS)


def as_reference(boxes: Detections) -> list[Detection]:
    return [Detection(b.numpy().astype(np.float64), int(t), float(s), int(v))
            for b, t, s, v, ok in zip(boxes.boxes, boxes.thing, boxes.score, boxes.level, boxes.valid, strict=True)
            if ok]


@pytest.mark.parametrize("seed", [0, 1])
def test_boxes_are_the_references(seed):
    heads = scene_heads(seed)
    _, semantic, boxes, _ = graph_steps(heads)
    expected = reference.lpsnet_boxes(heads, FCOS_STRIDES, *semantic.shape, Thresholds(), PRE_NMS_TOP)[:K]
    found = as_reference(boxes)
    assert len(found) == len(expected) >= 5
    for graph, ref in zip(found, expected, strict=True):
        np.testing.assert_allclose(graph.box, ref.box, atol=1e-4)
        assert (graph.thing, graph.level) == (ref.thing, ref.level) and graph.score == pytest.approx(ref.score)


@pytest.mark.parametrize("seed", [0, 1])
def test_semantic_classes_and_box_masks_are_the_references_per_pixel(seed):
    heads = scene_heads(seed)
    _, semantic, boxes, masks = graph_steps(heads)
    expected_semantic = upsample_bilinear(heads["semantic"][0], 4).argmax(axis=0)
    assert (semantic.numpy() == expected_semantic).mean() >= 0.9999
    for k, detection in enumerate(as_reference(boxes)):
        expected = reference.box_mask(detection.box, LABEL_SET.thing_ids[detection.thing], semantic.numpy())
        np.testing.assert_array_equal(masks.mask(k, semantic, THING_IDS).numpy(), expected)
        assert masks.area[k].item() == expected.sum()
    assert bool(masks.exact)


@pytest.mark.parametrize("overlap", [0.3, 0.7])
def test_paste_with_borderness_is_the_references(overlap):
    contested = 0
    for seed in range(3):
        heads = scene_heads(seed)
        torch_heads, semantic, boxes, masks = graph_steps(heads)
        predicted = predicted_borderness(torch_heads["borderness"], FCOS_STRIDES, *semantic.shape)
        pasting = paste_with_borderness(boxes, masks, semantic, THING_IDS, predicted, torch.tensor(overlap))
        detections = as_reference(boxes)
        reference_masks = [reference.box_mask(d.box, LABEL_SET.thing_ids[d.thing], semantic.numpy())
                           for d in detections]
        owner = reference.paste_with_borderness(detections, reference_masks, heads, FCOS_STRIDES, overlap,
                                                semantic.shape)
        _, pasted = paste_by_confidence(reference_masks, overlap)
        assert np.flatnonzero(pasting.keep.numpy()).tolist() == pasted and bool(pasting.converged)
        graph_owner = np.where(pasting.owner.numpy() < K, pasting.owner.numpy(), -1)
        assert (graph_owner == owner).mean() >= 0.999
        contested += (sum(reference_masks[k].astype(int) for k in pasted) >= 2).sum()
    assert contested > 100  # the border-ness tie-break decides pixels


def box_detections(boxes: list[tuple[float, float, float, float]], level: int = 0) -> Detections:
    n = len(boxes)
    return Detections(torch.tensor(boxes, dtype=torch.float32), torch.full((n,), CAR), torch.linspace(0.9, 0.5, n),
                      torch.ones(n, dtype=torch.bool), torch.full((n,), level), torch.tensor(True), torch.tensor(0))


def paste_boxes(boxes: list, semantic: torch.Tensor, overlap: float = 0.3, predicted: float = 0.5):
    detections = box_detections(boxes)
    masks = box_masks(detections, semantic, THING_IDS)
    borderness = torch.full((1, *semantic.shape), predicted)
    return masks, paste_with_borderness(detections, masks, semantic, THING_IDS, borderness, torch.tensor(overlap))


@pytest.mark.parametrize("length", [16, 32])
def test_pasting_boxes_is_exact_on_adversarial_chains(length):
    # paste_chain's masks are boxes: box k covers columns [4k, 4k + 8) of a 2-row car.
    semantic = torch.full((2, 4 * (length + 1)), LABEL_SET.thing_ids[CAR])
    _, pasting = paste_boxes([(4.0 * k, 0.0, 4.0 * k + 8, 2.0) for k in range(length)], semantic)
    _, pasted = paste_by_confidence(paste_chain(length), 0.3)
    assert np.flatnonzero(pasting.keep.numpy()).tolist() == pasted == chain_keep(length)
    assert bool(pasting.converged)


def test_grouped_pasting_equals_pasting_pixel_by_pixel():
    rng = np.random.default_rng(5)
    masks = torch.from_numpy(rng.random((12, 300)) < 0.3)
    valid = torch.from_numpy(rng.random(12) < 0.9)
    for threshold in (0.2, 0.3, 0.5):
        _, expected = paste_by_confidence([m.numpy() for m in masks & valid[:, None]], threshold)
        keep = paste_groups_in_order(masks.T, torch.ones(300), masks.sum(dim=1).float(), valid, torch.tensor(threshold))
        assert np.flatnonzero(keep.numpy()).tolist() == expected


def test_a_box_taken_exactly_at_the_overlap_threshold_is_kept():
    semantic = torch.full((1, 10), LABEL_SET.thing_ids[CAR])
    boxes = [(0.0, 0.0, 3.0, 1.0), (0.0, 0.0, 10.0, 1.0)]  # 3 of the second's 10 pixels are taken: exactly 0.3
    assert paste_boxes(boxes, semantic, 0.3)[1].keep.tolist() == [True, True]
    assert paste_boxes(boxes, semantic, 0.29)[1].keep.tolist() == [True, False]


def test_overlaps_go_to_the_box_whose_borderness_matches_the_prediction():
    # The reference's own example (test_fusion_reference.py): columns 6, 7 are more central in the
    # first box, 9 in the second, 8 equally (the first keeps it).
    semantic = torch.full((8, 16), LABEL_SET.thing_ids[CAR])
    _, pasting = paste_boxes([(0.0, 0.0, 10.0, 8.0), (6.0, 0.0, 16.0, 8.0)], semantic, 0.5, predicted=1.0)
    assert pasting.owner[4].tolist() == [0] * 9 + [1] * 7


def test_more_competitors_than_the_bounds_is_not_converged(monkeypatch):
    # Three overlapping boxes: 3 rectangles lie inside two or more of them, and 3 boxes hold the middle one.
    semantic = torch.full((12, 12), LABEL_SET.thing_ids[CAR])
    boxes = [(0.0, 0.0, 12.0, 12.0), (0.0, 0.0, 8.0, 12.0), (4.0, 0.0, 12.0, 12.0)]
    masks, pasting = paste_boxes(boxes, semantic, overlap=1.0)
    assert bool(masks.exact) and bool(pasting.converged) and pasting.keep.all()
    monkeypatch.setattr(lpsnet, "GROUPS", 1)  # TopKs of one: three of them find the three rectangles
    masks, pasting = paste_boxes(boxes, semantic, overlap=1.0)
    assert bool(masks.exact) and bool(pasting.converged) and masks.groups.any(dim=1).all()
    monkeypatch.setattr(lpsnet, "GROUP_CHUNKS", 2)
    masks, pasting = paste_boxes(boxes, semantic, overlap=1.0)
    assert not bool(masks.exact) and not bool(pasting.converged)
    monkeypatch.setattr(lpsnet, "GROUPS", 3839)
    monkeypatch.setattr(lpsnet, "OWNER_CANDIDATES", 2)
    masks, pasting = paste_boxes(boxes, semantic, overlap=1.0)
    assert bool(masks.exact) and not bool(pasting.converged)
