"""Cases both the graph's and the references' fusion tests use: adversarial chains for the sequential
rules (greedy NMS, pasting by confidence) and seeded structured scenes.

Chains are where an unrolled sequential rule breaks: every decision depends on the one before, so a
rule that runs a fixed number of sweeps keeps one too many once the chain is one longer.
"""

from __future__ import annotations

import numpy as np
from test_fusion_scenes import LABEL_SET, Scene, make_scene, random_scene

from panoptic_ros.fusion.ideal_heads import ideal_psn_heads

CHAIN_STEP = 10.0  # x shift between consecutive chain boxes
CHAIN_WIDTH = 4 * CHAIN_STEP  # IoU with the next box (40-10)/(40+10) = 0.6, with the one after 20/60 = 1/3


def nms_chain(length: int) -> tuple[np.ndarray, np.ndarray]:
    """`length` boxes of one class, best first, each overlapping the next with IoU 0.6 and the one after
    with IoU 1/3. -> (boxes (n, 4) x1 y1 x2 y2, scores (n,) strictly decreasing).

    With nms_iou 0.5 greedy NMS keeps the even boxes only: 0 drops 1, so 2 survives and drops 3, ...
    """
    x1 = CHAIN_STEP * np.arange(length)
    boxes = np.stack([x1, np.zeros(length), x1 + CHAIN_WIDTH, np.full(length, 20.0)], axis=1)
    scores = np.linspace(0.9, 0.5, length)
    return boxes, scores


def chain_keep(length: int) -> list[int]:
    """What greedy NMS (nms_iou 0.5) keeps of nms_chain(length), and pasting (overlap 0.3) of paste_chain."""
    return list(range(0, length, 2))


def iou_matrix(boxes: np.ndarray) -> np.ndarray:
    """Pairwise IoU (n, n) of (n, 4) boxes, for rules that take an overlap matrix."""
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    width = np.clip(np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]), 0, None)
    height = np.clip(np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]), 0, None)
    intersection = width * height
    area = (x2 - x1) * (y2 - y1)
    return intersection / (area[:, None] + area[None] - intersection)


def paste_chain(length: int = 8, half: int = 4) -> list[np.ndarray]:
    """`length` masks (best first) on a (2, half * (length + 1)) image, mask k covering columns
    [k * half, (k + 2) * half): each half covered by its predecessor. Pasting with overlap 0.3 keeps
    the even ones: 1 is half taken by 0 and dropped, so 2 is free, ..."""
    masks = []
    for k in range(length):
        mask = np.zeros((2, half * (length + 1)), dtype=bool)
        mask[:, k * half:(k + 2) * half] = True
        masks.append(mask)
    return masks


def seeded_scenes(count: int, seed: int = 0, height: int = 128, width: int = 256, objects: int = 6) -> list[Scene]:
    """`count` random structured scenes (stuff bands, occluding objects), scene n from seed + n."""
    return [random_scene(np.random.default_rng(seed + n), height, width, objects) for n in range(count)]


def ground_truth_ids(scene: Scene, label_divisor: int) -> np.ndarray:
    """The scene's panoptic id map: class * divisor (+ object index + 1 for things)."""
    return scene.semantic * label_divisor + np.where(scene.instance >= 0, scene.instance + 1, 0)


def weakest_centre_case(divisor: int) -> tuple[Scene, dict, np.ndarray]:
    """A person and two cars, ideal PSN heads except the centre peaks 0.9, 0.5, 0.8: with K = 2 the
    first car's centre is the one dropped. -> (scene, heads, the id map with all three kept)."""
    person, car = 5, 6
    scene = make_scene(64, 128, [(4, 31), (0, 63)],  # sky, road
                       [(person, 4, 20, 27, 60), (car, 40, 20, 79, 60), (car, 90, 20, 123, 60)])
    heads = ideal_psn_heads(scene.semantic, np.where(scene.instance >= 0, scene.instance + 1, 0), LABEL_SET)
    ys, xs = np.mgrid[0:64, 0:128]
    heads["center"][0, 0] = 0.0
    for k, peak in enumerate([0.9, 0.5, 0.8]):
        cy, cx = (np.floor(np.mean(np.nonzero(scene.instance == k), axis=1) + 0.5))
        gaussian = peak * np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / 200.0)
        heads["center"][0, 0] = np.maximum(heads["center"][0, 0], gaussian)
    ids = np.array([person * divisor + 1, car * divisor + 2, car * divisor + 1])  # cars numbered by score
    expected = np.where(scene.instance >= 0, ids[scene.instance], scene.semantic * divisor)
    return scene, heads, expected


DENSE_CHAIN_STEP = 8  # one chain box per stride-8 location of the first level's top row


def dense_chain_heads(length: int, quality: str, strides: tuple[int, ...] = (8, 16, 32, 64, 128),
                      num_classes: int = 8, thing_index: int = 1, thing_class: int = 6) -> dict:
    """RTPS (quality "centerness") or LPSNet ("borderness") heads whose detections are an NMS chain:
    location i of the first level's top row predicts box [8i, 0, 8i + 32, 16] (IoU 0.6 with the next,
    1/3 with the one after) of thing `thing_index` with a score falling along the chain; nothing else
    passes a score threshold of 0.05. Semantic (and RTPS levelness) mark the chain's pixels as
    `thing_class`, the rest as class 0. With nms_iou 0.5 the kept boxes are chain_keep(length)."""
    height, width = 128, 128 * -(-(DENSE_CHAIN_STEP * (length - 1) + 32) // 128)
    heads: dict = {"box_cls": [], "box_reg": [], quality: []}
    for level, stride in enumerate(strides):
        h, w = height // stride, width // stride
        cls = np.full((1, 3, h, w), -10.0, dtype=np.float32)
        reg = np.full((1, 4, h, w), 4.0, dtype=np.float32)
        if level == 0:
            x = DENSE_CHAIN_STEP * np.arange(length) + stride // 2  # the locations' pixels (FCOS)
            cls[0, thing_index, 0, :length] = np.linspace(3.0, 1.0, length)
            reg[0, :, 0, :length] = np.stack([x - DENSE_CHAIN_STEP * np.arange(length), np.full(length, 4.0),
                                              DENSE_CHAIN_STEP * np.arange(length) + 32 - x, np.full(length, 12.0)])
        heads["box_cls"].append(cls)
        heads["box_reg"].append(reg)
        heads[quality].append(np.zeros((1, 1, h, w), dtype=np.float32))
    chain = np.zeros((height // 4, width // 4), dtype=bool)
    chain[:4, :(DENSE_CHAIN_STEP * (length - 1) + 32) // 4] = True
    classes = np.where(chain, thing_class, 0)
    heads["semantic"] = (10.0 * (classes[None] == np.arange(num_classes)[:, None, None]))[None].astype(np.float32)
    if quality == "centerness":
        heads["levelness"] = (10.0 * np.stack([~chain, chain] + [np.zeros_like(chain)] * (len(strides) - 1)))[
            None].astype(np.float32)
    return heads


def spinet_chain_heads(length: int, num_stuff: int = 5, strides: tuple[int, ...] = (8, 8, 16, 32)) -> dict:
    """SPINet heads (for test_fusion_scenes.AnalyticSPINetHead(max_objects=length)) whose sampled masks
    are a paste chain: location i of the first level's top row samples a filter selecting feature
    channel i, which covers stride-4 columns [2i, 2i + 4) of the top 4 rows (half covered by the
    previous mask), with a confidence falling along the chain; nothing else passes 0.05. Pasting with
    overlap 0.3 keeps chain_keep(length); the rest of the image is the first stuff class."""
    cells = 2 * (length + 1)
    height, width = 128, 128 * -(-4 * cells // 128)
    dim = length + num_stuff + 1
    heads: dict = {"class_logits": [], "filters": []}
    for level, stride in enumerate(strides):
        h, w = height // stride, width // stride
        logits = np.full((1, 3, h, w), -10.0, dtype=np.float32)
        filters = np.zeros((1, dim, h, w), dtype=np.float32)
        if level == 0:
            logits[0, 1, 0, :length] = np.linspace(3.0, 1.0, length)
            filters[0, np.arange(length), 0, np.arange(length)] = 8.0
            filters[0, -1, 0, :length] = -4.0
        heads["class_logits"].append(logits)
        heads["filters"].append(filters)
    feature = np.zeros((dim, height // 4, width // 4), dtype=np.float32)
    for i in range(length):
        feature[i, :4, 2 * i:2 * i + 4] = 1.0
    feature[length] = feature[:length].max(axis=0) == 0  # first stuff class elsewhere
    feature[-1] = 1.0
    heads["panoptic_feature"] = feature[None]
    return heads
