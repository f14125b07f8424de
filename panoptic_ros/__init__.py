"""panoptic_ros: real-time panoptic segmentation for ROS 2."""

import pkgutil

# The generated message code (panoptic_ros.msg) may live in another copy of this package
# directory (the pip venv installs it beside the editable sources); join them into one package.
__path__ = pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"
