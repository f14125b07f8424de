"""Each method's static fusion against its literal NumPy reference: hand-made scenes (exactly
equal, plus the behaviour the paper describes) and random structured scenes (>= 99.9% of pixels)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fusion_cases import weakest_centre_case
from test_fusion_scenes import (
    ANCHOR_RATIOS,
    ANCHOR_SIZES,
    DIVISOR,
    FCOS_STRIDES,
    LABEL_SET,
    AnalyticFPSNetHead,
    AnalyticSPINetHead,
    assert_same_result,
    fpsnet_heads,
    lpsnet_heads,
    make_scene,
    psn_heads,
    random_scene,
    rtps_heads,
    run_fusion,
    spinet_heads,
    thing_ids,
)

from panoptic_ros.data.formats import Segment
from panoptic_ros.evaluation.pq import PQAccumulator
from panoptic_ros.fusion.detections import PRE_NMS_TOP
from panoptic_ros.fusion.fpsnet import FPSNetFusion
from panoptic_ros.fusion.ideal_pq import ideal_psn_pq
from panoptic_ros.fusion.lpsnet import LPSNetFusion
from panoptic_ros.fusion.psn import (
    CANDIDATES,
    Grouping,
    PSNFusion,
    find_instance_centres,
    group_pixels,
    vote_classes,
    window_max,
)
from panoptic_ros.fusion.reference.fpsnet import fpsnet_reference
from panoptic_ros.fusion.reference.lpsnet import lpsnet_reference
from panoptic_ros.fusion.reference.psn import find_centres, psn_reference
from panoptic_ros.fusion.reference.psn import group_pixels as reference_group_pixels
from panoptic_ros.fusion.reference.psn import vote_classes as reference_vote
from panoptic_ros.fusion.reference.rtps import rtps_reference
from panoptic_ros.fusion.reference.spinet import spinet_reference
from panoptic_ros.fusion.rtps import RTPSFusion
from panoptic_ros.fusion.spinet import SPINetFusion
from panoptic_ros.pipeline_io import COL, PanopticResult, Thresholds

K = 12
PERSON, CAR, BICYCLE = 5, 6, 7
THRESHOLDS = Thresholds(min_stuff_area=64)
BANDS = [(4, 31), (2, 63), (0, 127)]  # sky, building, road on a 128 x 256 frame


def run_method(method: str, heads: dict, thresholds: Thresholds = THRESHOLDS,
               k: int = K) -> tuple[PanopticResult, PanopticResult]:
    """(static graph, reference) results of `method` on the same heads; the reference caps its
    candidate pools as the graph does, and both count the same dropped candidates."""
    if method == "psn":
        graph = run_fusion(PSNFusion(LABEL_SET, k, 7), heads, thresholds)
        reference = psn_reference(heads, LABEL_SET, thresholds, DIVISOR, k, 7)
    elif method == "rtps":
        graph = run_fusion(RTPSFusion(LABEL_SET, FCOS_STRIDES, k), heads, thresholds)
        reference = rtps_reference(heads, LABEL_SET, FCOS_STRIDES, thresholds, DIVISOR, k, PRE_NMS_TOP)
    elif method == "lpsnet":
        graph = run_fusion(LPSNetFusion(LABEL_SET, FCOS_STRIDES, k), heads, thresholds)
        reference = lpsnet_reference(heads, LABEL_SET, FCOS_STRIDES, thresholds, DIVISOR, k, PRE_NMS_TOP)
    elif method == "fpsnet":
        head = AnalyticFPSNetHead(num_attention=16)
        fusion = FPSNetFusion(head, LABEL_SET, FCOS_STRIDES, ANCHOR_SIZES, ANCHOR_RATIOS, 16, 50.0, k)
        graph = run_fusion(fusion, heads, thresholds)
        reference = fpsnet_reference(heads, head, LABEL_SET, FCOS_STRIDES, ANCHOR_SIZES, ANCHOR_RATIOS, thresholds,
                                     DIVISOR, k, PRE_NMS_TOP)
    else:
        head = AnalyticSPINetHead()
        graph = run_fusion(SPINetFusion(head, LABEL_SET, k), heads, thresholds)
        # The paper's sampling (every location above the threshold, no cap): the graph's local-maximum
        # sampling of at most SAMPLES_PER_INSTANCE * K locations gives the same result on these scenes.
        reference = spinet_reference(heads, head, LABEL_SET, thresholds, DIVISOR, k)
    assert graph.candidates_dropped == reference.candidates_dropped
    assert graph.converged
    return graph, reference.result


HEADS = {"psn": psn_heads, "rtps": rtps_heads, "lpsnet": lpsnet_heads, "fpsnet": fpsnet_heads,
         "spinet": spinet_heads}
def instance_of(result: PanopticResult, x: int, y: int) -> int:
    return int(result.panoptic[y, x])


# --- hand-made scenes: exactly the reference, and the paper's behaviour ------------------------------

@pytest.mark.parametrize("method", list(HEADS))
def test_hand_made_street_gives_one_instance_per_object(method):
    # Cell-aligned objects: two cars side by side (touching), a person, a bicycle partly behind the car.
    objects = [(CAR, 32, 72, 79, 111), (CAR, 80, 68, 131, 111), (PERSON, 160, 48, 179, 103),
               (BICYCLE, 200, 80, 231, 111)]
    scene = make_scene(128, 256, BANDS, objects)
    graph, reference = run_method(method, HEADS[method](scene, np.random.default_rng(3), noise=0.05))
    assert_same_result(graph, reference)
    rows = graph.valid_instances
    things = rows[[LABEL_SET.thing[int(c)] for c in rows[:, COL["class_id"]]]]
    assert sorted(things[:, COL["class_id"]].astype(int).tolist()) == [PERSON, CAR, CAR, BICYCLE]
    # Each object's centre pixel carries a different thing id of the object's class.
    centres = [instance_of(graph, (x1 + x2) // 2, (y1 + y2) // 2) for _, x1, y1, x2, y2 in objects]
    assert len(set(centres)) == 4 and [c // DIVISOR for c in centres] == [CAR, CAR, PERSON, BICYCLE]
    assert instance_of(graph, 5, 5) == 4 * DIVISOR and instance_of(graph, 5, 120) == 0  # sky, road


def test_psn_majority_vote_fixes_the_minority_class():
    scene = make_scene(128, 256, BANDS, [(CAR, 64, 64, 127, 111)])
    heads = psn_heads(scene, np.random.default_rng(0), noise=0.05)
    heads["semantic"][0, PERSON, 64:80, 64:127] += 8.0  # a third of the car reads "person"
    graph, reference = run_method("psn", heads)
    assert_same_result(graph, reference)
    assert thing_ids(graph) == [CAR * DIVISOR + 1]
    assert (graph.semantic[64:112, 64:128] == CAR).all()  # the smoothed semantic map


def test_psn_flat_topped_centre_gives_one_instance():
    scene = make_scene(128, 256, BANDS, [(CAR, 64, 64, 127, 111)])
    heads = psn_heads(scene, np.random.default_rng(0), noise=1.0)  # offsets scatter around the centre (88, 96)
    heads["center"][0, 0, 86:91, 94:99] = heads["center"].max()  # a 5 x 5 plateau around it
    graph, reference = run_method("psn", heads)
    assert_same_result(graph, reference)
    assert thing_ids(graph) == [CAR * DIVISOR + 1]


def test_psn_centre_threshold_and_stuff_area_are_runtime_inputs():
    scene = make_scene(128, 256, [(4, 3), (0, 127)], [(CAR, 64, 64, 127, 111)])  # a 4-row sky band
    heads = psn_heads(scene, np.random.default_rng(0), noise=0.05)
    graph, _ = run_method("psn", heads, Thresholds(center_threshold=0.99, min_stuff_area=4 * 256 + 1))
    assert thing_ids(graph) == []
    assert (graph.panoptic[64:112, 64:128] == -1).all()  # thing pixels without a centre are void
    assert (graph.panoptic[:4] == -1).all()  # the sky band is smaller than min_stuff_area


def test_rtps_mask_sigma_decides_which_pixels_join_the_query():
    scene = make_scene(128, 256, BANDS, [(CAR, 64, 64, 127, 111)])
    heads = rtps_heads(scene, np.random.default_rng(0), noise=0.05)
    strict, reference = run_method("rtps", heads, Thresholds(mask_sigma=0.999, min_stuff_area=64))
    assert_same_result(strict, reference)
    # Car pixels no mask takes are void (the corners' upsampled logits read road).
    assert thing_ids(strict) == [] and (strict.panoptic[66:110, 66:126] == -1).all()
    loose, _ = run_method("rtps", heads, Thresholds(mask_sigma=0.3, min_stuff_area=64))
    assert thing_ids(loose) == [CAR * DIVISOR + 1]


def _stretch_boxes(heads: dict, scene, index: int, right: float, boost: float = 0.0) -> None:
    """Move the right side of object `index`'s predicted boxes by `right` pixels; add `boost` to its class logits."""
    for stride, reg, cls in zip(FCOS_STRIDES, heads["box_reg"], heads["box_cls"], strict=True):
        ys, xs = np.mgrid[0:reg.shape[2], 0:reg.shape[3]] * stride + stride // 2
        mine = scene.instance[ys, xs] == index
        reg[0, 2][mine] += right
        cls[0][:, mine] += boost


def test_lpsnet_drops_a_box_whose_mask_is_mostly_taken():
    # Car A's boxes reach over car B, so A's mask (car pixels inside A's box) covers all of B.
    scene = make_scene(128, 256, BANDS, [(CAR, 32, 64, 95, 111), (CAR, 96, 64, 159, 111)])
    heads = lpsnet_heads(scene, np.random.default_rng(1), noise=0.05)
    _stretch_boxes(heads, scene, 0, right=64.0, boost=2.0)
    strict, reference = run_method("lpsnet", heads, Thresholds(overlap_threshold=0.3, min_stuff_area=64))
    assert_same_result(strict, reference)
    assert thing_ids(strict) == [CAR * DIVISOR + 1]  # B overlapped 100% > 0.3: dropped, A takes all
    lenient, reference = run_method("lpsnet", heads, Thresholds(overlap_threshold=1.0, min_stuff_area=64))
    assert_same_result(lenient, reference)
    assert len(thing_ids(lenient)) == 2


def test_lpsnet_overlapping_boxes_of_one_class_are_split_by_borderness():
    # A (scored higher) predicts boxes 48 px too wide, into B: the overlap goes to B, whose computed
    # border-ness there matches the predicted one, not to the more confident A.
    scene = make_scene(128, 256, BANDS, [(CAR, 32, 64, 111, 111), (CAR, 112, 64, 191, 111)])
    heads = lpsnet_heads(scene, np.random.default_rng(2), noise=0.05)
    _stretch_boxes(heads, scene, 0, right=48.0, boost=2.0)
    graph, reference = run_method("lpsnet", heads, Thresholds(overlap_threshold=0.7, min_stuff_area=64))
    assert_same_result(graph, reference)
    a, b = instance_of(graph, 60, 90), instance_of(graph, 180, 90)
    assert a == CAR * DIVISOR + 1 and b == CAR * DIVISOR + 2
    assert instance_of(graph, 108, 90) == a and instance_of(graph, 124, 90) == instance_of(graph, 150, 90) == b


def test_fpsnet_takes_the_class_from_the_box_and_at_most_k_boxes():
    objects = [(CAR, 32, 64, 79, 111), (PERSON, 120, 40, 143, 103), (BICYCLE, 200, 72, 239, 111)]
    scene = make_scene(128, 256, BANDS, objects)
    heads = fpsnet_heads(scene, np.random.default_rng(0), noise=0.05)
    graph, reference = run_method("fpsnet", heads, k=2)
    assert_same_result(graph, reference)
    assert len(thing_ids(graph)) == 2  # K = 2 attention masks filled, the rest zero


def test_spinet_merge_drops_the_duplicate_mask_of_an_object():
    scene = make_scene(128, 256, BANDS, [(CAR, 32, 64, 95, 111), (PERSON, 160, 40, 183, 111)])
    heads = spinet_heads(scene, np.random.default_rng(0), noise=0.05)
    # A second, weaker confidence peak on the car (P2 location (9, 5) is pixel (44, 76)): a duplicate
    # filter, whose mask Panoptic FPN's merge finds taken (there is no mask NMS).
    heads["class_logits"][0][0, LABEL_SET.thing_ids.index(CAR), 9, 5] = 2.5
    graph, reference = run_method("spinet", heads, Thresholds(score_threshold=0.45, min_stuff_area=64))
    assert_same_result(graph, reference)
    assert len(thing_ids(graph)) == 2
    assert instance_of(graph, 60, 90) // DIVISOR == CAR and instance_of(graph, 170, 80) // DIVISOR == PERSON


# --- random structured scenes --------------------------------------------------------------------------

@pytest.mark.parametrize("method", list(HEADS))
def test_random_scenes_match_the_reference(method):
    rng = np.random.default_rng(100)
    for _ in range(4):
        scene = random_scene(rng, count=8)
        graph, reference = run_method(method, HEADS[method](scene, rng))
        assert_same_result(graph, reference)


def _pq_annotation(result: PanopticResult) -> tuple[np.ndarray, dict[int, Segment]]:
    """Ids shifted by one so that void (-1) is the evaluator's 0."""
    ids = result.panoptic.astype(np.int64) + 1
    segments = {int(r[COL["id"]]) + 1: Segment(int(r[COL["id"]]) + 1, int(r[COL["class_id"]]))
                for r in result.valid_instances}
    return ids, segments


def _ground_truth(scene) -> tuple[np.ndarray, dict[int, Segment]]:
    ids = np.where(scene.instance >= 0, scene.semantic * DIVISOR + scene.instance + 1, scene.semantic * DIVISOR) + 1
    return ids, {int(i): Segment(int(i), int((i - 1) // DIVISOR)) for i in np.unique(ids)}


def test_lpsnet_sequential_pasting_pq_matches_the_reference_over_50_scenes():
    rng = np.random.default_rng(7)
    graph_pq, reference_pq = PQAccumulator.from_label_set(LABEL_SET), PQAccumulator.from_label_set(LABEL_SET)
    for _ in range(50):
        scene = random_scene(rng, 128, 128, count=5)
        graph, reference = run_method("lpsnet", lpsnet_heads(scene, rng), Thresholds(min_stuff_area=16))
        gt_ids, gt_segments = _ground_truth(scene)
        graph_pq.add_maps(gt_ids, gt_segments, *_pq_annotation(graph))
        reference_pq.add_maps(gt_ids, gt_segments, *_pq_annotation(reference))
    graph_value, reference_value = graph_pq.result().all.pq, reference_pq.result().all.pq
    assert reference_value > 50  # the scenes are solvable
    assert abs(graph_value - reference_value) <= 0.5


# --- PSN's steps against the reference's, ideal heads, overflow ------------------------------------------

def graph_centres(heatmap: np.ndarray, threshold: float, kernel: int, count: int = 50) -> list[tuple[int, int]]:
    centres, _ = find_instance_centres(torch.from_numpy(heatmap), torch.tensor(threshold, dtype=torch.float32),
                                       kernel, count)
    valid = centres.valid.numpy()
    return [(int(y), int(x)) for y, x in zip(centres.y.numpy()[valid], centres.x.numpy()[valid], strict=True)]


def test_psn_centres_are_the_references_window_maxima():
    heatmap = np.zeros((10, 20), dtype=np.float32)
    heatmap[2, 3:6] = 0.8  # a flat top: its first pixel in raster order
    heatmap[8, 4] = 0.9
    heatmap[2, 8] = 0.7  # inside the plateau's 7 x 7 window: suppressed
    heatmap[5, 15] = 0.5
    expected = [c[1:] for c in find_centres(heatmap, 0.1, 7)]
    assert graph_centres(heatmap, 0.1, 7) == expected == [(8, 4), (2, 3), (5, 15)]


def test_psn_centre_nms_window_is_nms_kernel():
    heatmap = np.zeros((9, 20), dtype=np.float32)
    heatmap[4, 4], heatmap[4, 7] = 0.9, 0.8  # 3 columns apart: one window at kernel 7, two at kernel 5
    assert graph_centres(heatmap, 0.1, 7) == [(4, 4)]
    assert graph_centres(heatmap, 0.1, 5) == [(4, 4), (4, 7)]
    # The same along the rows (the window is pooled one axis at a time).
    column = np.ascontiguousarray(heatmap.T[:, :9])
    column[:] = 0.0
    column[4, 4], column[7, 4] = 0.9, 0.8
    assert graph_centres(column, 0.1, 7) == [(4, 4)]
    assert graph_centres(column, 0.1, 5) == [(4, 4), (7, 4)]


@pytest.mark.parametrize("kernel", [1, 3, 7, 9])
def test_psn_window_max_is_max_pooling_with_stride_one(rng, kernel):
    x = torch.from_numpy(rng.random((11, 6)).astype(np.float32))
    x[4, :] = x[4, 0]  # a flat row: ties
    pooled = F.max_pool2d(x[None, None], kernel, stride=1, padding=kernel // 2)[0, 0]
    assert torch.equal(window_max(window_max(x, kernel, 0), kernel, 1), pooled)


def test_psn_centre_exactly_at_the_threshold_is_not_a_centre():
    heatmap = np.zeros((9, 9), dtype=np.float32)
    heatmap[4, 4] = 0.1
    assert graph_centres(heatmap, 0.1, 3) == []
    heatmap[4, 4] = np.nextafter(np.float32(0.1), np.float32(1))
    assert graph_centres(heatmap, 0.1, 3) == [(4, 4)]


def test_psn_pixels_join_the_centre_their_offset_points_closest_to(rng):
    scene = random_scene(rng, count=8)
    heads = psn_heads(scene, rng, noise=1.0)
    centres, _ = find_instance_centres(torch.from_numpy(heads["center"][0, 0]), torch.tensor(0.1), 7, 24)
    valid = centres.valid.numpy()
    listed = [(0.0, int(y), int(x)) for y, x in zip(centres.y.numpy(), centres.x.numpy(), strict=True)]
    thing = scene.instance >= 0
    grouping = group_pixels(torch.from_numpy(heads["offset"][0]), centres, torch.arange(valid.shape[0]),
                            torch.from_numpy(thing))
    expected = reference_group_pixels(thing, heads["offset"][0], [c for c, v in zip(listed, valid, strict=True) if v])
    # Not crowded: every thing pixel's pick is exactly the reference's.
    assert not grouping.crowded
    np.testing.assert_array_equal(np.flatnonzero(valid)[expected[thing]], grouping.taken.numpy()[thing])


def test_psn_vote_is_the_majority_and_ties_go_to_the_lower_class():
    # Two 8 x 8 cells, one instance each: 40 person / 24 car pixels, and a 32 / 32 car-bicycle tie.
    semantic = np.full((8, 16), CAR)
    semantic[:5, :8] = PERSON
    semantic[4:, 8:] = BICYCLE
    owner = np.repeat([[0] * 8 + [1] * 8], 8, axis=0)
    thing_index = torch.tensor([LABEL_SET.thing_ids.index(c) for c in semantic.reshape(-1)]).reshape(8, 16)
    grouping = Grouping(torch.from_numpy(owner), torch.tensor([[[0, 1]]]), torch.zeros(8, 16, dtype=torch.int32),
                        torch.tensor(False))
    classes = vote_classes(grouping, torch.tensor([0, 1]), thing_index, torch.tensor(LABEL_SET.thing_ids), 2)
    assert classes.tolist() == reference_vote(semantic, owner, 2, LABEL_SET.num_classes) == [PERSON, CAR]


def test_psn_overflow_counts_dropped_centres_and_voids_their_pixels():
    scene, heads, expected = weakest_centre_case(DIVISOR)
    full, _ = run_method("psn", heads, k=3)
    capped, capped_reference = run_method("psn", heads, k=2)
    assert full.candidates_dropped == 0 and capped.candidates_dropped == 1
    np.testing.assert_array_equal(full.panoptic, expected)
    # The weakest car's pixels become void, not part of the other car or the person.
    np.testing.assert_array_equal(capped.panoptic, np.where(scene.instance == 1, -1, expected))
    assert_same_result(capped, capped_reference)


def crowded_cell_heads(centres: int) -> dict:
    """A car filling a 64 x 64 frame, `centres` peaks 12 pixels apart inside one 40 x 40 square, and
    offsets that send the 8 x 8 cell at (24, 24)'s pixels all over that square (elsewhere: zero)."""
    size, car, road = 64, 6, 0
    semantic = np.zeros((1, LABEL_SET.num_classes, size, size), dtype=np.float32)
    semantic[0, car] = 10.0
    semantic[0, road, 60:] = 20.0
    center = np.zeros((1, 1, size, size), dtype=np.float32)
    for n in range(centres):
        center[0, 0, 12 + 12 * (n // 4), 12 + 12 * (n % 4)] = 0.9 - 0.01 * n
    offset = np.zeros((1, 2, size, size), dtype=np.float32)
    a, b = np.mgrid[0:8, 0:8]
    offset[0, 0, 24:32, 24:32] = 10 + 5 * a - (24 + a)  # targets at rows 10, 15, ..., 45
    offset[0, 1, 24:32, 24:32] = 10 + 5 * b - (24 + b)
    return {"semantic": semantic, "center": center, "offset": offset}


@pytest.mark.parametrize("centres,converged", [(CANDIDATES, True), (CANDIDATES + 1, False), (12, False)])
def test_psn_crowded_cell_is_reported_as_not_converged(centres, converged):
    # Every centre lies in the box of the crowded cell's targets: with more than CANDIDATES of them,
    # one left out could be some pixel's closest, so the frame does not claim to be exact.
    graph = run_fusion(PSNFusion(LABEL_SET, K, 7), crowded_cell_heads(centres), THRESHOLDS)
    assert graph.converged is converged
    assert len(thing_ids(graph)) == centres


def test_psn_pixel_equidistant_from_two_centres_joins_the_earlier_one():
    # Centres (20, 20) and (20, 40); the 8 x 8 cell at rows 16-23, columns 32-39 sends its targets to
    # (20, 30 + j): its box is nearer the second centre, but the column of targets at x = 30 is as far
    # from both, and the paper's loop (first centre first, strict "closer") gives it to the first.
    size, car = 64, 6
    semantic = np.zeros((1, LABEL_SET.num_classes, size, size), dtype=np.float32)
    semantic[0, car] = 10.0
    center = np.zeros((1, 1, size, size), dtype=np.float32)
    center[0, 0, 20, 20], center[0, 0, 20, 40] = 0.9, 0.8
    offset = np.zeros((1, 2, size, size), dtype=np.float32)
    a, b = np.mgrid[16:24, 32:40]
    offset[0, 0, 16:24, 32:40] = 20 - a
    offset[0, 1, 16:24, 32:40] = 30 + (b - 32) - b
    graph, reference = run_method("psn", {"semantic": semantic, "center": center, "offset": offset})
    assert reference.panoptic[16, 32] == reference.panoptic[20, 20] != reference.panoptic[16, 33]
    assert_same_result(graph, reference)


@pytest.mark.parametrize("height,width,frames", [(256, 512, 3), (512, 1024, 2)])
def test_psn_graph_reproduces_ground_truth_from_ideal_heads(height, width, frames):
    pq, things = ideal_psn_pq(height, width, frames)
    assert pq >= 99.0 and things >= 99.0
