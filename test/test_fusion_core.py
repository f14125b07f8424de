"""The shared back half (PanopticAssembler) and the static building blocks, against literal versions."""

import numpy as np
import pytest
import torch

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.fusion.core import PanopticAssembler, Segments
from panoptic_ros.fusion.reference.assemble import Thing, assemble_reference
from panoptic_ros.fusion.reference.common import paste_by_confidence as paste_reference
from panoptic_ros.fusion.static_ops import block_upsample, greedy_nms, paste_by_confidence, top_candidates
from panoptic_ros.pipeline_io import COL, PanopticResult

LS = SYNTHETIC
STUFF = len(LS.stuff_ids)  # road, sidewalk, building, vegetation, sky = classes 0..4
PERSON, CAR = 5, 6


def assemble(labels, thing_class, thing_score, thing_valid, max_instances=4, min_stuff_area=0.0, divisor=1000):
    kc = len(thing_class)
    segments = Segments(torch.tensor(labels), torch.tensor(thing_class), torch.tensor(thing_score, dtype=torch.float32),
                        torch.tensor(thing_valid), torch.tensor(True), torch.tensor(0))
    out = PanopticAssembler(LS, kc, max_instances)(segments, torch.tensor(float(min_stuff_area)),
                                                   torch.tensor(divisor, dtype=torch.int32))
    return PanopticResult(*(t.numpy() for t in out[:3]), int(out[3]))


def test_table_rows_ids_and_maps_follow_the_contract():
    kc = 3
    road, sky, void = kc + 0, kc + 4, kc + STUFF
    labels = np.array([[sky, sky, 1, 1],
                       [0, 0, 1, 1],
                       [road, road, road, void]])
    result = assemble(labels, [PERSON, CAR, CAR], [0.5, 0.9, 0.7], [True, True, True])
    # Things by descending score (candidate 1, then 0; candidate 2 has no cells), then stuff by class id.
    rows = result.valid_instances
    assert result.num_instances == 4 and result.instances.shape == (4 + STUFF, 11)
    assert rows[:, COL["id"]].tolist() == [6001, 5002, 0, 4000]
    assert rows[:, COL["score"]].tolist() == pytest.approx([0.9, 0.5, 1.0, 1.0])
    assert not result.instances[4:].any()  # rows after num_instances are zeros
    # Maps at input resolution (4x4 blocks), void = -1 / 255.
    assert result.panoptic.shape == (12, 16) and result.panoptic.dtype == np.int32
    assert result.panoptic[0, 8] == 6001 and result.panoptic[4, 0] == 5002 and result.panoptic[0, 0] == 4000
    assert result.panoptic[11, 15] == -1 and result.semantic[11, 15] == 255 and result.semantic[4, 0] == PERSON
    # The car's cells (rows 0-1, columns 2-3) are pixels x 8..15, y 0..7.
    car = rows[0]
    assert [car[COL[c]] for c in ("x1", "y1", "x2", "y2", "area")] == [8, 0, 15, 7, 64]
    assert (car[COL["centroid_x"]], car[COL["centroid_y"]]) == (11.5, 3.5)


def test_small_stuff_becomes_void_and_things_beyond_k_are_dropped():
    kc = 3
    labels = np.array([[0, 1, 2, kc + 1]])  # three single-cell things, one sidewalk cell (16 px)
    result = assemble(labels, [CAR, CAR, PERSON], [0.3, 0.8, 0.5], [True, True, True], max_instances=2,
                      min_stuff_area=17)
    assert result.valid_instances[:, COL["id"]].tolist() == [6001, 5002]
    assert result.panoptic[0, 0] == -1  # the lowest-scored thing did not fit in K = 2 rows
    assert result.panoptic[0, 12] == -1 and result.semantic[0, 12] == 255  # 16 px < 17
    assert assemble(labels, [CAR, CAR, PERSON], [0.3, 0.8, 0.5], [True] * 3, min_stuff_area=16).panoptic[0, 12] == 1000


def test_equal_scores_keep_candidate_order_and_label_divisor_is_an_input():
    result = assemble(np.array([[1, 0]]), [CAR, CAR], [0.5, 0.5], [True, True], divisor=256)
    assert result.valid_instances[:, COL["id"]].tolist() == [6 * 256 + 1, 6 * 256 + 2]
    assert result.panoptic[0, 4] == 6 * 256 + 1


@pytest.mark.parametrize("seed", range(5))
def test_assembler_equals_reference_on_random_label_maps(seed):
    rng = np.random.default_rng(seed)
    kc = 6
    labels = rng.integers(0, kc + STUFF + 1, size=(8, 12))
    classes = rng.choice(LS.thing_ids, size=kc)
    scores = rng.choice([0.2, 0.5, 0.9], size=kc).astype(np.float32)  # ties on purpose
    valid = rng.random(kc) < 0.8
    result = assemble(labels, classes, scores, valid, max_instances=4, min_stuff_area=160)
    things = [Thing(int(c), float(s), (labels == k) & v)
              for k, (c, s, v) in enumerate(zip(classes, scores, valid, strict=True))]
    stuff = np.full(labels.shape, -1)
    for s, class_id in enumerate(LS.stuff_ids):
        stuff[labels == kc + s] = class_id
    expected = assemble_reference(things, stuff, LS, 160, 1000, 4)
    np.testing.assert_array_equal(result.panoptic, expected.panoptic)
    np.testing.assert_array_equal(result.semantic, expected.semantic)
    assert result.num_instances == expected.num_instances
    np.testing.assert_allclose(result.instances, expected.instances, atol=1e-4)


def test_block_upsample_repeats_cells_as_blocks():
    x = torch.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(block_upsample(x, 2).numpy(), np.kron(x.numpy(), np.ones((2, 2), dtype=int)))


def test_top_candidates_orders_ties_by_index_and_invalid_last():
    scores = torch.tensor([0.5, 0.9, 0.5, 0.7, 0.95])
    valid = torch.tensor([True, True, True, True, False])
    index, score, ok = top_candidates(scores, valid, 4)
    assert index.tolist() == [1, 3, 0, 2] and ok.all()


def greedy_reference(overlap: np.ndarray, valid: np.ndarray, threshold: float) -> np.ndarray:
    kept = []
    for j in range(len(valid)):
        if valid[j] and not any(overlap[i, j] > threshold for i in kept):
            kept.append(j)
    return np.isin(np.arange(len(valid)), kept)


def test_greedy_nms_keeps_a_box_whose_only_suppressor_was_suppressed():
    # 0 suppresses 1, 1 would suppress 2: greedy NMS keeps 0 and 2 (one-pass "fast NMS" would drop 2).
    overlap = torch.tensor([[0, 0.8, 0.1], [0.8, 0, 0.8], [0.1, 0.8, 0]])
    keep = greedy_nms(overlap, torch.tensor([True, True, True]), torch.tensor(0.5))
    assert keep.tolist() == [True, False, True]


@pytest.mark.parametrize("seed", range(10))
def test_greedy_nms_equals_sequential_greedy(seed):
    rng = np.random.default_rng(seed)
    m = 40
    overlap = rng.random((m, m)) * (rng.random((m, m)) < 0.15)
    overlap = np.maximum(overlap, overlap.T)
    valid = rng.random(m) < 0.9
    keep = greedy_nms(torch.tensor(overlap, dtype=torch.float32), torch.tensor(valid), torch.tensor(0.4))
    np.testing.assert_array_equal(keep.numpy(), greedy_reference(overlap, valid, 0.4))


@pytest.mark.parametrize("seed", range(10))
def test_paste_by_confidence_equals_sequential_pasting(seed):
    rng = np.random.default_rng(seed)  # 30 dense, overlapping masks: long chains of drop decisions
    k, h, w = 30, 24, 24
    masks = np.zeros((k, h, w), dtype=bool)
    for n in range(k):
        y, x = rng.integers(0, 20, size=2)
        masks[n, y:y + rng.integers(2, 10), x:x + rng.integers(2, 10)] = True
    valid = rng.random(k) < 0.9
    keep, owner = paste_by_confidence(torch.tensor(masks.reshape(k, -1)), torch.tensor(valid), torch.tensor(0.3))
    expected_owner, pasted = paste_reference([m & v for m, v in zip(masks, valid, strict=True)], 0.3)
    assert np.flatnonzero(keep.numpy()).tolist() == pasted
    np.testing.assert_array_equal(np.where(owner.numpy() < k, owner.numpy(), -1), expected_owner.reshape(-1))
