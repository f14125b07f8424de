"""Evaluation without ROS: importing panoptic_ros.evaluation's modules loads no rclpy and no message code
(messages are imported only where a bag of messages is written or a node is driven)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from eval_cases import GT_TOPIC, IMAGE_TOPIC, scene_frames

from panoptic_ros.data.rosbag_io import write_frames

EVALUATION = Path(__file__).resolve().parents[1] / "panoptic_ros" / "evaluation"
# Top-level packages of ROS client and message code.
ROS_PACKAGES = ("rclpy", "rosidl_runtime_py", "rosidl_parser", "rpyutils", "std_msgs", "sensor_msgs",
                "builtin_interfaces", "diagnostic_msgs", "geometry_msgs", "rcl_interfaces")


def loaded_modules(code: str) -> list[str]:
    """The modules loaded in a fresh interpreter after `code` (sys.modules, less names blocked with None)."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m, v in sys.modules.items() if v is not None)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(done.stdout.splitlines()[-1])


def ros_modules(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in ROS_PACKAGES or m.startswith("panoptic_ros.msg")]


def test_evaluation_modules_import_no_ros_code():
    names = sorted(f"panoptic_ros.evaluation.{path.stem}" for path in EVALUATION.glob("*.py")
                   if path.stem != "__init__")
    assert "panoptic_ros.evaluation.bag_eval" in names and "panoptic_ros.evaluation.replay" in names
    loaded = loaded_modules("import importlib\n" + "\n".join(f"importlib.import_module({n!r})" for n in names))
    assert set(names) <= set(loaded)
    assert ros_modules(loaded) == []


def test_the_check_sees_ros_code_where_it_is_loaded():
    # The node's message builders do load it: the check above would notice an evaluation module importing them.
    found = ros_modules(loaded_modules("import panoptic_ros.ros.outputs"))
    assert "std_msgs.msg" in found and "panoptic_ros.msg" in found


def test_eval_bag_runs_where_ros_cannot_be_imported(tmp_path, backend, model_path):
    """eval-bag on a bag, one piece and as frame ranges, in an interpreter where importing ROS code fails."""
    bag = tmp_path / "bag.mcap"
    write_frames(bag, scene_frames(backend, 3), compressed=True)
    blocked = "\n".join(f"sys.modules[{name!r}] = None" for name in ROS_PACKAGES)  # `import` then raises
    reports = [tmp_path / "one", tmp_path / "ranges"]
    runs = "\n".join(f"codes.append(main(['eval-bag', {str(bag)!r}, '--image-topic', {IMAGE_TOPIC!r}, '--gt-topic', "
                     f"{GT_TOPIC!r}, '--onnx', {str(model_path)!r}, '--device', 'cpu', '--report', {str(report)!r}]"
                     f" + {extra!r}))" for report, extra in zip(reports, ([], ["--split-frames", "2"]), strict=True))
    loaded = loaded_modules(f"import sys\n{blocked}\nfrom panoptic_ros.cli import main\ncodes = []\n{runs}\n"
                            "assert codes == [0, 0], codes")
    assert "panoptic_ros.evaluation.bag_eval" in loaded and "onnxruntime" in loaded
    assert ros_modules(loaded) == []
    one, ranges = (json.loads((report / "metrics.json").read_text()) for report in reports)
    assert one["metrics"]["num_frames"] == 3 and ranges["metrics"] == one["metrics"]
