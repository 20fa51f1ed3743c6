"""Open-in-Colab and Binder badges and the Colab set-up cell, all made from one repository URL.

The URL lives in one place, `[project.urls] Repository` in pyproject.toml. `tools/sync_notebook_headers.py`
writes the badges (into each notebook's title cell) and the set-up cell (its first code cell) from it, and
`tests/test_colab_binder.py` checks that every notebook matches. Notebooks are dicts in nbformat 4's layout.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

BRANCH = "main"  # the branch the badges open and the set-up cell installs from
SETUP_TAG = "colab-setup"  # cell tag of the set-up cell
BADGE_MARKS = ("colab-badge.svg", "mybinder.org/badge")  # a title line holding one of these is the badge line


def project_metadata(pyproject: str | Path) -> tuple[str, str]:
    """(distribution name, repository URL) from pyproject.toml's [project] name and [project.urls] Repository."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads(Path(pyproject).read_text(encoding="utf-8"))["project"]
    url = project.get("urls", {}).get("Repository")
    if not url:
        raise ValueError(f"{pyproject}: [project.urls] has no Repository entry, the one source of the course's URL")
    github_slug(url)  # validates
    return project["name"], url.rstrip("/")


def github_slug(repo_url: str) -> str:
    """'owner/name' of a https://github.com/owner/name URL; ValueError for anything else."""
    match = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?", repo_url)
    if not match:
        raise ValueError(f"the repository URL must look like https://github.com/OWNER/NAME, got {repo_url!r}")
    return f"{match[1]}/{match[2]}"


def colab_url(repo_url: str, notebook_path: str, ref: str = BRANCH) -> str:
    """The link that opens `notebook_path` (relative to the repository root) of `ref` in Colab."""
    return f"https://colab.research.google.com/github/{github_slug(repo_url)}/blob/{ref}/{notebook_path}"


def binder_url(repo_url: str, notebook_path: str, ref: str = BRANCH) -> str:
    """The link that builds the repository at `ref` on mybinder.org and opens `notebook_path` in JupyterLab."""
    return f"https://mybinder.org/v2/gh/{github_slug(repo_url)}/{ref}?labpath={quote(notebook_path, safe='')}"


def badges(repo_url: str, notebook_path: str, ref: str = BRANCH) -> str:
    """One markdown line: the Open-in-Colab badge and the Binder badge for one notebook."""
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"({colab_url(repo_url, notebook_path, ref)}) "
            f"[![Launch on Binder](https://mybinder.org/badge_logo.svg)]({binder_url(repo_url, notebook_path, ref)})")


def setup_cell_source(name: str, repo_url: str, ref: str = BRANCH) -> str:
    """The first code cell of every notebook: on Colab only, install the package and enable widgets."""
    return f'''# Colab only: install the course package from its repository and turn on Colab's widget manager.
# Anywhere else (locally or on Binder) this cell does nothing.
import sys

if "google.colab" in sys.modules:
    import subprocess

    # pip keeps Colab's own torch: the package asks for a range of versions, never an exact pin
    package = "{name} @ git+{repo_url}@{ref}"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", package], check=True)
    from google.colab import output

    output.enable_custom_widget_manager()'''


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _title_cell(nb: dict) -> dict:
    cells = nb.get("cells", [])
    if not cells or cells[0].get("cell_type") != "markdown" or not _source(cells[0]).startswith("# "):
        raise ValueError("the notebook's first cell must be its markdown title, starting with '# '")
    return cells[0]


def _is_badge_line(line: str) -> bool:
    return any(mark in line for mark in BADGE_MARKS)


def with_badges(title: str, badge_line: str | None) -> str:
    """The title cell's text with its badge line replaced by `badge_line` (removed when None)."""
    heading, *rest = title.split("\n")
    rest = [line for line in rest if not _is_badge_line(line)]
    while rest and not rest[0].strip():
        rest.pop(0)
    lines = [heading] + (["", badge_line] if badge_line else []) + ([""] + rest if rest else [])
    return "\n".join(lines)


def setup_cell_index(nb: dict) -> int | None:
    """Index of the cell tagged as the Colab set-up cell, or None."""
    for i, cell in enumerate(nb.get("cells", [])):
        if SETUP_TAG in cell.get("metadata", {}).get("tags", []):
            return i
    return None


def sync_notebook(nb: dict, name: str, repo_url: str, notebook_path: str) -> list[str]:
    """Write the badges and the set-up cell into `nb` in place; return what changed (empty when in sync)."""
    changes = []
    title = _title_cell(nb)
    new_title = with_badges(_source(title), badges(repo_url, notebook_path))
    if new_title != _source(title):
        title["source"] = new_title
        changes.append("badges")
    expected = setup_cell_source(name, repo_url)
    cells = nb["cells"]
    i = setup_cell_index(nb)
    if i is None:
        from nbformat import from_dict

        cell = {"cell_type": "code", "execution_count": None, "metadata": {"tags": [SETUP_TAG]}, "outputs": [],
                "source": expected}
        if (nb.get("nbformat", 4), nb.get("nbformat_minor", 0)) >= (4, 5):  # cell ids exist from nbformat 4.5
            cell["id"] = SETUP_TAG if SETUP_TAG not in {c.get("id") for c in cells} else f"{SETUP_TAG}-1"
        cells.insert(1, from_dict(cell))
        changes.append("set-up cell inserted (execute the notebook again)")
        return changes
    if i != 1:
        cells.insert(1, cells.pop(i))
        changes.append("set-up cell moved to the first code cell")
    if _source(cells[1]) != expected:
        cells[1]["source"] = expected
        changes.append("set-up cell rewritten")
    return changes


def header_problems(nb: dict, name: str, repo_url: str, notebook_path: str) -> list[str]:
    """What differs between `nb` and the badges and set-up cell made from `repo_url` (empty when in sync)."""
    problems = []
    try:
        title = _source(_title_cell(nb))
    except ValueError as err:
        return [str(err)]
    found = [line for line in title.split("\n") if _is_badge_line(line)]
    if found != [badges(repo_url, notebook_path)]:
        problems.append(f"badge line is {found!r}, expected {badges(repo_url, notebook_path)!r}")
    cells = nb.get("cells", [])
    if setup_cell_index(nb) != 1:
        problems.append(f"the cell after the title must be the code cell tagged {SETUP_TAG!r}")
    elif _source(cells[1]) != setup_cell_source(name, repo_url) or cells[1].get("cell_type") != "code":
        problems.append("the set-up cell differs from lora_teach.colab.setup_cell_source")
    return problems
