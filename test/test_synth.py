"""Synthetic street scenes: determinism, ground-truth consistency, content, and `panoptic-ros synth`."""

import json

import numpy as np
import pytest
from PIL import Image
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.cli import main
from panoptic_ros.data import formats
from panoptic_ros.data.synthetic import generate_scene

THINGS = SYNTHETIC.thing_ids


def test_same_seed_same_scene_other_seed_other_scene():
    a, b, c = generate_scene(7, 96, 160), generate_scene(7, 96, 160), generate_scene(8, 96, 160)
    for name in ("image", "semantic", "instance"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.image, c.image) and not np.array_equal(a.semantic, c.semantic)


@pytest.mark.parametrize("size", [(64, 128), (128, 256), (101, 333)])
def test_ground_truth_is_consistent(size):
    for seed in range(4):
        scene = generate_scene(seed, *size)
        assert scene.image.shape == (*size, 3) and scene.image.dtype == np.uint8
        assert scene.semantic.shape == size and scene.semantic.dtype == np.uint8
        assert scene.instance.shape == size and scene.instance.dtype == np.int32
        assert scene.semantic.max() < SYNTHETIC.num_classes  # exact labels: no void
        is_thing = np.isin(scene.semantic, THINGS)
        assert np.array_equal(is_thing, scene.instance > 0)  # every thing pixel has an instance, stuff none
        ids = np.unique(scene.instance[is_thing])
        assert np.array_equal(ids, np.arange(1, len(ids) + 1))  # visible instances numbered 1..N
        for i in ids:  # one class per instance
            assert len(np.unique(scene.semantic[scene.instance == i])) == 1
        panoptic = scene.panoptic(1000)
        assert np.array_equal(panoptic // 1000, scene.semantic) and np.array_equal(panoptic % 1000, scene.instance)


def test_scenes_look_like_streets():
    counts = np.zeros(SYNTHETIC.num_classes)
    touching_pairs = 0
    sizes = []  # (bottom row, height) of people and cars
    for seed in range(12):
        scene = generate_scene(seed, 128, 256)
        counts += np.bincount(scene.semantic.ravel(), minlength=SYNTHETIC.num_classes) > 0
        assert scene.semantic[0].tolist().count(4) + (scene.semantic[0] == 2).sum() > 0  # sky/building at the top
        bottom = scene.semantic[-1]
        assert np.isin(bottom, (0, 1, 3, 5, 6, 7)).all()  # ground and things at the bottom, never sky
        inst, sem = scene.instance, scene.semantic
        # same-class instances that touch (4-neighbours) - the hard case for instance separation
        for a, b in ((inst[:, 1:], inst[:, :-1]), (inst[1:], inst[:-1])):
            sa = sem[:, 1:] if a.shape[1] != inst.shape[1] else sem[1:]
            sb = sem[:, :-1] if a.shape[1] != inst.shape[1] else sem[:-1]
            touching_pairs += len({(x, y) for x, y in zip(a[(a != b) & (a > 0) & (b > 0) & (sa == sb)].tolist(),
                                                            b[(a != b) & (a > 0) & (b > 0) & (sa == sb)].tolist(),
                                                            strict=True)})
        for i in range(1, inst.max() + 1):
            ys = np.nonzero(inst == i)[0]
            if sem[inst == i][0] in (5, 6) and ys.max() < 127 and len(ys) > 20:
                sizes.append((ys.max(), ys.max() - ys.min() + 1))
    assert counts[:5].min() >= 6  # every stuff class is common
    assert counts[5] >= 4 and counts[6] >= 8 and counts[7] >= 2  # people, cars, bicycles appear
    assert touching_pairs >= 10
    bottoms, heights = np.array(sizes).T
    assert np.corrcoef(bottoms, heights)[0, 1] > 0.4  # nearer (lower in the image) things are bigger


def test_a_scene_depends_on_its_seed_only():
    # Training generates scenes on the fly in several loader workers, in any order: no hidden state.
    np.random.seed(1)
    global_state = np.random.get_state()[1].copy()
    forward = [generate_scene(seed, 64, 128).instance for seed in range(3)]
    backward = [generate_scene(seed, 64, 128).instance for seed in reversed(range(3))][::-1]
    assert all(np.array_equal(a, b) for a, b in zip(forward, backward, strict=True))
    assert np.array_equal(np.random.get_state()[1], global_state)  # the global generator is left alone


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="at least 16x16"):
        generate_scene(0, 8, 100)
    with pytest.raises(ValueError, match="non-negative"):
        generate_scene(-1, 64, 64)


def test_synth_cli_writes_folder_and_bag(tmp_path, capsys):
    out, bag = tmp_path / "synth", tmp_path / "b.mcap"
    # the acceptance command of the issue
    assert main(["synth", "--frames", "20", "--height", "256", "--width", "512", "--bag", str(bag),
                 "--out", str(out)]) == 0
    assert "wrote 20 frames" in capsys.readouterr().out

    # the bag, read back with rosbags alone
    store = get_typestore(Stores.ROS2_KILTED)
    frames, gts = {}, {}
    with Reader(bag) as reader:
        assert {c.topic: c.msgcount for c in reader.connections} == {"/camera/image_raw": 20,
                                                                     "/camera/panoptic_gt": 20}
        for connection, _, raw in reader.messages():
            msg = store.deserialize_cdr(raw, connection.msgtype)
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            if connection.topic == "/camera/image_raw":
                assert msg.encoding == "rgb8"
                frames[stamp] = msg.data.reshape(msg.height, msg.width, 3)
            else:
                assert msg.encoding == "32SC1"
                gts[stamp] = msg.data.view(np.int32).reshape(msg.height, msg.width)
    assert sorted(frames) == sorted(gts) and len(frames) == 20
    stamps = sorted(frames)
    assert np.allclose(np.diff(stamps), 1e8)  # 10 Hz
    for i in (0, 19):
        scene = generate_scene(i, 256, 512)
        assert np.array_equal(frames[stamps[i]], scene.image)
        assert np.array_equal(gts[stamps[i]], scene.panoptic(1000))

    # the folder: ids in each PNG match its JSON segments, areas and boxes included
    json_path, png_dir = formats.cityscapes_panoptic_paths(out, "val")
    data = json.loads(json_path.read_text())
    assert [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])] == list(SYNTHETIC.names)
    assert len(data["annotations"]) == len(data["images"]) == 20
    for entry, image in list(zip(data["annotations"], data["images"], strict=True))[:4]:
        ids = formats.rgb_to_id(np.asarray(Image.open(png_dir / entry["file_name"]).convert("RGB")))
        segments = {s["id"]: s for s in entry["segments_info"]}
        present = set(np.unique(ids).tolist()) - {0}
        assert present == set(segments)
        for sid, segment in segments.items():
            ys, xs = np.nonzero(ids == sid)
            assert segment["area"] == len(ys)
            assert segment["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert segment["category_id"] == (sid - 1) // 1000
        seed = int(entry["image_id"].split("_")[-1])
        scene = generate_scene(seed, 256, 512)
        assert np.array_equal(ids, scene.panoptic(1000) + 1)
        rgb = formats.read_rgb(formats.cityscapes_image_path(out, "val", image["file_name"]))
        assert np.array_equal(rgb, scene.image)
        labels = np.asarray(Image.open(out / "gtFine" / "val" / "synth" /
                                       f"{entry['image_id']}_gtFine_labelTrainIds.png"))
        assert np.array_equal(labels, scene.semantic)


def test_synth_cli_sqlite3_bag_and_errors(tmp_path, capsys):
    bag = tmp_path / "b.db3"
    assert main(["synth", "--frames", "2", "--height", "64", "--width", "128", "--seed", "5",
                 "--bag", str(bag), "--compressed"]) == 0
    with Reader(bag) as reader:
        assert {c.topic: c.msgtype for c in reader.connections} == {
            "/camera/image_raw": "sensor_msgs/msg/CompressedImage", "/camera/panoptic_gt": "sensor_msgs/msg/Image"}
    assert main(["synth", "--frames", "2", "--height", "64", "--width", "128"]) == 2
    assert "give --out DIR and/or --bag FILE" in capsys.readouterr().err
    assert main(["synth", "--frames", "1", "--bag", str(bag)]) == 2  # never overwrites a bag
    assert "exists already" in capsys.readouterr().err
