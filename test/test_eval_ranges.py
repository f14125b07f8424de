"""One bag evaluated as frame ranges (--split-frames), on one process, on --jobs processes and on a local Ray
cluster, joined into exactly the evaluation of the bag in one piece: PQ counts bit for bit, frames, skip counts
and notes, overlays, the damage that ends a bag. Real bags (rosbags), a real exported model on ONNX Runtime.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_cases import (
    DIVISOR,
    GT_TOPIC,
    IMAGE_TOPIC,
    image_msg,
    scene_frames,
    tasks_of,
    without_latency,
    write_bag_with_undecodable,
    write_folder,
)

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.cli import main
from panoptic_ros.data.rosbag_io import IMAGE_TYPE, BagWriter
from panoptic_ros.evaluation.bag_eval import evaluate_bag
from panoptic_ros.evaluation.fleet import evaluate_bags, join_evaluations
from panoptic_ros.evaluation.frame_ranges import AFTER, BEFORE, INSIDE, FrameRange, RangeCut, RangeError, split_range
from panoptic_ros.evaluation.ground_truth import FolderGroundTruth, TopicGroundTruth
from panoptic_ros.evaluation.scoring import NO_GROUND_TRUTH, UNDECODABLE_IMAGE

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def long_bag(tmp_path_factory, backend):
    """7 frames, the 3rd message undecodable; and its frames."""
    path = tmp_path_factory.mktemp("long") / "long.mcap"
    frames = scene_frames(backend, 7, first_seed=30)
    write_bag_with_undecodable(path, frames, undecodable=2)
    return path, frames


def assert_same_bag(joined, whole) -> None:
    """Everything a report says about a bag, but the latencies' values."""
    assert joined.accumulator.iou_sum.tobytes() == whole.accumulator.iou_sum.tobytes()  # bit for bit
    assert joined.result.to_dict() == whole.result.to_dict()
    assert (joined.frames, joined.skipped, joined.notes, joined.bag_error) == \
        (whole.frames, whole.skipped, whole.notes, whole.bag_error)
    assert {stage: len(v) for stage, v in joined.latencies_ms.items()} == \
        {stage: len(v) for stage, v in whole.latencies_ms.items()}
    assert len(joined.overlays) == len(whole.overlays)
    assert all(np.array_equal(a, b) for a, b in zip(joined.overlays, whole.overlays, strict=True))


def test_split_range():
    assert split_range(7, 3) == [FrameRange(0, 3), FrameRange(3, 6), FrameRange(6, None)]
    assert split_range(6, 3) == [FrameRange(0, 3), FrameRange(3, None)]
    assert split_range(3, 3) == split_range(2, 3) == split_range(0, 3) == [FrameRange(0, None)]
    with pytest.raises(ValueError, match="frames per range must be >= 1"):
        split_range(5, 0)
    with pytest.raises(ValueError, match="0 <= start < stop"):
        FrameRange(3, 3)


def places(stamps, frame_range, gap_ns):
    cut = RangeCut(frame_range, gap_ns)
    return [cut.place(position, stamp) for position, stamp in enumerate(stamps)]


def test_range_boundaries_move_past_frames_that_can_share_a_ground_truth():
    # Without stamp matching the boundaries are the positions asked for.
    assert places([0, 10, 10, 20], FrameRange(2, 3), None) == [BEFORE, BEFORE, INSIDE, AFTER]
    # Stamp matching with tolerance 0: frames 1 and 2 share a stamp, so the boundary moves from 2 to 3 ...
    assert places([0, 10, 10, 20, 30], FrameRange(2, 4), 0) == [BEFORE, BEFORE, BEFORE, INSIDE, AFTER]
    # ... and the range before ends at 3 too: the two ranges still cover every message once.
    assert places([0, 10, 10, 20, 30], FrameRange(0, 2), 0) == [INSIDE, INSIDE, INSIDE, AFTER, AFTER]
    # Tolerance 5 (gap 10): a boundary needs a stamp more than 10 above every one before it: 21 is, 20 is not.
    assert places([0, 10, 20, 31], FrameRange(2, None), 10) == [BEFORE, BEFORE, BEFORE, INSIDE]
    assert places([0, 10, 21, 31], FrameRange(2, None), 10) == [BEFORE, BEFORE, INSIDE, INSIDE]
    # The start moving to or past the stop: an empty range (the next range starts there).
    assert places([0, 10, 10, 20], FrameRange(2, 3), 0) == [BEFORE, BEFORE, BEFORE, AFTER]
    # Running to the end without a boundary: the range is empty.
    assert places([0, 10, 10], FrameRange(2, None), 0) == [BEFORE, BEFORE, BEFORE]


def test_a_stamp_falling_back_into_reach_of_the_frames_before_the_range_is_refused():
    cut = RangeCut(FrameRange(2, None), 0)
    assert [cut.place(p, s) for p, s in enumerate([0, 10, 20])] == [BEFORE, BEFORE, INSIDE]
    with pytest.raises(RangeError, match="header stamp 10 falls back to within 0 ns of a frame before this frame "
                                         "range .*without --split-frames"):
        cut.place(3, 10)
    assert RangeCut(FrameRange(2, None), None).place(0, 5) == BEFORE  # index matching: any order is fine


@pytest.mark.parametrize("per_range", [1, 2, 3, 5])
def test_ranges_of_a_bag_join_to_the_bag_in_one_piece(long_bag, model_path, per_range):
    path, _ = long_bag
    tasks = tasks_of([path], model_path, num_overlays=3)
    whole = evaluate_bags(tasks)
    split = evaluate_bags(tasks, split_frames=per_range)
    assert split.info["frame ranges"] == f"{-(-7 // per_range)} tasks of up to {per_range} frames"
    assert_same_bag(split.evaluations[0], whole.evaluations[0])
    assert whole.evaluations[0].skipped == {UNDECODABLE_IMAGE: 1} and whole.result.num_frames == 6
    assert without_latency(split.rows()) == without_latency(whole.rows())


def test_index_matched_folder_ground_truth_goes_by_position_in_every_range(tmp_path, long_bag, backend):
    path, frames = long_bag
    write_folder(tmp_path, frames, lambda i, frame: f"{i:04d}.png")
    folder = FolderGroundTruth(tmp_path / "panoptic", SYNTHETIC, match="index")
    whole = evaluate_bag(path, IMAGE_TOPIC, backend, ground_truth=folder, label_divisor=DIVISOR, num_overlays=2)
    parts = [evaluate_bag(path, IMAGE_TOPIC, backend, label_divisor=DIVISOR, num_overlays=2, frame_range=r,
                          ground_truth=FolderGroundTruth(tmp_path / "panoptic", SYNTHETIC, match="index"))
             for r in split_range(7, 2)]
    assert [p.frames for p in parts] == [2, 1, 2, 1]  # the 3rd message, undecodable, is in the 2nd range
    assert_same_bag(join_evaluations(parts), whole)
    assert whole.result.num_frames == 6


def test_a_failed_frame_ends_the_joined_bag_and_the_later_ranges_are_left_out(tmp_path, long_bag, backend):
    path, frames = long_bag
    write_folder(tmp_path, frames, lambda i, frame: f"{i:04d}.png")
    (tmp_path / "panoptic" / "0003.png").write_bytes(b"not a png")  # scoring the 4th frame fails

    def folder():
        return FolderGroundTruth(tmp_path / "panoptic", SYNTHETIC, match="index")

    whole = evaluate_bag(path, IMAGE_TOPIC, backend, ground_truth=folder(), label_divisor=DIVISOR, num_overlays=7)
    assert whole.frames == 3 and whole.bag_error.startswith(f"bag {path}, image message 3")
    parts = [evaluate_bag(path, IMAGE_TOPIC, backend, ground_truth=folder(), label_divisor=DIVISOR, num_overlays=7,
                          frame_range=r) for r in split_range(7, 3)]
    assert parts[2].frames == 1 and parts[2].bag_error is None  # frame 6 runs in its range, not in the whole bag
    assert_same_bag(join_evaluations(parts), whole)


def test_frames_sharing_a_stamp_stay_in_one_range(tmp_path, backend, model_path):
    """Frames 1 and 2 carry one stamp and the ground-truth topic one message for it: the frame that takes it first
    in the whole bag takes it in the ranges too, and the other one is left without, as in the whole bag."""
    path = tmp_path / "shared.mcap"
    frames = scene_frames(backend, 4, first_seed=40)
    stamps = [frames[0].stamp_ns, frames[1].stamp_ns, frames[1].stamp_ns, frames[3].stamp_ns]
    with BagWriter(path) as writer:
        for i, (frame, stamp) in enumerate(zip(frames, stamps, strict=True)):
            # Bag times in order; header stamps shared.
            writer.write(IMAGE_TOPIC, IMAGE_TYPE, frame.stamp_ns + i, image_msg(stamp, frame.image, "rgb8"))
            if i != 2:
                writer.write_image(GT_TOPIC, stamp, frame.ground_truth, "32SC1")
    tasks = tasks_of([path], model_path, num_overlays=0)
    whole = evaluate_bags(tasks)
    assert whole.evaluations[0].skipped == {NO_GROUND_TRUTH: 1}
    for per_range in (1, 2):
        assert_same_bag(evaluate_bags(tasks, split_frames=per_range).evaluations[0], whole.evaluations[0])
    # Cut at position 2, frame 2 would find the ground truth frame 1 took in the whole bag: the cut moves to 3.
    ranges = [evaluate_bag(path, IMAGE_TOPIC, backend, ground_truth=TopicGroundTruth(path, GT_TOPIC),
                           label_divisor=DIVISOR, num_overlays=0, frame_range=r) for r in split_range(4, 2)]
    assert [r.frames for r in ranges] == [3, 1] and ranges[0].skipped == {NO_GROUND_TRUTH: 1}


def test_stamps_going_back_across_a_boundary_end_the_bag_with_a_clear_error(tmp_path, backend, model_path):
    path = tmp_path / "back.mcap"
    frames = scene_frames(backend, 4, first_seed=50)
    stamps = [frames[0].stamp_ns, frames[1].stamp_ns, frames[2].stamp_ns, frames[1].stamp_ns]  # the last goes back
    with BagWriter(path) as writer:
        for i, (frame, stamp) in enumerate(zip(frames, stamps, strict=True)):
            writer.write(IMAGE_TOPIC, IMAGE_TYPE, frame.stamp_ns + i, image_msg(stamp, frame.image, "rgb8"))
            writer.write_image(GT_TOPIC, frame.stamp_ns, frame.ground_truth, "32SC1")
    evaluation = evaluate_bags(tasks_of([path], model_path, num_overlays=0), split_frames=2).evaluations[0]
    # Ranges [0, 2) and [2, ...): the 4th frame's stamp is that of the 2nd, before the range it is in.
    assert evaluation.frames == 3 and evaluation.bag_error.startswith(f"bag {path}: stopped at image message 3: header "
                                                                      f"stamp {stamps[3]} falls back")


def test_damage_ends_the_joined_bag_where_it_ends_the_whole(tmp_path, backend, model_path):
    from rosbags.rosbag2 import StoragePlugin, Writer

    from panoptic_ros.data.rosbag_io import typestore

    path = tmp_path / "damaged"
    frames = scene_frames(backend, 5, first_seed=60)
    store = typestore()
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    images = writer.add_connection(IMAGE_TOPIC, IMAGE_TYPE, typestore=store)
    truth = writer.add_connection(GT_TOPIC, IMAGE_TYPE, typestore=store)
    for i, frame in enumerate(frames):
        image = store.serialize_cdr(image_msg(frame.stamp_ns, frame.image, "rgb8"), IMAGE_TYPE)
        writer.write(images, frame.stamp_ns, b"\x00\x01\x00\x00\x05" if i == 3 else image)  # 4th: cannot be read
        writer.write(truth, frame.stamp_ns, store.serialize_cdr(image_msg(frame.stamp_ns, frame.ground_truth, "32SC1"),
                                                                IMAGE_TYPE))
    writer.close()
    tasks = tasks_of([path], model_path, num_overlays=5)
    whole = evaluate_bags(tasks).evaluations[0]
    assert whole.frames == 3 and "image message 3" in whole.bag_error
    for per_range in (1, 2, 4):
        assert_same_bag(evaluate_bags(tasks, split_frames=per_range).evaluations[0], whole)


def test_cli_split_frames_on_jobs_gives_the_one_piece_report(long_bag, model_path, tmp_path, capsys):
    path, _ = long_bag
    common = ["eval-bag", str(path), "--image-topic", IMAGE_TOPIC, "--gt-topic", GT_TOPIC, "--onnx", str(model_path),
              "--device", "cpu", "--threads", "1", "--overlays", "3"]
    assert main([*common, "--report", str(tmp_path / "one")]) == 0
    assert main([*common, "--report", str(tmp_path / "split"), "--split-frames", "3", "--jobs", "2"]) == 0, \
        capsys.readouterr()
    one, split = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "split"))
    assert split["metrics"] == one["metrics"] and split["skipped_frames"] == one["skipped_frames"]
    assert split["info"]["frame ranges"] == "3 tasks of up to 3 frames" and split["info"]["workers"] == "2 processes"
    assert split["bags"][0]["frames run"] == 6 and len(split["files"]["overlays"]) == len(one["files"]["overlays"]) == 3


def test_split_frames_refuses_what_needs_a_bag_in_one_piece(long_bag, model_path, tmp_path, capsys, backend):
    path, _ = long_bag
    common = ["eval-bag", str(path), "--image-topic", IMAGE_TOPIC, "--onnx", str(model_path), "--report",
              str(tmp_path / "report"), "--split-frames", "2"]
    for extra in (["--tracking"], ["--output-bag", str(tmp_path / "out.mcap")]):
        assert main([*common, *extra]) == 2
        assert "--split-frames does not go with --tracking or --output-bag" in capsys.readouterr().err
    assert main([*common[:-1], "0"]) == 2
    assert "--split-frames must be >= 1" in capsys.readouterr().err
    from panoptic_ros.tracking.evaluation import SequenceTracking

    with pytest.raises(ValueError, match="tracking follows a bag's frames in order"):
        evaluate_bag(path, IMAGE_TOPIC, backend, tracking=SequenceTracking(SYNTHETIC, DIVISOR),
                     frame_range=FrameRange(0, 2))
