"""Launch file, parameter files and RViz config refer only to things that exist.

launch_ros cannot be installed here, so the launch file is checked statically (its syntax tree);
where launch_ros is installed the launch description is also built for real. That the node starts
with config/cpu.yaml is tested in test_ros_node.py (a real node process).
"""

import ast
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from panoptic_ros.pipeline_io import Thresholds
from panoptic_ros.ros import parameters as params

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "jetson.launch.py"
REQUIRED_ARGUMENTS = {"camera", "model", "backend", "engine_path", "params_file", "namespace", "use_sim_time",
                      "large_data_profile", "rviz", "fixed_frame"}
ROS_PARAMETERS = {"use_sim_time"}  # declared by every rclpy node


@pytest.fixture(scope="module")
def tree() -> ast.Module:
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


def _constant_strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _assigned(tree: ast.Module, name: str) -> ast.AST:
    return next(n.value for n in tree.body if isinstance(n, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == name for t in n.targets))


def _calls(tree: ast.Module, function: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
            and n.func.id == function]


def _declared_arguments(tree: ast.Module) -> set[str]:
    return {element.elts[0].value for element in _assigned(tree, "ARGUMENTS").elts}


def test_launch_file_declares_every_required_argument(tree):
    assert _declared_arguments(tree) == REQUIRED_ARGUMENTS
    assert "generate_launch_description" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


def test_launch_configurations_name_declared_arguments(tree):
    declared = _declared_arguments(tree)
    used = {call.args[0].value for call in _calls(tree, "LaunchConfiguration")
            if isinstance(call.args[0], ast.Constant)}
    overrides = set(_constant_strings(_assigned(tree, "OVERRIDES")))
    assert used and used <= declared
    assert overrides <= declared


def test_launch_file_sets_only_parameters_the_node_declares(tree):
    overrides = set(_constant_strings(_assigned(tree, "OVERRIDES")))
    literal_keys = {key.value for d in ast.walk(tree) if isinstance(d, ast.Dict) for key in d.keys
                    if isinstance(key, ast.Constant)}
    assert overrides <= set(params.PARAMETER_NAMES)
    assert literal_keys <= set(params.PARAMETER_NAMES) | ROS_PARAMETERS


def _executables(tree: ast.Module, action: str) -> list[dict[str, str]]:
    return [{kw.arg: kw.value.value for kw in call.keywords if kw.arg in ("package", "executable")}
            for call in _calls(tree, action)]


def test_launch_file_starts_a_managed_node_and_rviz_and_reads_files_that_exist(tree):
    assert _executables(tree, "LifecycleNode") == [{"package": "panoptic_ros", "executable": "panoptic_node"}]
    assert _executables(tree, "Node") == [{"package": "rviz2", "executable": "rviz2"}]
    # panoptic_node: the colcon executable (installed from scripts/) and the pip console script, both main().
    assert "from panoptic_ros.ros.node import main" in (REPO / "scripts" / "panoptic_node").read_text()
    assert re.search(r"install\(PROGRAMS[^)]*scripts/panoptic_node", (REPO / "CMakeLists.txt").read_text())
    assert "panoptic_node = panoptic_ros.ros.node:main" in (REPO / "setup.py").read_text()
    # Files under the package's share directory, which CMakeLists installs: exactly these, and they exist.
    read = {"/".join(_constant_strings(call)) for call in _calls(tree, "PathJoinSubstitution")}
    assert read == {"config/jetson.yaml", "config/fastdds_large_data.xml", "config/panoptic.rviz"}
    assert all((REPO / path).is_file() for path in read)
    assert re.search(r"install\(DIRECTORY[^)]*\bconfig\b", (REPO / "CMakeLists.txt").read_text())


def test_launch_file_drives_the_lifecycle_and_turns_autostart_off(tree):
    # The node's own autostart is off; the file emits configure, and activate once the node is inactive.
    assert {"autostart": False} in [ast.literal_eval(d) for d in ast.walk(tree) if isinstance(d, ast.Dict)
                                    and [getattr(k, "value", None) for k in d.keys] == ["autostart"]]
    transitions = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("TRANSITION_")]
    assert sorted(transitions) == ["TRANSITION_ACTIVATE", "TRANSITION_CONFIGURE"]
    (handler,) = _calls(tree, "OnStateTransition")
    states = {kw.arg: kw.value.value for kw in handler.keywords if kw.arg in ("start_state", "goal_state")}
    assert states == {"start_state": "configuring", "goal_state": "inactive"}


def test_launch_file_gives_its_processes_the_profile_under_both_variable_names(tree):
    assert set(_constant_strings(_assigned(tree, "PROFILE_VARIABLES"))) == {"FASTRTPS_DEFAULT_PROFILES_FILE",
                                                                           "FASTDDS_DEFAULT_PROFILES_FILE"}
    additional_env = [kw.value.id for call in _calls(tree, "LifecycleNode") + _calls(tree, "Node")
                      for kw in call.keywords if kw.arg == "additional_env"]
    assert additional_env == ["environment", "environment"]


def test_fast_dds_profile_enlarges_shared_memory_for_every_participant():
    import xml.etree.ElementTree as ET

    namespace = {"dds": "http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"}
    root = ET.parse(REPO / "config" / "fastdds_large_data.xml").getroot()
    shm = root.find("dds:transport_descriptors/dds:transport_descriptor[dds:type='SHM']", namespace)
    assert int(shm.find("dds:segment_size", namespace).text) >= 10 * 2048 * 1024 * 3  # ten 2-MPx rgb8 frames
    participant = root.find("dds:participant", namespace)
    assert participant.get("is_default_profile") == "true"
    used = [e.text for e in participant.findall("dds:rtps/dds:userTransports/dds:transport_id", namespace)]
    assert shm.find("dds:transport_id", namespace).text in used
    assert participant.find("dds:rtps/dds:useBuiltinTransports", namespace).text == "false"


@pytest.mark.parametrize("name", ["cpu.yaml", "jetson.yaml"])
def test_parameter_files_set_declared_parameters_with_valid_values(name):
    document = yaml.safe_load((REPO / "config" / name).read_text())
    values = document["/**"]["ros__parameters"]
    assert set(values) <= set(params.PARAMETER_NAMES)
    for key, value in values.items():
        spec = params.SPECS[key]
        assert type(value) is type(spec.default), f"{name}: {key} is {type(value).__name__}, " \
                                                  f"declared {type(spec.default).__name__}"
        assert params.check_value(key, value) is None
        if spec.bounds is not None:
            assert spec.bounds[0] <= value <= spec.bounds[1], key
    Thresholds(**{k: v for k, v in values.items() if k in Thresholds.RANGES})


def test_cpu_and_jetson_defaults():
    cpu = yaml.safe_load((REPO / "config" / "cpu.yaml").read_text())["/**"]["ros__parameters"]
    jetson = yaml.safe_load((REPO / "config" / "jetson.yaml").read_text())["/**"]["ros__parameters"]
    assert (cpu["backend"], cpu["device"]) == ("onnxruntime", "cpu")
    assert (jetson["backend"], jetson["precision"], jetson["device"]) == ("tensorrt", "fp16", "cuda:0")


# Encodings RViz's Image display can show (rviz_default_plugins ROSImageTexture): not 32SC1.
RVIZ_IMAGE_ENCODINGS = {"rgb8", "rgba8", "bgr8", "bgra8", "mono8", "mono16", "8UC1", "16UC1", "32FC1"}


def rviz_image_displays() -> dict[str, dict]:
    config = yaml.safe_load((REPO / "config" / "panoptic.rviz").read_text())
    return {d["Topic"]["Value"]: d for d in config["Visualization Manager"]["Displays"]
            if d["Class"] == "rviz_default_plugins/Image"}


def test_rviz_config_shows_topics_the_node_publishes_in_encodings_rviz_can_show():
    from panoptic_ros.ros.frame_output import IMAGE_TOPICS

    displays = rviz_image_displays()
    assert set(displays) == {"panoptic/overlay", "panoptic/semantic_color"}
    for topic, display in displays.items():
        assert IMAGE_TOPICS[topic.removeprefix("panoptic/")] in RVIZ_IMAGE_ENCODINGS, topic
        assert display["Topic"]["Reliability Policy"] == "Reliable"  # matches output_qos DEFAULT
        assert display["Enabled"] is True


@pytest.mark.skipif(importlib.util.find_spec("launch_ros") is None, reason="launch_ros is not installed here")
def test_launch_description_builds_where_launch_ros_exists():
    spec = importlib.util.spec_from_file_location("jetson_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {entity.name for entity in description.entities if hasattr(entity, "name")}
    assert names >= REQUIRED_ARGUMENTS
