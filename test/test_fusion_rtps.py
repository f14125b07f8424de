"""RTPS's graph steps (fusion/rtps.py) against the matching steps of the literal reference
(fusion/reference/rtps.py), and the bounds under which the graph is exact."""

import numpy as np
import pytest
import torch
from test_fusion_methods import CAR, DIVISOR, PERSON, run_method
from test_fusion_scenes import (
    FCOS_STRIDES,
    LABEL_SET,
    assert_same_result,
    make_scene,
    random_scene,
    rtps_heads,
    to_torch,
)

from panoptic_ros.fusion import rtps
from panoptic_ros.fusion.base import RuntimeThresholds
from panoptic_ros.fusion.detections import PRE_NMS_TOP, Detections
from panoptic_ros.fusion.reference import rtps as reference
from panoptic_ros.fusion.reference.common import paste_by_confidence, softmax, upsample_bilinear
from panoptic_ros.fusion.static_ops import from_cells, to_cells
from panoptic_ros.pipeline_io import Thresholds

THRESHOLDS = Thresholds(mask_sigma=0.3, min_stuff_area=64)
POOL = 24


def scene_heads(seed: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    heads = rtps_heads(random_scene(rng, count=8), rng)
    return heads, to_torch(heads)


def graph_steps(heads: dict, thresholds: Thresholds = THRESHOLDS):
    height, width = (4 * n for n in heads["semantic"].shape[-2:])
    runtime = RuntimeThresholds.from_thresholds(thresholds)
    queries = rtps.query_boxes(heads, FCOS_STRIDES, (height, width), runtime, POOL)
    boxes = rtps.pixel_boxes(heads, FCOS_STRIDES, (height, width))
    logits = torch.nn.functional.interpolate(heads["semantic"], scale_factor=4, mode="bilinear")[0]
    probability = rtps.thing_probabilities(logits, torch.tensor(LABEL_SET.thing_ids), logits.argmax(dim=0))
    candidates = rtps.instance_masks(queries, boxes, probability, runtime.mask_sigma, FCOS_STRIDES[0])
    return queries, boxes, candidates


def masks_per_query(candidates: rtps.CandidateMasks, pool: int) -> np.ndarray:
    """(P, H, W): the graph's candidate masks (per block) written out per query on the 128 x 256 frame."""
    masks, query = candidates.masks, candidates.query[:, :, None]
    return np.stack([from_cells((masks & (query == j)).any(dim=1), 16, 8).numpy() for j in range(pool)])


@pytest.mark.parametrize("seed", [0, 1])
def test_query_boxes_are_the_references(seed):
    numpy_heads, heads = scene_heads(seed)
    queries = rtps.query_boxes(heads, FCOS_STRIDES, (128, 256), RuntimeThresholds.from_thresholds(THRESHOLDS), POOL)
    expected = reference.query_boxes(numpy_heads, FCOS_STRIDES, 128, 256, THRESHOLDS, PRE_NMS_TOP)
    valid = queries.valid.numpy()
    assert valid.sum() == len(expected) > 4
    np.testing.assert_allclose(queries.boxes.numpy()[valid], [q.box for q in expected], atol=1e-4)
    assert queries.thing.numpy()[valid].tolist() == [q.thing for q in expected]
    np.testing.assert_allclose(queries.score.numpy()[valid], [q.score for q in expected], rtol=1e-5)


def test_pixel_boxes_are_the_references():
    numpy_heads, heads = scene_heads(2)
    boxes = rtps.pixel_boxes(heads, FCOS_STRIDES, (128, 256))
    expected, has_box = reference.pixel_boxes(numpy_heads, FCOS_STRIDES, 128, 256)
    level = boxes.level.numpy()
    assert (level > 0).mean() > 0.1 and ((level > 0) == has_box).mean() >= 0.999
    cell = FCOS_STRIDES[0]
    ys, xs = np.nonzero((level > 0) & has_box)
    per_pixel = np.stack([b.numpy() for b in boxes.boxes])[level[ys, xs] - 1, :, ys // cell, xs // cell]
    close = np.isclose(per_pixel, expected[ys, xs], atol=1e-4).all(axis=1)
    assert close.mean() >= 0.999  # (the rest: levelness arg-max ties between float32 and float64)


@pytest.mark.parametrize("seed", [3, 4])
def test_instance_masks_are_the_references(seed):
    numpy_heads, heads = scene_heads(seed)
    queries, _, candidates = graph_steps(heads)
    assert bool(candidates.exact)
    expected_queries = reference.query_boxes(numpy_heads, FCOS_STRIDES, 128, 256, THRESHOLDS, PRE_NMS_TOP)
    boxes, has_box = reference.pixel_boxes(numpy_heads, FCOS_STRIDES, 128, 256)
    probability = softmax(upsample_bilinear(numpy_heads["semantic"][0], 4))
    expected = reference.instance_masks(expected_queries, boxes, has_box, probability, LABEL_SET.thing_ids,
                                        THRESHOLDS.mask_sigma)
    graph = masks_per_query(candidates, POOL)[:len(expected)]
    assert sum(m.sum() for m in expected) > 1000
    assert (graph == np.stack(expected)).mean() >= 0.999


@pytest.mark.parametrize("overlap", [0.3, 0.0, 1.0])
def test_paste_is_the_references_on_the_same_masks(overlap):
    _, heads = scene_heads(5)
    # NMS at 0.95 keeps near-duplicate boxes of each object: their masks overlap.
    queries, _, candidates = graph_steps(heads, Thresholds(mask_sigma=0.1, nms_iou=0.95))
    keep, owner, exact = rtps.paste(candidates, queries.valid, torch.tensor(overlap), 8, 16)
    masks = masks_per_query(candidates, POOL)
    expected_owner, pasted = paste_by_confidence(list(masks), overlap)
    assert bool(exact) and (masks.sum(axis=0) > 1).sum() > 100  # masks meet on many pixels
    assert np.flatnonzero(keep.numpy()).tolist() == pasted
    np.testing.assert_array_equal(owner.numpy(), np.where(expected_owner >= 0, expected_owner, POOL))


def _queries(boxes: list[list[float]]) -> Detections:
    n = len(boxes)
    return Detections(torch.tensor(boxes), torch.zeros(n, dtype=torch.int64), torch.linspace(0.9, 0.5, n),
                      torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.int64), torch.tensor(True),
                      torch.tensor(0))


@pytest.mark.parametrize("reaching,exact", [(rtps.CELL_CANDIDATES, True), (rtps.CELL_CANDIDATES + 1, False)])
def test_a_block_with_more_reaching_queries_than_candidates_is_not_exact(reaching, exact):
    # Every pixel's box is (0, 0, 16, 16); queries shifted by a pixel each all reach the blocks.
    level = torch.ones(16, 16, dtype=torch.int64)
    box = torch.tensor([0.0, 0.0, 16.0, 16.0])[:, None, None]
    boxes = rtps.PixelBoxes(level, [box.expand(4, 2, 2)], [box])  # one level of stride 16 on 8 x 8 blocks
    queries = _queries([[float(i), 0.0, 16.0 + i, 16.0] for i in range(reaching)])
    candidates = rtps.instance_masks(queries, boxes, torch.ones(1, 16, 16), torch.tensor(0.3), 8)
    assert bool(candidates.exact) == exact
    assert candidates.query[0].tolist() == list(range(rtps.CELL_CANDIDATES))  # the best ones, best first


def test_more_blocks_where_masks_meet_than_the_paste_state_holds_is_not_exact(monkeypatch):
    masks = torch.ones(4, 2, 64, dtype=torch.bool)  # both candidates cover all four 8 x 8 blocks
    query = torch.tensor([[0, 1]] * 4)  # (cells, C)
    slot = query.T  # (P, cells)
    candidates = rtps.CandidateMasks(query, slot, masks, torch.tensor(True))
    valid = torch.ones(2, dtype=torch.bool)
    keep, _, exact = rtps.paste(candidates, valid, torch.tensor(0.5), 8, 2)
    assert bool(exact) and keep.tolist() == [True, False]
    monkeypatch.setattr(rtps, "OVERLAP_BLOCKS", 3)
    _, _, exact = rtps.paste(candidates, valid, torch.tensor(0.5), 8, 2)
    assert not bool(exact)


def test_queries_beyond_k_void_their_pixels():
    objects = [(CAR, 32, 72, 79, 111), (CAR, 96, 68, 131, 111), (PERSON, 160, 48, 179, 103)]
    scene = make_scene(128, 256, [(4, 31), (2, 63), (0, 127)], objects)
    heads = rtps_heads(scene, np.random.default_rng(3), noise=0.05)
    # The objects' lower halves read road by a small margin: their pixels are stuff unless a mask takes them.
    semantic = heads["semantic"][0]
    for class_id, x1, y1, x2, y2 in objects:
        rows, cols = slice((y1 + y2) // 8, (y2 + 1) // 4), slice(x1 // 4, (x2 + 1) // 4)
        semantic[0, rows, cols] = semantic[class_id, rows, cols] + 1.0
    loose = Thresholds(mask_sigma=0.1, min_stuff_area=64)
    full, _ = run_method("rtps", heads, loose, k=3)
    capped, expected = run_method("rtps", heads, loose, k=2)  # (queries beyond QUERY_POOL * K would not be void)
    assert full.candidates_dropped == 0 and capped.candidates_dropped == 1
    assert_same_result(capped, expected)
    kept = [int(i) for i in np.unique(capped.panoptic) if i // DIVISOR in (CAR, PERSON)]
    assert len(kept) == 2
    lost = np.isin(full.panoptic // DIVISOR, [CAR, PERSON]) & ~np.isin(capped.panoptic, kept)
    assert lost.sum() > 500 and (capped.panoptic[lost] == -1).all()  # void, never stuff or a kept instance


def test_block_rows_read_each_blocks_own_entry():
    image = torch.arange(16 * 24).reshape(16, 24)
    blocks = to_cells(image, 8)  # 2 x 3 blocks of 8 x 8
    assert blocks.shape == (6, 64)
    np.testing.assert_array_equal(blocks[4].numpy(), image[8:16, 8:16].reshape(-1).numpy())  # row 1, column 1
    np.testing.assert_array_equal(from_cells(blocks, 2, 8).numpy(), image.numpy())
    # Two maps stacked as rows map * cells + block: block b reads map 1 (negated) where b is even.
    table = to_cells(torch.stack([image, -image]), 8).reshape(-1, 64)
    which = torch.tensor([[1], [0], [1], [0], [1], [0]])
    expected = torch.where(torch.arange(6)[:, None] % 2 == 0, -blocks, blocks)
    np.testing.assert_array_equal(table[rtps.block_rows(which)][:, 0].numpy(), expected.numpy())
