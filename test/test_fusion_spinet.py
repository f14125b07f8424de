"""SPINet's graph steps against the matching steps of its reference (fusion/reference/spinet.py):
sampling, per-pixel instance masks, pasting by confidence, and overflow at the fusion's output."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fusion_cases import chain_keep, seeded_scenes, spinet_chain_heads
from test_fusion_methods import run_fusion, run_method
from test_fusion_scenes import LABEL_SET, AnalyticSPINetHead, spinet_heads

from panoptic_ros.classes import VOID_ID
from panoptic_ros.fusion import spinet
from panoptic_ros.fusion.reference.common import paste_by_confidence as reference_paste
from panoptic_ros.fusion.reference.spinet import instance_mask, sampling_locations
from panoptic_ros.fusion.spinet import (
    BOUNDARY_MASKS,
    OWNER_CANDIDATES,
    PEAK_WINDOW,
    Samples,
    SPINetFusion,
    block_pixel_masks,
    block_pixels,
    cell_masks,
    corner_fraction,
    instance_masks,
    paste,
    pixel_owner,
    upsample_blocks,
)
from panoptic_ros.fusion.spinet import (
    sampling_locations as graph_sampling_locations,
)
from panoptic_ros.pipeline_io import COL, Thresholds

SIGMA = torch.tensor(0.5)


def graph_samples(class_logits: list[np.ndarray], threshold: float, count: int = 64) -> list[tuple[float, int]]:
    samples = graph_sampling_locations([torch.from_numpy(x) for x in class_logits],
                                       torch.tensor(threshold, dtype=torch.float32), count)
    valid = samples.valid.numpy()
    return list(zip(samples.score.numpy()[valid].tolist(), samples.index.numpy()[valid].tolist(), strict=True))


def test_sampling_takes_the_references_locations_that_are_local_maxima():
    rng = np.random.default_rng(0)
    shapes = [(16, 32), (16, 32), (8, 16)]
    levels = []
    for h, w in shapes:  # one thing class per location, so a location's best class is the one it peaks in
        logits = np.full((1, 3, h, w), -20.0, dtype=np.float32)
        cls = rng.integers(0, 3, (h, w))
        rows, cols = np.mgrid[0:h, 0:w]
        logits[0, cls, rows, cols] = rng.normal(0.0, 2.0, (h, w))
        levels.append(logits)
    offsets = np.cumsum([0] + [h * w for h, w in shapes])
    expected = []
    for confidence, thing, level, i, j in sampling_locations(levels, 0.45):
        window = F.max_pool2d(torch.from_numpy(levels[level][:, thing:thing + 1]), PEAK_WINDOW, 1, PEAK_WINDOW // 2)
        if levels[level][0, thing, i, j] == window[0, 0, i, j]:
            expected.append((confidence, offsets[level] + i * shapes[level][1] + j))
    found = graph_samples(levels, 0.45, count=len(expected) + 5)
    assert len(expected) > 20 and [n for _, n in found] == [n for _, n in expected]
    np.testing.assert_allclose([c for c, _ in found], [c for c, _ in expected], rtol=1e-6)


def test_sampling_skips_a_location_exactly_at_the_threshold_and_caps_the_count():
    logits = np.full((1, 3, 4, 4), -9.0, dtype=np.float32)
    logits[0, 1, 0, 0] = 0.0  # confidence exactly 0.5
    logits[0, 2, 3, 3] = 1.0
    logits[0, 0, 0, 3] = 2.0
    assert [n for _, n in graph_samples([logits], 0.5)] == [3, 15]
    assert [n for _, n in graph_samples([logits], 0.4999)] == [3, 15, 0]
    assert [n for _, n in graph_samples([logits], 0.4999, count=2)] == [3, 15]


def random_masks(count: int, h: int = 12, w: int = 20,
                 seed: int = 0) -> tuple[torch.Tensor, AnalyticSPINetHead, torch.Tensor]:
    """Smooth random stride-4 mask logits of `count` filters through AnalyticSPINetHead: (feature, head, filters)."""
    rng = np.random.default_rng(seed)
    head = AnalyticSPINetHead(max_objects=count)
    dim = head.stuff_filters.shape[1]
    feature = F.avg_pool2d(torch.from_numpy(rng.normal(0.0, 3.0, (1, dim, h + 2, w + 2)).astype(np.float32)), 3,
                           stride=1)
    filters = torch.zeros(count, dim)
    filters[torch.arange(count), torch.arange(count)] = 1.0
    return feature, head, filters


def fraction_of(logits: torch.Tensor) -> torch.Tensor:
    return corner_fraction(cell_masks(logits, SIGMA, torch.ones(logits.shape[0], dtype=torch.bool)))


def graph_keep(logits: torch.Tensor, overlap: float, valid: torch.Tensor | None = None) -> tuple[list[int], bool]:
    """Kept mask indices and `converged` of the graph's paste on stride-4 logits (M, h, w)."""
    valid = torch.ones(logits.shape[0], dtype=torch.bool) if valid is None else valid
    fraction = corner_fraction(cell_masks(logits, SIGMA, valid))
    keep, converged = paste(block_pixels(logits, fraction, SIGMA), valid, torch.tensor(overlap))
    return torch.nonzero(keep)[:, 0].tolist(), bool(converged)


def test_each_pixel_of_an_instance_mask_is_the_references_upsampled_mask():
    feature, head, filters = random_masks(6)
    logits = head.dynamic_mask_logits(feature, filters[None])[0]
    for n in range(6):
        expected = instance_mask(head, feature, filters[n].numpy(), 0.5)
        owner, exact = pixel_owner(logits[n:n + 1], fraction_of(logits[n:n + 1]), torch.tensor([True]), SIGMA)
        owner = owner.numpy()
        assert bool(exact)
        assert 0.2 < expected.mean() < 0.8
        np.testing.assert_array_equal(owner == 0, expected)


def test_instance_masks_are_the_sampled_filters_convolution():
    feature, head, filters = random_masks(4)
    maps = [f.T.reshape(1, -1, 2, 2) for f in (filters[:4], torch.zeros(4, filters.shape[1]))]  # 2 levels of 2 x 2
    samples = Samples(torch.tensor([3, 0]), torch.tensor([0, 0]), torch.tensor([0.9, 0.8]), torch.tensor([True, True]))
    logits = instance_masks(head, feature, maps, samples)
    np.testing.assert_allclose(logits.numpy(), head.dynamic_mask_logits(feature, filters[[3, 0]][None])[0].numpy())


@pytest.mark.parametrize("kept", [[True] * OWNER_CANDIDATES, [True, False, True, False]])
def test_pixels_go_to_the_first_kept_mask_covering_them(kept):
    feature, head, filters = random_masks(OWNER_CANDIDATES, seed=1)
    logits = head.dynamic_mask_logits(feature, filters[None])[0]
    masks = [instance_mask(head, feature, f.numpy(), 0.5) for f, k in zip(filters, kept, strict=True) if k]
    positions = np.flatnonzero(kept)
    owner, pasted = reference_paste(masks, 1.0)  # overlap 1.0: every mask is pasted
    expected = np.where(owner >= 0, positions[owner], len(kept))
    assert len(pasted) == len(masks) and len(np.unique(expected)) == len(masks) + 1
    owner, exact = pixel_owner(logits, fraction_of(logits), torch.tensor(kept), SIGMA)
    np.testing.assert_array_equal(owner.numpy(), expected)
    assert bool(exact)


@pytest.mark.parametrize("masks", [OWNER_CANDIDATES, OWNER_CANDIDATES + 1])
def test_pixel_owner_says_when_a_block_has_more_masks_than_it_compares(masks):
    # The first OWNER_CANDIDATES masks hold only cell (0, 0); the last one holds every cell, so past the budget
    # it reaches the blocks around (0, 0) where the others leave pixels uncovered.
    logits = torch.full((masks, 4, 4), -5.0)
    logits[:, 0, 0] = 5.0
    logits[OWNER_CANDIDATES:] = 5.0
    owner, exact = pixel_owner(logits, fraction_of(logits), torch.ones(masks, dtype=torch.bool), SIGMA)
    assert bool(exact) == (masks == OWNER_CANDIDATES)
    # In both cases pixels near (0, 0) are left without an owner: past the budget the last mask would cover them.
    assert (owner == 0).any() and (owner == masks).any()


def test_a_frame_whose_blocks_hold_more_masks_than_compared_is_not_converged(monkeypatch):
    scene = seeded_scenes(1, seed=0, objects=8)[0]  # neighbouring objects: blocks that two masks reach
    heads = spinet_heads(scene, np.random.default_rng(0), noise=0.0)
    run_method("spinet", heads, Thresholds(min_stuff_area=64), k=20)  # converged with OWNER_CANDIDATES
    monkeypatch.setattr(spinet, "OWNER_CANDIDATES", 1)
    fusion = SPINetFusion(AnalyticSPINetHead(), LABEL_SET, 20)
    assert not run_fusion(fusion, heads, Thresholds(min_stuff_area=64)).converged


@pytest.mark.parametrize("length", [16, 32])
def test_paste_keeps_every_other_mask_of_a_chain(length):
    heads = spinet_chain_heads(length)
    head = AnalyticSPINetHead(max_objects=length)
    filters = [torch.from_numpy(f) for f in heads["filters"]]
    index = torch.arange(length)  # the chain's locations: the first level's top row
    samples = Samples(index, torch.ones(length, dtype=torch.int64), torch.linspace(0.9, 0.5, length),
                      torch.ones(length, dtype=torch.bool))
    logits = instance_masks(head, torch.from_numpy(heads["panoptic_feature"]), filters, samples)
    assert graph_keep(logits, 0.3) == (chain_keep(length), True)


def ramp_masks(left_edge: float, right_edge: float) -> tuple[torch.Tensor, AnalyticSPINetHead, torch.Tensor]:
    """(feature, head, filters) of two masks on a 12 x 20 cell (48 x 80 pixel) frame: A, the pixels
    right of a slanted edge near column left_edge (cells), and B, those left of one near right_edge,
    so that B's overlap with A is a band whose sides cross cells."""
    head = AnalyticSPINetHead(max_objects=2)
    y, x = np.mgrid[0:12, 0:20]
    feature = np.zeros((1, head.stuff_filters.shape[1], 12, 20), dtype=np.float32)
    feature[0, 0] = 0.7 * (x - left_edge) + 0.3 * (y - 5.1)
    feature[0, 1] = -0.6 * (x - right_edge) + 0.2 * (y - 4.0)
    return torch.from_numpy(feature), head, torch.eye(2, feature.shape[1])


@pytest.mark.parametrize(("left_edge", "right_edge", "overlap"), [
    (8.6, 11.7, 0.3),  # B's pixels 29.85% taken (kept at 0.3), its stride-4 cells 30.5% (dropped)
    (9.3, 11.2, 0.2275),  # pixels 22.88% taken (dropped), cells 22.6% (kept)
])
def test_paste_decides_on_input_pixels_not_cells(left_edge, right_edge, overlap):
    feature, head, filters = ramp_masks(left_edge, right_edge)
    logits = head.dynamic_mask_logits(feature, filters[None])[0]
    a, b = (instance_mask(head, feature, f.numpy(), 0.5) for f in filters)
    cells_a, cells_b = (torch.sigmoid(logits) > SIGMA).numpy()
    exact = np.float32(np.count_nonzero(a & b) / np.count_nonzero(b))
    on_cells = np.count_nonzero(cells_a & cells_b) / np.count_nonzero(cells_b)
    assert (exact > overlap) != (on_cells > overlap)  # counting cells would flip the decision
    _, pasted = reference_paste([a, b], overlap)
    assert graph_keep(logits, overlap) == (pasted, True)
    assert pasted == ([0] if exact > overlap else [0, 1])


def test_paste_beyond_its_pixel_budget_is_not_converged():
    # BOUNDARY_MASKS + 1 copies of one mask cross the same blocks: the last is left out.
    feature, head, _ = ramp_masks(8.6, 11.7)
    filters = torch.zeros(BOUNDARY_MASKS + 1, feature.shape[1])
    filters[:, 1] = 1.0
    logits = head.dynamic_mask_logits(feature, filters[None])[0]
    assert graph_keep(logits, 0.3) == ([0], False)
    assert graph_keep(logits[:BOUNDARY_MASKS], 0.3) == ([0], True)


def test_kept_masks_beyond_k_are_void_and_counted():
    scene = seeded_scenes(1, seed=5, objects=3)[0]  # one sampled peak each: 3 samples fit the 2K = 4 budget
    heads = spinet_heads(scene, np.random.default_rng(0), noise=0.0)
    full, _ = run_method("spinet", heads, Thresholds(min_stuff_area=64), k=20)
    capped, reference = run_method("spinet", heads, Thresholds(min_stuff_area=64), k=2)  # dropped counts agree
    assert full.candidates_dropped == 0 and capped.candidates_dropped == len(scene.objects) - 2
    lost = (full.panoptic % 1000 > 0) & (capped.panoptic != full.panoptic)
    assert lost.any() and (capped.panoptic[lost] == VOID_ID).all()
    np.testing.assert_array_equal(capped.panoptic, reference.panoptic)
    assert LABEL_SET.thing[int(capped.valid_instances[0, COL["class_id"]])]  # the best thing comes first


def test_block_pixel_masks_are_upsample_blocks_bit_for_bit():
    # Logits spread around the threshold's logit, so that many pixels of a block fall on either side.
    corners = torch.from_numpy(np.random.default_rng(3).normal(0.0, 0.3, (4, 7, 5, 1)).astype(np.float32))
    expected = torch.sigmoid(upsample_blocks(corners, 4)) > SIGMA  # (7, 5 * 4, 4): blocks stacked by row
    found = block_pixel_masks([c.reshape(-1) for c in corners], 4, SIGMA)  # (4, 4, 35)
    assert 0.2 < expected.float().mean() < 0.8
    np.testing.assert_array_equal(found.permute(2, 0, 1).numpy(), expected.reshape(35, 4, 4).numpy())
