"""Start panoptic_node on a Jetson AGX (TensorRT, FP16 by default) as a managed node, optionally with RViz.

    ros2 launch panoptic_ros jetson.launch.py camera:=/camera/image_raw
    ros2 launch panoptic_ros jetson.launch.py camera:=/front/image_raw model:=/data/psn.onnx rviz:=true
    ros2 launch panoptic_ros jetson.launch.py params_file:=/path/to/cpu.yaml

The node starts unconfigured (autostart false); this file configures it and, once it is inactive,
activates it, so a failed configure (no model, bad parameter) is seen as a failed transition.
model, backend and engine_path override the parameters file when given; empty keeps the file's value.
The processes started here read config/fastdds_large_data.xml (large best-effort images between
processes; large_data_profile:=false leaves Fast DDS's defaults). RViz's fixed frame is the camera's
frame_id (read from its first camera_info or image) unless fixed_frame is given.
"""

import os

from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

SHARE = FindPackageShare("panoptic_ros")
ARGUMENTS = (
    ("camera", "/camera/image_raw", "input image topic (sensor_msgs/Image; <camera>/compressed with "
                                    "input_type compressed); its camera_info is read beside it"),
    ("model", "", "shipped model name or .onnx path (empty: the parameters file's)"),
    ("backend", "", "tensorrt, onnxruntime or torch (empty: the parameters file's)"),
    ("engine_path", "", "prebuilt TensorRT .engine file (empty: the parameters file's; there, empty builds or "
                        "reuses the cached engine)"),
    ("params_file", PathJoinSubstitution([SHARE, "config", "jetson.yaml"]), "parameters file"),
    ("namespace", "", "namespace of the node and its topics"),
    ("use_sim_time", "false", "use /clock (bag replay)"),
    ("large_data_profile", "true", "give the processes started here config/fastdds_large_data.xml (the camera "
                                   "driver's process needs it too for best-effort images over 512 KiB)"),
    ("rviz", "false", "also start RViz with config/panoptic.rviz"),
    ("fixed_frame", "", "RViz fixed frame (empty: the camera's frame_id)"),
)
OVERRIDES = ("model", "backend", "engine_path")
# Fast DDS 2.x (Humble, Iron, Jazzy) reads the profile from the first variable, 3.x (Kilted and later) from the
# second, and warns when it finds the first. Unknown distro: both.
PROFILE_VARIABLES = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")
FAST_DDS_2_DISTROS = ("humble", "iron", "jazzy")


def _profile_environment(context: LaunchContext) -> dict[str, str]:
    if LaunchConfiguration("large_data_profile").perform(context).lower() not in ("true", "1", "yes"):
        return {}
    profile = PathJoinSubstitution([SHARE, "config", "fastdds_large_data.xml"]).perform(context)
    distro = os.environ.get("ROS_DISTRO", "")
    names = PROFILE_VARIABLES[:1] if distro in FAST_DDS_2_DISTROS else PROFILE_VARIABLES[1:] if distro \
        else PROFILE_VARIABLES
    return dict.fromkeys(names, profile)


def _transition(node: LifecycleNode, transition: int) -> EmitEvent:
    return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition))


def _actions(context: LaunchContext) -> list:
    """The node, its lifecycle transitions and RViz, built once the arguments are known."""
    camera = LaunchConfiguration("camera").perform(context)
    namespace = LaunchConfiguration("namespace").perform(context)
    environment = _profile_environment(context)
    sim_time = {"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)}
    overrides = {name: ParameterValue(value, value_type=str) for name in OVERRIDES
                 if (value := LaunchConfiguration(name).perform(context))}
    node = LifecycleNode(
        package="panoptic_ros",
        executable="panoptic_node",
        name="panoptic_node",
        namespace=namespace,
        output="screen",
        parameters=[LaunchConfiguration("params_file"), sim_time, overrides, {"autostart": False}],
        remappings=[("image", camera), ("image/compressed", f"{camera}/compressed")],
        additional_env=environment,
    )
    activate_when_inactive = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
        entities=[_transition(node, Transition.TRANSITION_ACTIVATE)]))
    actions = [node, activate_when_inactive, _transition(node, Transition.TRANSITION_CONFIGURE)]
    if IfCondition(LaunchConfiguration("rviz")).evaluate(context):
        fixed_frame = LaunchConfiguration("fixed_frame").perform(context)
        if not fixed_frame:
            from panoptic_ros.ros.camera_frame import first_frame_id

            fixed_frame = first_frame_id(camera if camera.startswith("/") else f"{namespace.rstrip('/')}/{camera}")
        actions.append(Node(
            package="rviz2",
            executable="rviz2",
            name="panoptic_rviz",
            namespace=namespace,  # the .rviz file's relative topics then resolve to the node's outputs
            arguments=["-d", PathJoinSubstitution([SHARE, "config", "panoptic.rviz"]), "--fixed-frame", fixed_frame],
            parameters=[sim_time],
            additional_env=environment,
        ))
    return actions


def generate_launch_description() -> LaunchDescription:
    arguments = [DeclareLaunchArgument(name, default_value=default, description=description)
                 for name, default, description in ARGUMENTS]
    return LaunchDescription([*arguments, OpaqueFunction(function=_actions)])
