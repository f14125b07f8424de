"""Dataset readers (synthetic folder, Cityscapes, COCO, on the fly), augmentation, torch dataset."""

import json

import numpy as np
import pytest
import torch

from panoptic_ros.classes import CITYSCAPES, SYNTHETIC
from panoptic_ros.cli import main
from panoptic_ros.data import formats
from panoptic_ros.data.augment import Augment, crop, hflip, resize
from panoptic_ros.data.datasets import CityscapesPanoptic, CocoPanoptic, SyntheticScenes, open_dataset
from panoptic_ros.data.synthetic import generate_scene
from panoptic_ros.data.torch_dataset import PanopticDataset, collate


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two instance maps differ only by a renaming of ids."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist(), strict=True))
    return len(pairs) == len({x for x, _ in pairs}) == len({y for _, y in pairs})


def check_format(sample: dict) -> None:
    assert sample["image"].dtype == np.uint8 and sample["image"].ndim == 3
    assert sample["semantic"].dtype == np.int64 and sample["instance"].dtype == np.int64
    assert sample["semantic"].shape == sample["instance"].shape == sample["image"].shape[:2]


def test_synth_folder_reads_back_the_scenes(tmp_path):
    assert main(["synth", "--frames", "3", "--height", "64", "--width", "128", "--seed", "40",
                 "--out", str(tmp_path), "--split", "train"]) == 0
    dataset = open_dataset("synth-folder", tmp_path, "train")
    assert dataset.label_set is SYNTHETIC and len(dataset) == 3
    for i, sample in enumerate(dataset):
        check_format(sample)
        scene = generate_scene(40 + i, 64, 128)
        assert sample["name"] == f"synth_000000_{40 + i:06d}_gtFine_panoptic"
        assert np.array_equal(sample["image"], scene.image)
        assert np.array_equal(sample["semantic"], scene.semantic)
        assert same_partition(sample["instance"], scene.instance)


def write_cityscapes_fixture(root):
    """One 20x30 frame in Cityscapes' real layout, label ids as categories."""
    ids = np.full((20, 30), 7, np.int32)  # road
    ids[:4] = 23  # sky
    ids[10:15, 2:8], ids[10:15, 8:12] = 26001, 26002  # two touching cars
    ids[5:9, 20:25] = 24  # a crowd of people
    ids[16:20, :3] = 9  # parking: ignored in evaluation
    category_of = {7: 7, 23: 23, 26001: 26, 26002: 26, 24: 24, 9: 9}
    stem = "aachen_000000_000019"
    annotation = formats.annotation_from_ids(ids, category_of, crowd=[24], file_name=f"{stem}_gtFine_panoptic.png",
                                             image_id=stem)
    categories = [{"id": i, "name": n, "isthing": int(t)} for i, n, t in
                  ((7, "road", 0), (9, "parking", 0), (23, "sky", 0), (24, "person", 1), (26, "car", 1))]
    json_path, png_dir = formats.cityscapes_panoptic_paths(root, "val")
    image_name = f"{stem}_leftImg8bit.png"
    formats.write_coco_panoptic(json_path, png_dir, [annotation], categories,
                                images=[{"id": stem, "file_name": image_name, "height": 20, "width": 30}])
    image = np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    formats.write_rgb(formats.cityscapes_image_path(root, "val", image_name), image)
    return image


def test_cityscapes_reader(tmp_path):
    image = write_cityscapes_fixture(tmp_path)
    dataset = CityscapesPanoptic(tmp_path, "val")
    (sample,) = list(dataset)
    check_format(sample)
    assert dataset.label_set is CITYSCAPES  # train ids and names of Cityscapes, though the JSON lists only some
    assert np.array_equal(sample["image"], image)
    semantic, instance = sample["semantic"], sample["instance"]
    names = dataset.label_set.names
    assert names[semantic[0, 0]] == "sky" and names[semantic[12, 3]] == "car" and names[semantic[6, 21]] == "person"
    assert semantic[17, 1] == 255 and instance[17, 1] == 0  # ignored class: void
    assert instance[6, 21] == 0  # crowd: class, but no instance
    assert instance[12, 3] > 0 and instance[12, 9] > 0 and instance[12, 3] != instance[12, 9]
    assert set(np.unique(instance).tolist()) == {0, instance[12, 3], instance[12, 9]}


def test_cityscapes_reader_uses_cityscapes_label_set_for_all_classes(tmp_path):
    stem = "bonn_000000_000000"
    categories = [{"id": label, "name": CITYSCAPES.names[train], "isthing": int(CITYSCAPES.thing[train])}
                  for label, train in formats.CITYSCAPES_LABEL_TO_TRAIN.items() if train != 255]
    annotation = formats.annotation_from_ids(np.full((4, 4), 26001), {26001: 26},
                                             file_name=f"{stem}_gtFine_panoptic.png", image_id=stem)
    json_path, png_dir = formats.cityscapes_panoptic_paths(tmp_path, "train")
    formats.write_coco_panoptic(json_path, png_dir, [annotation], categories,
                                images=[{"id": stem, "file_name": f"{stem}_leftImg8bit.png"}])
    formats.write_rgb(formats.cityscapes_image_path(tmp_path, "train", f"{stem}_leftImg8bit.png"),
                      np.zeros((4, 4, 3), np.uint8))
    dataset = CityscapesPanoptic(tmp_path, "train")
    assert dataset.label_set is CITYSCAPES
    assert np.all(dataset[0]["semantic"] == CITYSCAPES.names.index("car"))


def test_coco_reader_maps_sparse_categories(tmp_path):
    ids = np.zeros((10, 12), np.int32)
    ids[:5], ids[5:, :6], ids[5:, 6:] = 1_000_001, 77, 78  # sky-ish stuff, two dogs
    categories = [{"id": 1, "name": "dog", "isthing": 1, "color": [1, 2, 3]},
                  {"id": 184, "name": "sky-other-merged", "isthing": 0, "color": [4, 5, 6]},
                  {"id": 7, "name": "train", "isthing": 1, "color": [7, 8, 9]}]
    annotation = formats.annotation_from_ids(ids, {1_000_001: 184, 77: 1, 78: 1}, file_name="000000000139.png",
                                             image_id=139)
    formats.write_coco_panoptic(tmp_path / "panoptic_val2017.json", None, [annotation], categories,
                                images=[{"id": 139, "file_name": "000000000139.jpg", "height": 10, "width": 12}])
    image = np.full((10, 12, 3), 90, np.uint8)
    formats.write_rgb(tmp_path / "val2017" / "000000000139.jpg", image)
    dataset = CocoPanoptic(tmp_path / "panoptic_val2017.json", tmp_path / "val2017")
    assert dataset.label_set.names == ("dog", "train", "sky-other-merged")  # ids 1, 7, 184 -> 0, 1, 2
    assert dataset.label_set.thing == (True, True, False)
    sample = dataset[0]
    check_format(sample)
    assert np.abs(sample["image"].astype(int) - 90).max() <= 2  # JPEG
    assert sample["semantic"][0, 0] == 2 and sample["semantic"][9, 0] == 0 and sample["instance"][0, 0] == 0
    assert sample["instance"][9, 0] != sample["instance"][9, 11] and sample["instance"][9, 11] > 0


def test_readers_name_missing_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="cityscapes_panoptic_val"):
        CityscapesPanoptic(tmp_path, "val")
    with pytest.raises(ValueError, match="needs image_dir"):
        open_dataset("coco", tmp_path / "x.json")
    with pytest.raises(ValueError, match="unknown dataset kind"):
        open_dataset("kitti", tmp_path)
    write_cityscapes_fixture(tmp_path)
    formats.cityscapes_image_path(tmp_path, "val", "aachen_000000_000019_leftImg8bit.png").unlink()
    with pytest.raises(FileNotFoundError, match="aachen_000000_000019_leftImg8bit.png"):
        CityscapesPanoptic(tmp_path, "val")[0]


def test_synthetic_scenes_on_the_fly():
    train, val = SyntheticScenes.split("train", 5, 64, 128), SyntheticScenes.split("val", 5, 64, 128)
    assert not set(train.seeds) & set(val.seeds)
    sample = val[2]
    check_format(sample)
    scene = generate_scene(val.seeds[2], 64, 128)
    assert np.array_equal(sample["image"], scene.image) and np.array_equal(sample["instance"], scene.instance)
    with pytest.raises(ValueError, match="unknown synthetic split 'dev'"):
        SyntheticScenes.split("dev", 1, 64, 128)


def labelled_sample(rng, height=64, width=96) -> dict:
    """A sample whose image colour is a function of its labels, so alignment can be checked."""
    scene = generate_scene(int(rng.integers(1000)), height, width)
    semantic = scene.semantic.astype(np.int64)
    instance = scene.instance.astype(np.int64)
    palette = np.array(SYNTHETIC.colors, np.uint8)
    return {"image": palette[semantic], "semantic": semantic, "instance": instance, "name": "x"}


def interior(labels: np.ndarray) -> np.ndarray:
    """Pixels whose 8 neighbours all carry the same label."""
    padded = np.pad(labels, 1, mode="edge")
    h, w = labels.shape
    return np.all([padded[dy:dy + h, dx:dx + w] == labels for dy in range(3) for dx in range(3)], axis=0)


def test_augment_keeps_image_and_labels_aligned(rng):
    palette = np.array(SYNTHETIC.colors, np.int64)
    augment = Augment(scale=(0.6, 1.8), crop_size=(48, 80), flip=0.5)
    for _ in range(6):
        sample = labelled_sample(rng)
        out = augment(sample, rng)
        check_format(out)
        assert out["image"].shape == (48, 80, 3)
        assert set(np.unique(out["semantic"])) <= set(np.unique(sample["semantic"])) | {255}
        assert set(np.unique(out["instance"])) <= set(np.unique(sample["instance"]))
        labelled = out["semantic"] != 255
        assert np.all(out["instance"][~labelled] == 0)
        # away from label edges, the image colour is exactly its label's: no shift between them
        inside = interior(out["semantic"]) & labelled
        error = np.abs(out["image"].astype(np.int64) - palette[np.where(labelled, out["semantic"], 0)]).max(axis=2)
        assert (error[inside] <= 1).mean() > 0.995


def test_augment_pieces():
    sample = {"image": np.arange(24, dtype=np.uint8).reshape(2, 4, 3), "semantic": np.array([[0, 1, 2, 3]] * 2),
              "instance": np.array([[0, 0, 5, 5]] * 2)}
    assert hflip(sample)["semantic"].tolist() == [[3, 2, 1, 0]] * 2
    padded = crop(sample, -1, 2, 4, 4)
    assert padded["semantic"].tolist() == [[255] * 4, [2, 3, 255, 255], [2, 3, 255, 255], [255] * 4]
    assert padded["instance"].tolist() == [[0] * 4, [5, 5, 0, 0], [5, 5, 0, 0], [0] * 4]
    bigger = resize(sample, 4, 8)
    assert bigger["semantic"].tolist()[0] == [0, 0, 1, 1, 2, 2, 3, 3]
    identity = Augment(scale=(1.0, 1.0), flip=0.0)(sample, np.random.default_rng(0))
    assert all(np.array_equal(identity[k], sample[k]) for k in ("image", "semantic", "instance"))
    with pytest.raises(ValueError, match="0 < low <= high"):
        Augment(scale=(2.0, 1.0))
    with pytest.raises(ValueError, match="lacks instance"):
        Augment()({"image": sample["image"], "semantic": sample["semantic"]}, np.random.default_rng(0))


def test_torch_dataset_batches_reproducibly():
    source = SyntheticScenes.split("train", 6, 64, 128)
    augment = Augment(scale=(0.75, 1.5), crop_size=(64, 128))
    first = PanopticDataset(source, augment, seed=3)
    loader = torch.utils.data.DataLoader(first, batch_size=3, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 3, 64, 128) and batch["image"].dtype == torch.uint8
    assert batch["semantic"].shape == batch["instance"].shape == (3, 64, 128)
    assert batch["semantic"].dtype == batch["instance"].dtype == torch.int64
    assert batch["name"] == ["synth_0", "synth_1", "synth_2"]
    again = PanopticDataset(source, augment, seed=3)[1]
    assert torch.equal(again["image"], batch["image"][1]) and torch.equal(again["instance"], batch["instance"][1])
    first.set_epoch(1)
    assert not torch.equal(first[1]["image"], again["image"])  # a new epoch draws new augmentations
    with pytest.raises(ValueError, match="different sizes"):
        collate([PanopticDataset(SyntheticScenes([0], 64, 64))[0], PanopticDataset(SyntheticScenes([0], 64, 96))[0]])


def test_cityscapes_json_written_by_synth_is_cityscapes_style(tmp_path):
    main(["synth", "--frames", "1", "--height", "32", "--width", "64", "--out", str(tmp_path)])
    data = json.loads(formats.cityscapes_panoptic_paths(tmp_path, "val")[0].read_text())
    assert data["images"][0]["file_name"] == "synth_000000_000000_leftImg8bit.png"
    assert data["annotations"][0]["file_name"] == "synth_000000_000000_gtFine_panoptic.png"
    assert {c["id"] for c in data["categories"]} == set(range(8))
