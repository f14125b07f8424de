"""Benchmarks state machine and command with their figures, and rewrite exactly their README regions."""

import re
from pathlib import Path

import pytest

from panoptic_ros import bench_report
from panoptic_ros.cli import main
from panoptic_ros.runtime import bench as inference_bench

ROOT = Path(__file__).resolve().parents[1]
README = ("intro\n\n<!-- bench:inference -->\nold figures\n<!-- /bench -->\n\n"
          "<!-- bench:eval -->\n<!-- /bench -->\nend\n")


def test_cpu_model_from_cpuinfo_and_without_it(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n")
    assert bench_report.cpu_model(cpuinfo) == "AMD EPYC 7B13"
    assert bench_report.cpu_model(tmp_path / "missing")  # falls back to what `platform` knows


def test_time_rounds_interleaves_and_skips_the_warmup():
    now, calls = [0.0], []

    def run(name: str, ms: float):
        def call():
            calls.append(name)
            now[0] += ms / 1000
        return call

    times = bench_report.time_rounds({"a": run("a", 2.0), "b": run("b", 6.0)}, warmup=1, repeats=2,
                                     clock=lambda: now[0])
    assert calls == ["a", "b"] * 3  # round by round, not all of a then all of b
    assert times == {"a": pytest.approx([2.0, 2.0]), "b": pytest.approx([6.0, 6.0])}
    rows = inference_bench.summarize(times)
    assert [(r["model"], r["ratio_to_first"]) for r in rows] == [("a", 1.0), ("b", pytest.approx(3.0))]


def test_shown_command_drops_only_where_the_figures_go():
    argv = ["bench", "eval", "--repeats", "5", "--update", "README.md", "models/README.md", "--json", "x.json",
            "--markdown", "--seed", "3"]
    assert bench_report.shown_command(argv) == "panoptic-ros bench eval --repeats 5 --seed 3"


def test_markdown_block_states_machine_command_and_threads():
    machine = bench_report.Machine(cpu="AMD EPYC 7B13", logical_cores=4, usable_cores=2, threads="ONNX Runtime 2",
                                   load_average=0.25, system="Linux 6.1", libraries={"onnxruntime": "1.31.1"})
    block = bench_report.markdown_block(machine, "panoptic-ros bench inference", "| a |\n|---|", "a note")
    assert block.startswith("| a |\n|---|\n\nMeasured by `panoptic-ros bench inference` on AMD EPYC 7B13, "
                            "2 of 4 logical cores usable, threads used: ONNX Runtime 2; load average 0.2 at start; "
                            "Linux 6.1, Python ")
    assert block.endswith(", onnxruntime 1.31.1.\n\na note")


def test_replace_region_rewrites_one_region_and_nothing_else():
    text = bench_report.replace_region(README, "inference", "| new |\n")
    assert text == README.replace("old figures", "| new |")
    assert bench_report.replace_region(text, "inference", "| new |") == text  # idempotent
    with pytest.raises(ValueError, match="expected one region <!-- bench:node -->.*found 0"):
        bench_report.replace_region(README, "node", "x")
    with pytest.raises(ValueError, match="found 2"):
        bench_report.replace_region(README + README, "eval", "x")


def test_bench_eval_writes_its_region_with_machine_and_command(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert main(["bench", "eval", "--height", "96", "--width", "160", "--instances", "4", "--repeats", "2",
                 "--update", str(readme)]) == 0
    region = re.search(r"<!-- bench:eval -->\n(.*?)<!-- /bench -->", readme.read_text(), re.DOTALL).group(1)
    assert "| `add_id_maps` (pipeline id maps, as eval-bag) |" in region
    assert "Measured by `panoptic-ros bench eval --height 96 --width 160 --instances 4 --repeats 2` on " in region
    assert "logical cores usable, threads used: 1 (NumPy)" in region
    assert "old figures" in readme.read_text()  # the other region is untouched
    assert f"updated {readme} (bench:eval)" in capsys.readouterr().out


def test_bench_inference_times_a_shipped_model(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert main(["bench", "inference", "--models", "psn", "--repeats", "2", "--warmup", "0", "--threads", "1",
                 "--markdown", "--update", str(readme)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\| `psn` \| 256x512 \| \d+ \| \d+ \| 1\.00 \|$", out, re.MULTILINE)
    assert "Measured by `panoptic-ros bench inference --models psn --repeats 2 --warmup 0 --threads 1` on " in out
    assert "threads used: ONNX Runtime intra-op 1, one frame at a time" in out
    assert "| `psn` | 256x512 |" in readme.read_text()


def test_a_missing_region_is_a_clear_error(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("no regions here\n")
    assert main(["bench", "eval", "--height", "64", "--width", "64", "--instances", "2", "--repeats", "1",
                 "--update", str(readme)]) == 2
    assert f"{readme}: expected one region <!-- bench:eval -->" in capsys.readouterr().err


def test_make_figures_targets_regions_that_exist():
    recipe = re.search(r"^figures:.*?\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    commands = [re.search(r"\$\(BENCH\) (\w+) .*--update ((?:\S+ ?)+)$", line) for line in recipe.splitlines()]
    assert {c.group(1) for c in commands} == {"inference", "fusion", "eval", "node", "tracker"}
    for command in commands:
        for name in command.group(2).split():
            assert (ROOT / name).read_text().count(f"<!-- bench:{command.group(1)} -->") == 1, (name, command[0])


def test_bench_inference_finds_every_shipped_model_by_its_backend_suffixes(tmp_path):
    from panoptic_ros.runtime.choices import MODEL_SUFFIXES

    shipped = Path(__file__).resolve().parents[1] / "models"
    assert inference_bench.shipped_models(shipped, MODEL_SUFFIXES["onnxruntime"]) == \
        ["psn", "rtps", "lpsnet", "fpsnet", "spinet"]
    for name in ("extra.engine", "psn.engine", "notes.txt"):
        (tmp_path / name).write_text("")
    assert inference_bench.shipped_models(tmp_path, MODEL_SUFFIXES["tensorrt"]) == ["psn", "extra"]
