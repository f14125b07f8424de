#!/usr/bin/env python3
"""Mutation check: do the tests catch small, plausible bugs?

Each mutation in the list (default: scripts/mutations.yaml) names a file, an exact piece of its
text, a replacement (the bug), the test files that should catch it, and why it matters. The check
copies the repository's files (tracked and untracked-but-not-ignored, as they are in the working
tree) into a scratch folder once, runs the listed tests unmutated there (a failing baseline would
make every mutant look killed), then applies one mutation at a time, runs its tests and restores
the file. A mutation whose tests still pass "survives": a bug of that kind would go unnoticed.

    python scripts/mutation_check.py                   # all mutations; exit 1 when any survives
    python scripts/mutation_check.py --only psn-nms-kernel golden-semantic-dropped
    python scripts/mutation_check.py --check           # only: does every original still match once?

The working tree is never modified. An original that no longer matches exactly once (the code
moved or changed) is reported as stale and not run; update the list.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT_LIST = Path(__file__).resolve().parent / "mutations.yaml"
FIELDS = ("id", "file", "original", "replacement", "tests", "why")


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class Outcome:
    mutation: Mutation
    status: str  # killed, survived, timeout (counts as killed), stale (not run)
    line: int  # where the original starts (0 when stale)
    detail: str  # the first failing test, or why it is stale
    seconds: float


def load_mutations(path: Path) -> list[Mutation]:
    """The `mutations:` list of a YAML file; refuses missing fields, unknown fields and repeated ids."""
    data = yaml.safe_load(path.read_text()) or {}
    mutations, seen = [], set()
    for index, entry in enumerate(data.get("mutations") or []):
        missing, unknown = set(FIELDS) - set(entry), set(entry) - set(FIELDS)
        where = f"{path}: mutation {index + 1} ({entry.get('id', 'no id')})"
        if missing or unknown:
            raise ValueError(f"{where}: missing fields {sorted(missing)}, unknown fields {sorted(unknown)}")
        if entry["id"] in seen:
            raise ValueError(f"{where}: id used twice")
        if entry["original"] == entry["replacement"]:
            raise ValueError(f"{where}: replacement equals original")
        if not entry["tests"]:
            raise ValueError(f"{where}: names no tests")
        seen.add(entry["id"])
        mutations.append(Mutation(**{**entry, "tests": tuple(entry["tests"])}))
    if not mutations:
        raise ValueError(f"{path}: no entries under `mutations:`")
    return mutations


def locate(mutation: Mutation, root: Path) -> tuple[int, str]:
    """(line of the original in its file, "") when it occurs exactly once, else (0, why it is stale)."""
    path = root / mutation.file
    if not path.is_file():
        return 0, f"file {mutation.file} not found"
    text = path.read_text()
    count = text.count(mutation.original)
    if count != 1:
        return 0, (f"original text found {count} times in {mutation.file} (expected exactly once): "
                   "the code moved or changed; update the mutation list")
    missing = [t for t in mutation.tests if not (root / t.split("::")[0]).exists()]
    if missing:
        return 0, f"test files not found: {', '.join(missing)}"
    return text[: text.index(mutation.original)].count("\n") + 1, ""


def repository_files(root: Path) -> list[str]:
    """Tracked and untracked-but-not-ignored files of the git checkout at `root` that exist."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                             check=True, capture_output=True).stdout.decode()
    return [name for name in listing.split("\0") if name and (root / name).is_file()]


def copy_repository(root: Path, scratch: Path) -> None:
    for name in repository_files(root):
        target = scratch / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)


def run_tests(scratch: Path, tests: tuple[str, ...], python: str, timeout: float) -> tuple[str, str]:
    """("passed" | "failed" | "timeout", first failing test or error line) of pytest over `tests` in `scratch`."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1",  # no stale .pyc across mutations of one file
           "PYTHONPATH": os.pathsep.join(filter(None, [str(scratch), os.environ.get("PYTHONPATH")]))}
    command = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *tests]
    try:
        result = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"tests ran past {timeout:g} s"
    if result.returncode == 0:
        return "passed", ""
    output = result.stdout + result.stderr
    failed = re.search(r"^(FAILED|ERROR) (\S+)", output, re.MULTILINE)
    lines = output.strip().splitlines()
    return "failed", failed.group(2) if failed else (lines[-1] if lines else f"exit status {result.returncode}")


def check_mutations(mutations: list[Mutation], root: Path, python: str, timeout: float, baseline: bool = True,
                    log=print) -> list[Outcome]:
    """Apply each mutation in a scratch copy of `root`, run its tests, and say whether they caught it."""
    located = {m.id: locate(m, root) for m in mutations}
    outcomes = [Outcome(m, "stale", 0, located[m.id][1], 0.0) for m in mutations if located[m.id][1]]
    for outcome in outcomes:
        log(f"STALE    {outcome.mutation.id}: {outcome.detail}")
    runnable = [m for m in mutations if not located[m.id][1]]
    if not runnable:
        return outcomes
    with tempfile.TemporaryDirectory(prefix="mutation-check-") as folder:
        scratch = Path(folder)
        copy_repository(root, scratch)
        if baseline:
            tests = tuple(dict.fromkeys(t for m in runnable for t in m.tests))
            status, detail = run_tests(scratch, tests, python, timeout * 2)
            if status != "passed":
                raise RuntimeError(f"the unmutated tests fail ({detail}); fix them before checking mutations")
            log(f"baseline: {len(tests)} test files pass unmutated")
        for mutation in runnable:
            path = scratch / mutation.file
            original_text = path.read_text()
            path.write_text(original_text.replace(mutation.original, mutation.replacement, 1))
            start = time.monotonic()
            try:
                status, detail = run_tests(scratch, mutation.tests, python, timeout)
            finally:
                path.write_text(original_text)
            status = {"passed": "survived", "failed": "killed"}.get(status, status)
            outcome = Outcome(mutation, status, located[mutation.id][0], detail, time.monotonic() - start)
            outcomes.append(outcome)
            log(f"{status.upper():8s} {mutation.id} ({mutation.file}:{outcome.line}, {outcome.seconds:.0f} s)"
                f"{': ' + detail if detail else ''}")
    order = {m.id: i for i, m in enumerate(mutations)}
    return sorted(outcomes, key=lambda o: order[o.mutation.id])


def score(outcomes: list[Outcome]) -> tuple[int, int]:
    """(killed, run): a timeout counts as killed; stale mutations were not run."""
    run = [o for o in outcomes if o.status != "stale"]
    return sum(o.status in ("killed", "timeout") for o in run), len(run)


def summary(outcomes: list[Outcome]) -> str:
    killed, run = score(outcomes)
    lines = [f"mutation score: {killed}/{run} killed" + (f" ({100 * killed / run:.0f}%)" if run else "")]
    for label, status in (("survived", "survived"), ("stale (not run)", "stale")):
        chosen = [o for o in outcomes if o.status == status]
        if chosen:
            lines.append(f"{label}: {len(chosen)}")
            lines += [f"  {o.mutation.id} ({o.mutation.file}{':' + str(o.line) if o.line else ''}): "
                      f"{o.mutation.why}" + (f" [{o.detail}]" if status == "stale" else "") for o in chosen]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", type=Path, default=DEFAULT_LIST, help="mutation list (default: %(default)s)")
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="repository root (default: the current folder)")
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutations")
    parser.add_argument("--check", action="store_true", help="only check that every original matches exactly once")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs pytest (default: this one)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mutation's tests (default 600)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the tests")
    parser.add_argument("--json", type=Path, help="also write every outcome to this JSON file")
    args = parser.parse_args(argv)

    mutations = load_mutations(args.list)
    if args.only:
        unknown = sorted(set(args.only) - {m.id for m in mutations})
        if unknown:
            parser.error(f"unknown mutation ids: {', '.join(unknown)}")
        mutations = [m for m in mutations if m.id in args.only]
    root = args.repo.resolve()
    if args.check:
        stale = [(m, why) for m in mutations if (why := locate(m, root)[1])]
        for mutation, why in stale:
            print(f"STALE    {mutation.id}: {why}")
        print(f"{len(mutations) - len(stale)} of {len(mutations)} mutations match their code exactly once")
        return 1 if stale else 0
    outcomes = check_mutations(mutations, root, args.python, args.timeout, baseline=not args.no_baseline)
    print()
    print(summary(outcomes))
    if args.json:
        args.json.write_text(json.dumps([{"id": o.mutation.id, "file": o.mutation.file, "line": o.line,
                                          "status": o.status, "detail": o.detail, "seconds": round(o.seconds, 1),
                                          "why": o.mutation.why} for o in outcomes], indent=1) + "\n")
    return 0 if all(o.status in ("killed", "timeout") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
