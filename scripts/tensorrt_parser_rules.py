#!/usr/bin/env python3
"""Regenerate panoptic_ros/runtime/tensorrt_parsers.json from an onnx-tensorrt git clone.

For each TensorRT release we audit against, the file keeps two tables read from that release's
branch of https://github.com/onnx/onnx-tensorrt:
- the operator table of docs/operators.md (supported operators, documented input types,
  restrictions), and
- the parser's input-type rules: every `notInvalidType(inputs.at(i), {...})` check in the op
  importers, attributed to the ONNX operators whose importer makes it (directly, or through a
  helper such as argMinMaxHelper that the importer calls).

    python scripts/tensorrt_parser_rules.py --repo PATH/onnx-tensorrt

Entries not named on the command line (e.g. a release whose tables were taken from NVIDIA's
documentation) are kept as they are. This script is a maintenance tool, not part of the package.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "panoptic_ros" / "runtime" / "tensorrt_parsers.json"
GITHUB = "https://github.com/onnx/onnx-tensorrt"
IMPORTER_FILES = ("builtin_op_importers.cpp", "onnxOpImporters.cpp")
HELPER_FILES = ("onnx2trt_utils.cpp", "importerUtils.cpp")
# (TensorRT release, JetPack, onnx-tensorrt ref, INT64 read as INT32 by the parser, note)
RELEASES = (
    ("8.5", "5.1", "df60e73", True,
     "8.5-GA branch at 'Integrate 8.5.2.2 changes' (JetPack 5.1 ships TensorRT 8.5.2.2)"),
    ("8.6", "6.0", "release/8.6-GA", True, "release/8.6-GA: 'TensorRT 8.6.1 Parser Update'"),
    ("10.3", "6.1, 6.2", "release/10.1-GA", False,
     "tables of release/10.1-GA: docs/Changelog.md lists no operator or input-type change for 10.2 and 10.3 "
     "(10.2: error-handling macros, GRU/Squeeze importers; 10.3: tensor axes for Slice, ScatterElements plugin)"),
)
# The unary importer's type switch (not a notInvalidType call), transcribed from unaryHelper.
UNARY_RULES = {
    "8": {"Not": ["FP32", "FP16", "INT32", "INT8", "UINT8"], "Abs": ["BOOL", "UINT8"], "Neg": ["BOOL", "UINT8"],
          "default": ["BOOL", "INT32", "UINT8"]},
    "10": {"Not": ["FP32", "FP16", "BF16", "INT32", "INT64", "INT8", "UINT8"], "Abs": ["BOOL", "UINT8"],
           "Sign": ["BOOL", "UINT8"], "Neg": ["BOOL", "UINT8"], "default": ["BOOL", "INT32", "INT64", "UINT8"]},
}
UNARY_OPS = ("Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Ceil", "Cos", "Cosh", "Erf", "Exp", "Floor",
             "Log", "Neg", "Not", "Reciprocal", "Round", "Sign", "Sin", "Sinh", "Sqrt", "Tan")

FUNCTION = re.compile(r"^(?:DEFINE_BUILTIN_OP_IMPORTER\((\w+)\)|(?:[\w:<>*&]+\s+)+(\w+)\()")
CHECK = re.compile(r"notInvalidType\(inputs\.at\((\d+)\),\s*\{([^}]*)\}")


def git_show(repo: Path, ref: str, names: tuple[str, ...]) -> tuple[str, str]:
    for name in names:
        result = subprocess.run(["git", "-C", str(repo), "show", f"{ref}:{name}"], capture_output=True, text=True)
        if result.returncode == 0:
            return name, result.stdout
    raise FileNotFoundError(f"none of {names} at {ref}")


def functions(source: str) -> dict[str, str]:
    """Top-level function (or op importer) name -> its body text."""
    bodies: dict[str, list[str]] = {}
    current = None
    for line in source.splitlines():
        match = FUNCTION.match(line)
        if match and not line.endswith(";"):
            current = match.group(1) or match.group(2)
            bodies.setdefault(current, [])
        if current:
            bodies[current].append(line)
    return {name: "\n".join(lines) for name, lines in bodies.items()}


def input_type_rules(importers: str, helpers: str) -> dict[str, dict[str, list[str]]]:
    """ONNX op -> {input index: TensorRT types the parser refuses there}."""
    importer_bodies = {n: b for n, b in functions(importers).items() if f"DEFINE_BUILTIN_OP_IMPORTER({n})" in b}
    other_bodies = {n: b for n, b in functions(importers).items() if n not in importer_bodies}
    helper_bodies = {**functions(helpers), **other_bodies}

    def checks(body: str) -> dict[str, list[str]]:
        return {index: [t.strip().strip('"') for t in types.split(",")] for index, types in CHECK.findall(body)}

    helper_checks = {name: checks(body) for name, body in helper_bodies.items() if checks(body)}
    rules = {}
    for op, body in importer_bodies.items():
        found = checks(body)
        for helper, helper_found in helper_checks.items():
            if re.search(rf"\b{helper}\(", body):
                for index, types in helper_found.items():
                    found[index] = sorted(set(found.get(index, [])) | set(types))
        if found:
            rules[op] = found
    return rules


def operator_table(markdown: str) -> tuple[dict, int]:
    """docs/operators.md -> ({op: {types, restrictions}} for supported ops, highest opset)."""
    opset = max(int(n) for n in re.findall(r"[Oo]pset (\d+)", markdown.split("|")[0]))
    table = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[1].startswith("Y"):
            continue
        entry = {"types": [t.strip() for t in cells[2].split(",") if t.strip()] if len(cells) > 2 else []}
        if len(cells) > 3 and cells[3]:
            entry["restrictions"] = cells[3]
        table[cells[0]] = entry
    return table, opset


def release_entry(repo: Path, version: str, jetpack: str, ref: str, int64_as_int32: bool, note: str) -> dict:
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", ref], capture_output=True, text=True,
                            check=True).stdout.strip()
    importer_name, importers = git_show(repo, ref, IMPORTER_FILES)
    helper_name, helpers = git_show(repo, ref, HELPER_FILES)
    _, markdown = git_show(repo, ref, ("docs/operators.md",))
    table, opset = operator_table(markdown)
    unary = UNARY_RULES["8" if int64_as_int32 else "10"]
    rules = input_type_rules(importers, helpers)
    for op in UNARY_OPS:
        if op in table:
            rules.setdefault(op, {})["0"] = unary.get(op, unary["default"])
    return {
        "jetpack": jetpack,
        "source": {"repository": GITHUB, "ref": ref, "commit": commit,
                   "files": ["docs/operators.md", importer_name, helper_name],
                   "note": note or f"tables of {ref}"},
        "max_opset": opset,
        "int64_read_as_int32": int64_as_int32,
        "uint8_cast_only_from_to_float": int64_as_int32,  # 8.x Cast importer: UINT8 only from/to FP32/FP16
        "operators": table,
        "invalid_input_types": dict(sorted(rules.items())),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True, help="a git clone of onnx/onnx-tensorrt (all branches)")
    args = parser.parse_args()
    data = json.loads(OUT.read_text()) if OUT.is_file() else {"releases": {}}
    for version, jetpack, ref, int64_as_int32, note in RELEASES:
        data["releases"][version] = release_entry(args.repo, version, jetpack, ref, int64_as_int32, note)
    data["releases"] = dict(sorted(data["releases"].items(), key=lambda kv: tuple(map(int, kv[0].split(".")))))
    OUT.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    print(f"wrote {OUT}: releases {', '.join(data['releases'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
