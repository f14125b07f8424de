"""Test-wide settings: ROS 2 traffic stays on this machine, in a domain of this run's own."""

import os

import numpy as np
import pytest

# The eval-bag tests' model and backend fixtures, shared by every module that evaluates bags.
pytest_plugins = ("eval_cases",)

# Set before any rclpy import, in this process and every process a test starts.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator: tests are deterministic."""
    return np.random.default_rng(0)
