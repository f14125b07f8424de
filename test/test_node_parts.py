"""The node's parts without a running node: newest-frame slots, output mapping and messages, parameters."""

import threading

import numpy as np
import pytest
from std_msgs.msg import Header

from panoptic_ros.classes import SYNTHETIC, VOID_CLASS, VOID_ID
from panoptic_ros.imaging import Resampler, class_colors, overlay_image, segment_colors
from panoptic_ros.pipeline_io import COL, INSTANCE_COLUMNS, Thresholds
from panoptic_ros.ros import parameters as params
from panoptic_ros.ros.frame_slot import NewestFrameSlots
from panoptic_ros.ros.outputs import class_map_msg, instance_array_msg

DIVISOR = 1000

# ---- newest-frame slots ---------------------------------------------------------------------


def test_a_new_frame_replaces_the_waiting_one_and_counts_a_drop():
    slots = NewestFrameSlots(["cam"])
    assert slots.put(0, "f1") is False
    assert slots.put(0, "f2") is True
    assert slots.put(0, "f3") is True
    assert slots.take(timeout=0) == (0, "f3")
    assert slots.take(timeout=0.01) is None
    counters = slots.counters(0)
    assert (counters.received, counters.dropped, counters.taken) == (3, 2, 1)


def test_cameras_are_served_round_robin():
    slots = NewestFrameSlots(["a", "b", "c"])
    order = []
    for _ in range(3):
        for camera in range(3):
            slots.put(camera, f"{camera}")
        order += [slots.take(timeout=0)[0], slots.take(timeout=0)[0]]
    # A busy camera a cannot starve b and c: each take moves on to the next full slot.
    assert order == [0, 1, 2, 0, 1, 2]


def test_close_wakes_a_waiting_worker():
    slots = NewestFrameSlots(["cam"])
    results = []
    worker = threading.Thread(target=lambda: results.append(slots.take()))
    worker.start()
    slots.close()  # before or while the worker waits: either way take() returns None
    worker.join(timeout=2)
    assert not worker.is_alive() and results == [None]


def test_a_busy_worker_gets_only_the_newest_frame_and_the_counters_add_up():
    slots = NewestFrameSlots(["cam"])
    taken = []
    busy, resume, got_last = threading.Event(), threading.Event(), threading.Event()

    def consume():
        while (item := slots.take()) is not None:
            taken.append(item[1])
            if len(taken) == 1:  # "inference" of the first frame lasts until the producer is done
                busy.set()
                resume.wait()
            if item[1] == 1999:
                got_last.set()

    consumer = threading.Thread(target=consume)
    consumer.start()
    slots.put(0, 0)
    assert busy.wait(timeout=10)
    for i in range(1, 2000):
        slots.put(0, i)
    resume.set()
    assert got_last.wait(timeout=10)
    slots.close()
    consumer.join(timeout=10)
    counters = slots.counters(0)
    assert taken == [0, 1999]  # never an old frame once a newer one has come
    assert (counters.received, counters.taken, counters.dropped, slots.pending()) == (2000, 2, 1998, 0)


def test_slots_need_a_camera():
    with pytest.raises(ValueError, match="at least one camera"):
        NewestFrameSlots([])


# ---- outputs --------------------------------------------------------------------------------

ROAD, SKY, PERSON, CAR = 0, 4, 5, 6


def make_scene(height: int = 8, width: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A hand-made model-resolution result: sky above road, two cars and a person, one void pixel;
    returns (panoptic, semantic, valid instance-table rows) with the table computed from the map."""
    panoptic = np.full((height, width), SKY * DIVISOR, np.int32)
    panoptic[height // 2:] = ROAD * DIVISOR
    panoptic[3:6, 1:4] = CAR * DIVISOR + 1
    panoptic[4:7, 4:9] = CAR * DIVISOR + 2
    panoptic[1:3, 9:11] = PERSON * DIVISOR + 1
    panoptic[0, 0] = VOID_ID
    semantic = np.where(panoptic >= 0, panoptic // DIVISOR, VOID_CLASS).astype(np.uint8)
    scores = {CAR * DIVISOR + 1: 0.6, CAR * DIVISOR + 2: 0.9, PERSON * DIVISOR + 1: 0.7}
    rows = []
    for segment in (CAR * DIVISOR + 1, CAR * DIVISOR + 2, PERSON * DIVISOR + 1, ROAD * DIVISOR, SKY * DIVISOR):
        ys, xs = np.nonzero(panoptic == segment)
        row = np.zeros(len(INSTANCE_COLUMNS), np.float32)
        row[[COL["valid"], COL["id"], COL["class_id"], COL["score"]]] = (1, segment, segment // DIVISOR,
                                                                          scores.get(segment, 1.0))
        row[[COL["x1"], COL["y1"], COL["x2"], COL["y2"]]] = xs.min(), ys.min(), xs.max(), ys.max()
        row[[COL["area"], COL["centroid_x"], COL["centroid_y"]]] = len(xs), xs.mean(), ys.mean()
        rows.append(row)
    return panoptic, semantic, np.stack(rows)


def measured_segments(panoptic: np.ndarray) -> dict[int, tuple[int, int, int, int, int, float, float]]:
    """id -> (x1, y1, x2, y2, area, centroid x, centroid y) measured on an id image."""
    out = {}
    for segment in np.unique(panoptic[panoptic >= 0]):
        ys, xs = np.nonzero(panoptic == segment)
        out[int(segment)] = (xs.min(), ys.min(), xs.max(), ys.max(), len(xs), xs.mean(), ys.mean())
    return out


@pytest.mark.parametrize("camera_hw", [(8, 12), (16, 24), (24, 36), (13, 29), (17, 40)])
def test_mapped_segments_describe_the_mapped_id_image(camera_hw):
    panoptic, _, rows = make_scene()
    resampler = Resampler(camera_hw, panoptic.shape)
    mapped_ids = resampler.to_camera(panoptic)
    assert mapped_ids.shape == camera_hw and mapped_ids.dtype == np.int32
    mapped = resampler.segments_to_camera(rows)
    truth = measured_segments(mapped_ids)
    assert sorted(int(r[COL["id"]]) for r in mapped) == sorted(truth)
    integer_scale = camera_hw[0] % 8 == 0 and camera_hw[1] % 12 == 0
    for row in mapped:
        x1, y1, x2, y2, area, cx, cy = truth[int(row[COL["id"]])]
        assert (row[COL["x1"]], row[COL["y1"]], row[COL["x2"]], row[COL["y2"]]) == (x1, y1, x2, y2)
        if integer_scale:
            assert row[COL["area"]] == area
            assert row[COL["centroid_x"]] == pytest.approx(cx) and row[COL["centroid_y"]] == pytest.approx(cy)
        else:  # nearest resampling of a non-integer ratio: off by at most a row/column of pixels
            assert abs(row[COL["area"]] - area) <= (x2 - x1 + 1) + (y2 - y1 + 1)
            assert abs(row[COL["centroid_x"]] - cx) < 1.0 and abs(row[COL["centroid_y"]] - cy) < 1.0


def test_segments_that_vanish_when_shrinking_are_left_out():
    panoptic, _, rows = make_scene()
    resampler = Resampler((2, 3), panoptic.shape)
    ids = {int(i) for i in np.unique(resampler.to_camera(panoptic))} - {VOID_ID}
    mapped = {int(r[COL["id"]]) for r in resampler.segments_to_camera(rows)}
    assert mapped == ids == {CAR * DIVISOR + 2, ROAD * DIVISOR, SKY * DIVISOR}


def test_image_goes_to_the_model_size_bilinear(rng):
    image = rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)
    small = Resampler((20, 40), (10, 20)).to_model(image)
    assert small.shape == (10, 20, 3) and small.flags.c_contiguous
    # Exactly half size: bilinear averages each 2x2 block.
    expected = image.reshape(10, 2, 20, 2, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(small - expected).max() <= 1
    same = Resampler((20, 40), (20, 40))
    assert same.identity and same.to_model(image) is image


def test_instance_array_lists_things_by_score_then_stuff_by_class():
    panoptic, _, rows = make_scene()
    header = Header(frame_id="cam")
    header.stamp.sec = 42
    msg = instance_array_msg(rows.astype(np.float64), SYNTHETIC, header, (8, 12), DIVISOR, "psn")
    assert (msg.width, msg.height, msg.label_divisor, msg.model_name) == (12, 8, DIVISOR, "psn")
    assert msg.header.stamp.sec == 42 and msg.header.frame_id == "cam"
    assert [s.id for s in msg.segments] == [6002, 5001, 6001, 0, 4000]
    assert [s.class_name for s in msg.segments] == ["car", "person", "car", "road", "sky"]
    assert [s.is_thing for s in msg.segments] == [True, True, True, False, False]
    assert msg.segments[0].score == pytest.approx(0.9) and msg.segments[3].score == 1.0
    car = msg.segments[0]
    assert (car.bbox.x_offset, car.bbox.y_offset, car.bbox.width, car.bbox.height) == (4, 4, 5, 3)
    assert car.area == 15 and car.centroid_x == pytest.approx(6.0)


def test_class_map_carries_names_flags_and_colors():
    msg = class_map_msg(SYNTHETIC, Header(), 500, "rtps")
    assert msg.model_name == "rtps" and msg.label_divisor == 500
    assert [c.name for c in msg.classes] == list(SYNTHETIC.names)
    assert [c.is_thing for c in msg.classes] == list(SYNTHETIC.thing)
    assert [c.id for c in msg.classes] == list(range(SYNTHETIC.num_classes))
    assert msg.classes[ROAD].color.r == pytest.approx(128 / 255) and msg.classes[ROAD].color.a == 1.0


def test_segment_colors_class_colors_with_instance_shades_and_black_void():
    panoptic, semantic, _ = make_scene()
    colors = segment_colors(panoptic, semantic, SYNTHETIC, DIVISOR)
    assert colors.shape == (8, 12, 3) and colors.dtype == np.uint8
    np.testing.assert_array_equal(colors[7, 0], SYNTHETIC.colors[ROAD])  # stuff: the plain class color
    np.testing.assert_array_equal(colors[0, 0], (0, 0, 0))  # void
    car1, car2 = colors[3, 1].astype(int), colors[4, 5].astype(int)
    assert not np.array_equal(car1, car2), "two instances of one class need different shades"
    base = np.array(SYNTHETIC.colors[CAR])
    for shade in (car1, car2):  # a shade is the class color darkened, never another hue
        assert np.all(shade <= base) and shade[2] > 0


def test_overlay_blends_and_leaves_void_untouched(rng):
    panoptic, semantic, _ = make_scene()
    colors = segment_colors(panoptic, semantic, SYNTHETIC, DIVISOR)
    image = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
    void = semantic == VOID_CLASS
    np.testing.assert_array_equal(overlay_image(image, colors, semantic, 0.0), image)
    full = overlay_image(image, colors, semantic, 1.0)
    np.testing.assert_array_equal(full[~void], colors[~void])
    np.testing.assert_array_equal(full[void], image[void])
    half = overlay_image(image, colors, semantic, 0.5).astype(int)
    expected = (image.astype(int) + colors) / 2
    assert np.abs(half[~void] - expected[~void]).max() <= 1
    in_place = colors.copy()  # the node blends into the colors' own buffer
    assert overlay_image(image, in_place, semantic, 0.5, out=in_place) is in_place
    np.testing.assert_array_equal(in_place, half)


# ---- parameters -----------------------------------------------------------------------------


def test_every_threshold_is_a_parameter_with_the_contract_range():
    for name, (low, high) in Thresholds.RANGES.items():
        spec = params.SPECS[name]
        assert spec.default == params.Unset("DOUBLE") and spec.unset == "the model's"  # no value: the model's
        descriptor = spec.descriptor()
        (bounds,) = descriptor.floating_point_range
        assert (bounds.from_value, bounds.to_value) == (low, high) and not descriptor.integer_range


def test_choices_are_checked_with_a_reason():
    assert params.check_value("backend", "onnxruntime") is None
    assert params.check_value("backend", "openvino") == ("backend must be one of onnxruntime, torch, tensorrt, "
                                                          "got 'openvino'")
    assert params.check_value("precision", "") == "precision must be one of fp32, fp16, int8, got ''"
    assert params.check_value("input_qos", "SENSOR_DATA") is None
    assert params.check_value("device", "cuda:1") is None and params.check_value("device", "auto") is None
    assert params.check_value("device", "gpu0") == "device must be auto, cpu, cuda or cuda:N, got 'gpu0'"
    assert "one of: raw, compressed" in params.SPECS["input_type"].descriptor().additional_constraints


def test_find_model_by_name_or_path(tmp_path):
    (tmp_path / "psn.onnx").write_bytes(b"x")
    (tmp_path / "rtps.onnx").write_bytes(b"x")
    assert params.find_model("psn", "onnxruntime", tmp_path) == tmp_path / "psn.onnx"
    assert params.find_model(str(tmp_path / "rtps.onnx"), "tensorrt", tmp_path) == tmp_path / "rtps.onnx"
    with pytest.raises(FileNotFoundError, match="no file spinet.onnx in .*; shipped models for the onnxruntime "
                                                "backend: psn, rtps"):
        params.find_model("spinet", "onnxruntime", tmp_path)
    with pytest.raises(FileNotFoundError, match="model: no such file: .*missing.onnx"):
        params.find_model(str(tmp_path / "missing.onnx"), "onnxruntime", tmp_path)
    with pytest.raises(ValueError, match="parameter model is empty"):
        params.find_model("", "onnxruntime", tmp_path)


def test_model_settings_pick_file_and_options(tmp_path):
    engine = tmp_path / "psn.engine"
    engine.write_bytes(b"x")
    values = {name: spec.default for name, spec in params.SPECS.items()}
    trt = params.model_settings({**values, "backend": "tensorrt", "model": "psn", "engine_path": str(engine),
                                 "engine_cache_dir": "/cache"})
    assert trt.model_file(tmp_path) == engine
    assert trt.backend_options() == {"precision": "fp16", "allow_build": True, "cache_dir": "/cache"}
    ort = params.model_settings({**values, "model": "psn", "threads": 2})
    assert ort.backend_options() == {"threads": 2}
    with pytest.raises(FileNotFoundError, match="engine_path: no such file"):
        params.model_settings({**values, "backend": "tensorrt", "engine_path": str(tmp_path / "x.engine")}
                              ).model_file(tmp_path)


@pytest.mark.parametrize("device", ["cuda:0x", "cpux", "xcpu", "cuda:", "gpu0", "auto "])
def test_device_must_match_in_full(device):
    assert params.check_value("device", device) == f"device must be auto, cpu, cuda or cuda:N, got {device!r}"


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_valid_devices(device):
    assert params.check_value("device", device) is None


def test_input_qos_choices_are_auto_and_the_presets():
    assert params.SPECS["input_qos"].default == "auto"
    assert params.SPECS["input_qos"].choices == ("auto", "SENSOR_DATA", "DEFAULT", "SYSTEM_DEFAULT")
    assert params.check_value("output_qos", "auto") == ("output_qos must be one of SENSOR_DATA, DEFAULT, "
                                                         "SYSTEM_DEFAULT, got 'auto'")


# ---- letterbox and colors -------------------------------------------------------------------


def test_letterbox_keeps_the_aspect_ratio_and_pads_with_black():
    resampler = Resampler((480, 640), (256, 512), "letterbox")  # 4:3 into 2:1: full height, bars left and right
    assert resampler.content == (0, 85, 256, 341)
    image = np.full((480, 640, 3), 200, np.uint8)
    model = resampler.to_model(image)
    assert model.shape == (256, 512, 3)
    assert (model[:, :85] == 0).all() and (model[:, 85 + 341:] == 0).all() and (model[:, 85:426] == 200).all()
    wide = Resampler((100, 800), (256, 512), "letterbox")  # 8:1: full width, bars above and below
    assert wide.content == (96, 0, 64, 512)


def test_letterbox_outputs_come_from_the_image_part_at_camera_size():
    resampler = Resampler((6, 8), (6, 16), "letterbox")  # content: columns 4..11 of the model input
    assert resampler.content == (0, 4, 6, 8)
    model_ids = np.full((6, 16), 9, np.int32)  # the padding says 9
    model_ids[:, 4:12] = np.arange(8)  # the image's part: one id per column
    np.testing.assert_array_equal(resampler.to_camera(model_ids), np.tile(np.arange(8, dtype=np.int32), (6, 1)))


def test_letterbox_segments_are_measured_on_the_image_part_only():
    resampler = Resampler((12, 16), (6, 16), "letterbox")  # content: 6x8 at columns 4..11, scale 2
    panoptic = np.full((6, 16), 4000, np.int32)  # sky everywhere, padding included
    panoptic[2:5, 6:9] = 6001  # a car inside the image part
    panoptic[0:2, 0:3] = 6002  # a "car" only in the padding: not in the camera image
    rows = []
    for segment in (6001, 6002, 4000):
        ys, xs = np.nonzero(panoptic == segment)
        row = np.zeros(len(INSTANCE_COLUMNS))
        row[[COL["valid"], COL["id"], COL["class_id"], COL["score"]]] = (1, segment, segment // DIVISOR, 1.0)
        row[[COL["x1"], COL["y1"], COL["x2"], COL["y2"]]] = xs.min(), ys.min(), xs.max(), ys.max()
        row[[COL["area"], COL["centroid_x"], COL["centroid_y"]]] = len(xs), xs.mean(), ys.mean()
        rows.append(row)
    mapped = resampler.segments_to_camera(np.stack(rows), panoptic)
    truth = measured_segments(resampler.to_camera(panoptic))
    assert sorted(int(r[COL["id"]]) for r in mapped) == sorted(truth) == [4000, 6001]
    for row in mapped:
        x1, y1, x2, y2, area, cx, cy = truth[int(row[COL["id"]])]
        assert (row[COL["x1"]], row[COL["y1"]], row[COL["x2"]], row[COL["y2"]]) == (x1, y1, x2, y2)
        assert row[COL["area"]] == area  # the padding's sky pixels are not counted
        assert row[COL["centroid_x"]] == pytest.approx(cx) and row[COL["centroid_y"]] == pytest.approx(cy)


def test_stretch_is_the_default_and_unknown_modes_are_refused():
    assert Resampler((480, 640), (256, 512)).content == (0, 0, 256, 512)
    with pytest.raises(ValueError, match="resize mode must be one of stretch, letterbox, got 'crop'"):
        Resampler((480, 640), (256, 512), "crop")


def test_class_colors_paint_each_class_and_void_black():
    _, semantic, _ = make_scene()
    colors = class_colors(semantic, SYNTHETIC)
    assert colors.shape == (8, 12, 3) and colors.dtype == np.uint8
    np.testing.assert_array_equal(colors[7, 0], SYNTHETIC.colors[ROAD])
    np.testing.assert_array_equal(colors[3, 1], SYNTHETIC.colors[CAR])  # no instance shades: classes only
    np.testing.assert_array_equal(colors[0, 0], (0, 0, 0))


# ---- load benchmark checks --------------------------------------------------------------------

def test_load_checks_hold_up_to_their_limits_and_fail_one_past():
    from panoptic_ros.ros.bench import load_checks

    figures = {"outputs_in_frame_order": True, "lag_frames_p50": 1.0, "lag_frames_first_quarter_mean": 0.5,
               "lag_frames_last_quarter_mean": 1.5, "rss_mb_second_quarter_mean": 200.0,
               "rss_mb_last_quarter_mean": 210.0}
    delta = {"received": 50, "processed": 40, "dropped": 7, "rejected": 2, "failed": 1}
    at_the_limits = load_checks(figures, delta, max_rss_growth_mb=10.0)
    assert at_the_limits == dict.fromkeys(("drop_counter_equals_received_minus_processed", "outputs_from_newest_frames",
                                           "staleness_does_not_grow", "memory_flat"), True)
    past = {"drop_counter_equals_received_minus_processed": ({}, {**delta, "dropped": 8}),
            "outputs_from_newest_frames": ({"lag_frames_p50": 1.5}, delta),
            "staleness_does_not_grow": ({"lag_frames_last_quarter_mean": 1.51}, delta),
            "memory_flat": ({"rss_mb_last_quarter_mean": 210.5}, delta)}
    for name, (changed, counters) in past.items():
        checks = load_checks({**figures, **changed}, counters, max_rss_growth_mb=10.0)
        assert [k for k, ok in checks.items() if not ok] == [name]
    assert not load_checks({**figures, "outputs_in_frame_order": False}, delta, 10.0)["outputs_from_newest_frames"]
