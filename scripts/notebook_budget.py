"""Execute every course notebook from a clean kernel and report its wall time and the kernel's peak RSS.

    python scripts/notebook_budget.py                 # print the table
    python scripts/notebook_budget.py --update-readme # also rewrite the table in README.md

Notebooks run on copies in a temporary directory, so the committed ones are not touched. Targets on two CPU
cores: each notebook 45 s or less, the whole course 6 min or less, peak RSS 1.5 GB or less per kernel.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
RSS_PROBE = "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"  # KiB on Linux


def run(path: Path) -> dict:
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(RSS_PROBE))
    with tempfile.TemporaryDirectory() as tmp:
        client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp}})
        t0 = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - t0
    rss_kib = int(nb.cells[-1].outputs[0]["text"].strip())
    return {"notebook": path.name, "seconds": round(seconds, 1), "peak_rss_mb": round(rss_kib / 1024)}


def table(rows: list[dict]) -> str:
    lines = ["| notebook | wall time (s) | kernel peak RSS (MB) |", "| --- | --- | --- |"]
    lines += [f"| {r['notebook']} | {r['seconds']:.1f} | {r['peak_rss_mb']} |" for r in rows]
    total = sum(r["seconds"] for r in rows)
    lines.append(f"| **whole course** | **{total:.0f}** | max {max(r['peak_rss_mb'] for r in rows)} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    ap.add_argument("--update-readme", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    rows = []
    for p in paths:
        rows.append(run(p))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    if args.update_readme:
        readme = ROOT / "README.md"
        text = readme.read_text()
        new = re.sub(r"(<!-- budget:start -->).*?(<!-- budget:end -->)", lambda m: m[1] + "\n" + table(rows) + "\n" + m[2],
                     text, flags=re.S)
        readme.write_text(new)
    return rows


if __name__ == "__main__":
    main()
