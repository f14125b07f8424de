"""The tracker: birth, continuation, occlusion within max age, death, class change, ByteTrack's low-score pass,
optimal assignment, box fallback, id uniqueness, and the track image."""

import numpy as np
import pytest

from panoptic_ros.pipeline_io import COL, INSTANCE_COLUMNS
from panoptic_ros.tracking.config import TrackerConfig
from panoptic_ros.tracking.tracker import GRID_PIXELS, Tracker, TrackIds, box_iou, track_id_map

THING = (False, False, True, True)  # classes 0, 1 stuff; 2, 3 things
DIVISOR = 1000
HW = (60, 100)


def frame(objects, hw=HW):
    """Id map and instance rows of objects (class, x1, y1, x2, y2, score), drawn in order (later on top)."""
    panoptic = np.zeros(hw, dtype=np.int32)  # all stuff class 0
    rows = [np.zeros(len(INSTANCE_COLUMNS))]
    rows[0][COL["valid"]] = 1
    counts = {}
    for class_id, x1, y1, x2, y2, score in objects:
        counts[class_id] = counts.get(class_id, 0) + 1
        segment = class_id * DIVISOR + counts[class_id]
        panoptic[y1:y2 + 1, x1:x2 + 1] = segment
        row = np.zeros(len(INSTANCE_COLUMNS))
        row[[COL["valid"], COL["id"], COL["class_id"], COL["score"], COL["x1"], COL["y1"], COL["x2"], COL["y2"]]] = \
            (1, segment, class_id, score, x1, y1, x2, y2)
        rows.append(row)
    return panoptic, np.array(rows)


def track_ids(tracker, objects, hw=HW):
    """Track id of each object, in the order given."""
    panoptic, rows = frame(objects, hw)
    tracks = tracker.update(panoptic, rows)
    assert 0 not in tracks  # the stuff row is not tracked
    return [tracks[int(r[COL["id"]])] for r in rows[1:]]


def car(x, y=10, size=20, score=0.9, class_id=2):
    return (class_id, x, y, x + size - 1, y + size - 1, score)


def test_birth_and_continuation():
    tracker = Tracker(THING)
    assert track_ids(tracker, [car(0), car(50)]) == [1, 2]  # born
    assert track_ids(tracker, [car(53), car(3)]) == [2, 1]  # continued, whatever the detection order
    assert track_ids(tracker, [car(6), car(56), car(30, y=35)]) == [1, 2, 3]
    assert tracker.live_tracks == 3


@pytest.mark.parametrize("max_age", [0, 1, 5])
def test_occlusion_within_max_age_continues_one_past_dies(max_age):
    config = TrackerConfig(max_age=max_age)
    tracker = Tracker(THING, config)
    assert track_ids(tracker, [car(10)]) == [1]
    for _ in range(max_age):  # hidden for exactly max_age frames
        track_ids(tracker, [])
    assert track_ids(tracker, [car(11)]) == [1]
    for _ in range(max_age + 1):  # one frame more than max_age: dead
        track_ids(tracker, [])
    assert tracker.live_tracks == 0
    assert track_ids(tracker, [car(11)]) == [2]  # a new track, and ids are never reused


def test_box_fallback_follows_a_moving_object_through_an_occlusion():
    tracker = Tracker(THING, TrackerConfig(max_age=10))
    for x in (0, 6, 12):  # 6 px per frame
        assert track_ids(tracker, [car(x)]) == [1]
    for _ in range(3):
        track_ids(tracker, [])
    # 4 frames later it is 24 px further on: no overlap with where it was last seen, but with where it went
    assert box_iou([[12, 10, 31, 29]], [[36, 10, 55, 29]])[0, 0] == 0
    assert track_ids(tracker, [car(36)]) == [1]


def test_velocity_after_an_occlusion_is_per_frame():
    tracker = Tracker(THING, TrackerConfig(max_age=10))
    for x in (0, 6):  # 6 px per frame
        assert track_ids(tracker, [car(x)]) == [1]
    for _ in range(2):
        track_ids(tracker, [])
    assert track_ids(tracker, [car(24)]) == [1]  # 3 frames, 18 px: still 6 px per frame, not 18
    for _ in range(3):
        track_ids(tracker, [])
    # 4 frames later at 6 px per frame: x = 48, clear of x = 24 (where it was last seen) and of x = 96 (18 px/frame)
    assert box_iou([[24, 10, 43, 29]], [[48, 10, 67, 29]])[0, 0] == 0
    assert track_ids(tracker, [car(48)]) == [1]


def test_class_change_is_a_new_track():
    tracker = Tracker(THING)
    assert track_ids(tracker, [car(10, class_id=2)]) == [1]
    assert track_ids(tracker, [car(10, class_id=3)]) == [2]
    assert track_ids(tracker, [car(10, class_id=3)]) == [2]


def test_low_score_detections_continue_tracks_but_start_none():
    tracker = Tracker(THING, TrackerConfig(high_score=0.5))
    assert track_ids(tracker, [car(10, score=0.9), car(60, score=0.49)]) == [1, 0]  # 0.49: below, untracked
    assert track_ids(tracker, [car(12, score=0.3), car(60, score=0.5)]) == [1, 2]  # 0.5: exactly at, a track
    assert track_ids(tracker, [car(14, score=0.3)]) == [1]


def test_low_score_pass_only_takes_tracks_seen_in_the_previous_frame():
    tracker = Tracker(THING, TrackerConfig(max_age=5))
    assert track_ids(tracker, [car(10)]) == [1]
    track_ids(tracker, [])  # lost for a frame
    assert track_ids(tracker, [car(10, score=0.2)]) == [0]  # a lost track is not revived by a weak detection
    assert track_ids(tracker, [car(10, score=0.9)]) == [1]  # a strong one does


def test_high_score_detections_are_matched_before_low_ones():
    tracker = Tracker(THING)
    assert track_ids(tracker, [car(10)]) == [1]
    # two candidates for track 1; the low-scoring one overlaps it more, yet the high-scoring one takes it
    assert track_ids(tracker, [car(11, score=0.3), car(16, score=0.9)]) == [0, 1]


def test_assignment_is_optimal_not_greedy():
    tracker = Tracker(THING, TrackerConfig(mask_iou=0.15, box_iou=1.0))
    assert track_ids(tracker, [car(10), car(30)]) == [1, 2]
    # d1 overlaps track 1 most (IoU 0.43) and track 2 less (0.25); d2 overlaps only track 1 (0.17). Greedy would
    # give track 1 to d1 and leave d2 a new track; the optimal assignment continues both tracks.
    d1, d2 = car(18), car(0, size=16)
    assert track_ids(tracker, [d1, d2]) == [2, 1]


def test_track_ids_are_unique_across_trackers_sharing_a_counter():
    ids = TrackIds()
    front, rear = Tracker(THING, ids=ids), Tracker(THING, ids=ids)
    assert track_ids(front, [car(0)]) == [1]
    assert track_ids(rear, [car(0), car(50)]) == [2, 3]
    assert track_ids(front, [car(50)]) == [4]


def test_large_id_maps_are_compared_on_a_grid():
    hw = (1024, 2048)
    assert hw[0] * hw[1] // 16 <= GRID_PIXELS  # every 4th row and column
    tracker = Tracker(THING)
    objects = [car(40 * i, y=300 + (i % 5) * 100, size=37) for i in range(50)]
    first = track_ids(tracker, objects, hw)
    assert sorted(first) == list(range(1, 51))
    moved = [(c, x1 + 3, y1 + 2, x2 + 3, y2 + 2, s) for c, x1, y1, x2, y2, s in objects]
    assert track_ids(tracker, moved[::-1], hw) == first[::-1]


def test_a_new_camera_size_drops_the_masks_but_keeps_the_boxes():
    tracker = Tracker(THING)
    assert track_ids(tracker, [car(10)]) == [1]
    assert track_ids(tracker, [car(10)], hw=(80, 120)) == [1]  # box IoU 1


def test_config_is_checked():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="track_max_age"):
            TrackerConfig(max_age=bad)
    with pytest.raises(ValueError, match="high_score"):
        TrackerConfig(high_score=1.01)
    TrackerConfig(max_age=0, high_score=1.0, mask_iou=0.0)


def test_track_id_map():
    panoptic = np.array([[-1, 0, 2001], [2002, 3001, 1000]], dtype=np.int32)
    tracks = {2001: 7, 2002: 0, 3001: 1234}
    assert track_id_map(panoptic, tracks, DIVISOR).tolist() == [[-1, 0, 2007], [2000, 3000 + 235, 1000]]
    assert track_id_map(panoptic, {}, DIVISOR).tolist() == panoptic.tolist()
    assert track_id_map(panoptic, {2001: 999, 3001: 1000}, DIVISOR)[[0, 1], [2, 0]].tolist() == [2999, 2002]


def test_tracker_bench_frames_and_clock():
    from panoptic_ros.tracking.bench import moving_boxes, tracker_cost_ms

    frames = moving_boxes(256, 512, instances=50, frames=3)
    assert len(frames) == 3 and all(len(rows) == 50 for _, rows in frames)
    ticks = iter(range(100))
    assert tracker_cost_ms(256, 512, instances=50, frames=4, clock=lambda: next(ticks) / 1e3) == [1.0, 1.0, 1.0]


def test_camera_tracking_follows_the_node_parameters():
    from panoptic_ros.classes import LabelSet
    from panoptic_ros.pipeline_io import PanopticResult
    from panoptic_ros.tracking.camera import CameraTracking

    labels = LabelSet("four", ("a", "b", "c", "d"), THING, ((0, 0, 0),) * 4)
    other = LabelSet("other", ("a", "b", "c", "d"), (False, True, True, True), ((0, 0, 0),) * 4)

    def result(objects):
        panoptic, rows = frame(objects)
        return PanopticResult(panoptic, np.zeros(HW, np.uint8), rows, len(rows))

    ids = TrackIds()
    camera = CameraTracking(ids)
    assert camera.update(result([car(10)]), labels, True, 0) == {2001: 1}
    track_ids(Tracker(THING, ids=ids), [car(0)])  # another camera of the node takes id 2
    assert camera.update(result([]), labels, True, 1) == {}  # max age 1 now: the track survives one frame
    assert camera.update(result([car(11)]), labels, True, 1) == {2001: 1}
    assert camera.update(result([car(11)]), labels, False, 1) is None  # off: tracks dropped
    assert camera.update(result([car(11)]), labels, True, 1) == {2001: 3}  # on again: a new, unused id
    assert camera.update(result([car(11)]), other, True, 1) == {2001: 4}  # another label set: afresh


def test_map_ids_table_and_search_agree():
    from panoptic_ros.tracking.tracker import DENSE_IDS, map_ids

    rng = np.random.default_rng(3)
    for scale in (1, DENSE_IDS):  # small ids: a lookup table; large ones: a binary search
        keys = rng.choice(50, 12, replace=False) * scale
        ids = np.where(rng.random((7, 9)) < 0.1, -1, rng.choice(np.append(keys, [7 * scale + 1, 3]), (7, 9)))
        values = rng.integers(1, 99, keys.size)
        expected = {int(k): int(v) for k, v in zip(keys, values, strict=True)}
        for default in (0, None):
            got = map_ids(ids, keys, values, default)
            want = [[expected.get(i, i if default is None else default) for i in row] for row in ids.tolist()]
            assert got.tolist() == want
    assert map_ids(np.array([[-1, 5]]), np.zeros(0, np.int64), np.zeros(0, np.int64), None).tolist() == [[-1, 5]]
    assert map_ids(np.array([[-1, 5 * DENSE_IDS]]), np.zeros(0, np.int64), np.zeros(0, np.int64), 0).tolist() == \
        [[0, 0]]
    big = 10**6  # a label divisor of a million: ids class * 10**6 + n
    assert track_id_map(np.array([[2 * big + 1, big]]), {2 * big + 1: 5}, big).tolist() == [[2 * big + 5, big]]
