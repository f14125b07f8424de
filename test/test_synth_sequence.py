"""Synthetic sequences: track-id ground truth, temporal coherence, motion, and `panoptic-ros synth --sequence`."""

import json

import numpy as np
import pytest
from PIL import Image
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.cli import main
from panoptic_ros.data import formats
from panoptic_ros.data.synthetic import generate_scene, generate_sequence

HW = (128, 256)
SEEDS = range(2_000_000_000, 2_000_000_004)


def tracks_of(frame) -> dict[int, np.ndarray]:
    return {int(t): frame.instance == t for t in np.unique(frame.instance[frame.instance > 0])}


@pytest.fixture(scope="module")
def sequences():
    return {seed: list(generate_sequence(seed, 20, *HW, fps=10.0)) for seed in SEEDS}


def test_same_arguments_same_frames():
    a, b = list(generate_sequence(3, 4, *HW)), list(generate_sequence(3, 4, *HW))
    for fa, fb in zip(a, b, strict=True):
        for name in ("image", "semantic", "instance"):
            assert np.array_equal(getattr(fa, name), getattr(fb, name))
    assert not np.array_equal(a[0].image, a[3].image)  # the camera moved


def test_a_one_frame_sequence_is_the_scene_of_its_seed():
    for seed in (0, 11, 2_000_000_001):
        (frame,) = generate_sequence(seed, 1, *HW)
        scene = generate_scene(seed, *HW)
        assert np.array_equal(frame.image, scene.image) and np.array_equal(frame.semantic, scene.semantic)
        # the same segments, numbered by track instead of 1..N
        pairs = set(zip(frame.instance.ravel().tolist(), scene.instance.ravel().tolist(), strict=True))
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def test_track_ids_are_ground_truth(sequences):
    for frames in sequences.values():
        class_of: dict[int, int] = {}
        for frame in frames:
            is_thing = np.isin(frame.semantic, SYNTHETIC.thing_ids)
            assert np.array_equal(is_thing, frame.instance > 0)
            assert np.array_equal(frame.panoptic(1000) % 1000, frame.instance)
            for track, mask in tracks_of(frame).items():
                classes = np.unique(frame.semantic[mask])
                assert len(classes) == 1
                assert class_of.setdefault(track, int(classes[0])) == classes[0]  # a track never changes class


def test_objects_move_coherently(sequences):
    kept = total = 0
    for frames in sequences.values():
        for before, after in zip(frames, frames[1:], strict=False):
            a, b = tracks_of(before), tracks_of(after)
            for track, mask in a.items():
                if mask.sum() < 60:
                    continue
                total += 1
                if track in b:
                    overlap = (mask & b[track]).sum() / (mask | b[track]).sum()
                    kept += overlap > 0.3  # the same object, a little further along, 0.1 s later
    assert total > 200 and kept / total > 0.85


def test_things_enter_leave_and_reappear(sequences):
    entered = left = reappeared = 0
    for frames in sequences.values():
        present = [set(tracks_of(f)) for f in frames]
        entered += len(set().union(*present) - present[0])
        left += len(present[0] - present[-1])
        for track in set().union(*present):
            seen = [track in p for p in present]
            first, last = seen.index(True), len(seen) - seen[::-1].index(True)
            reappeared += not all(seen[first:last])  # hidden (occluded) for a while, then visible again
    assert entered >= 8 and left >= 8 and reappeared >= 4


def test_bad_sequences_are_refused():
    with pytest.raises(ValueError, match="at least one frame"):
        next(generate_sequence(0, 0, *HW))
    with pytest.raises(ValueError, match="fps"):
        next(generate_sequence(0, 3, *HW, fps=0.0))
    with pytest.raises(ValueError, match="at least 16x16"):
        next(generate_sequence(0, 3, 8, 64))


def test_synth_cli_sequence_bag_and_folder(tmp_path, capsys):
    out, bag = tmp_path / "seq", tmp_path / "seq.mcap"
    assert main(["synth", "--sequence", "--frames", "6", "--fps", "5", "--seed", "9", "--height", "64",
                 "--width", "128", "--bag", str(bag), "--out", str(out)]) == 0
    expected = list(generate_sequence(9, 6, 64, 128, fps=5.0))
    store = get_typestore(Stores.ROS2_KILTED)
    gts = {}
    with Reader(bag) as reader:
        for connection, _, raw in reader.messages():
            if connection.topic == "/camera/panoptic_gt":
                msg = store.deserialize_cdr(raw, connection.msgtype)
                gts[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec] = \
                    msg.data.view(np.int32).reshape(msg.height, msg.width)
    stamps = sorted(gts)
    assert np.allclose(np.diff(stamps), 2e8)  # 5 Hz
    for stamp, frame in zip(stamps, expected, strict=True):
        assert np.array_equal(gts[stamp], frame.panoptic(1000))  # class * 1000 + track id

    json_path, png_dir = formats.cityscapes_panoptic_paths(out, "val")
    data = json.loads(json_path.read_text())
    assert [e["image_id"] for e in data["annotations"]] == [f"synth_000009_{i:06d}" for i in range(6)]
    for entry, frame in zip(data["annotations"], expected, strict=True):
        ids = formats.rgb_to_id(np.asarray(Image.open(png_dir / entry["file_name"]).convert("RGB")))
        assert np.array_equal(ids, frame.panoptic(1000) + 1)
        tracks = {int(sid): track for sid, track in entry["track_ids"].items()}
        assert set(tracks.values()) == set(np.unique(frame.instance[frame.instance > 0]).tolist())
        for sid, track in tracks.items():
            assert np.array_equal(ids == sid, frame.instance == track)

    assert main(["synth", "--fps", "5", "--frames", "2", "--bag", str(tmp_path / "x.mcap")]) == 2
    assert "--fps goes with --sequence" in capsys.readouterr().err
