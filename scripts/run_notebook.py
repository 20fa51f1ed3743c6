"""Execute course notebooks in place, as they are committed: top to bottom in a fresh kernel, in `notebooks/`.

    python scripts/run_notebook.py notebooks/02_full_fine_tuning.ipynb [more.ipynb ...]

After the run, the saved widget state keeps only what a static renderer can use: the state of every widget whose
output also carries a PNG (the lora_teach widgets draw their figure as a PNG fallback) is removed, with the
models only it refers to, so that GitHub, nbviewer and nbconvert show the figure instead of an empty widget view
(tests/browser/test_widget_notebooks.py checks this). Progress bars keep their state, but not their text:
a finished bar's text fallback ("training:   0%|...") and the bars libraries print to stderr are removed, since
that text is all GitHub would show of them (tests/test_notebook_hygiene.py checks this).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
MODEL_REF = re.compile(r"IPY_MODEL_([0-9a-f]+)")
PROGRESS_BAR = re.compile(r"\d+%\|")


def _reachable(state: dict, roots: set[str]) -> set[str]:
    """The model ids `roots` refer to, directly or through other models of `state`."""
    seen, stack = set(), list(roots)
    while stack:
        model = stack.pop()
        if model in seen or model not in state:
            continue
        seen.add(model)
        stack.extend(MODEL_REF.findall(json.dumps(state[model])))
    return seen


def strip_figure_widget_state(nb) -> int:
    """Remove the saved state of widgets shown with a PNG fallback; returns the number of models removed."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    figure, other = set(), set()
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            if view:
                (figure if "image/png" in out["data"] else other).add(view["model_id"])
    drop = _reachable(state, figure) - _reachable(state, other)
    for model in drop:
        del state[model]
    if not state:
        nb.metadata.pop("widgets", None)
    return len(drop)


def strip_progress_text(nb) -> None:
    """Drop progress-bar text: the text fallback of a bar widget, and bar lines printed to stderr."""
    for cell in nb.cells:
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW in data and PROGRESS_BAR.search(data.get("text/plain", "")):
                del data["text/plain"]
            if out.get("output_type") == "stream" and PROGRESS_BAR.search(out.get("text", "")):
                lines = [part for line in out["text"].split("\n") for part in [line.split("\r")[-1]]
                         if not PROGRESS_BAR.search(line)]
                out["text"] = "\n".join(lines)
                if not out["text"].strip():
                    continue
            kept.append(out)
        if cell.cell_type == "code":
            cell.outputs = kept


def run(path: Path, timeout: int = 1200) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.resolve().parent)}}).execute()
    seconds = time.perf_counter() - start
    strip_figure_widget_state(nb)
    strip_progress_text(nb)
    nbformat.write(nb, path)
    return seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="+", type=Path)
    args = ap.parse_args(argv)
    for path in args.notebooks:
        print(f"{path.name}: {run(path):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
