"""Execute every course notebook from a clean kernel and report its wall time and the kernel's peak RSS.

    python tools/notebook_budget.py                 # print the table
    python tools/notebook_budget.py --update-docs   # also write the times into the README's course map,
                                                    # docs/WORKSHOP.md and each notebook's "Run time" line

Notebooks run on copies in a temporary directory, so the committed ones are not touched. Targets on two CPU
cores: each notebook 45 s or less, peak RSS 1.5 GB or less per kernel.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path

import nbformat
from notebook_runner import ROOT, add_memory_probe, course_notebooks, execute, peak_rss_mb, probed_memory


def run(path: Path) -> dict:
    """Execute the notebook from a clean kernel in an empty temporary directory: its wall time and peak RSS."""
    nb = nbformat.read(path, as_version=4)
    add_memory_probe(nb)
    seconds = execute(nb)
    return {"notebook": path.name, "seconds": round(seconds, 1), "peak_rss_mb": peak_rss_mb(probed_memory(nb))}


def table(rows: list[dict]) -> str:
    lines = ["| notebook | wall time (s) | kernel peak RSS (MB) |", "| --- | --- | --- |"]
    lines += [f"| {r['notebook']} | {r['seconds']:.1f} | {r['peak_rss_mb']} |" for r in rows]
    total = sum(r["seconds"] for r in rows)
    lines.append(f"| **whole course** | **{total:.0f}** | max {max(r['peak_rss_mb'] for r in rows)} |")
    return "\n".join(lines)


BLOCK = re.compile(r"(<!-- budget:start -->\n).*?(<!-- budget:end -->)", re.S)
HEADER = re.compile(r"(\*\*Run time:\*\* )(?:about \d+ s|a few seconds)(?: on two CPU cores)?")


def about(seconds: float) -> str:
    """The header's wording of a measured time: rounded up to the next 5 s."""
    return f"about {5 * math.ceil(seconds / 5)} s on two CPU cores"


def course_map(text: str, rows: list[dict]) -> str:
    """README: fill the run-time and peak-RSS columns of the course map between the budget markers."""
    by_name = {r["notebook"]: r for r in rows}

    def fill(block: re.Match) -> str:
        lines = block[0].splitlines()
        out = []
        for line in lines:
            name = re.search(r"\(notebooks/([^)]+\.ipynb)\)", line)
            if name and name[1] in by_name:
                r = by_name[name[1]]
                cells = line.strip().strip("|").split("|")
                line = "|".join(["", *cells[:2], f" {r['seconds']:.0f} ", f" {r['peak_rss_mb']} ", ""])
            elif line.startswith("| **whole course**"):
                line = (f"| **whole course** | | **{sum(r['seconds'] for r in rows):.0f}** | "
                        f"max {max(r['peak_rss_mb'] for r in rows)} |")
            out.append(line)
        return "\n".join(out)

    new, n = BLOCK.subn(fill, text)
    if n != 1:
        raise ValueError("README.md needs exactly one <!-- budget:start --> ... <!-- budget:end --> block")
    return new


def workshop_table(text: str, rows: list[dict]) -> str:
    """docs/WORKSHOP.md: rewrite the run-time table between the budget markers."""
    lines = ["| notebook | run all (s) | kernel peak RSS (MB) |", "| --- | --- | --- |"]
    lines += [f"| {r['notebook'][:2]} · {r['notebook'][3:-6].replace('_', ' ')} | {r['seconds']:.0f} | "
              f"{r['peak_rss_mb']} |" for r in rows]
    lines.append(f"| **whole course** | **{sum(r['seconds'] for r in rows):.0f}** (target: 45 or less a notebook) | |")
    new, n = BLOCK.subn(lambda m: m[1] + "\n".join(lines) + "\n" + m[2], text)
    if n != 1:
        raise ValueError("docs/WORKSHOP.md needs exactly one <!-- budget:start --> ... <!-- budget:end --> block")
    return new


def update_docs(rows: list[dict]) -> None:
    """Write the measured times into the README's course map, docs/WORKSHOP.md and every notebook's header."""
    for path, update in ((ROOT / "README.md", course_map), (ROOT / "docs" / "WORKSHOP.md", workshop_table)):
        path.write_text(update(path.read_text(), rows))
    for r in rows:
        path = ROOT / "notebooks" / r["notebook"]
        nb = nbformat.read(path, as_version=4)
        header = next(c for c in nb.cells if c.cell_type == "markdown" and HEADER.search(c.source))
        wording = about(r["seconds"])
        header.source = HEADER.sub(lambda m, wording=wording: m[1] + wording, header.source, count=1)
        nbformat.write(nb, path)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    ap.add_argument("--update-docs", "--update-readme", action="store_true", dest="update_docs",
                    help="write the measured times into README.md, docs/WORKSHOP.md and the notebooks' headers")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--runs", type=int, default=1,
                    help="run each notebook this many times and report the median time (a shared machine's noise "
                         "can add 10-30%% to a single run)")
    args = ap.parse_args(argv)
    paths = args.notebooks or course_notebooks()
    rows = []
    for p in paths:
        runs = [run(p) for _ in range(args.runs)]
        rows.append({"notebook": p.name, "seconds": statistics.median(r["seconds"] for r in runs),
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "runs": [r["seconds"] for r in runs]})
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    if args.update_docs:
        update_docs(rows)
    return rows


if __name__ == "__main__":
    main()
