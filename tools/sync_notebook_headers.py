"""Write the Open-in-Colab / Binder badges and the Colab set-up cell into the course notebooks.

    python tools/sync_notebook_headers.py                              # every notebooks/NN_*.ipynb
    python tools/sync_notebook_headers.py notebooks/03_adapters.ipynb  # one notebook
    python tools/sync_notebook_headers.py --check                      # change nothing; exit 1 if out of sync

Both come from the one repository URL in pyproject.toml ([project.urls] Repository), through lora_teach.colab.
The badges go on the line after the title heading; the set-up cell becomes the notebook's first code cell (tag
`colab-setup`). Running it twice changes nothing. When it inserts a set-up cell, execute the notebook again so
it is committed with the outputs of one clean run:
    python tools/run_notebook.py notebooks/NN_name.ipynb
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from notebook_runner import ROOT, course_notebooks

from lora_teach.colab import header_problems, project_metadata, sync_notebook


def relative(path: Path) -> str:
    """The notebook's path from the repository root, as the badge links need it."""
    return path.resolve().relative_to(ROOT).as_posix()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    ap.add_argument("--check", action="store_true", help="report notebooks out of sync and exit 1; write nothing")
    args = ap.parse_args(argv)
    name, url = project_metadata(ROOT / "pyproject.toml")
    out_of_sync = 0
    for path in args.notebooks or course_notebooks():
        nb = nbformat.read(path, as_version=4)
        if args.check:
            problems = header_problems(nb, name, url, relative(path))
            out_of_sync += bool(problems)
            for problem in problems:
                print(f"{path.name}: {problem}")
            continue
        changes = sync_notebook(nb, name, url, relative(path))
        if changes:
            nbformat.write(nb, path)
        print(f"{path.name}: {', '.join(changes) if changes else 'in sync'}")
    if args.check:
        print("all notebooks in sync" if not out_of_sync else f"{out_of_sync} notebook(s) out of sync: run "
              "python tools/sync_notebook_headers.py")
    return 1 if out_of_sync else 0


if __name__ == "__main__":
    sys.exit(main())
