"""The shared back half (PanopticAssembler) and the static building blocks, against literal versions."""

import numpy as np
import pytest
import torch
from fusion_cases import chain_keep, iou_matrix, nms_chain, paste_chain

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.fusion.core import PanopticAssembler, Segments, count_per_row, label_digits
from panoptic_ros.fusion.reference.assemble import Thing, assemble
from panoptic_ros.fusion.reference.common import greedy_nms as nms_reference
from panoptic_ros.fusion.reference.common import paste_by_confidence as paste_reference
from panoptic_ros.fusion.static_ops import (
    FLOAT_EXACT_INTEGERS,
    NMS_SWEEPS,
    block_upsample,
    first_true,
    first_true_positions,
    greedy_nms,
    paste_groups_in_order,
    top_candidates,
)
from panoptic_ros.pipeline_io import COL, PanopticResult

LS = SYNTHETIC
STUFF = len(LS.stuff_ids)  # road, sidewalk, building, vegetation, sky = classes 0..4
PERSON, CAR = 5, 6


def assemble_graph(labels, thing_class, thing_score, thing_valid, max_instances=4, min_stuff_area=0.0, divisor=1000,
                   stride=4):
    kc = len(thing_class)
    segments = Segments(torch.tensor(labels), torch.tensor(thing_class), torch.tensor(thing_score, dtype=torch.float32),
                        torch.tensor(thing_valid), torch.tensor(True), torch.tensor(0))
    out = PanopticAssembler(LS, kc, max_instances, stride)(segments, torch.tensor(float(min_stuff_area)),
                                                           torch.tensor(divisor, dtype=torch.int32))
    return PanopticResult(*(t.numpy() for t in out[:3]), int(out[3]))


def test_table_rows_ids_and_maps_follow_the_contract():
    kc = 3
    road, sky, void = kc + 0, kc + 4, kc + STUFF
    labels = np.array([[sky, sky, 1, 1],
                       [0, 0, 1, 1],
                       [road, road, road, void]])
    result = assemble_graph(labels, [PERSON, CAR, CAR], [0.5, 0.9, 0.7], [True, True, True])
    # Things by descending score (candidate 1, then 0; candidate 2 has no cells), then stuff by class id.
    rows = result.valid_instances
    assert result.num_instances == 4 and result.instances.shape == (4 + STUFF, 11)
    assert rows[:, COL["id"]].tolist() == [6001, 5001, 0, 4000]  # numbered within each class
    assert rows[:, COL["score"]].tolist() == pytest.approx([0.9, 0.5, 1.0, 1.0])
    assert not result.instances[4:].any()  # rows after num_instances are zeros
    # Maps at input resolution (4x4 blocks), void = -1 / 255.
    assert result.panoptic.shape == (12, 16) and result.panoptic.dtype == np.int32
    assert result.panoptic[0, 8] == 6001 and result.panoptic[4, 0] == 5001 and result.panoptic[0, 0] == 4000
    assert result.panoptic[11, 15] == -1 and result.semantic[11, 15] == 255 and result.semantic[4, 0] == PERSON
    # The car's cells (rows 0-1, columns 2-3) are pixels x 8..15, y 0..7.
    car = rows[0]
    assert [car[COL[c]] for c in ("x1", "y1", "x2", "y2", "area")] == [8, 0, 15, 7, 64]
    assert (car[COL["centroid_x"]], car[COL["centroid_y"]]) == (11.5, 3.5)


def test_small_stuff_becomes_void_and_things_beyond_k_are_dropped():
    kc = 3
    labels = np.array([[0, 1, 2, kc + 1]])  # three single-cell things, one sidewalk cell (16 px)
    result = assemble_graph(labels, [CAR, CAR, PERSON], [0.3, 0.8, 0.5], [True, True, True], max_instances=2,
                            min_stuff_area=17)
    assert result.valid_instances[:, COL["id"]].tolist() == [6001, 5001]
    assert result.panoptic[0, 0] == -1  # the lowest-scored thing did not fit in K = 2 rows
    assert result.panoptic[0, 12] == -1 and result.semantic[0, 12] == 255  # 16 px < 17
    kept_stuff = assemble_graph(labels, [CAR, CAR, PERSON], [0.3, 0.8, 0.5], [True] * 3, min_stuff_area=16)
    assert kept_stuff.panoptic[0, 12] == 1000


def test_equal_scores_keep_candidate_order_and_label_divisor_is_an_input():
    result = assemble_graph(np.array([[1, 0]]), [CAR, CAR], [0.5, 0.5], [True, True], divisor=256)
    assert result.valid_instances[:, COL["id"]].tolist() == [6 * 256 + 1, 6 * 256 + 2]
    assert result.panoptic[0, 4] == 6 * 256 + 1


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("stride", [1, 4])
def test_assembler_equals_reference_on_random_label_maps(seed, stride):
    rng = np.random.default_rng(seed)
    kc, k = 6, 4
    labels = rng.integers(0, kc + STUFF + 1, size=(8, 12))
    classes = rng.choice(LS.thing_ids, size=kc)
    scores = rng.choice([0.2, 0.5, 0.9], size=kc).astype(np.float32)  # ties on purpose
    valid = rng.random(kc) < 0.8
    result = assemble_graph(labels, classes, scores, valid, max_instances=k, min_stuff_area=10 * stride**2,
                            stride=stride)
    pixels = block_upsample(torch.tensor(labels), stride).numpy()
    present = [n for n in range(kc) if valid[n] and (labels == n).any()]
    ranked = sorted(present, key=lambda n: (-scores[n], n))[:k]  # the reference takes the capped things
    things = [Thing(int(classes[n]), float(scores[n]), pixels == n) for n in sorted(ranked)]
    stuff = np.full(pixels.shape, -1)
    for s, class_id in enumerate(LS.stuff_ids):
        stuff[pixels == kc + s] = class_id
    expected = assemble(things, stuff, LS, 10 * stride**2, 1000, k, 0).result
    np.testing.assert_array_equal(result.panoptic, expected.panoptic)
    np.testing.assert_array_equal(result.semantic, expected.semantic)
    assert result.num_instances == expected.num_instances
    np.testing.assert_allclose(result.instances, expected.instances, atol=1e-4)


def bincounts(labels: torch.Tensor, num_labels: int) -> np.ndarray:
    """(num_labels, h): NumPy's histogram of every row."""
    return np.stack([np.bincount(row, minlength=num_labels) for row in labels.numpy()], axis=1)


def test_label_digits_count_every_row_and_every_column():
    labels = torch.tensor([[0, 2, 2, 10], [10, 10, 1, 0]])
    digits = label_digits(labels, 11)
    np.testing.assert_array_equal(count_per_row(digits).numpy(), bincounts(labels, 11))
    np.testing.assert_array_equal(count_per_row(digits.transposed()).numpy(), bincounts(labels.T, 11))


@pytest.mark.parametrize("width", [2047, 2048, 4096])
def test_label_digits_count_a_full_row_of_every_digit_place(width):
    # Rows as wide as the packing allows, each all one label: the largest count (width) in every
    # place of the packed lo digits (113 labels: every hi digit and every lo place used).
    rng = np.random.default_rng(width)
    labels = torch.from_numpy(rng.integers(0, 113, size=(6, width))).to(torch.int32)
    labels[:3] = torch.tensor([112, 111, 110], dtype=torch.int32)[:, None]
    counts = count_per_row(label_digits(labels, 113)).numpy()
    np.testing.assert_array_equal(counts, bincounts(labels, 113))
    assert counts[112, 0] == counts[111, 1] == counts[110, 2] == width


@pytest.mark.parametrize("height", [2047, 2048])
def test_label_digits_count_a_full_column_of_a_tall_map(height):
    # The columns are counted from the rows' digits transposed: their places must hold the height.
    rng = np.random.default_rng(height)
    labels = torch.from_numpy(rng.integers(0, 113, size=(height, 6))).to(torch.int32)
    labels[:, 0] = 112
    counts = count_per_row(label_digits(labels, 113).transposed()).numpy()
    np.testing.assert_array_equal(counts, bincounts(labels.T, 113))
    assert counts[112, 0] == height


def test_block_upsample_repeats_cells_as_blocks():
    x = torch.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(block_upsample(x, 2).numpy(), np.kron(x.numpy(), np.ones((2, 2), dtype=int)))


def test_top_candidates_orders_ties_by_index_and_invalid_last():
    scores = torch.tensor([0.5, 0.9, 0.5, 0.7, 0.95])
    valid = torch.tensor([True, True, True, True, False])
    index, score, ok = top_candidates(scores, valid, 4)
    assert index.tolist() == [1, 3, 0, 2] and ok.all()
    index, _, ok = top_candidates(scores, valid, 5)
    assert index.tolist()[:4] == [1, 3, 0, 2] and ok.tolist() == [True] * 4 + [False]


@pytest.mark.parametrize("seed", range(5))
def test_top_candidates_are_exactly_the_best_by_score_then_index(seed):
    rng = np.random.default_rng(seed)
    scores = rng.choice([0.1, 0.3, 0.3000001, 0.7, 1.0], size=300).astype(np.float32)  # many ties, near-ties
    valid = rng.random(300) < 0.7
    index, _, ok = top_candidates(torch.tensor(scores), torch.tensor(valid), 50)
    expected = sorted(np.flatnonzero(valid), key=lambda n: (-scores[n], n))[:50]
    assert index.tolist() == expected and ok.all()


def test_index_ranges_stay_exact_in_float32():
    assert float(np.float32(FLOAT_EXACT_INTEGERS - 1)) == FLOAT_EXACT_INTEGERS - 1


def overlap_graph(overlap: np.ndarray, valid: np.ndarray, threshold: float, sweeps: int = NMS_SWEEPS):
    keep, converged = greedy_nms(torch.tensor(overlap, dtype=torch.float32), torch.tensor(valid),
                                 torch.tensor(threshold), sweeps)
    return np.flatnonzero(keep.numpy()).tolist(), bool(converged)


def test_greedy_nms_keeps_a_box_whose_only_suppressor_was_suppressed():
    # 0 suppresses 1, 1 would suppress 2: greedy NMS keeps 0 and 2 (one-pass "fast NMS" would drop 2).
    overlap = np.array([[0, 0.8, 0.1], [0.8, 0, 0.8], [0.1, 0.8, 0]])
    assert overlap_graph(overlap, np.ones(3, bool), 0.5) == ([0, 2], True)


@pytest.mark.parametrize("length", [10, 16, 32])
def test_greedy_nms_is_exact_on_adversarial_chains(length):
    boxes, _ = nms_chain(length)
    kept, converged = overlap_graph(iou_matrix(boxes), np.ones(length, bool), 0.5)
    assert kept == chain_keep(length) and converged
    assert kept[:5] == [0, 2, 4, 6, 8]


def test_greedy_nms_says_when_its_sweeps_do_not_reach_the_fixed_point():
    boxes, _ = nms_chain(12)
    kept, converged = overlap_graph(iou_matrix(boxes), np.ones(12, bool), 0.5, sweeps=6)
    assert kept != chain_keep(12) and not converged
    assert overlap_graph(iou_matrix(boxes), np.ones(12, bool), 0.5, sweeps=12)[1]


def test_a_pair_at_exactly_nms_iou_is_not_suppressed():
    overlap = np.array([[0, 0.5], [0.5, 0]], dtype=np.float32)
    assert overlap_graph(overlap, np.ones(2, bool), 0.5)[0] == [0, 1]
    assert overlap_graph(overlap, np.ones(2, bool), float(np.nextafter(np.float32(0.5), np.float32(0))))[0] == [0]


@pytest.mark.parametrize("seed", range(10))
def test_greedy_nms_equals_sequential_greedy(seed):
    rng = np.random.default_rng(seed)
    m = 40
    x1, y1 = rng.uniform(0, 60, size=(2, m))
    boxes = np.stack([x1, y1, x1 + rng.uniform(5, 30, m), y1 + rng.uniform(5, 30, m)], axis=1)
    scores = np.sort(rng.random(m))[::-1]
    classes = rng.integers(0, 2, size=m)
    overlap = iou_matrix(boxes) * (classes[:, None] == classes[None, :])
    kept, converged = overlap_graph(overlap, np.ones(m, bool), 0.4)
    assert kept == sorted(nms_reference(boxes, scores, classes, 0.4)) and converged


def paste_graph(masks: list[np.ndarray], valid: np.ndarray, threshold: float):
    """The graph's paste with every pixel its own group: (kept indices, owner map with -1 for none)."""
    k = len(masks)
    flat = torch.tensor(np.stack(masks).reshape(k, -1))
    keep = paste_groups_in_order(flat.T, torch.ones(flat.shape[1]), flat.sum(dim=1).float(), torch.tensor(valid),
                                 torch.tensor(threshold))
    owner = first_true(flat & keep[:, None]).numpy()
    return np.flatnonzero(keep.numpy()).tolist(), np.where(owner < k, owner, -1).reshape(masks[0].shape)


@pytest.mark.parametrize("length", [8, 16, 32])
def test_pasting_is_exact_on_adversarial_chains(length):
    masks = paste_chain(length)
    kept, owner = paste_graph(masks, np.ones(length, bool), 0.3)
    expected_owner, pasted = paste_reference(masks, 0.3)
    assert kept == pasted == chain_keep(length)
    np.testing.assert_array_equal(owner, expected_owner)


def test_a_mask_taken_exactly_at_the_overlap_threshold_is_kept():
    first, second = np.zeros((1, 10), bool), np.zeros((1, 10), bool)
    first[0, :3], second[0, :] = True, True  # 3 of the second's 10 pixels are taken: exactly 0.3
    assert paste_graph([first, second], np.ones(2, bool), 0.3)[0] == [0, 1]
    assert paste_graph([first, second], np.ones(2, bool), 0.29)[0] == [0]


def overlapping_masks(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """30 dense, overlapping 24 x 24 masks (long chains of drop decisions) and which are valid."""
    rng = np.random.default_rng(seed)
    k, h, w = 30, 24, 24
    masks = np.zeros((k, h, w), dtype=bool)
    for n in range(k):
        y, x = rng.integers(0, 20, size=2)
        masks[n, y:y + rng.integers(2, 10), x:x + rng.integers(2, 10)] = True
    return masks, rng.random(k) < 0.9


@pytest.mark.parametrize("seed", range(10))
def test_paste_groups_in_order_equals_sequential_pasting(seed):
    masks, valid = overlapping_masks(seed)
    kept, owner = paste_graph(list(masks), valid, 0.3)
    expected_owner, pasted = paste_reference([m & v for m, v in zip(masks, valid, strict=True)], 0.3)
    assert kept == pasted
    np.testing.assert_array_equal(owner, expected_owner)


def test_first_true_positions_picks_the_first_trues_in_chunks():
    flags = torch.zeros(50, dtype=torch.bool)
    flags[[3, 7, 8, 20, 31, 49]] = True
    index, found = first_true_positions(flags, 2, 2)  # 4 slots: the first 4, lowest first
    assert index[found].tolist() == [3, 7, 8, 20] and found.all()
    index, found = first_true_positions(flags, 4, 2)  # 8 slots, 6 trues: the last 2 not found
    assert index[found].tolist() == [3, 7, 8, 20, 31, 49] and found.tolist() == [True] * 6 + [False] * 2
