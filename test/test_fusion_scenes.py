"""Scenes for the fusion tests: a ground-truth layout (stuff bands and occluding objects) and the
head outputs each method's network would ideally give for it, plus noise.

Also holds the small analytic heads that stand in for FPSNet's panoptic head and SPINet's dynamic
convolution in scene tests (head outputs made by hand, like every other head here), and the
graph-vs-reference comparison helpers. The tests of the scenes themselves are at the bottom.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.fusion.base import RuntimeThresholds
from panoptic_ros.fusion.pipeline import result_from_tensors
from panoptic_ros.networks.box_coding import encode_deltas, level_points, retinanet_anchors
from panoptic_ros.pipeline_io import COL, PanopticResult, Thresholds

LABEL_SET = SYNTHETIC
STRIDE = 4
DIVISOR = 1000
FCOS_STRIDES = (8, 16, 32, 64, 128)
SPINET_STRIDES = (8, 8, 16, 32)
ANCHOR_SIZES = tuple(tuple(32.0 * 2**i * 2 ** (k / 3) for k in range(3)) for i in range(5))
ANCHOR_RATIOS = tuple((0.5, 1.0, 2.0) for _ in range(5))


@dataclass
class SceneObject:
    class_id: int
    box: tuple[int, int, int, int]  # visible pixels' x1, y1, x2, y2 (inclusive)
    centre: tuple[float, float]  # visible pixels' mean (y, x)


@dataclass
class Scene:
    semantic: np.ndarray  # (H, W) class ids
    instance: np.ndarray  # (H, W) object index, -1 for stuff
    objects: list[SceneObject]

    @property
    def shape(self) -> tuple[int, int]:
        return self.semantic.shape


def make_scene(height: int, width: int, bands: list[tuple[int, int]],
               objects: list[tuple[int, int, int, int, int]]) -> Scene:
    """Stuff bands [(class, last row)] top to bottom, then objects [(class, x1, y1, x2, y2)] painted in
    order (later ones occlude earlier ones); objects left with fewer than 16 pixels are dropped."""

    def paint(kept: list[tuple[int, int, int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
        semantic = np.zeros((height, width), dtype=np.int64)
        top = 0
        for class_id, last in bands:
            semantic[top:last + 1] = class_id
            top = last + 1
        instance = np.full((height, width), -1)
        for k, (class_id, x1, y1, x2, y2) in enumerate(kept):
            semantic[y1:y2 + 1, x1:x2 + 1] = class_id
            instance[y1:y2 + 1, x1:x2 + 1] = k
        return semantic, instance

    _, instance = paint(objects)
    # Dropping hidden objects only uncovers more of the others, so one repaint suffices.
    kept = [obj for k, obj in enumerate(objects) if (instance == k).sum() >= 16]
    semantic, instance = paint(kept)
    visible = []
    for k, (class_id, *_) in enumerate(kept):
        ys, xs = np.nonzero(instance == k)
        visible.append(SceneObject(class_id, (xs.min(), ys.min(), xs.max(), ys.max()), (ys.mean(), xs.mean())))
    return Scene(semantic, instance, visible)


def random_scene(rng: np.random.Generator, height: int = 128, width: int = 256, count: int = 6) -> Scene:
    """Sky, building, vegetation, sidewalk and road bands with `count` random things in front."""
    cuts = np.sort(rng.choice(np.arange(8, height - 8), size=4, replace=False))
    bands = [(4, cuts[0]), (2, cuts[1]), (3, cuts[2]), (1, cuts[3]), (0, height - 1)]
    objects = []
    for _ in range(count):
        w, h = rng.integers(14, 56), rng.integers(14, 56)
        x1, y1 = rng.integers(0, width - w), rng.integers(0, height - h)
        objects.append((int(rng.choice(LABEL_SET.thing_ids)), int(x1), int(y1), int(x1 + w - 1), int(y1 + h - 1)))
    return make_scene(height, width, bands, objects)


def _one_hot_logits(classes: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    logits = 4.0 * (classes[None] == np.arange(LABEL_SET.num_classes)[:, None, None])
    return (logits + noise * rng.standard_normal(logits.shape))[None].astype(np.float32)


def sample(grid: np.ndarray, stride: int, offset: int) -> np.ndarray:
    """The map's values at pixels (i * stride + offset, j * stride + offset)."""
    return grid[offset::stride, offset::stride]


def psn_heads(scene: Scene, rng: np.random.Generator, noise: float = 0.3) -> dict[str, np.ndarray]:
    h, w = scene.shape
    ys, xs = np.mgrid[0:h, 0:w]
    center = np.zeros((h, w))
    offset = np.zeros((2, h, w))
    for k, obj in enumerate(scene.objects):
        cy, cx = round(obj.centre[0]), round(obj.centre[1])
        peak = rng.uniform(0.5, 1.0)
        center = np.maximum(center, peak * np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * 6.0**2)))
        mine = scene.instance == k
        offset[0][mine], offset[1][mine] = (cy - ys)[mine], (cx - xs)[mine]
    offset += noise * rng.standard_normal(offset.shape)
    return {"semantic": _one_hot_logits(scene.semantic, rng, noise), "center": center[None, None].astype(np.float32),
            "offset": offset[None].astype(np.float32)}


def _fcos_level(obj: SceneObject) -> int:
    side = max(obj.box[2] - obj.box[0], obj.box[3] - obj.box[1]) + 1
    return int(np.searchsorted([64, 128, 256, 512], side, side="right"))


def _dense_boxes(scene: Scene, rng: np.random.Generator, strides: tuple[int, ...], noise: float,
                 quality: str) -> dict[str, list[np.ndarray]]:
    """FCOS-style per-level heads: box_cls, box_reg (l, t, r, b) and a quality logit per location."""
    heads: dict[str, list[np.ndarray]] = {"box_cls": [], "box_reg": [], quality: []}
    h, w = scene.shape
    for level, stride in enumerate(strides):
        lh, lw = h // stride, w // stride
        points = level_points(lh, lw, stride).numpy()
        owner = scene.instance[points[:, 1].astype(int), points[:, 0].astype(int)]
        cls = -5.0 + noise * rng.standard_normal((len(points), len(LABEL_SET.thing_ids)))
        reg = rng.uniform(2.0, 20.0, (len(points), 4))
        goodness = np.full(len(points), -3.0)
        for n, (x, y) in enumerate(points):
            if owner[n] < 0 or _fcos_level(scene.objects[owner[n]]) != level:
                continue
            obj = scene.objects[owner[n]]
            x1, y1, x2, y2 = obj.box[0], obj.box[1], obj.box[2] + 1, obj.box[3] + 1
            ltrb = np.array([x - x1, y - y1, x2 - x, y2 - y])
            reg[n] = np.maximum(ltrb + noise * rng.standard_normal(4), 0.5)
            cls[n, LABEL_SET.thing_ids.index(obj.class_id)] = 3.0 + noise * rng.standard_normal()
            target = np.sqrt(min(ltrb[0], ltrb[2]) / max(ltrb[0], ltrb[2]) * min(ltrb[1], ltrb[3])
                             / max(ltrb[1], ltrb[3]))
            goodness[n] = np.log(target + 1e-3) - np.log(1 - target + 1e-3) + noise * rng.standard_normal()
        shape = (1, -1, lh, lw)
        heads["box_cls"].append(cls.T.reshape(shape).astype(np.float32))
        heads["box_reg"].append(reg.T.reshape(shape).astype(np.float32))
        heads[quality].append(goodness.reshape(shape).astype(np.float32))
    return heads


def rtps_heads(scene: Scene, rng: np.random.Generator, noise: float = 0.3) -> dict:
    heads = _dense_boxes(scene, rng, FCOS_STRIDES, noise, "centerness")
    cell_owner = sample(scene.instance, STRIDE, 2)
    level = np.zeros_like(cell_owner)
    for k, obj in enumerate(scene.objects):
        level[cell_owner == k] = _fcos_level(obj) + 1
    levelness = 4.0 * (level[None] == np.arange(len(FCOS_STRIDES) + 1)[:, None, None])
    levelness += noise * rng.standard_normal(levelness.shape)
    return {**heads, "semantic": _one_hot_logits(sample(scene.semantic, STRIDE, 2), rng, noise),
            "levelness": levelness[None].astype(np.float32)}


def lpsnet_heads(scene: Scene, rng: np.random.Generator, noise: float = 0.3) -> dict:
    heads = _dense_boxes(scene, rng, FCOS_STRIDES, noise, "borderness")
    return {**heads, "semantic": _one_hot_logits(sample(scene.semantic, STRIDE, 2), rng, noise)}


def fpsnet_heads(scene: Scene, rng: np.random.Generator, noise: float = 0.3) -> dict:
    """RetinaNet heads (the best anchor of each object location scores) and stride-8 features whose
    channel 0 marks thing pixels and channels 1.. the stuff classes (see AnalyticFPSNetHead)."""
    h, w = scene.shape
    num_anchors = len(ANCHOR_SIZES[0]) * len(ANCHOR_RATIOS[0])
    things = len(LABEL_SET.thing_ids)
    heads: dict = {"box_cls": [], "box_reg": []}
    for level, stride in enumerate(FCOS_STRIDES):
        lh, lw = h // stride, w // stride
        anchors = retinanet_anchors(lh, lw, stride, ANCHOR_SIZES[level], ANCHOR_RATIOS[level]).reshape(lh * lw,
                                                                                                    num_anchors, 4)
        points = level_points(lh, lw, stride).numpy()
        cls = -5.0 + noise * rng.standard_normal((lh * lw, num_anchors, things))
        deltas = 0.1 * rng.standard_normal((lh * lw, num_anchors, 4))
        for n, (x, y) in enumerate(points):
            k = scene.instance[int(y), int(x)]
            if k < 0 or _fcos_level(scene.objects[k]) != level:
                continue
            obj = scene.objects[k]
            box = torch.tensor([obj.box[0], obj.box[1], obj.box[2] + 1, obj.box[3] + 1], dtype=torch.float32)
            best = int(torch.argmax(_iou(anchors[n], box)))
            deltas[n, best] = encode_deltas(anchors[n, best], box).numpy() + 0.02 * noise * rng.standard_normal(4)
            cls[n, best, LABEL_SET.thing_ids.index(obj.class_id)] = 3.0 + noise * rng.standard_normal()
        heads["box_cls"].append(cls.reshape(lh, lw, -1).transpose(2, 0, 1)[None].astype(np.float32))
        heads["box_reg"].append(deltas.reshape(lh, lw, -1).transpose(2, 0, 1)[None].astype(np.float32))
    cells = sample(scene.semantic, 8, 4)
    stuff = np.stack([cells == s for s in LABEL_SET.stuff_ids])
    heads["features"] = np.concatenate([(sample(scene.instance, 8, 4) >= 0)[None], stuff])[None].astype(np.float32)
    return heads


def _iou(anchors: Tensor, box: Tensor) -> Tensor:
    lt = torch.maximum(anchors[:, :2], box[:2])
    rb = torch.minimum(anchors[:, 2:], box[2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area = (anchors[:, 2:] - anchors[:, :2]).prod(dim=1) + (box[2:] - box[:2]).prod()
    return inter / (area - inter)


class AnalyticFPSNetHead(nn.Module):
    """FPSNet's panoptic head made by hand: instance channel n = 6 x attention mask n (scaled back
    to [0, 1]) on thing pixels, -1 elsewhere; stuff channel s = 3 x the feature's stuff channel."""

    def __init__(self, num_attention: int, attention_scale: float = 50.0) -> None:
        super().__init__()
        self.num_attention, self.attention_scale = num_attention, attention_scale

    def panoptic_head(self, features: Tensor, attention_masks: Tensor) -> Tensor:
        thing = features[:, :1]
        instances = 6.0 * attention_masks / self.attention_scale * thing - 1.0 + thing * 0.5
        return torch.cat((instances, 3.0 * features[:, 1:]), dim=1)


def spinet_heads(scene: Scene, rng: np.random.Generator, noise: float = 0.3, max_objects: int = 16) -> dict:
    """Class logits peaking at each object's centre location, filters selecting the object's
    feature channel, and a Panoptic-Feature of object, stuff and bias indicator channels (see
    AnalyticSPINetHead)."""
    h, w = scene.shape
    num_stuff = len(LABEL_SET.stuff_ids)
    dim = max_objects + num_stuff + 1
    heads: dict = {"class_logits": [], "filters": []}
    for level, stride in enumerate(SPINET_STRIDES):
        lh, lw = h // stride, w // stride
        points = level_points(lh, lw, stride).numpy()
        logits = -5.0 + noise * rng.standard_normal((lh * lw, len(LABEL_SET.thing_ids)))
        filters = 0.1 * rng.standard_normal((lh * lw, dim))
        for n, (x, y) in enumerate(points):
            k = scene.instance[int(y), int(x)]
            if k < 0 or _spinet_level(scene.objects[k]) != level:
                continue
            obj = scene.objects[k]
            closeness = 1.0 - np.hypot(y - obj.centre[0], x - obj.centre[1]) / 64.0
            logits[n, LABEL_SET.thing_ids.index(obj.class_id)] = 2.0 + closeness + 0.1 * noise * rng.standard_normal()
            filters[n, k], filters[n, -1] = 8.0, -4.0
        heads["class_logits"].append(logits.T.reshape(1, -1, lh, lw).astype(np.float32))
        heads["filters"].append(filters.T.reshape(1, -1, lh, lw).astype(np.float32))
    owner = sample(scene.instance, STRIDE, 2)
    cells = sample(scene.semantic, STRIDE, 2)
    feature = np.zeros((dim, h // STRIDE, w // STRIDE))
    for k in range(min(len(scene.objects), max_objects)):
        feature[k] = owner == k
    for s, class_id in enumerate(LABEL_SET.stuff_ids):
        feature[max_objects + s] = cells == class_id
    feature[-1] = 1.0
    heads["panoptic_feature"] = (feature + 0.05 * noise * rng.standard_normal(feature.shape))[None].astype(np.float32)
    return heads


def _spinet_level(obj: SceneObject) -> int:
    """Small objects on P2 (index 0; P3 at index 1 shares its stride and stays empty), larger on P4, P5."""
    return (0, 2, 3, 3, 3)[_fcos_level(obj)]


class AnalyticSPINetHead(nn.Module):
    """SPINet's single-shot convolution made by hand: a filter is the 1x1 kernel itself (no FC);
    stuff filter s picks the feature's stuff channel s."""

    def __init__(self, max_objects: int = 16) -> None:
        super().__init__()
        num_stuff = len(LABEL_SET.stuff_ids)
        stuff = torch.zeros(num_stuff, max_objects + num_stuff + 1)
        stuff[torch.arange(num_stuff), max_objects + torch.arange(num_stuff)] = 4.0
        self.register_buffer("stuff_filters", stuff)

    def dynamic_mask_logits(self, panoptic_feature: Tensor, filters: Tensor) -> Tensor:
        b, f, h, w = panoptic_feature.shape
        return torch.bmm(filters, panoptic_feature.reshape(b, f, h * w)).reshape(b, -1, h, w)

    def stuff_mask_logits(self, panoptic_feature: Tensor) -> Tensor:
        return self.dynamic_mask_logits(panoptic_feature, self.stuff_filters[None])


def to_torch(heads: dict) -> dict:
    return {k: [torch.from_numpy(x) for x in v] if isinstance(v, list) else torch.from_numpy(v)
            for k, v in heads.items()}


def run_fusion(fusion: nn.Module, heads: dict, thresholds: Thresholds, label_divisor: int = DIVISOR) -> PanopticResult:
    """The static fusion, eagerly, on NumPy heads."""
    with torch.no_grad():
        out = fusion(to_torch(heads), RuntimeThresholds.from_thresholds(thresholds),
                     torch.tensor(label_divisor, dtype=torch.int32))
    return result_from_tensors(out)


def assert_same_result(graph: PanopticResult, reference: PanopticResult, min_agreement: float = 1.0) -> None:
    """Ids and semantic labels agree on at least `min_agreement` of the pixels; when they agree
    everywhere, the instance tables match too."""
    agreement = (graph.panoptic == reference.panoptic).mean()
    assert agreement >= min_agreement, f"panoptic ids agree on {agreement:.5f} of pixels"
    assert (graph.semantic == reference.semantic).mean() >= min_agreement
    if agreement == 1.0:
        assert graph.num_instances == reference.num_instances
        np.testing.assert_allclose(graph.instances, reference.instances, rtol=1e-5, atol=1e-3)


def thing_ids(result: PanopticResult) -> list[int]:
    rows = result.valid_instances
    return sorted(int(r[COL["id"]]) for r in rows if LABEL_SET.thing[int(r[COL["class_id"]])])


# --- the scenes themselves ---------------------------------------------------------------------

def test_make_scene_paints_objects_over_bands_and_drops_hidden_ones():
    scene = make_scene(64, 64, [(4, 31), (0, 63)], [(6, 8, 8, 23, 23), (5, 16, 16, 39, 39), (7, 20, 20, 22, 22)])
    assert [o.class_id for o in scene.objects] == [6, 5]  # the 3x3 bicycle has < 16 pixels
    assert scene.semantic[0, 0] == 4 and scene.semantic[63, 0] == 0
    assert scene.objects[0].box == (8, 8, 23, 23) and scene.objects[1].box == (16, 16, 39, 39)
    assert (scene.instance == 0).sum() == 16 * 16 - 8 * 8


def test_psn_heads_point_every_object_pixel_at_its_centre(rng):
    scene = random_scene(rng)
    heads = psn_heads(scene, rng, noise=0.0)
    ys, xs = np.nonzero(scene.instance == 0)
    cy, cx = round(scene.objects[0].centre[0]), round(scene.objects[0].centre[1])
    assert np.allclose(heads["offset"][0, 0, ys, xs] + ys, cy) and np.allclose(heads["offset"][0, 1, ys, xs] + xs, cx)
