"""The ROS 2 side of panoptic_ros: the `panoptic_node` node and the pieces it is built from.

Modules here import rclpy and the message packages; nothing else in the package does, so the
networks, fusion and runtimes work without ROS.
"""
