"""The pieces every benchmark shares: interleaved timing, what it states with its figures (machine,
command), and how those get into the READMEs.

A speed figure means something only with the machine it was measured on and the command that
measured it; and only a ratio measured in the same run carries over to another machine. Each
`panoptic-ros bench TARGET` can print its figures as a Markdown block (`--markdown`) that says
both, or write that block into the marked regions of README files (`--update README.md ...`):

    <!-- bench:inference -->
    ... rewritten by `panoptic-ros bench inference --update README.md` ...
    <!-- /bench -->

`make figures` regenerates every region (see the Makefile).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REGION_END = "<!-- /bench -->"
# Options that only choose where figures go; the command shown is the one that measures them.
_OUTPUT_OPTIONS = ("--markdown", "--update", "--json")


def time_rounds(runs: dict[str, Callable[[], object]], warmup: int, repeats: int,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Milliseconds of every timed call of each run, calling them in interleaved rounds (`clock` in seconds)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(warmup + repeats):
        for name, run in runs.items():
            start = clock()
            run()
            if round_index >= warmup:
                times[name].append((clock() - start) * 1000.0)
    return times


@dataclass(frozen=True)
class Machine:
    """The machine a benchmark ran on, and how much of it the benchmark used."""

    cpu: str
    logical_cores: int
    usable_cores: int  # this process's CPU affinity (a container or taskset may allow fewer)
    threads: str  # what the benchmark ran with, in words ("ONNX Runtime intra-op 2")
    load_average: float  # 1-minute load average when the benchmark started
    system: str
    libraries: dict[str, str]  # name -> installed version

    def describe(self) -> str:
        libraries = "".join(f", {name} {version}" for name, version in self.libraries.items())
        return (f"{self.cpu}, {self.usable_cores} of {self.logical_cores} logical cores usable, threads used: "
                f"{self.threads}; load average {self.load_average:.1f} at start; {self.system}, "
                f"Python {platform.python_version()}{libraries}")


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (Linux /proc/cpuinfo; elsewhere what `platform` knows)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def describe_machine(threads: str, libraries: tuple[str, ...] = ()) -> Machine:
    """This machine now; `libraries` are distribution names whose versions matter (onnxruntime, torch)."""
    versions = {}
    for name in libraries:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return Machine(cpu=cpu_model(), logical_cores=os.cpu_count() or 1, usable_cores=usable_cores(), threads=threads,
                   load_average=os.getloadavg()[0], system=f"{platform.system()} {platform.release()}",
                   libraries=versions)


def shown_command(argv: list[str]) -> str:
    """`panoptic-ros ...` as run, without the options that only say where the figures go."""
    kept, skipping = [], False
    for arg in argv:
        if arg.startswith("--"):
            skipping = arg.split("=")[0] in _OUTPUT_OPTIONS
        if not skipping:
            kept.append(arg)
    return shlex.join(["panoptic-ros", *kept])


def markdown_block(machine: Machine, command: str, body: str, note: str = "") -> str:
    """The figures (`body`, Markdown) with the command and machine that produced them."""
    lines = [body.rstrip(), "", f"Measured by `{command}` on {machine.describe()}."]
    if note:
        lines += ["", note]
    return "\n".join(lines)


def replace_region(text: str, name: str, block: str) -> str:
    """`text` with the content of its one `<!-- bench:NAME -->` ... `<!-- /bench -->` region replaced by `block`."""
    start = f"<!-- bench:{name} -->"
    pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(REGION_END), re.DOTALL)
    found = len(pattern.findall(text))
    if found != 1:
        raise ValueError(f"expected one region {start} ... {REGION_END}, found {found}")
    return pattern.sub(lambda _: f"{start}\n{block.rstrip()}\n{REGION_END}", text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--markdown and --update, for every benchmark."""
    parser.add_argument("--markdown", action="store_true",
                        help="also print the figures as Markdown, with the machine and the command")
    parser.add_argument("--update", nargs="+", type=Path, metavar="FILE",
                        help="rewrite this benchmark's <!-- bench:TARGET --> region in these Markdown files")


def publish(args: argparse.Namespace, name: str, machine: Machine, body: str, note: str = "") -> None:
    """Print and/or write the Markdown block of benchmark `name`, as --markdown / --update ask."""
    markdown, update = getattr(args, "markdown", False), getattr(args, "update", None) or []
    if not (markdown or update):
        return
    argv = getattr(args, "argv", None)  # set by panoptic_ros.cli.main; absent when run() is called from Python
    command = shown_command(argv) if argv is not None else f"the {name} benchmark called from Python"
    block = markdown_block(machine, command, body, note)
    if markdown:
        print(block)
    for path in update:
        try:
            path.write_text(replace_region(path.read_text(), name, block))
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        print(f"updated {path} (bench:{name})")
