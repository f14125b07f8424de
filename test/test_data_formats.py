"""Panoptic formats: RGB ids, segment statistics, COCO and Cityscapes layouts, pipeline id maps."""

import json

import numpy as np
import pytest
from PIL import Image

from panoptic_ros.classes import CITYSCAPES, SYNTHETIC
from panoptic_ros.data import formats
from panoptic_ros.data.formats import (
    PanopticAnnotation,
    Segment,
    from_id_map,
    id_to_rgb,
    rgb_to_id,
    segment_stats,
    semantic_and_instance,
    to_id_map,
)


def brute_stats(ids: np.ndarray) -> dict:
    stats = {}
    for i in np.unique(ids):
        if i == 0:
            continue
        ys, xs = np.nonzero(ids == i)
        stats[int(i)] = (len(ys), (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))
    return stats


def pipeline_map(rng: np.random.Generator, height: int = 40, width: int = 60) -> np.ndarray:
    """A pipeline id map of SYNTHETIC: stuff blocks, things numbered 1..n per class, some void."""
    m = np.zeros((height, width), np.int32)  # road, id 0
    m[: height // 3] = 4000  # sky
    m[height // 3: height // 2] = 2000  # building
    m[height - 4:, : width // 2] = 1000  # sidewalk
    for k, (y, x) in enumerate(rng.integers(0, [height - 6, width - 8], size=(4, 2)), start=1):
        m[y:y + 6, x:x + 8] = 6000 + k  # cars, possibly overlapping each other
    m[2:8, 2:5] = 5001
    m[2:8, 5:8] = 5002  # two touching people
    m[30:33, 40:50] = 7000  # a bicycle region without instance: crowd
    m[0, :] = -1  # void row
    # keep car numbering gap-free even if a later car hid an earlier one completely
    cars = sorted(v for v in np.unique(m) if 6000 < v < 7000)
    for new, old in enumerate(cars, start=1):
        m[m == old] = 6000 + new
    return m


def test_rgb_id_round_trip(rng):
    ids = rng.integers(0, 256**3, size=(7, 9)).astype(np.int32)
    ids[0, 0], ids[0, 1] = 0, 256**3 - 1
    rgb = id_to_rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (7, 9, 3)
    assert tuple(rgb[0, 1]) == (255, 255, 255)
    assert np.array_equal(rgb_to_id(rgb), ids)
    assert rgb_to_id(np.array([[[1, 2, 3]]], np.uint8))[0, 0] == 1 + 2 * 256 + 3 * 65536


def test_rgb_id_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        rgb_to_id(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 16777215\]"):
        id_to_rgb(np.array([[-1]]))


@pytest.mark.parametrize("high", [50, 1 << 24])  # the dense-lookup path and the sorting path
def test_segment_stats_match_brute_force(rng, high):
    ids = rng.integers(0, 6, size=(23, 31)) * (high // 6)
    ids[rng.random(ids.shape) < 0.5] = 0
    assert segment_stats(ids) == brute_stats(ids)


def test_from_id_map_to_id_map_round_trip(rng):
    m = pipeline_map(rng)
    annotation = from_id_map(m, 1000, SYNTHETIC)
    assert np.array_equal(annotation.ids, np.where(m < 0, 0, m + 1))  # segment id = panoptic id + 1
    assert annotation.segments[1].category_id == 0 and not annotation.segments[1].iscrowd  # road
    assert annotation.segments[7001].iscrowd and annotation.segments[7001].category_id == 7
    assert annotation.segments[5003] == Segment(5003, 5, False, 18, (5, 2, 3, 6))  # person 2
    assert np.array_equal(to_id_map(annotation, 1000, SYNTHETIC), m)


def test_to_id_map_numbers_instances_per_class():
    ids = np.array([[0, 7, 7, 9], [3, 3, 9, 12]])
    segments = {7: Segment(7, 6), 9: Segment(9, 6), 3: Segment(3, 0), 12: Segment(12, 5)}
    out = to_id_map(PanopticAnnotation(ids, segments), 100, SYNTHETIC)
    assert out.tolist() == [[-1, 601, 601, 602], [0, 0, 602, 501]]
    with pytest.raises(ValueError, match="not one of the classes"):
        to_id_map(PanopticAnnotation(ids, {7: Segment(7, 42)}), 100, SYNTHETIC)


def test_semantic_and_instance_unique_over_classes(rng):
    m = pipeline_map(rng)
    semantic, instance = semantic_and_instance(from_id_map(m, 1000, SYNTHETIC), SYNTHETIC)
    assert np.array_equal(semantic, np.where(m < 0, 255, m // 1000))
    things = (m % 1000 > 0) & (m >= 5000)
    assert np.all(instance[~things] == 0)  # stuff, void and crowd
    # one instance id per thing segment, unique across classes
    pairs = {(int(a), int(b)) for a, b in zip(m[things], instance[things], strict=True)}
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def test_from_id_map_rejects_classes_outside_label_set():
    with pytest.raises(ValueError, match="has 8 classes"):
        from_id_map(np.full((2, 2), 9001, np.int32), 1000, SYNTHETIC)
    with pytest.raises(ValueError, match=">= -1"):
        from_id_map(np.full((2, 2), -5, np.int32), 1000, SYNTHETIC)


def test_coco_write_read_round_trip(tmp_path, rng):
    annotations = []
    for k in range(3):
        a = from_id_map(pipeline_map(rng), 1000, SYNTHETIC, file_name=f"frame_{k}.png")
        a.segments[999_999] = Segment(999_999, 3)  # no pixels: must not be written
        annotations.append(a)
    categories = formats.label_set_categories(SYNTHETIC)
    formats.write_coco_panoptic(tmp_path / "pan.json", None, annotations, categories)

    data = json.loads((tmp_path / "pan.json").read_text())
    assert [c["name"] for c in data["categories"]] == list(SYNTHETIC.names)
    assert [i["file_name"] for i in data["images"]] == ["frame_0.png", "frame_1.png", "frame_2.png"]
    for entry, original in zip(data["annotations"], annotations, strict=True):
        # the PNG, decoded independently of our code, holds the ids; JSON areas/boxes match them
        rgb = np.asarray(Image.open(tmp_path / "pan" / entry["file_name"]).convert("RGB"))
        ids = rgb_to_id(rgb)
        assert np.array_equal(ids, original.ids)
        expected = brute_stats(ids)
        assert {s["id"] for s in entry["segments_info"]} == set(expected)
        for s in entry["segments_info"]:
            assert (s["area"], tuple(s["bbox"])) == (expected[s["id"]][0], tuple(int(v) for v in expected[s["id"]][1]))
            assert s["category_id"] == original.segments[s["id"]].category_id

    categories_read, read = formats.read_coco_panoptic(tmp_path / "pan.json")
    assert categories_read == categories and len(read) == 3
    first = read[0]
    assert np.array_equal(first.ids, annotations[0].ids) and first.image_id == "frame_0"
    assert first.segments[1].area == int((annotations[0].ids == 1).sum())
    assert read.find("frame_2.png").file_name == "frame_2.png"



def read_without_fast_decoder(monkeypatch, path):
    with monkeypatch.context() as patch:
        patch.setattr(formats, "read_image_png_u8", None)
        return formats.read_panoptic_png(path)


def test_panoptic_png_ids_are_the_same_with_either_decoder(tmp_path, rng, monkeypatch):
    """8-bit RGB PNGs take the fast decoder (kornia-rs, where installed); everything else, and every PNG without
    it, OpenCV. Both give the ids of the pixels as written, for every PNG layout the writers produce."""
    ids = rng.integers(0, 256**3, size=(37, 53)).astype(np.int32)
    ids[:10, :20] = 4 + 256 * 7  # flat regions compress with long matches, as real panoptic PNGs do
    rgb = id_to_rgb(ids)
    written = {"ours.png": lambda p: formats.write_panoptic_png(p, ids),
               "pil.png": lambda p: Image.fromarray(rgb).save(p),
               "transparency.png": lambda p: Image.fromarray(rgb).save(p, transparency=(1, 2, 3)),
               "upper_case.PNG": lambda p: formats.write_panoptic_png(p, ids)}
    for name, write in written.items():
        write(tmp_path / name)
        assert np.array_equal(formats.read_panoptic_png(tmp_path / name), ids), name
        if formats.read_image_png_u8 is not None:  # the fast decoder itself reads these (no fallback taken)
            assert np.array_equal(rgb_to_id(formats.read_image_png_u8(str(tmp_path / name), "rgb")), ids), name
    assert np.array_equal(read_without_fast_decoder(monkeypatch, tmp_path / "ours.png"), ids)
    # a palette PNG is read (expanded to RGB) by OpenCV in both cases
    palette = Image.fromarray(rgb[:4, :4]).convert("P")
    palette.save(tmp_path / "palette.png")
    expected = rgb_to_id(np.asarray(palette.convert("RGB")))
    assert np.array_equal(formats.read_panoptic_png(tmp_path / "palette.png"), expected)
    assert np.array_equal(read_without_fast_decoder(monkeypatch, tmp_path / "palette.png"), expected)


def test_panoptic_png_errors_name_the_file(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((4, 4, 4), np.uint8)).save(tmp_path / "rgba.png")
    formats.write_panoptic_png(tmp_path / "whole.png", np.ones((40, 40), int))
    (tmp_path / "truncated.png").write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    (tmp_path / "text.png").write_text("not a png")
    for read in (formats.read_panoptic_png, lambda path: read_without_fast_decoder(monkeypatch, path)):
        with pytest.raises(ValueError, match="rgba.png: expected an 8-bit RGB panoptic PNG"):
            read(tmp_path / "rgba.png")
        for name in ("truncated.png", "text.png"):
            with pytest.raises(ValueError, match=f"cannot decode image file .*{name}"):
                read(tmp_path / name)
        with pytest.raises(FileNotFoundError, match="missing.png"):
            read(tmp_path / "missing.png")

def test_coco_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="PNG folder"):
        formats.read_coco_panoptic(tmp_path / "missing.json")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="missing annotations, categories"):
        formats.read_coco_panoptic(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        formats.read_coco_panoptic(tmp_path / "bad.json")


def cityscapes_instance_ids() -> np.ndarray:
    """A Cityscapes instanceIds map: road (7), two cars (26001, 26002), a person crowd (24),
    a static object (4, ignored), a parking area (9, ignored) and unlabeled (0)."""
    ids = np.full((20, 30), 7, np.int32)
    ids[:5] = 0
    ids[10:15, 2:8], ids[10:15, 8:12] = 26001, 26002
    ids[5:9, 20:25] = 24
    ids[16:20, 25:30] = 4
    ids[16:20, :3] = 9
    return ids


def test_cityscapes_instance_ids(tmp_path):
    path = tmp_path / "x_000000_000000_gtFine_instanceIds.png"
    formats.write_gray(path, cityscapes_instance_ids().astype(np.uint16))
    annotation = formats.read_cityscapes_instance_ids(path)
    assert annotation.image_id == "x_000000_000000"
    assert sorted(annotation.segments) == [7, 24, 26001, 26002]
    assert annotation.segments[7].category_id == CITYSCAPES.names.index("road")
    assert annotation.segments[26002].category_id == CITYSCAPES.names.index("car")
    assert annotation.segments[24].iscrowd and not annotation.segments[26001].iscrowd
    assert annotation.segments[26001].bbox == (2, 10, 6, 5) and annotation.segments[26001].area == 30
    assert np.all(annotation.ids[16:20, 25:30] == 0) and np.all(annotation.ids[16:20, :3] == 0)  # ignored -> void
    semantic, instance = semantic_and_instance(annotation, CITYSCAPES)
    assert semantic[12, 3] == 13 and semantic[0, 0] == 255 and instance[6, 21] == 0  # crowd: no instance


def test_cityscapes_label_ids_to_train_ids():
    label_ids = np.array([[0, 7, 8, 26], [33, 34, 255, 9]], np.uint8)
    assert formats.cityscapes_labels_to_train(label_ids).tolist() == [[255, 0, 1, 13], [18, 255, 255, 255]]
    # every train id 0..18 is reached once and things are train ids 11..18, as in CITYSCAPES
    train = sorted(t for t in formats.CITYSCAPES_LABEL_TO_TRAIN.values() if t != 255)
    assert train == list(range(19))
    thing_labels = [lab for lab, t in formats.CITYSCAPES_LABEL_TO_TRAIN.items() if t != 255 and CITYSCAPES.thing[t]]
    assert set(thing_labels) <= formats.CITYSCAPES_INSTANCE_LABELS


def test_read_cityscapes_panoptic_maps_label_ids(tmp_path):
    ids = cityscapes_instance_ids()
    annotation = formats.annotation_from_ids(ids, {7: 7, 24: 24, 26001: 26, 26002: 26, 9: 9},
                                             crowd=[24], file_name="x_000000_000000_gtFine_panoptic.png",
                                             image_id="x_000000_000000")
    categories = [{"id": 7, "name": "road", "isthing": 0}, {"id": 9, "name": "parking", "isthing": 0},
                  {"id": 24, "name": "person", "isthing": 1}, {"id": 26, "name": "car", "isthing": 1}]
    json_path, png_dir = formats.cityscapes_panoptic_paths(tmp_path, "val")
    formats.write_coco_panoptic(json_path, png_dir, [annotation], categories)

    mapped_categories, annotations = formats.read_cityscapes_panoptic(json_path)
    assert [(c["id"], c["name"]) for c in mapped_categories] == [(0, "road"), (11, "person"), (13, "car")]
    read = annotations[0]
    assert {s.id: s.category_id for s in read.segments.values()} == {7: 0, 24: 11, 26001: 13, 26002: 13}
    assert np.all(read.ids[16:20, :3] == 0)  # parking is ignored in evaluation: void
    _, raw = formats.read_cityscapes_panoptic(json_path, train_ids=False)
    assert raw[0].segments[26001].category_id == 26
