"""STQ and identity switches: the fast accumulator equals the literal reference on random sequences, and both
give the hand-computed values of a swap, a split and a re-identified object."""

import math

import numpy as np
import pytest

from panoptic_ros.classes import VOID_CLASS
from panoptic_ros.tracking.stq import STQAccumulator, split_id_map
from panoptic_ros.tracking.stq_reference import stq_reference

THING = (False, False, True, True)  # classes 0, 1 stuff; 2, 3 things


def both(frames, thing=THING):
    accumulator = STQAccumulator(thing)
    for frame in frames:
        accumulator.add(*frame)
    return accumulator.result(), stq_reference(frames, thing)


def assert_same(fast, reference):
    for name in ("stq", "aq", "sq"):
        assert getattr(fast, name) == pytest.approx(getattr(reference, name), abs=1e-12), name
    assert fast.aq_per_class.keys() == reference.aq_per_class.keys()
    for c in fast.aq_per_class:
        assert fast.aq_per_class[c] == pytest.approx(reference.aq_per_class[c], abs=1e-12)
    assert fast.iou_per_class == pytest.approx(reference.iou_per_class, abs=1e-12)
    assert fast.switches_per_frame == reference.switches_per_frame
    assert (fast.gt_tracks, fast.predicted_tracks, fast.num_frames) == \
        (reference.gt_tracks, reference.predicted_tracks, reference.num_frames)


@pytest.mark.parametrize("seed", range(8))
def test_fast_equals_reference_on_random_sequences(seed):
    rng = np.random.default_rng(seed)
    frames = []
    gt_classes = rng.integers(0, 4, size=(6, 9))
    for _ in range(int(rng.integers(1, 6))):
        # ground truth drifts a little per frame; the prediction is ground truth with noise, id swaps and void
        gt_classes = np.where(rng.random((6, 9)) < 0.2, rng.integers(0, 4, size=(6, 9)), gt_classes)
        gt_classes = np.where(rng.random((6, 9)) < 0.05, VOID_CLASS, gt_classes)
        gt_ids = np.where(np.isin(gt_classes, (2, 3)), rng.integers(0, 4, size=(6, 9)), 0)  # 0: crowd
        predicted_classes = np.where(rng.random((6, 9)) < 0.25, rng.integers(0, 4, size=(6, 9)), gt_classes)
        predicted_classes = np.where(rng.random((6, 9)) < 0.05, VOID_CLASS, predicted_classes)
        predicted_ids = np.where(rng.random((6, 9)) < 0.3, rng.integers(0, 5, size=(6, 9)), gt_ids + 10)
        frames.append((gt_classes, gt_ids, predicted_classes, predicted_ids))
    assert_same(*both(frames))


def test_fast_equals_reference_when_tracks_are_large_and_long():
    rng = np.random.default_rng(42)
    frames = []
    for t in range(12):
        gt_classes = np.zeros((8, 12), dtype=np.int64)
        gt_classes[2:6, t % 12:] = 2
        gt_ids = np.where(gt_classes == 2, 1 + (np.arange(12) >= 6), 0)
        predicted_ids = np.where(gt_classes == 2, 7 + (t > 5) + gt_ids, 0)
        frames.append((gt_classes, gt_ids, np.where(rng.random((8, 12)) < 0.1, 3, gt_classes), predicted_ids))
    assert_same(*both(frames))


def scene(tracks: dict[int, int], n: int = 4):
    """One frame: a stuff background with up to 3 objects of class 2 in fixed places; tracks maps gt id ->
    predicted id (missing: the object is not visible in this frame)."""
    gt_classes = np.zeros((2, 3 * n), dtype=np.int64)
    gt_ids = np.zeros_like(gt_classes)
    predicted_ids = np.zeros_like(gt_classes)
    for gt, predicted in tracks.items():
        gt_classes[:, (gt - 1) * n:gt * n] = 2
        gt_ids[:, (gt - 1) * n:gt * n] = gt
        predicted_ids[:, (gt - 1) * n:gt * n] = predicted
    return gt_classes, gt_ids, gt_classes.copy(), predicted_ids


def test_perfect_tracking():
    fast, reference = both([scene({1: 5, 2: 6}), scene({1: 5, 2: 6}), scene({2: 6})])
    assert_same(fast, reference)
    assert fast.stq == fast.aq == fast.sq == 1.0 and fast.id_switches == 0


def test_a_swap():
    # two objects exchange their predicted ids in the second frame: each gt track meets two predicted tracks
    # half-way, IoU 1/3 each (|p & g| = n, |p| = |g| = 2n): AQ = (n/3 + n/3) / 2n = 1/3 per track
    fast, reference = both([scene({1: 5, 2: 6}), scene({1: 6, 2: 5})])
    assert_same(fast, reference)
    assert fast.aq == pytest.approx(1 / 3) and fast.sq == 1.0 and fast.stq == pytest.approx(math.sqrt(1 / 3))
    assert fast.switches_per_frame == [0, 2]


def test_a_split():
    # one object over 4 frames, predicted as one track for 2 frames, then another: IoU 1/2 with each, AQ 1/2
    fast, reference = both([scene({1: 5}), scene({1: 5}), scene({1: 6}), scene({1: 6})])
    assert_same(fast, reference)
    assert fast.aq == pytest.approx(0.5) and fast.switches_per_frame == [0, 0, 1, 0]
    assert fast.aq_per_class == {2: pytest.approx(0.5)} and fast.predicted_tracks == 2


def test_a_re_identified_object():
    frames = [scene({1: 5, 2: 6}), scene({1: 5, 2: 6}), scene({2: 6})]  # object 1 hidden in the third frame
    kept, _ = both([*frames, scene({1: 5, 2: 6})])
    assert kept.aq == 1.0 and kept.id_switches == 0  # re-identified: its old id again
    renamed, reference = both([*frames, scene({1: 7, 2: 6})])
    assert_same(renamed, reference)
    # a new id after the occlusion: IoU 2/3 with the first (2n of 3n), 1/3 with the new one (n of 3n):
    # AQ(1) = (2n * 2/3 + n * 1/3) / 3n = 5/9; object 2 is perfect
    assert renamed.aq == pytest.approx((5 / 9 + 1) / 2) and renamed.switches_per_frame == [0, 0, 0, 1]


def test_crowd_and_void_are_left_out():
    gt_classes, gt_ids, predicted_classes, predicted_ids = scene({1: 5, 2: 6})
    gt_ids[:, 4:8] = 0  # object 2 is a crowd region
    gt_classes[0, 11] = VOID_CLASS  # on the background
    predicted_ids[:, 4:8] = 9  # whatever is predicted on crowd does not count
    fast, reference = both([(gt_classes, gt_ids, predicted_classes, predicted_ids)])
    assert_same(fast, reference)
    assert fast.aq == 1.0 and fast.gt_tracks == 1 and fast.predicted_tracks == 1


def test_no_ground_truth_tracks_and_bad_input():
    fast, reference = both([(np.zeros((2, 2), int), np.zeros((2, 2), int), np.zeros((2, 2), int),
                             np.zeros((2, 2), int))])
    assert_same(fast, reference)
    assert fast.aq == 0.0 and fast.sq == 1.0 and fast.aq_per_class == {}
    accumulator = STQAccumulator(THING)
    with pytest.raises(ValueError, match="one size"):
        accumulator.add(np.zeros((2, 2), int), np.zeros((2, 3), int), np.zeros((2, 2), int), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="class 7"):
        accumulator.add(np.full((2, 2), 7), np.zeros((2, 2), int), np.zeros((2, 2), int), np.zeros((2, 2), int))


def test_split_id_map():
    classes, instances = split_id_map(np.array([[-1, 0, 2003], [1000, 3001, 2999]]), 1000)
    assert classes.tolist() == [[VOID_CLASS, 0, 2], [1, 3, 2]]
    assert instances.tolist() == [[0, 0, 3], [0, 1, 999]]
