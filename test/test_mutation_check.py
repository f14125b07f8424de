"""scripts/mutation_check.py on a tiny git repository: killed, surviving and stale mutations."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mutation_check.py"
spec = importlib.util.spec_from_file_location("mutation_check", SCRIPT)
mutation_check = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mutation_check  # dataclasses look their module up there
spec.loader.exec_module(mutation_check)

CALC = "def add(a, b):\n    return a + b\n\n\nLIMIT = 1\nSTEP = 1\n"
# 2 + 2 == 2 * 2: a test that asserts too little lets `a * b` through.
TEST = "from calc import add\n\n\ndef test_add():\n    assert add(2, 2) == 4\n"
LIST = """
mutations:
  - id: minus
    file: calc.py
    original: "a + b"
    replacement: "a - b"
    tests: [test/test_calc.py]
    why: "subtracts"
  - id: times
    file: calc.py
    original: "a + b"
    replacement: "a * b"
    tests: [test/test_calc.py]
    why: "multiplies"
  - id: moved
    file: calc.py
    original: "return a + b  # gone"
    replacement: "return 0"
    tests: [test/test_calc.py]
    why: "code that is no longer there"
  - id: twice
    file: calc.py
    original: " = 1"
    replacement: " = 2"
    tests: [test/test_calc.py]
    why: "matches two places"
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "test").mkdir(parents=True)
    (root / "calc.py").write_text(CALC)
    (root / "test" / "test_calc.py").write_text(TEST)
    (root / "conftest.py").write_text("")  # rootdir on sys.path, so tests import calc
    (root / "mutations.yaml").write_text(LIST)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def test_reports_killed_surviving_and_stale_mutations(repo, tmp_path, capsys):
    report = tmp_path / "report.json"
    code = mutation_check.main(["--list", str(repo / "mutations.yaml"), "--repo", str(repo), "--json", str(report),
                                "--timeout", "120"])
    assert code == 1  # one survivor
    out = capsys.readouterr().out
    assert "mutation score: 1/2 killed (50%)" in out
    assert "times (calc.py:2): multiplies" in out
    assert "original text found 0 times in calc.py" in out and "original text found 2 times in calc.py" in out
    statuses = {row["id"]: (row["status"], row["line"]) for row in mutation_check.json.loads(report.read_text())}
    assert statuses == {"minus": ("killed", 2), "times": ("survived", 2), "moved": ("stale", 0),
                        "twice": ("stale", 0)}
    assert (repo / "calc.py").read_text() == CALC  # the working tree is never touched


def test_killed_names_the_failing_test(repo):
    mutations = [m for m in mutation_check.load_mutations(repo / "mutations.yaml") if m.id == "minus"]
    [outcome] = mutation_check.check_mutations(mutations, repo, sys.executable, 120, baseline=False, log=lambda _: None)
    assert (outcome.status, outcome.detail) == ("killed", "test/test_calc.py::test_add")


def test_check_only_says_which_originals_moved(repo, capsys):
    assert mutation_check.main(["--list", str(repo / "mutations.yaml"), "--repo", str(repo), "--check"]) == 1
    assert "2 of 4 mutations match their code exactly once" in capsys.readouterr().out
    assert mutation_check.main(["--list", str(repo / "mutations.yaml"), "--repo", str(repo), "--check",
                                "--only", "minus", "times"]) == 0


def test_failing_baseline_is_refused(repo):
    (repo / "test" / "test_calc.py").write_text(TEST.replace("== 4", "== 5"))
    mutations = mutation_check.load_mutations(repo / "mutations.yaml")[:1]
    with pytest.raises(RuntimeError, match="unmutated tests fail"):
        mutation_check.check_mutations(mutations, repo, sys.executable, 120, log=lambda _: None)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda text: text.replace('    why: "subtracts"\n', ""), "missing fields \\['why'\\]"),
    (lambda text: text.replace("id: times", "id: minus"), "id used twice"),
    (lambda text: text.replace('"a - b"', '"a + b"'), "replacement equals original"),
    (lambda text: text.replace('why: "subtracts"', 'why: "subtracts"\n    line: 3'), "unknown fields \\['line'\\]"),
    (lambda text: "mutations: []\n", "no entries"),
])
def test_bad_lists_are_refused(repo, edit, message):
    path = repo / "mutations.yaml"
    path.write_text(edit(path.read_text()))
    with pytest.raises(ValueError, match=message):
        mutation_check.load_mutations(path)


def test_the_project_list_loads():
    mutations = mutation_check.load_mutations(mutation_check.DEFAULT_LIST)
    assert len(mutations) >= 45
