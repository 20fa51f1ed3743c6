"""Write the Open-in-Colab / Binder badges and the Colab set-up cell into the course notebooks.

    python tools/sync_notebook_headers.py                              # every notebooks/NN_*.ipynb
    python tools/sync_notebook_headers.py notebooks/03_adapters.ipynb  # one notebook
    python tools/sync_notebook_headers.py --check                      # change nothing; exit 1 if out of sync
    python tools/sync_notebook_headers.py --ref v1.0 --out build/v1.0  # badges of release tag v1.0, into a copy

Both come from the one repository URL in pyproject.toml ([project.urls] Repository), through lora_teach.colab.
The badges go on the line after the title heading; the set-up cell becomes the notebook's first code cell (tag
`colab-setup`). Running it twice changes nothing. When it inserts a set-up cell, execute the notebook again so
it is committed with the outputs of one clean run:
    python tools/run_notebook.py notebooks/NN_name.ipynb

Release tags. By default the badges open, and the set-up cell installs, the `main` branch, which changes while a
class works. `--ref TAG` makes both point at a branch or tag instead (`make headers ARGS="--ref v1.0"`); with
`--check`, it checks the notebooks against that ref. Give `--out DIR` to write the changed notebooks into DIR
(as DIR/notebooks/NN_name.ipynb) and leave the repository's as they are, for instance to hand out a release's
notebooks; the notebooks committed on `main` keep the `main` badges, which the tests check.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat
from notebook_runner import ROOT, course_notebooks

from lora_teach.colab import (
    BRANCH,
    badges,
    header_problems,
    project_metadata,
    setup_cell_index,
    setup_cell_source,
    sync_notebook,
    with_badges,
)

# What git accepts in a branch or tag name, narrowed to the usual characters
REF_NAME = re.compile(r"(?!.*\.\.)(?!.*//)[A-Za-z0-9_][A-Za-z0-9_./-]*(?<![./])")


def relative(path: Path) -> str:
    """The notebook's path from the repository root, as the badge links need it."""
    return path.resolve().relative_to(ROOT).as_posix()


def sync_at(nb, name: str, url: str, path: str, ref: str = BRANCH) -> list[str]:
    """`lora_teach.colab.sync_notebook`, with the badges and the set-up cell of `ref` instead of `main`."""
    if ref == BRANCH:
        return sync_notebook(nb, name, url, path)
    before = copy.deepcopy(nb)
    changes = [c for c in sync_notebook(nb, name, url, path) if c not in ("badges", "set-up cell rewritten")]
    title, setup = nb.cells[0], nb.cells[setup_cell_index(nb)]
    title.source = with_badges(title.source, badges(url, path, ref))
    setup.source = setup_cell_source(name, url, ref)
    if title.source != before.cells[0].source:
        changes.insert(0, "badges")
    old = setup_cell_index(before)
    if old is not None and setup.source != before.cells[old].source:
        changes.append("set-up cell rewritten")
    return changes


def problems_at(nb, name: str, url: str, path: str, ref: str = BRANCH) -> list[str]:
    """What differs between `nb` and the badges and set-up cell of `ref` (empty when in sync)."""
    if ref == BRANCH:
        return header_problems(nb, name, url, path)
    return [f"{change} (for {ref})" for change in sync_at(copy.deepcopy(nb), name, url, path, ref)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    ap.add_argument("--check", action="store_true", help="report notebooks out of sync and exit 1; write nothing")
    ap.add_argument("--ref", default=BRANCH, help=f"branch or tag the badges open (default: {BRANCH})")
    ap.add_argument("--out", type=Path, help="write the notebooks into OUT/notebooks/ instead of in place")
    args = ap.parse_args(argv)
    if not REF_NAME.fullmatch(args.ref):
        ap.error(f"--ref must be a branch or tag name (letters, digits and . _ / -, not starting with . or - "
                 f"and without '..'), got {args.ref!r}")
    if args.out is not None and args.check:
        ap.error("--out writes notebooks and --check writes nothing: give one of them")
    name, url = project_metadata(ROOT / "pyproject.toml")
    out_of_sync = 0
    for path in args.notebooks or course_notebooks():
        nb = nbformat.read(path, as_version=4)
        if args.check:
            problems = problems_at(nb, name, url, relative(path), args.ref)
            out_of_sync += bool(problems)
            for problem in problems:
                print(f"{path.name}: {problem}")
            continue
        changes = sync_at(nb, name, url, relative(path), args.ref)
        target = path if args.out is None else args.out / relative(path)
        if changes or args.out is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, target)
        where = "" if args.out is None else f" -> {target}"
        print(f"{path.name}: {', '.join(changes) if changes else 'in sync'}{where}")
    if args.check:
        fix = "python tools/sync_notebook_headers.py" + (f" --ref {args.ref}" if args.ref != BRANCH else "")
        print("all notebooks in sync" if not out_of_sync else f"{out_of_sync} notebook(s) out of sync: run {fix}")
    return 1 if out_of_sync else 0


if __name__ == "__main__":
    sys.exit(main())
