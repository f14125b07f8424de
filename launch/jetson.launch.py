"""Start panoptic_node on a Jetson AGX (TensorRT, FP16 by default), optionally with RViz.

    ros2 launch panoptic_ros jetson.launch.py camera:=/camera/image_raw
    ros2 launch panoptic_ros jetson.launch.py camera:=/front/image_raw model:=/data/psn.onnx rviz:=true
    ros2 launch panoptic_ros jetson.launch.py params_file:=/path/to/cpu.yaml

model, backend and engine_path override the parameters file when given; empty keeps the file's value.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

SHARE = FindPackageShare("panoptic_ros")
ARGUMENTS = (
    ("camera", "/camera/image_raw", "input image topic (sensor_msgs/Image; <camera>/compressed with "
                                    "input_type compressed)"),
    ("model", "", "shipped model name or .onnx path (empty: the parameters file's)"),
    ("backend", "", "tensorrt, onnxruntime or torch (empty: the parameters file's)"),
    ("engine_path", "", "prebuilt TensorRT .engine file (empty: the parameters file's; there, empty builds or "
                        "reuses the cached engine)"),
    ("params_file", PathJoinSubstitution([SHARE, "config", "jetson.yaml"]), "parameters file"),
    ("namespace", "", "namespace of the node and its topics"),
    ("use_sim_time", "false", "use /clock (bag replay)"),
    ("rviz", "false", "also start RViz with config/panoptic.rviz"),
)
OVERRIDES = ("model", "backend", "engine_path")


def _nodes(context: LaunchContext) -> list[Node]:
    """The node and RViz, built once the arguments are known (empty overrides are left out)."""
    camera = LaunchConfiguration("camera").perform(context)
    namespace = LaunchConfiguration("namespace").perform(context)
    sim_time = {"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)}
    overrides = {name: ParameterValue(value, value_type=str) for name in OVERRIDES
                 if (value := LaunchConfiguration(name).perform(context))}
    node = Node(
        package="panoptic_ros",
        executable="panoptic_node",
        name="panoptic_node",
        namespace=namespace,
        output="screen",
        parameters=[LaunchConfiguration("params_file"), sim_time, overrides],
        remappings=[("image", camera), ("image/compressed", f"{camera}/compressed")],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="panoptic_rviz",
        namespace=namespace,  # the .rviz file's relative topics then resolve to the node's outputs
        arguments=["-d", PathJoinSubstitution([SHARE, "config", "panoptic.rviz"])],
        parameters=[sim_time],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    return [node, rviz]


def generate_launch_description() -> LaunchDescription:
    arguments = [DeclareLaunchArgument(name, default_value=default, description=description)
                 for name, default, description in ARGUMENTS]
    return LaunchDescription([*arguments, OpaqueFunction(function=_nodes)])
