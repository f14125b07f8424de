"""PQ / SQ / RQ / mIoU: hand-computed cases for each matching rule, properties, and equality with a
literal segment-by-segment re-implementation of panopticapi's `pq_compute` (and with the real
Cityscapes evaluator, cityscapesscripts, when it is installed)."""

from __future__ import annotations

import numpy as np
import pytest

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.data.formats import PanopticAnnotation, Segment, from_id_map
from panoptic_ros.evaluation.pq import Category, PQAccumulator, categories_from_coco

# COCO-like categories with gaps in the ids; 2 and 9 are things.
COCO_CATEGORIES = [
    {"id": 1, "name": "road", "isthing": 0},
    {"id": 2, "name": "person", "isthing": 1},
    {"id": 5, "name": "sky", "isthing": 0},
    {"id": 9, "name": "car", "isthing": 1},
    {"id": 11, "name": "tree", "isthing": 0},
]
ROAD, PERSON, SKY, CAR, TREE = 1, 2, 5, 9, 11
NOT_EVALUATED = 40  # a category the ground truth may use but the evaluation does not list


# --------------------------------------------------------------------------------------------
# The reference: panopticapi's pq_compute_single_core and pq_average, literally, loop by loop.


def reference_frame_stats(gt_ids, gt_segments, pred_ids, pred_segments, stats):
    """Add one frame to `stats` {category: [iou, tp, fp, fn]} the way panopticapi does.

    gt_segments / pred_segments: lists of dicts (id, category_id, iscrowd) in listing order.
    """
    gt_by_id = {s["id"]: dict(s) for s in gt_segments}
    pred_by_id = {s["id"]: dict(s) for s in pred_segments}
    # GT areas come from the JSON in panopticapi; here, from the map (the JSON writer's own areas).
    for s in gt_by_id.values():
        s["area"] = int((gt_ids == s["id"]).sum())
    for label, count in zip(*np.unique(pred_ids, return_counts=True), strict=True):
        if label != 0:
            pred_by_id[int(label)]["area"] = int(count)

    overlap = {}
    for g, p in zip(gt_ids.ravel().tolist(), pred_ids.ravel().tolist(), strict=True):
        overlap[(g, p)] = overlap.get((g, p), 0) + 1

    def stat(category):
        return stats.setdefault(category, [0.0, 0, 0, 0])

    gt_matched, pred_matched = set(), set()
    for (g, p), intersection in overlap.items():
        if g not in gt_by_id or p not in pred_by_id:
            continue
        if gt_by_id[g]["iscrowd"] == 1 or gt_by_id[g]["category_id"] != pred_by_id[p]["category_id"]:
            continue
        union = pred_by_id[p]["area"] + gt_by_id[g]["area"] - intersection - overlap.get((0, p), 0)
        iou = intersection / union
        if iou > 0.5:
            stat(gt_by_id[g]["category_id"])[0] += iou
            stat(gt_by_id[g]["category_id"])[1] += 1
            gt_matched.add(g)
            pred_matched.add(p)

    crowd_of_category = {}
    for g, info in gt_by_id.items():
        if g in gt_matched:
            continue
        if info["iscrowd"] == 1:
            crowd_of_category[info["category_id"]] = g
            continue
        stat(info["category_id"])[3] += 1

    for p, info in pred_by_id.items():
        if p in pred_matched:
            continue
        ignored = overlap.get((0, p), 0)
        if info["category_id"] in crowd_of_category:
            ignored += overlap.get((crowd_of_category[info["category_id"]], p), 0)
        if ignored / info["area"] > 0.5:
            continue
        stat(info["category_id"])[2] += 1


def reference_miou(pairs, categories):
    """Cityscapes' pixel-level IoU, pixel by pixel: rows GT class (void and unlisted skipped), columns
    predicted class or void; IoU = TP / (TP + FP + FN); classes with no TP, FP or FN are left out (0-100)."""
    evaluated = [c["id"] for c in categories]
    confusion = {}
    for gt, pred in pairs:
        for g, p in zip(gt.ids.ravel().tolist(), pred.ids.ravel().tolist(), strict=True):
            if g not in gt.segments or gt.segments[g].category_id not in evaluated:
                continue
            key = (gt.segments[g].category_id, pred.segments[p].category_id if p else "void")
            confusion[key] = confusion.get(key, 0) + 1
    ious = {}
    for c in evaluated:
        tp = confusion.get((c, c), 0)
        fn = sum(n for (g, _), n in confusion.items() if g == c) - tp
        fp = sum(n for (_, p), n in confusion.items() if p == c) - tp
        if tp + fp + fn:
            ious[c] = 100 * tp / (tp + fp + fn)
    return ious


def reference_average(stats, categories, isthing):
    """panopticapi's pq_average, on the 0-1 scale: ({pq, sq, rq, n}, {category: {pq, sq, rq}})."""
    pq = sq = rq = 0.0
    n = 0
    per_class = {}
    for category in categories:
        if isthing is not None and bool(category["isthing"]) != isthing:
            continue
        iou, tp, fp, fn = stats.get(category["id"], [0.0, 0, 0, 0])
        if tp + fp + fn == 0:
            per_class[category["id"]] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
            continue
        n += 1
        per_class[category["id"]] = {"pq": iou / (tp + 0.5 * fp + 0.5 * fn), "sq": iou / tp if tp else 0.0,
                                     "rq": tp / (tp + 0.5 * fp + 0.5 * fn)}
        pq += per_class[category["id"]]["pq"]
        sq += per_class[category["id"]]["sq"]
        rq += per_class[category["id"]]["rq"]
    return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def assert_matches_reference(result, stats, categories, tolerance=1e-9):
    for name, isthing, ours in (("All", None, result.all), ("Things", True, result.things),
                                ("Stuff", False, result.stuff)):
        expected, per_class = reference_average(stats, categories, isthing)
        assert ours.n == expected["n"], name
        for key in ("pq", "sq", "rq"):
            assert getattr(ours, key) == pytest.approx(100 * expected[key], abs=tolerance), (name, key)
    _, per_class = reference_average(stats, categories, None)
    for c in result.per_class:
        iou, tp, fp, fn = stats.get(c.category.id, [0.0, 0, 0, 0])
        assert (c.tp, c.fp, c.fn) == (tp, fp, fn), c.category.name
        if tp + fp + fn:
            for key in ("pq", "sq", "rq"):
                assert getattr(c, key) == pytest.approx(100 * per_class[c.category.id][key], abs=tolerance)
        else:
            assert c.pq is None and c.sq is None and c.rq is None


# --------------------------------------------------------------------------------------------
# Random COCO-layout frames with crowd, void, unlisted ids and segments of other categories.


def random_frame(rng: np.random.Generator, height: int = 40, width: int = 56, crowd_per_class: int = 1):
    """A ground-truth and a predicted annotation that overlap a lot (many IoUs near 0.5)."""
    categories = [c["id"] for c in COCO_CATEGORIES]
    things = [c["id"] for c in COCO_CATEGORIES if c["isthing"]]
    # ground truth: coarse random blocks, then rectangles on top
    gt_segments: dict[int, Segment] = {}
    pool = rng.choice(np.arange(1, 256**3), size=14, replace=False)
    coarse = rng.choice(pool, size=(height // 8, width // 8))
    gt_ids = np.kron(coarse, np.ones((8, 8), dtype=np.int64))
    for _ in range(rng.integers(3, 9)):
        y, x = rng.integers(0, height - 4), rng.integers(0, width - 4)
        h, w = rng.integers(3, 16), rng.integers(3, 20)
        gt_ids[y:y + h, x:x + w] = rng.choice(pool) if rng.random() < 0.85 else 0  # some void
    crowd_count = dict.fromkeys(things, 0)
    for segment_id in np.unique(gt_ids[gt_ids != 0]).tolist():
        category = int(rng.choice(categories)) if rng.random() < 0.9 else NOT_EVALUATED
        crowd = category in things and crowd_count[category] < crowd_per_class and rng.random() < 0.3
        if crowd:
            crowd_count[category] += 1
        if rng.random() < 0.93:  # a few ids stay unlisted
            gt_segments[segment_id] = Segment(segment_id, category, crowd)
    # prediction: the ground truth shifted, painted over, split and relabelled
    pred_ids = np.roll(gt_ids, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1))
    for _ in range(rng.integers(2, 8)):
        y, x = rng.integers(0, height - 4), rng.integers(0, width - 4)
        h, w = rng.integers(2, 14), rng.integers(2, 14)
        pred_ids[y:y + h, x:x + w] = rng.choice(pool) if rng.random() < 0.8 else 0
    split = pred_ids.copy()
    cut = int(rng.integers(0, width))
    # some segments split in two: new ids right of a random column
    split[:, cut:] += 256**3 * np.isin(split[:, cut:], rng.choice(pool, size=4))
    present = np.unique(split[split % 256**3 != 0])
    new_ids = rng.choice(np.arange(1, 256**3), size=present.size, replace=False)
    position = np.clip(np.searchsorted(present, split), 0, present.size - 1)
    relabelled = np.where(split % 256**3 == 0, 0, new_ids[position])
    pred_segments: dict[int, Segment] = {}
    for old, new in zip(present.tolist(), new_ids.tolist(), strict=True):
        source = gt_segments.get(old % 256**3)
        category = source.category_id if source is not None and rng.random() < 0.85 else NOT_EVALUATED
        if category == NOT_EVALUATED:
            category = int(rng.choice(categories))
        pred_segments[new] = Segment(new, category)
    return (PanopticAnnotation(gt_ids, gt_segments, "f.png"),
            PanopticAnnotation(relabelled.astype(np.int64), pred_segments, "f.png"))


def as_dicts(segments: dict[int, Segment]) -> list[dict]:
    return [{"id": s.id, "category_id": s.category_id, "iscrowd": int(s.iscrowd)} for s in segments.values()]


def evaluate(pairs, categories=COCO_CATEGORIES):
    accumulator = PQAccumulator.from_coco(categories)
    for gt, pred in pairs:
        accumulator.add(gt, pred)
    return accumulator


def reference(pairs):
    stats = {}
    for gt, pred in pairs:
        reference_frame_stats(gt.ids, as_dicts(gt.segments), pred.ids, as_dicts(pred.segments), stats)
    return stats


# --------------------------------------------------------------------------------------------
# Hand-computed cases, one rule each. Maps are tiny; categories are COCO_CATEGORIES.


def annotation(ids, *segments: tuple[int, int] | tuple[int, int, bool]) -> PanopticAnnotation:
    return PanopticAnnotation(np.asarray(ids, dtype=np.int64), {s[0]: Segment(*s) for s in segments})


def single(gt: PanopticAnnotation, pred: PanopticAnnotation):
    return evaluate([(gt, pred)]).result()


def metrics_of(result, category_id):
    return next(c for c in result.per_class if c.category.id == category_id)


def test_true_positive_with_partial_overlap():
    # GT car 4 px; prediction covers 3 of them and 1 road pixel: IoU = 3 / (4 + 4 - 3) = 0.6.
    gt = annotation([[1, 1, 1, 1, 2, 2]], (1, CAR), (2, ROAD))
    pred = annotation([[1, 1, 1, 2, 1, 2]], (1, CAR), (2, ROAD))
    car = metrics_of(single(gt, pred), CAR)
    assert (car.tp, car.fp, car.fn) == (1, 0, 0)
    assert car.sq == pytest.approx(60.0) and car.rq == 100.0 and car.pq == pytest.approx(60.0)
    road = metrics_of(single(gt, pred), ROAD)  # road: IoU 1 / 3 -> FP and FN
    assert (road.tp, road.fp, road.fn) == (0, 1, 1) and road.pq == 0.0 and road.rq == 0.0 and road.sq == 0.0


def test_wrong_category_is_false_positive_and_false_negative():
    gt = annotation([[1, 1, 1, 1]], (1, CAR))
    pred = annotation([[7, 7, 7, 7]], (7, PERSON))
    result = single(gt, pred)
    assert (metrics_of(result, CAR).fn, metrics_of(result, PERSON).fp) == (1, 1)
    assert result.all.pq == 0.0 and result.all.n == 2 and result.things.n == 2 and result.stuff.n == 0


def test_iou_of_exactly_one_half_is_not_a_match():
    # GT 4 px, prediction 2 px inside it: IoU = 2 / 4 exactly.
    gt = annotation([[1, 1, 1, 1]], (1, CAR))
    car = metrics_of(single(gt, annotation([[5, 5, 0, 0]], (5, CAR))), CAR)
    assert (car.tp, car.fp, car.fn) == (0, 1, 1)
    car = metrics_of(single(gt, annotation([[5, 5, 5, 0]], (5, CAR))), CAR)  # 3 / 4
    assert (car.tp, car.fp, car.fn) == (1, 0, 0) and car.sq == pytest.approx(75.0)


def test_void_pixels_leave_the_union():
    # The prediction covers the 2-px GT car and 2 void pixels: IoU = 2 / (4 + 2 - 2 - 2) = 1.
    gt = annotation([[1, 1, 0, 0, 2, 2]], (1, CAR), (2, ROAD))
    pred = annotation([[1, 1, 1, 1, 2, 2]], (1, CAR), (2, ROAD))
    car = metrics_of(single(gt, pred), CAR)
    assert (car.tp, car.fp, car.fn) == (1, 0, 0) and car.sq == 100.0


def test_unmatched_prediction_more_than_half_void_is_not_a_false_positive():
    gt = annotation([[1, 1, 1, 1, 0, 0, 0, 0]], (1, ROAD))
    # car on 1 road + 2 void pixels: 2 / 3 void -> ignored
    assert metrics_of(single(gt, annotation([[1, 1, 1, 3, 3, 3, 0, 0]], (1, ROAD), (3, CAR))), CAR).fp == 0
    # car on 2 road + 2 void pixels: exactly half -> a false positive
    assert metrics_of(single(gt, annotation([[1, 1, 3, 3, 3, 3, 0, 0]], (1, ROAD), (3, CAR))), CAR).fp == 1


def test_crowd_absorbs_predictions_of_its_own_class_only():
    # GT: a person crowd (id 4) and a car crowd (id 5); crowds are never TP or FN.
    gt = annotation([[4, 4, 4, 4, 5, 5, 5, 5]], (4, PERSON, True), (5, CAR, True))
    # a person prediction on the person crowd is absorbed; one on the car crowd is a false positive
    pred = annotation([[8, 8, 8, 0, 9, 9, 9, 0]], (8, PERSON), (9, PERSON))
    result = single(gt, pred)
    person, car = metrics_of(result, PERSON), metrics_of(result, CAR)
    assert (person.tp, person.fp, person.fn) == (0, 1, 0)
    assert (car.tp, car.fp, car.fn) == (0, 0, 0) and car.pq is None


def test_crowd_plus_void_more_than_half_is_ignored():
    # 1 px on the person crowd + 1 px on void out of 3: 2/3 ignored -> not a false positive
    gt = annotation([[4, 4, 0, 0, 1, 1]], (4, PERSON, True), (1, ROAD))
    pred = annotation([[1, 8, 8, 1, 8, 1]], (8, PERSON), (1, ROAD))
    assert metrics_of(single(gt, pred), PERSON).fp == 0


def test_the_last_listed_crowd_segment_of_a_class_is_the_one_that_absorbs():
    # Two person crowds; the references keep only the last one listed (id 5).
    gt_first_listed_last = annotation([[4, 4, 4, 5, 5, 5]], (5, PERSON, True), (4, PERSON, True))
    gt_second_listed_last = annotation([[4, 4, 4, 5, 5, 5]], (4, PERSON, True), (5, PERSON, True))
    pred = annotation([[8, 8, 8, 0, 0, 0]], (8, PERSON))  # all on crowd 4
    assert metrics_of(single(gt_first_listed_last, pred), PERSON).fp == 0
    assert metrics_of(single(gt_second_listed_last, pred), PERSON).fp == 1


def test_crowd_ground_truth_is_never_matched():
    gt = annotation([[4, 4, 4, 4]], (4, CAR, True))
    car = metrics_of(single(gt, annotation([[8, 8, 8, 8]], (8, CAR))), CAR)
    assert (car.tp, car.fp, car.fn) == (0, 0, 0)


def test_absent_classes_are_left_out_of_the_averages():
    gt = annotation([[1, 1, 2, 2]], (1, ROAD), (2, CAR))
    pred = annotation([[1, 1, 2, 2]], (1, ROAD), (2, CAR))
    result = single(gt, pred)
    assert (result.all.n, result.things.n, result.stuff.n) == (2, 1, 1)
    assert result.all.pq == 100.0 and result.miou == 100.0
    assert metrics_of(result, SKY).pq is None and metrics_of(result, SKY).iou is None


def test_averages_are_means_over_present_classes():
    # road: TP with IoU 4/6; car: FN; person: FP. PQ(road) = (4/6) / 1, others 0.
    gt = annotation([[1, 1, 1, 1, 1, 2, 2]], (1, ROAD), (2, CAR))
    pred = annotation([[1, 1, 1, 1, 3, 3, 1]], (1, ROAD), (3, PERSON))
    result = single(gt, pred)
    road = metrics_of(result, ROAD)
    assert (road.tp, road.fp, road.fn) == (1, 0, 0) and road.pq == pytest.approx(100 * 4 / 6)
    assert result.all.n == 3 and result.all.pq == pytest.approx(100 * 4 / 6 / 3)
    assert result.stuff.pq == pytest.approx(100 * 4 / 6) and result.things.pq == 0.0


def test_a_listed_ground_truth_segment_without_pixels_is_a_false_negative():
    car = metrics_of(single(annotation([[1, 1]], (1, ROAD), (2, CAR)), annotation([[1, 1]], (1, ROAD))), CAR)
    assert (car.tp, car.fp, car.fn) == (0, 0, 1)


def test_unlisted_ground_truth_ids_are_neither_matched_nor_void():
    # GT id 3 is not listed: a prediction on it is not on void, so it stays a false positive.
    gt = annotation([[1, 1, 3, 3, 3]], (1, ROAD))
    pred = annotation([[1, 1, 2, 2, 2]], (1, ROAD), (2, CAR))
    result = single(gt, pred)
    assert metrics_of(result, CAR).fp == 1 and metrics_of(result, ROAD).tp == 1
    # segments of categories that are not evaluated behave the same way
    gt = annotation([[1, 1, 3, 3, 3]], (1, ROAD), (3, NOT_EVALUATED))
    assert metrics_of(single(gt, pred), CAR).fp == 1


def test_miou_from_the_semantic_confusion():
    # road: GT 4 px, predicted 3 of them + 1 car px + 1 void px.
    gt = annotation([[1, 1, 1, 1, 2, 2, 0]], (1, ROAD), (2, CAR))
    pred = annotation([[1, 1, 1, 3, 3, 1, 1]], (1, ROAD), (3, CAR))
    result = single(gt, pred)
    # road: hits 3, GT 4, predicted on labelled GT 4 (the void-GT pixel does not count) -> 3 / 5
    # car: hits 1, GT 2, predicted 2 -> 1 / 3
    assert metrics_of(result, ROAD).iou == pytest.approx(60.0)
    assert metrics_of(result, CAR).iou == pytest.approx(100 / 3)
    assert result.miou == pytest.approx((60.0 + 100 / 3) / 2)
    # predicted void on a labelled pixel is a miss
    result = single(gt, annotation([[1, 1, 1, 0, 3, 3, 0]], (1, ROAD), (3, CAR)))
    assert metrics_of(result, ROAD).iou == pytest.approx(75.0) and metrics_of(result, CAR).iou == 100.0


# --------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_is_rejected_with_a_clear_message():
    gt = annotation([[1, 1]], (1, ROAD))
    with pytest.raises(ValueError, match="same size"):
        single(gt, annotation([[1, 1, 1]], (1, ROAD)))
    with pytest.raises(ValueError, match=r"segment ids \[7\] that its segments do not list"):
        single(gt, annotation([[1, 7]], (1, ROAD)))
    with pytest.raises(ValueError, match=r"lists segments \[8\] that have no pixels"):
        single(gt, annotation([[1, 1]], (1, ROAD), (8, CAR)))
    with pytest.raises(ValueError, match=r"categories \[40\], which are not evaluated"):
        single(gt, annotation([[1, 1]], (1, NOT_EVALUATED)))
    with pytest.raises(ValueError, match="reserved for void"):
        single(annotation([[0, 0]], (0, ROAD)), gt)
    with pytest.raises(ValueError, match=">= 0"):
        single(annotation([[-1, 1]], (1, ROAD)), gt)
    with pytest.raises(ValueError, match="different categories"):
        evaluate([]).merge(PQAccumulator.from_label_set(SYNTHETIC))


# --------------------------------------------------------------------------------------------
# Properties


def test_prediction_equal_to_ground_truth_gives_pq_100(rng):
    for _ in range(5):
        gt, _ = random_frame(rng)
        listed = {i: s for i, s in gt.segments.items() if s.category_id != NOT_EVALUATED}
        ids = np.where(np.isin(gt.ids, list(listed)), gt.ids, 0)  # the prediction lists every id it uses
        result = single(gt, PanopticAnnotation(ids, listed))
        assert result.all.pq == pytest.approx(100.0) and result.all.sq == pytest.approx(100.0)
        assert result.all.rq == 100.0 and result.miou == pytest.approx(100.0)
        assert all(c.fp == 0 and c.fn == 0 for c in result.per_class)


def permuted(frame: PanopticAnnotation, rng: np.random.Generator) -> PanopticAnnotation:
    """The same annotation with new random segment ids, listed in a shuffled order."""
    present = np.union1d(np.unique(frame.ids), list(frame.segments))
    present = present[present != 0]
    new_ids = rng.choice(np.arange(1, 256**3), size=present.size, replace=False)
    ids = np.where(frame.ids == 0, 0, new_ids[np.searchsorted(present, frame.ids)])
    new_of = dict(zip(present.tolist(), new_ids.tolist(), strict=True))
    order = rng.permutation(len(frame.segments))
    old = list(frame.segments.values())
    segments = {new_of[old[k].id]: Segment(new_of[old[k].id], old[k].category_id, old[k].iscrowd) for k in order}
    return PanopticAnnotation(ids, segments)


def test_permuting_instance_ids_changes_nothing(rng):
    pairs = [random_frame(rng) for _ in range(6)]  # at most one crowd per class: listing order is free
    base = evaluate(pairs).result()
    again = evaluate([(permuted(gt, rng), permuted(pred, rng)) for gt, pred in pairs]).result()
    assert _same(again, base)


def _same(a, b, tolerance=1e-12):
    da, db = a.to_dict(), b.to_dict()
    for key in ("all", "things", "stuff"):
        assert da[key]["n"] == db[key]["n"]
        for metric in ("pq", "sq", "rq"):
            assert da[key][metric] == pytest.approx(db[key][metric], abs=tolerance)
    assert da["miou"] == pytest.approx(db["miou"], abs=tolerance)
    for ca, cb in zip(da["per_class"], db["per_class"], strict=True):
        assert (ca["tp"], ca["fp"], ca["fn"]) == (cb["tp"], cb["fp"], cb["fn"])
        for metric in ("pq", "sq", "rq", "iou"):
            assert (ca[metric] is None) == (cb[metric] is None)
            if ca[metric] is not None:
                assert ca[metric] == pytest.approx(cb[metric], abs=tolerance)
    return True


def test_accumulating_frame_by_frame_equals_merging_parts(rng):
    pairs = [random_frame(rng) for _ in range(8)]
    together = evaluate(pairs)
    merged = evaluate(pairs[:3]).merge(evaluate(pairs[3:5])).merge(evaluate(pairs[5:]))
    assert merged.num_frames == together.num_frames == 8
    np.testing.assert_array_equal(merged.tp, together.tp)
    np.testing.assert_array_equal(merged.fp, together.fp)
    np.testing.assert_array_equal(merged.fn, together.fn)
    np.testing.assert_array_equal(merged.confusion, together.confusion)
    assert _same(merged.result(), together.result())


# --------------------------------------------------------------------------------------------
# Equality with the reference evaluators


@pytest.mark.parametrize("crowd_per_class", [1, 2])
def test_random_frames_match_the_literal_reference(rng, crowd_per_class):
    pairs = [random_frame(rng, crowd_per_class=crowd_per_class) for _ in range(30)]
    stats = reference(pairs)
    assert sum(s[1] for s in stats.values()) > 20 and sum(s[2] for s in stats.values()) > 20  # TPs and FPs
    result = evaluate(pairs).result()
    assert_matches_reference(result, stats, COCO_CATEGORIES)
    ious = reference_miou(pairs, COCO_CATEGORIES)
    assert {c.category.id: c.iou for c in result.per_class if c.iou is not None} == pytest.approx(ious, abs=1e-9)
    assert result.miou == pytest.approx(sum(ious.values()) / len(ious), abs=1e-9)


def test_ids_beyond_the_rgb_range_give_the_same_numbers(rng):
    # ids of 2^24 and more, beyond what an RGB PNG holds
    pairs = [random_frame(rng) for _ in range(4)]
    shifted = [(shift_ids(gt, 1 << 40), shift_ids(pred, 1 << 24)) for gt, pred in pairs]
    assert _same(evaluate(shifted).result(), evaluate(pairs).result())


def test_id_maps_of_any_integer_type_and_memory_layout_give_the_same_numbers(rng):
    """Pixels are counted in runs along the flattened maps: a Fortran-ordered or transposed map counts as its
    contiguous copy, and ids of any integer type compare as the same ids."""
    pairs = [random_frame(rng) for _ in range(4)]
    relaid = [(PanopticAnnotation(np.asfortranarray(gt.ids.astype(np.uint32)), gt.segments),
               PanopticAnnotation(np.ascontiguousarray(pred.ids.T).T, pred.segments)) for gt, pred in pairs]
    assert not relaid[0][0].ids.flags.c_contiguous and not relaid[0][1].ids.flags.c_contiguous
    assert _same(evaluate(relaid).result(), evaluate(pairs).result())


def shift_ids(frame: PanopticAnnotation, offset: int) -> PanopticAnnotation:
    ids = np.where(frame.ids == 0, 0, frame.ids.astype(np.int64) + offset)
    return PanopticAnnotation(ids, {s.id + offset: Segment(s.id + offset, s.category_id, s.iscrowd)
                                    for s in frame.segments.values()})


def test_categories_from_coco_and_label_set():
    assert categories_from_coco(COCO_CATEGORIES)[3] == Category(9, "car", True)
    accumulator = PQAccumulator.from_label_set(SYNTHETIC)
    assert [c.id for c in accumulator.categories] == list(range(8))
    assert [c.isthing for c in accumulator.categories] == list(SYNTHETIC.thing)
    with pytest.raises(ValueError, match="lacks 'isthing'"):
        categories_from_coco([{"id": 1, "name": "road"}])


# --------------------------------------------------------------------------------------------
# The pipeline's id maps (class * divisor + instance, -1 void)


def random_id_map(rng: np.random.Generator, divisor: int, height: int = 48, width: int = 64) -> np.ndarray:
    """SYNTHETIC classes: stuff regions, thing instances (instance 0 = crowd) and void blocks."""
    classes = np.kron(rng.integers(0, SYNTHETIC.num_classes, size=(height // 8, width // 8)), np.ones((8, 8), int))
    instances = np.kron(rng.integers(0, 4, size=(height // 4, width // 4)), np.ones((4, 4), int))
    thing = np.asarray(SYNTHETIC.thing)[classes]
    panoptic = classes * divisor + np.where(thing, instances, 0)
    panoptic[rng.random((height, width)) < 0.05] = -1
    return panoptic.astype(np.int32)


@pytest.mark.parametrize("divisor", [1000, 1 << 18])  # segment ids below 2^20 (a presence count) and beyond (a sort)
def test_add_id_maps_equals_add_of_from_id_map(rng, divisor):
    fast, slow = PQAccumulator.from_label_set(SYNTHETIC), PQAccumulator.from_label_set(SYNTHETIC)
    for _ in range(6):
        gt = random_id_map(rng, divisor)
        repainted = np.kron(rng.random((6, 8)) < 0.3, np.ones((8, 8), bool))
        pred = np.where(repainted, random_id_map(rng, divisor), gt)
        fast.add_id_maps(gt, pred, divisor)
        slow.add(from_id_map(gt, divisor, SYNTHETIC), from_id_map(pred, divisor, SYNTHETIC))
    assert fast.tp.sum() > 5 and fast.fp.sum() > 5
    np.testing.assert_array_equal(fast.confusion, slow.confusion)
    assert _same(fast.result(), slow.result())


def test_add_id_maps_rejects_bad_maps(rng):
    accumulator = PQAccumulator.from_label_set(SYNTHETIC)
    good = random_id_map(rng, 1000)
    with pytest.raises(ValueError, match=r"classes \[9\], which are not evaluated"):
        accumulator.add_id_maps(good, np.full_like(good, 9001), 1000)
    with pytest.raises(ValueError, match=">= -1"):
        accumulator.add_id_maps(np.full_like(good, -2), good, 1000)
    with pytest.raises(ValueError, match="same size"):
        accumulator.add_id_maps(good, good[:-1], 1000)
    with pytest.raises(ValueError, match="label_divisor"):
        accumulator.add_id_maps(good, good, 0)
    assert accumulator.num_frames == 0


def test_frames_with_hundreds_of_segments_count_every_pair():
    """400 segments a side: histogram keys (row * width + column) far beyond a 16-bit row index still add up."""
    ids = np.arange(1, 401, dtype=np.int64).reshape(20, 20)
    gt = PanopticAnnotation(ids, {int(i): Segment(int(i), CAR) for i in ids.ravel()})
    pred = PanopticAnnotation(ids + 1000, {int(i) + 1000: Segment(int(i) + 1000, CAR) for i in ids.ravel()})
    result = single(gt, pred)
    assert (metrics_of(result, CAR).tp, metrics_of(result, CAR).fp, result.all.pq) == (400, 0, 100.0)
    pipeline = PQAccumulator.from_label_set(SYNTHETIC)
    car = SYNTHETIC.names.index("car")
    panoptic = (car * 1000 + ids).astype(np.int32)  # 400 car instances
    pipeline.add_id_maps(panoptic, panoptic, 1000)
    assert (pipeline.result().per_class[car].tp, pipeline.result().all.pq) == (400, 100.0)
