"""Evaluation without ROS: importing panoptic_ros.evaluation's modules loads no rclpy and no message code
(messages are imported only where a bag of messages is written or a node is driven)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EVALUATION = Path(__file__).resolve().parents[1] / "panoptic_ros" / "evaluation"
# Top-level packages of ROS client and message code.
ROS_PACKAGES = ("rclpy", "rosidl_runtime_py", "rosidl_parser", "rpyutils", "std_msgs", "sensor_msgs",
                "builtin_interfaces", "diagnostic_msgs", "geometry_msgs", "rcl_interfaces")


def loaded_modules(code: str) -> list[str]:
    """sys.modules of a fresh interpreter after `code`."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
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
