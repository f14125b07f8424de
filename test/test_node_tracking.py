"""Tracking in panoptic_node, across processes: a synthetic sequence bag played frame by frame into a real node
with the shipped psn model; objects seen in consecutive frames keep their track_id, track_image carries
class * label_divisor + track id, and the `tracking` / `track_max_age` parameters work at run time."""

import array
import subprocess
from pathlib import Path

import numpy as np
import pytest
from sensor_msgs.msg import Image

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.cli import main
from panoptic_ros.data.rosbag_io import read_id_images, read_images
from panoptic_ros.ros.client import PanopticClient, stamp_key, start_node, stop_node
from panoptic_ros.ros.image_conversion import image_msg_to_array

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "psn.onnx"
DIVISOR = 1000
FRAMES = 8
OUTPUTS = ("id_image", "track_image", "instances", "timing")

pytestmark = [pytest.mark.timeout(240), pytest.mark.skipif(not MODEL.is_file(), reason="needs models/psn.onnx")]


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    """(image, ground truth) of the frames of a sequence bag written by `panoptic-ros synth --sequence`."""
    bag = tmp_path_factory.mktemp("bag") / "sequence.mcap"
    assert main(["synth", "--sequence", "--frames", str(FRAMES), "--seed", "2000000001", "--bag", str(bag)]) == 0
    return [(image.pixels, gt.pixels) for image, gt in zip(read_images(bag, "/camera/image_raw"),
                                                           read_id_images(bag, "/camera/panoptic_gt"), strict=True)]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    log = (tmp_path_factory.mktemp("node") / "node.log").open("w")
    namespace = "/pn_tracking"
    process = start_node(["-r", f"__ns:={namespace}", "-p", f"model:={MODEL}", "-p", "threads:=1"],
                         stdout=log, stderr=subprocess.STDOUT)
    client = PanopticClient(namespace, outputs=OUTPUTS, timing=True)
    try:
        client.wait_for_node(timeout=90)
        yield client
    finally:
        client.close()
        stop_node(process)
        log.close()


def image_msg(pixels: np.ndarray, index: int) -> Image:
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding="rgb8", step=pixels.shape[1] * 3,
                data=array.array("B", pixels.tobytes()))
    msg.header.frame_id = "camera"
    msg.header.stamp.sec, msg.header.stamp.nanosec = 2000 + index, 0
    return msg


def send(client, pixels: np.ndarray, index: int, topics=OUTPUTS) -> dict:
    """Publish one frame until its outputs came back (the first sends may precede discovery)."""
    msg = image_msg(pixels, index)
    for _ in range(30):
        client.publish("", msg)
        try:
            return client.outputs("", stamp_key(msg), topics, timeout=4.0)
        except TimeoutError:
            continue
    raise TimeoutError(f"no outputs for frame {index}")


def test_objects_keep_their_track_id_across_frames(client, sequence):
    continued = changed = 0
    previous: dict[int, int] = {}  # ground-truth track -> predicted track_id in the previous frame
    seen_ids: set[int] = set()
    for index, (image, gt) in enumerate(sequence):
        outputs = send(client, image, index)
        ids = image_msg_to_array(outputs["id_image"])
        track_image = image_msg_to_array(outputs["track_image"])
        things = [s for s in outputs["instances"].segments if s.is_thing]
        assert all(s.track_id == 0 for s in outputs["instances"].segments if not s.is_thing)
        tracked = [s for s in things if s.track_id]
        assert len({s.track_id for s in tracked}) == len(tracked)  # one object per track in a frame
        current = {}
        for segment in things:
            mask = ids == segment.id
            # the track image: class * label_divisor + track id on exactly the segment's pixels
            assert (track_image[mask] == segment.class_id * DIVISOR + segment.track_id).all()
            if not segment.track_id:
                continue
            seen_ids.add(segment.track_id)
            gt_ids, counts = np.unique(gt[mask], return_counts=True)
            best = gt_ids[np.argmax(counts)]
            if best % DIVISOR and SYNTHETIC.thing[best // DIVISOR]:
                gt_mask = gt == best
                if (mask & gt_mask).sum() / (mask | gt_mask).sum() > 0.5:  # this prediction is that object
                    current[int(best)] = segment.track_id
        for obj, track_id in current.items():
            if obj in previous:
                continued += previous[obj] == track_id
                changed += previous[obj] != track_id
        previous = current
        stuff = ~np.isin(ids // DIVISOR, SYNTHETIC.thing_ids) | (ids < 0)
        assert np.array_equal(track_image[stuff], ids[stuff])  # stuff and void as in the id image
    assert continued >= 10  # objects seen in consecutive frames (19 of them when written)
    assert continued >= 0.9 * (continued + changed), (continued, changed)
    client.seen_track_ids = seen_ids


def test_tracking_off_and_on_at_run_time(client, sequence):
    seen = getattr(client, "seen_track_ids", set())
    assert all(r.successful for r in client.set_parameters({"tracking": False}))
    image, _ = sequence[0]
    off = send(client, image, 100, ("id_image", "instances", "timing"))
    assert all(s.track_id == 0 for s in off["instances"].segments)
    assert all(r.successful for r in client.set_parameters({"tracking": True, "track_max_age": 5}))
    on = send(client, image, 101)  # track images arrive in order: none came for the frame sent with tracking off
    with pytest.raises(TimeoutError):
        client.outputs("", stamp_key(off["id_image"]), ("track_image",), timeout=0.0)
    new_ids = {s.track_id for s in on["instances"].segments if s.track_id}
    assert new_ids and not new_ids & seen and min(new_ids) > max(seen, default=0)  # afresh, ids never reused
    refused = client.set_parameters({"track_max_age": -1})
    assert not refused[0].successful
