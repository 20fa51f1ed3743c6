"""Run every course notebook the way Binder would, only stricter: each from a clean kernel in an empty temporary
directory, in reverse course order, with every code cell run twice, and check its peak memory against Binder's
2 GB. This is `make check-rerun`, outside CI: `make test` already runs each notebook once under nbval with the
same memory check (conftest.py), and running every cell twice would double CI's time.

    python tools/check_memory_limit.py                      # every notebooks/NN_*.ipynb
    python tools/check_memory_limit.py notebooks/08_*.ipynb --once --json peaks.json

A notebook fails when it raises (a second run of a cell may only be refused with a ValueError or TypeError, the
package's clear refusals), when its kernel dies, when it leaves a file in its working directory (or changes
`git status` of the repository), or when the kernel's peak resident memory exceeds the budget: Binder's 2048 MiB
less 256 MiB for the Jupyter server that shares the container with the kernel (--limit-mb, --server-mb).
tools/notebook_runner.py says why the check reads peak RSS (VmHWM) rather than enforcing a limit.
--address-space-mb still sets an RLIMIT_AS, for experiments. CUDA is hidden from the kernel
(CUDA_VISIBLE_DEVICES=""): Binder has no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from notebook_runner import (
    BINDER_MB,
    ROOT,
    SERVER_MB,
    TIMEOUT,
    add_memory_probe,
    course_notebooks,
    execute,
    files_in,
    peak_rss_mb,
    probed_memory,
)

REFUSALS = ("ValueError", "TypeError")  # what a second run of a cell may raise: a clear refusal
LIMIT_CELL = """import resource
_limit = {limit}
resource.setrlimit(resource.RLIMIT_AS, (_limit, _limit))
assert resource.getrlimit(resource.RLIMIT_AS) == (_limit, _limit)
print("address-space limit", _limit // 2**20, "MiB")"""


def git_status() -> str | None:
    """`git status --porcelain` of the repository, or None outside a git checkout."""
    try:
        return subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def describe(number: int, source: str) -> str:
    """'code cell 7 (`first line of code`)': which cell, in words a reader can find in the notebook."""
    lines = [ln for ln in source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return f"code cell {number} (`{(lines or [''])[0].strip()[:60]}`)"


def prepare(path: Path, twice: bool, address_space_mb: int | None = None) -> tuple[nbformat.NotebookNode, dict]:
    """The notebook to execute: every code cell twice (the second copy may be refused), then the memory probe;
    first an RLIMIT_AS cell when `address_space_mb` is given. Returns it with {index of a second copy: its cell}."""
    nb = nbformat.read(path, as_version=4)
    cells, seconds = [], {}
    if address_space_mb:
        cells.append(nbformat.v4.new_code_cell(LIMIT_CELL.format(limit=address_space_mb * 2**20)))
    code_number = 0
    for cell in nb.cells:
        cells.append(cell)
        code_number += cell.cell_type == "code"
        if twice and cell.cell_type == "code" and cell.source.strip():
            tags = list(cell.metadata.get("tags", [])) + ["raises-exception"]  # let nbclient carry on
            seconds[len(cells)] = describe(code_number, cell.source)
            cells.append(nbformat.v4.new_code_cell(cell.source, metadata={"tags": tags}))
    nb.cells = cells
    add_memory_probe(nb)
    return nb, seconds


def errors_in(cell) -> list[tuple[str, str]]:
    return [(o.ename, o.evalue) for o in cell.get("outputs", []) if o.output_type == "error"]


def run(path: Path, budget_mb: int, twice: bool = True, timeout: int = TIMEOUT, git_check: bool = True,
        address_space_mb: int | None = None) -> dict:
    """Execute one notebook as described above; a row with its figures and its problems."""
    nb, seconds = prepare(path, twice, address_space_mb)
    row = {"notebook": path.name, "budget_mb": budget_mb, "cells_twice": twice, "problems": [], "refused": []}
    before = git_status() if git_check else None
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        try:
            execute(nb, Path(tmp), timeout)
        except Exception as err:  # an unexpected error, the memory limit, or a dead kernel
            row["problems"].append(f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}")
        row["seconds"] = round(time.perf_counter() - start, 1)
        left = sorted(files_in(Path(tmp)))
    if left:
        row["problems"].append(f"left files in its working directory: {left}")
    if before is not None and (after := git_status()) != before:
        row["problems"].append(f"changed the repository (git status --porcelain):\n{after}")
    for index, cell in seconds.items():
        for ename, evalue in errors_in(nb.cells[index]):
            if ename in REFUSALS:
                row["refused"].append(f"{cell}: {ename}: {evalue[:120]}")
            else:
                row["problems"].append(f"second run of {cell} broke: {ename}: {evalue[:200]}")
    memory = probed_memory(nb)
    if memory is not None:
        row.update(memory)
        if peak_rss_mb(memory) > budget_mb:
            row["problems"].append(f"peak RSS {peak_rss_mb(memory)} MB exceeds the budget of {budget_mb} MB")
    elif not row["problems"]:
        row["problems"].append("the memory probe printed nothing")
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    ap.add_argument("--limit-mb", type=int, default=BINDER_MB,
                    help=f"Binder's memory limit in MiB (default {BINDER_MB})")
    ap.add_argument("--server-mb", type=int, default=SERVER_MB,
                    help=f"kept for the Jupyter server in the same container (default {SERVER_MB}): the kernel's "
                         "budget is limit - server")
    ap.add_argument("--address-space-mb", type=int, help="also set RLIMIT_AS in the kernel (experiments only)")
    ap.add_argument("--once", action="store_true", help="run each cell once (default: twice)")
    ap.add_argument("--order", choices=("reverse", "course"), default="reverse",
                    help="reverse (default; nbval runs the course order) or course order")
    ap.add_argument("--timeout", type=int, default=TIMEOUT, help="seconds per cell")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--git-check", action=argparse.BooleanOptionalAction, default=True,
                    help="fail when git status changes during a notebook (off in a tree others are editing)")
    args = ap.parse_args(argv)
    paths = args.notebooks or course_notebooks()
    if args.order == "reverse":
        paths = paths[::-1]
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # Binder has no GPU, and CUDA reserves far more address space
    rows = []
    for path in paths:
        rows.append(run(path, args.limit_mb - args.server_mb, not args.once, args.timeout, args.git_check,
                        args.address_space_mb))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| notebook | wall time (s) | peak RSS (MB) | peak address space (MB) | refused re-runs |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['notebook']} | {r['seconds']} | {r.get('peak_rss_mb', '-')} | "
              f"{r.get('peak_address_space_mb', '-')} | {len(r['refused'])} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    failed = [r for r in rows if r["problems"]]
    for r in failed:
        print(f"\nFAILED {r['notebook']}:\n  " + "\n  ".join(r["problems"]), file=sys.stderr)
    mode = "each cell twice" if not args.once else "each cell once"
    print(f"\n{len(rows) - len(failed)}/{len(rows)} notebooks passed: kernel peak RSS within "
          f"{args.limit_mb - args.server_mb} MiB ({args.limit_mb} MiB like Binder, less {args.server_mb} MiB for the "
          f"server), {mode}, {args.order} order")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
