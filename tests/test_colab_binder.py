"""Binder and Colab: one repository URL (pyproject.toml) behind every badge and every Colab set-up cell.

That installing the package keeps Colab's torch (a range, not a pin) is tested in tests/test_environment.py."""

import copy
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
import sync_notebook_headers
import tomllib
from packaging.requirements import Requirement

from lora_teach import colab

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
URL = "https://github.com/lora-teach/lora-teach"
NAME, REPO = colab.project_metadata(ROOT / "pyproject.toml")


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_the_repository_url_comes_from_pyproject():
    assert (NAME, REPO) == ("lora-teach", URL)


def test_badge_links_open_the_notebook_on_colab_and_binder():
    path = "notebooks/01_meet_the_base_model.ipynb"
    assert colab.colab_url(URL, path) == ("https://colab.research.google.com/github/lora-teach/lora-teach/blob/main/"
                                          "notebooks/01_meet_the_base_model.ipynb")
    assert colab.binder_url(URL, path) == ("https://mybinder.org/v2/gh/lora-teach/lora-teach/main"
                                           "?labpath=notebooks%2F01_meet_the_base_model.ipynb")


@pytest.mark.parametrize("url", ["http://github.com/a/b", "https://gitlab.com/a/b", "https://github.com/a",
                                 "github.com/a/b", ""])
def test_a_url_that_is_not_a_github_repository_is_refused(url):
    with pytest.raises(ValueError, match="github.com/OWNER/NAME"):
        colab.github_slug(url)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_has_the_badges_and_set_up_cell_made_from_the_url(path):
    problems = colab.header_problems(nbformat.read(path, as_version=4), NAME, REPO, _relative(path))
    assert problems == [], f"{path.name}: run `python tools/sync_notebook_headers.py {_relative(path)}`"


def test_badges_and_set_up_cells_are_the_same_across_notebooks():
    """Apart from the notebook's own path, every header is identical."""
    headers = set()
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        badge = next((line for line in nb.cells[0].source.split("\n") if "colab-badge.svg" in line), "")
        headers.add((badge.replace(_relative(path), "NB").replace(_relative(path).replace("/", "%2F"), "NB"),
                     nb.cells[1].source))
    assert len(headers) == 1


def test_sync_writes_a_header_once_and_a_second_run_changes_nothing():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 99 · Test\n\nWhy it matters."),
                                         nbformat.v4.new_code_cell("x = 1")])
    changes = colab.sync_notebook(nb, NAME, REPO, "notebooks/99_test.ipynb")
    assert "badges" in changes and any("inserted" in c for c in changes)
    nbformat.validate(nb)
    assert colab.header_problems(nb, NAME, REPO, "notebooks/99_test.ipynb") == []
    assert nb.cells[0].source.startswith("# 99 · Test\n\n[![Open In Colab]") and nb.cells[0].source.endswith(
        "\n\nWhy it matters.")
    assert nb.cells[2].source == "x = 1"
    again = copy.deepcopy(nb)
    assert colab.sync_notebook(again, NAME, REPO, "notebooks/99_test.ipynb") == [] and again == nb


def test_a_changed_url_shows_up_as_out_of_sync():
    path = NOTEBOOKS[0]
    nb = nbformat.read(path, as_version=4)
    problems = colab.header_problems(nb, NAME, "https://github.com/someone/else", _relative(path))
    assert any("badge" in p for p in problems) and any("set-up cell" in p for p in problems)


def test_the_sync_script_finds_every_notebook_in_sync(capsys):
    assert sync_notebook_headers.main(["--check"]) == 0, capsys.readouterr().out


# ------------------------------------------------------------------------------------------ the set-up cell
def _run_set_up_cell(monkeypatch, on_colab: bool):
    calls, enabled = [], []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kwargs: calls.append((cmd, kwargs)))
    if on_colab:
        google = types.ModuleType("google")
        google_colab = types.ModuleType("google.colab")
        google_colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: enabled.append(True))
        google.colab = google_colab
        monkeypatch.setitem(sys.modules, "google", google)
        monkeypatch.setitem(sys.modules, "google.colab", google_colab)
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(colab.setup_cell_source(NAME, REPO), {})
    return calls, enabled


def test_the_set_up_cell_does_nothing_outside_colab(monkeypatch):
    assert _run_set_up_cell(monkeypatch, on_colab=False) == ([], [])


def test_on_colab_the_set_up_cell_installs_the_package_from_the_repository_and_enables_widgets(monkeypatch):
    calls, enabled = _run_set_up_cell(monkeypatch, on_colab=True)
    assert enabled == [True]
    ((cmd, kwargs),) = calls
    assert cmd == [sys.executable, "-m", "pip", "install", "--quiet", f"lora-teach @ git+{URL}@{colab.BRANCH}"]
    assert kwargs == {"check": True}
    assert not {"--upgrade", "-U", "--force-reinstall", "--no-deps"} & set(cmd) and "torch" not in " ".join(cmd)


def test_installing_on_colab_keeps_colabs_ipywidgets():
    """Colab ships ipywidgets 7.7.1 and its widget manager does not support 8: the range must admit it."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ipywidgets = next(Requirement(d) for d in deps if Requirement(d).name == "ipywidgets")
    assert ipywidgets.specifier.contains("7.7.1") and ipywidgets.specifier.contains("8.1.9")


# --------------------------------------------------------------------------------------------------- Binder
def test_binder_gets_jupyterlab_with_widgets_and_keeps_the_cpu_torch():
    env = (ROOT / "environment.yml").read_text()
    pip = {Requirement(line.strip()[2:]).name: Requirement(line.strip()[2:])
           for line in env.split("- pip:")[1].splitlines() if line.strip().startswith("- ") and "--" not in line}
    assert "jupyterlab" in pip and pip["jupyterlab"].specifier.contains("4.2.0")
    assert not pip["ipywidgets"].specifier.contains("7.7.1"), "JupyterLab 4 needs ipywidgets 8 for its widgets"
    post_build = (ROOT / "postBuild").read_text()
    assert "pip install --no-deps -e ." in post_build, "postBuild must not let pip swap the CPU torch"


def test_readme_shows_the_badges_and_points_teachers_to_the_workshop_guide():
    readme = (ROOT / "README.md").read_text()
    start = "notebooks/00_start_here.ipynb"
    assert colab.colab_url(REPO, start) in readme and colab.binder_url(REPO, start) in readme
    assert "docs/WORKSHOP.md" in readme


def test_binder_and_make_lab_run_the_course_offline():
    """Nothing is downloaded while a learner works: Binder's start script and `make lab` switch the Hub off
    (bitsandbytes would otherwise ask it for an optional CPU kernel at import), and the start script then runs
    the command it was given."""
    import os
    import subprocess

    start = ROOT / "start"
    assert os.access(start, os.X_OK), "repo2docker runs `start` only if it is executable"
    out = subprocess.run([str(start), "sh", "-c", "echo $HF_HUB_OFFLINE"], capture_output=True, text=True,
                         check=True, env={k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"})
    assert out.stdout.strip() == "1"
    lab = next(line for line in (ROOT / "Makefile").read_text().splitlines() if "/jupyter lab " in line)
    assert lab.strip().startswith("HF_HUB_OFFLINE=1 ")
