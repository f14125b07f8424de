"""The literal references by themselves: each step on hand-made inputs (values exactly at a threshold,
one past a limit, chains for the sequential rules), each method on seeded scenes, and PSN on ideal
heads from synthetic ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fusion_cases import (
    chain_keep,
    dense_chain_heads,
    ground_truth_ids,
    iou_matrix,
    nms_chain,
    paste_chain,
    seeded_scenes,
    spinet_chain_heads,
    weakest_centre_case,
)
from test_fusion_scenes import (
    ANCHOR_RATIOS,
    ANCHOR_SIZES,
    DIVISOR,
    FCOS_STRIDES,
    LABEL_SET,
    AnalyticFPSNetHead,
    AnalyticSPINetHead,
    fpsnet_heads,
    lpsnet_heads,
    make_scene,
    rtps_heads,
    spinet_heads,
)

from panoptic_ros.classes import SYNTHETIC, VOID_CLASS, VOID_ID
from panoptic_ros.data.synthetic import generate_scene
from panoptic_ros.evaluation.pq import PQAccumulator
from panoptic_ros.fusion.ideal_heads import ideal_psn_heads
from panoptic_ros.fusion.reference.assemble import Thing, assemble
from panoptic_ros.fusion.reference.common import greedy_nms, paste_by_confidence, upsample_bilinear
from panoptic_ros.fusion.reference.defaults import DEFAULT_SOURCES, paper_defaults, used_thresholds
from panoptic_ros.fusion.reference.detections import Detection
from panoptic_ros.fusion.reference.fpsnet import fpsnet_reference
from panoptic_ros.fusion.reference.heldout import main
from panoptic_ros.fusion.reference.lpsnet import lpsnet_boxes, lpsnet_reference, paste_with_borderness
from panoptic_ros.fusion.reference.psn import find_centres, group_pixels, psn_reference, vote_classes
from panoptic_ros.fusion.reference.rtps import instance_masks, query_boxes, rtps_reference
from panoptic_ros.fusion.reference.spinet import sampling_locations, spinet_reference
from panoptic_ros.pipeline_io import COL, Thresholds

PERSON, CAR, BICYCLE = 5, 6, 7
ROAD, SKY = 0, 4
THRESHOLDS = Thresholds(min_stuff_area=64)


def pq(scenes, results) -> tuple[float, float]:
    """(PQ, things PQ) of reference results against their scenes."""
    accumulator = PQAccumulator.from_label_set(LABEL_SET)
    for scene, result in zip(scenes, results, strict=True):
        accumulator.add_id_maps(ground_truth_ids(scene, DIVISOR), result.result.panoptic, DIVISOR)
    metrics = accumulator.result()
    return metrics.all.pq, metrics.things.pq


# --- shared steps ------------------------------------------------------------------------------------

@pytest.mark.parametrize("factor", [2, 4, 8])
def test_upsample_bilinear_is_pytorchs_align_corners_false(rng, factor):
    x = rng.standard_normal((3, 5, 7)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(x)[None], scale_factor=factor, mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(upsample_bilinear(x, factor), expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("length", [10, 16, 32])
def test_greedy_nms_on_a_chain_keeps_every_other_box(length):
    boxes, scores = nms_chain(length)
    iou = iou_matrix(boxes)
    assert np.allclose(np.diag(iou, 1), 0.6) and np.allclose(np.diag(iou, 2), 1 / 3)
    assert greedy_nms(boxes, scores, [0] * length, 0.5) == chain_keep(length)
    assert chain_keep(10) == [0, 2, 4, 6, 8]


def test_nms_at_exactly_the_iou_threshold_does_not_suppress():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 20]], dtype=float)  # IoU exactly 0.5
    assert greedy_nms(boxes, [0.9, 0.8], [0, 0], 0.5) == [0, 1]
    assert greedy_nms(boxes, [0.9, 0.8], [0, 0], 0.49) == [0]
    assert greedy_nms(boxes, [0.9, 0.8], [0, 1], 0.49) == [0, 1]  # other class: no suppression


def test_nms_visits_equal_scores_in_index_order():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 0, 30, 10]], dtype=float)
    assert greedy_nms(boxes, [0.5, 0.5, 0.9], [0, 0, 0], 0.5) == [2, 0]


def test_pasting_a_chain_keeps_every_other_mask():
    owner, pasted = paste_by_confidence(paste_chain(8), 0.3)
    assert pasted == chain_keep(8) == [0, 2, 4, 6]
    assert owner[0].tolist() == [0] * 8 + [2] * 8 + [4] * 8 + [6] * 8 + [-1] * 4


def test_paste_at_exactly_the_overlap_threshold_keeps_the_mask():
    first, second = np.zeros((1, 20), dtype=bool), np.zeros((1, 20), dtype=bool)
    first[0, :3], second[0, :10] = True, True  # 3 of the second's 10 pixels are taken: 0.3
    owner, pasted = paste_by_confidence([first, second], 0.3)
    assert pasted == [0, 1] and owner[0, :10].tolist() == [0, 0, 0] + [1] * 7
    assert paste_by_confidence([first, second], 0.29)[1] == [0]


# --- back half ---------------------------------------------------------------------------------------

def mask_at(shape, y0, y1, x0, x1) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_instances_are_numbered_per_class_by_descending_score():
    shape = (8, 40)
    things = [Thing(CAR, 0.5, mask_at(shape, 0, 4, 0, 10)), Thing(PERSON, 0.9, mask_at(shape, 0, 4, 10, 20)),
              Thing(CAR, 0.8, mask_at(shape, 0, 4, 20, 30)), Thing(PERSON, 0.7, mask_at(shape, 0, 4, 30, 40))]
    out = assemble(things, np.full(shape, -1), LABEL_SET, 0, DIVISOR, 4, 0).result
    assert out.panoptic[0, ::10].tolist() == [6002, 5001, 6001, 5002]
    assert out.valid_instances[:, COL["id"]].tolist() == [5001, 6001, 5002, 6002]  # rows by score
    row = out.valid_instances[1]
    assert (row[COL["x1"]], row[COL["y1"]], row[COL["x2"]], row[COL["y2"]]) == (20, 0, 29, 3)
    assert row[COL["area"]] == 40 and (row[COL["centroid_x"]], row[COL["centroid_y"]]) == (24.5, 1.5)


def test_stuff_exactly_at_min_area_stays_and_one_pixel_less_is_void():
    stuff = np.full((10, 10), ROAD)
    stuff[:, :4] = SKY  # 40 pixels of sky
    kept = assemble([], stuff, LABEL_SET, 40, DIVISOR, 2, 0).result
    assert kept.panoptic[0, 0] == SKY * DIVISOR and kept.num_instances == 2
    stuff[0, 0] = ROAD  # 39
    dropped = assemble([], stuff, LABEL_SET, 40, DIVISOR, 2, 0).result
    assert dropped.panoptic[1, 0] == VOID_ID and dropped.semantic[1, 0] == VOID_CLASS and dropped.num_instances == 1


# --- PSN ---------------------------------------------------------------------------------------------

def test_a_peak_exactly_at_the_centre_threshold_is_not_a_centre():
    heatmap = np.zeros((9, 9), dtype=np.float32)
    heatmap[4, 4] = 0.1
    assert find_centres(heatmap, 0.1, 3) == []
    heatmap[4, 4] = np.nextafter(np.float32(0.1), np.float32(1))
    assert [c[1:] for c in find_centres(heatmap, 0.1, 3)] == [(4, 4)]


def test_centres_are_window_maxima_and_a_plateau_gives_one():
    heatmap = np.zeros((10, 20), dtype=np.float32)
    heatmap[2, 3:6] = 0.8  # a flat top: its first pixel in raster order
    heatmap[8, 4] = 0.9  # 6 rows below: outside the plateau's 7 x 7 windows
    heatmap[2, 8] = 0.7  # 3 columns from the plateau's last pixel: inside its window, suppressed
    heatmap[5, 15] = 0.5
    assert [c[1:] for c in find_centres(heatmap, 0.1, 7)] == [(8, 4), (2, 3), (5, 15)]


def test_each_thing_pixel_joins_the_centre_its_offset_points_closest_to():
    thing = np.array([[True, True, False, True]])
    offset = np.zeros((2, 1, 4))
    offset[1] = [[3.0, -1.0, 0.0, -0.4]]  # x targets 3, 0, 2, 2.6
    owner = group_pixels(thing, offset, [(0.9, 0, 0), (0.8, 0, 3)])
    assert owner.tolist() == [[1, 0, -1, 1]]


def test_instance_class_is_the_majority_vote_and_ties_go_to_the_lower_class():
    semantic = np.array([[PERSON, PERSON, CAR, BICYCLE, CAR]])
    owner = np.array([[0, 0, 0, 1, 1]])
    assert vote_classes(semantic, owner, 2, LABEL_SET.num_classes) == [PERSON, CAR]


def test_psn_overflow_reports_dropped_centres_and_voids_their_pixels():
    scene, heads, expected = weakest_centre_case(DIVISOR)
    full = psn_reference(heads, LABEL_SET, THRESHOLDS, DIVISOR, 3, 7)
    capped = psn_reference(heads, LABEL_SET, THRESHOLDS, DIVISOR, 2, 7)
    assert full.candidates_dropped == 0 and capped.candidates_dropped == 1
    np.testing.assert_array_equal(full.result.panoptic, expected)
    np.testing.assert_array_equal(capped.result.panoptic, np.where(scene.instance == 1, VOID_ID, expected))


@pytest.mark.parametrize("height,width,frames", [(256, 512, 3), (512, 1024, 2)])
def test_psn_reference_reproduces_ground_truth_from_ideal_heads(height, width, frames):
    accumulator = PQAccumulator.from_label_set(SYNTHETIC)
    for n in range(frames):
        scene = generate_scene(10**9 + n, height, width)
        heads = ideal_psn_heads(scene.semantic, scene.instance, SYNTHETIC)
        out = psn_reference(heads, SYNTHETIC, Thresholds(min_stuff_area=0), DIVISOR, 100, 7)
        accumulator.add_id_maps(scene.panoptic(DIVISOR), out.result.panoptic, DIVISOR)
    assert accumulator.result().all.pq >= 99.0


# --- RTPS --------------------------------------------------------------------------------------------

def test_rtps_mask_takes_pixels_strictly_above_sigma():
    query = Detection(np.array([0.0, 0.0, 8.0, 8.0]), LABEL_SET.thing_ids.index(CAR), 0.9, 0)
    boxes = np.broadcast_to(query.box, (2, 3, 4))  # every pixel's box is the query: IoU 1
    probability = np.zeros((LABEL_SET.num_classes, 2, 3))
    probability[CAR] = [[0.3, 0.31, 0.3], [0.9, 0.0, 0.29]]
    has_box = np.array([[True, True, True], [False, True, True]])
    mask = instance_masks([query], boxes, has_box, probability, LABEL_SET.thing_ids, 0.3)[0]
    assert mask.tolist() == [[False, True, False], [False, False, False]]


def test_rtps_reference_finds_the_objects_of_noise_free_scenes():
    scenes = seeded_scenes(3, seed=10)
    results = [rtps_reference(rtps_heads(s, np.random.default_rng(n), noise=0.0), LABEL_SET, FCOS_STRIDES,
                              THRESHOLDS, DIVISOR, 20) for n, s in enumerate(scenes)]
    assert pq(scenes, results)[1] >= 70.0
    assert all(r.candidates_dropped == 0 for r in results)


@pytest.mark.parametrize("method", ["rtps", "lpsnet"])
def test_dense_box_overflow_voids_the_pixels_of_dropped_boxes(method):
    scene = seeded_scenes(1, seed=3)[0]
    make, reference = {"rtps": (rtps_heads, rtps_reference), "lpsnet": (lpsnet_heads, lpsnet_reference)}[method]
    heads = make(scene, np.random.default_rng(0), noise=0.0)
    full = reference(heads, LABEL_SET, FCOS_STRIDES, THRESHOLDS, DIVISOR, 50)
    capped = reference(heads, LABEL_SET, FCOS_STRIDES, THRESHOLDS, DIVISOR, 2)
    kept_things = [r for r in capped.result.valid_instances if LABEL_SET.thing[int(r[COL["class_id"]])]]
    assert full.candidates_dropped == 0 and capped.candidates_dropped > 0 and len(kept_things) <= 2
    lost = (full.result.panoptic % DIVISOR > 0) & (capped.result.panoptic != full.result.panoptic)
    assert lost.any() and (capped.result.panoptic[lost] == VOID_ID).all()


# --- LPSNet ------------------------------------------------------------------------------------------

def test_lpsnet_overlapping_pixels_go_to_the_box_whose_borderness_matches_best():
    semantic = np.full((8, 16), CAR)
    heads = {"borderness": [np.full((1, 1, 1, 2), 20.0)]}  # predicted border-ness ~1: the most central box
    first = Detection(np.array([0.0, 0.0, 10.0, 8.0]), 1, 0.9, 0)
    second = Detection(np.array([6.0, 0.0, 16.0, 8.0]), 1, 0.8, 0)
    masks = [np.zeros_like(semantic, dtype=bool) for _ in range(2)]
    masks[0][:, :10], masks[1][:, 6:] = True, True  # 4 of the second's 10 columns are taken
    owner = paste_with_borderness([first, second], masks, heads, (8,), 0.5, semantic.shape)
    # Columns 6, 7 are more central in the first box, 9 in the second, 8 equally (the first keeps it).
    assert owner[4].tolist() == [0] * 9 + [1] * 7
    strict = paste_with_borderness([first, second], masks, heads, (8,), 0.3, semantic.shape)
    assert (strict == 0).sum() == 80 and (strict == 1).sum() == 0  # 0.4 of the second is taken: > 0.3


def test_lpsnet_reference_finds_the_objects_of_noise_free_scenes():
    scenes = seeded_scenes(3, seed=20)
    results = [lpsnet_reference(lpsnet_heads(s, np.random.default_rng(n), noise=0.0), LABEL_SET, FCOS_STRIDES,
                                THRESHOLDS, DIVISOR, 20) for n, s in enumerate(scenes)]
    assert pq(scenes, results)[1] >= 70.0


# --- FPSNet ------------------------------------------------------------------------------------------

def test_fpsnet_keeps_the_n_att_best_detections_and_counts_the_rest():
    scene = seeded_scenes(1, seed=4, objects=6)[0]
    heads = fpsnet_heads(scene, np.random.default_rng(0), noise=0.0)
    full = fpsnet_reference(heads, AnalyticFPSNetHead(16), LABEL_SET, FCOS_STRIDES, ANCHOR_SIZES, ANCHOR_RATIOS,
                            THRESHOLDS, DIVISOR, 16)
    few = fpsnet_reference(heads, AnalyticFPSNetHead(2), LABEL_SET, FCOS_STRIDES, ANCHOR_SIZES, ANCHOR_RATIOS,
                           THRESHOLDS, DIVISOR, 16)
    found = full.result.num_instances - sum(1 for r in full.result.valid_instances if r[COL["id"]] % DIVISOR == 0)
    assert full.candidates_dropped == 0 and found == len(scene.objects)
    assert few.candidates_dropped == len(scene.objects) - 2
    assert pq([scene], [full])[1] >= 40.0  # the analytic head's masks are box-shaped: occlusions cost


class FixedLogitsHead:
    """A panoptic head that returns preset logits, whatever its inputs."""

    def __init__(self, logits: np.ndarray, num_attention: int) -> None:
        self.logits, self.num_attention, self.attention_scale = logits, num_attention, 50.0

    def panoptic_head(self, features, masks):
        return torch.from_numpy(self.logits)[None]


def test_fpsnet_pixels_of_an_instance_channel_without_detection_are_void():
    scene = make_scene(128, 128, [(SKY, 63), (ROAD, 127)], [(CAR, 16, 16, 47, 47)])
    heads = fpsnet_heads(scene, np.random.default_rng(0), noise=0.0)
    logits = np.zeros((2 + len(LABEL_SET.stuff_ids), 16, 16), dtype=np.float32)
    logits[0, :8], logits[1, 8:, :8], logits[2, 8:, 8:] = 5.0, 5.0, 5.0  # instance 0, empty 1, road
    out = fpsnet_reference(heads, FixedLogitsHead(logits, 2), LABEL_SET, FCOS_STRIDES, ANCHOR_SIZES, ANCHOR_RATIOS,
                           THRESHOLDS, DIVISOR, 4).result
    assert (out.panoptic[:60] == CAR * DIVISOR + 1).all()
    assert (out.panoptic[68:, :60] == VOID_ID).all() and (out.panoptic[68:, 68:] == ROAD * DIVISOR).all()


# --- SPINet ------------------------------------------------------------------------------------------

def test_spinet_samples_locations_strictly_above_the_confidence_threshold():
    logits = np.full((1, 3, 2, 2), -9.0, dtype=np.float32)
    logits[0, 1, 0, 1] = 0.0  # probability exactly 0.5
    logits[0, 2, 1, 0] = 1.0
    assert [s[1:] for s in sampling_locations([logits], 0.5)] == [(2, 0, 1, 0)]
    assert [s[1:] for s in sampling_locations([logits], 0.4999)] == [(2, 0, 1, 0), (1, 0, 0, 1)]


def test_spinet_merge_removes_duplicate_masks_and_caps_pasted_instances():
    scene = seeded_scenes(1, seed=5)[0]
    heads = spinet_heads(scene, np.random.default_rng(0), noise=0.0)
    samples = sampling_locations(heads["class_logits"], THRESHOLDS.score_threshold)
    full = spinet_reference(heads, AnalyticSPINetHead(), LABEL_SET, THRESHOLDS, DIVISOR, 20)
    things = [r for r in full.result.valid_instances if r[COL["id"]] % DIVISOR > 0]
    assert len(samples) > 2 * len(scene.objects) and len(things) == len(scene.objects)  # duplicates merged
    assert pq([scene], [full])[1] >= 70.0
    capped = spinet_reference(heads, AnalyticSPINetHead(), LABEL_SET, THRESHOLDS, DIVISOR, 2)
    assert capped.candidates_dropped == len(scene.objects) - 2
    lost = (full.result.panoptic % DIVISOR > 0) & (capped.result.panoptic != full.result.panoptic)
    assert lost.any() and (capped.result.panoptic[lost] == VOID_ID).all()


# --- defaults ----------------------------------------------------------------------------------------

def test_paper_defaults_are_the_papers_values():
    assert paper_defaults("rtps").mask_sigma == 0.3
    assert paper_defaults("spinet").score_threshold == 0.45
    assert paper_defaults("lpsnet").overlap_threshold == 0.3
    assert paper_defaults("fpsnet").min_stuff_area == 0.0
    assert used_thresholds("psn") == ("center_threshold", "min_stuff_area")
    for sources in DEFAULT_SOURCES.values():
        for source in sources.values():
            assert source.kind in ("stated", "cited", "not stated")
            assert source.kind == "not stated" or (source.where and source.quote)


def test_without_any_candidate_every_reference_gives_stuff_only():
    scene = seeded_scenes(1, seed=6)[0]
    rng = np.random.default_rng(0)
    strict = Thresholds(score_threshold=1.0, center_threshold=1.0, min_stuff_area=64)
    results = [
        psn_reference(ideal_psn_heads(scene.semantic, scene.instance + 1, LABEL_SET), LABEL_SET, strict, DIVISOR, 4, 7),
        rtps_reference(rtps_heads(scene, rng), LABEL_SET, FCOS_STRIDES, strict, DIVISOR, 4),
        lpsnet_reference(lpsnet_heads(scene, rng), LABEL_SET, FCOS_STRIDES, strict, DIVISOR, 4),
        fpsnet_reference(fpsnet_heads(scene, rng), AnalyticFPSNetHead(4), LABEL_SET, FCOS_STRIDES, ANCHOR_SIZES,
                         ANCHOR_RATIOS, strict, DIVISOR, 4),
        spinet_reference(spinet_heads(scene, rng), AnalyticSPINetHead(), LABEL_SET, strict, DIVISOR, 4),
    ]
    for out in results:
        assert out.result.panoptic.shape == scene.shape and out.candidates_dropped == 0
        ids = out.result.panoptic
        assert not ((ids >= 0) & (ids % DIVISOR > 0)).any() and (ids >= 0).any()


@pytest.mark.parametrize("length", [10, 16, 32])
@pytest.mark.parametrize("method", ["rtps", "lpsnet"])
def test_dense_chain_heads_detect_a_greedy_nms_chain(method, length):
    heads = dense_chain_heads(length, {"rtps": "centerness", "lpsnet": "borderness"}[method])
    height, width = 4 * heads["semantic"].shape[-2], 4 * heads["semantic"].shape[-1]
    found = (query_boxes if method == "rtps" else lpsnet_boxes)(heads, FCOS_STRIDES, height, width,
                                                                Thresholds(score_threshold=0.05, nms_iou=0.5))
    assert [int(d.box[0]) // 8 for d in found] == chain_keep(length)
    out = (rtps_reference if method == "rtps" else lpsnet_reference)(heads, LABEL_SET, FCOS_STRIDES, Thresholds(
        score_threshold=0.05, nms_iou=0.5), DIVISOR, 100)
    assert out.result.num_instances >= 2 and out.candidates_dropped == 0


@pytest.mark.parametrize("length", [8, 16, 32])
def test_spinet_chain_heads_paste_every_other_mask(length):
    heads = spinet_chain_heads(length)
    out = spinet_reference(heads, AnalyticSPINetHead(max_objects=length), LABEL_SET,
                           Thresholds(score_threshold=0.05, overlap_threshold=0.3), DIVISOR, 100).result
    things = sorted(r[COL["x1"]] for r in out.valid_instances if r[COL["id"]] % DIVISOR > 0)
    assert [int(x1) // 8 for x1 in things] == chain_keep(length)


def test_heldout_pq_runs_a_shipped_checkpoint_through_its_reference(capsys):
    main(["models/psn.pt", "--frames", "1", "--height", "128", "--width", "256", "--paper-defaults"])
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "psn" and report["frames"] == 1 and report["candidates_dropped"] == 0
    assert report["thresholds"] == paper_defaults("psn").as_dict() and 20.0 < report["pq"] <= 100.0
