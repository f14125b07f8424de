"""pip install path for panoptic_ros (the .venv that `make setup` builds, and plain Python use).

On a ROS 2 machine colcon builds the package with CMakeLists.txt (ament_cmake), because the
package also generates its messages; this file is not used there. Runtime dependencies are
pinned once, in requirements.txt.
"""

from setuptools import find_packages, setup

setup(
    name="panoptic_ros",
    version="0.1.0",
    description="Real-time panoptic segmentation for ROS 2 (TensorRT / ONNX Runtime / PyTorch)",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["panoptic_ros", "panoptic_ros.*"]),
    package_data={"panoptic_ros.runtime": ["tensorrt_onnx_ops.json"]},
    # eval-bag --ray: bags as tasks on a Ray cluster (version pinned in requirements.txt)
    extras_require={"cluster": ["ray==2.60.0"]},
    entry_points={
        "console_scripts": [
            "panoptic-ros = panoptic_ros.cli:main",
            "panoptic_node = panoptic_ros.ros.node:main",
        ]
    },
)
