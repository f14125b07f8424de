"""panoptic_node's parameters outside the node: its defaults and a ROS 2 parameters file, as eval-bag and
replay read them (the node's parameter table is the one source; ROS is imported only when they are read)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def node_defaults() -> dict[str, Any]:
    """The node's parameters that have a default value, with it."""
    from panoptic_ros.ros import parameters as params

    # (a parameter without a default, such as cameras, has its type as `default`; none of them matters here)
    return {spec.name: spec.default for spec in params.PARAMETERS if isinstance(spec.default, (bool, int, float, str))}


def read_params_file(path: Path) -> dict[str, Any]:
    """The ros__parameters of a ROS 2 parameters YAML, all node sections merged in file order."""
    import yaml

    from panoptic_ros.ros import parameters as params

    if not path.is_file():
        raise FileNotFoundError(f"--params: no such file: {path}")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"--params {path} is not valid YAML: {error}") from None
    sections = [node.get("ros__parameters") for node in (document or {}).values() if isinstance(node, dict)] \
        if isinstance(document, dict) else []
    sections = [s for s in sections if isinstance(s, dict)]
    if not sections:
        raise ValueError(f"--params {path}: no ros__parameters section (expected e.g. '/**: ros__parameters: ...', "
                         "as in config/cpu.yaml)")
    values: dict[str, Any] = {}
    for section in sections:
        values.update(section)
    unknown = sorted(set(values) - set(params.PARAMETER_NAMES))
    if unknown:
        raise ValueError(f"--params {path}: unknown parameters {', '.join(unknown)}; panoptic_node's parameters: "
                         f"{', '.join(params.PARAMETER_NAMES)}")
    return values
