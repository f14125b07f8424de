"""README's parameter table, written from the node's parameter table (panoptic_ros/ros/parameters.py), so
the two cannot drift apart; a test fails when README.md holds another table.

    python -m panoptic_ros.ros.parameter_table            # print the table
    python -m panoptic_ros.ros.parameter_table --write README.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from panoptic_ros.ros.parameters import PARAMETERS, ParameterSpec

BEGIN = "<!-- parameters: written by `python -m panoptic_ros.ros.parameter_table --write README.md` -->"
END = "<!-- end of parameters -->"


def _default(spec: ParameterSpec) -> str:
    if not isinstance(spec.default, (bool, int, float, str)):
        return spec.unset
    if isinstance(spec.default, bool):
        return f"`{str(spec.default).lower()}`"
    return f"`{spec.default}`" if spec.default != "" else "empty"


def _allowed(spec: ParameterSpec) -> str:
    if spec.choices:
        return ", ".join(f"`{c}`" for c in spec.choices)
    if spec.pattern_help:
        return spec.pattern_help
    if spec.bounds is not None:
        return f"{spec.bounds[0]:g} .. {spec.bounds[1]:g}"
    return ""


def markdown_table() -> str:
    """One row per parameter: name, default, allowed values, whether it can change while the node runs, what."""
    lines = ["| parameter | default | allowed | runtime | what |", "|---|---|---|---|---|"]
    for spec in PARAMETERS:
        description = spec.description.replace("|", "\\|")
        lines.append(f"| `{spec.name}` | {_default(spec)} | {_allowed(spec)} | {'no' if spec.read_only else 'yes'} "
                     f"| {description} |")
    return "\n".join(lines)


def with_table(text: str) -> str:
    """`text` (README) with the part between BEGIN and END replaced by the current table."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return f"{text[:start]}\n{markdown_table()}\n{text[end:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", type=Path, help="replace the table in this Markdown file")
    args = parser.parse_args(argv)
    if args.write:
        args.write.write_text(with_table(args.write.read_text()))
    else:
        print(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
