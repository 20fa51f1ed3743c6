"""The one notebook runner (tools/notebook_runner.py) and the check conftest.py adds to every notebook nbval runs:
the kernel's peak memory within Binder's budget, and no file left in the notebook's folder."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError
from notebook_runner import MEMORY_PROBE, add_memory_probe, execute, files_in, memory_mb, peak_rss_mb, probed_memory

ROOT = Path(__file__).resolve().parents[1]


def notebook(*sources: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def test_execute_runs_in_the_given_folder_keeps_the_outputs_and_probes_the_memory(tmp_path):
    nb = notebook("import os\nprint(os.getcwd())", "open('made_here.txt', 'w').close()")
    add_memory_probe(nb)
    seconds = execute(nb, tmp_path)
    assert seconds > 0 and nb.cells[0].outputs[0]["text"].strip() == str(tmp_path)
    assert files_in(tmp_path) == {"made_here.txt"}
    memory = probed_memory(nb)
    assert 10 < memory["peak_rss_mb"] < memory["peak_address_space_mb"] and memory["children_peak_rss_mb"] >= 0


def test_execute_without_a_folder_uses_an_empty_temporary_one_and_raises_at_the_first_error():
    nb = notebook("import os\nprint(sorted(os.listdir()))", "raise KeyError('broken')", "print('not reached')")
    with pytest.raises(CellExecutionError, match="KeyError"):
        execute(nb)
    assert nb.cells[0].outputs[0]["text"] == "[]\n" and not nb.cells[2].get("outputs")


def test_the_memory_probe_is_read_in_mb_and_the_budget_takes_the_larger_peak():
    line = json.dumps({"VmPeak": 2048 * 1024, "VmHWM": 300 * 1024, "children": 500 * 1024})
    memory = memory_mb(line)
    assert memory == {"peak_rss_mb": 300, "children_peak_rss_mb": 500, "peak_address_space_mb": 2048}
    assert peak_rss_mb(memory) == 500


def test_reading_the_probe_of_a_notebook_without_one_is_refused():
    nb = notebook("print(1)")
    with pytest.raises(ValueError, match="add_memory_probe"):
        probed_memory(nb)
    add_memory_probe(nb)
    assert nb.cells[-1].source == MEMORY_PROBE and probed_memory(nb) is None  # not run yet


def test_files_in_ignores_jupyter_checkpoints_and_caches(tmp_path):
    for name in ("a.txt", "sub/b.txt", ".ipynb_checkpoints/x-checkpoint.ipynb", "__pycache__/m.pyc"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    assert files_in(tmp_path) == {"a.txt", "sub", "sub/b.txt"}


# ----------------------------------------------------------------------- the check after every nbval notebook
@pytest.fixture
def nbval_project(pytester):
    """A project with the repository's conftest.py and pytest settings, and one notebook that leaves a file behind
    (in a folder of its own: pytester's home folder, where IPython keeps its profile, is the project's root)."""
    pytester.makeconftest((ROOT / "conftest.py").read_text(encoding="utf-8"))
    pytester.makepyprojecttoml((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (pytester.path / "nb").mkdir()
    nbformat.write(notebook("x = [0] * 1000", "open('left_behind.txt', 'w').close()"),
                   pytester.path / "nb" / "leaves_a_file.ipynb")
    return pytester


def test_the_notebook_check_fails_a_blown_budget_and_a_left_file(nbval_project):
    result = nbval_project.runpytest("nb", "--kernel-budget-mb=1", "-m", "notebooks", "-v", "-rN")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*leaves_a_file*kernel memory and files FAILED*"])
    # -rN: no short summary, whose one-line excerpt of the message is cut at the terminal's width (so it names the
    # file on a wide terminal and not on a narrow one); the failure's own report names it exactly once.
    output = result.stdout.str()
    assert "exceeds the budget of 1 MB" in output and output.count("left_behind.txt") == 1


def test_nbvals_items_and_the_check_carry_the_notebooks_marker(nbval_project):
    result = nbval_project.runpytest("nb", "-m", "not notebooks")
    result.assert_outcomes(deselected=3)
