"""Execute a course notebook in a fresh kernel: the one way every tool and test of the repository runs one.

- `execute` runs every code cell of a notebook (nbclient, a fresh `python3` kernel) in a working directory of
  your choice, or in an empty temporary one; the notebook keeps its new outputs.
- The memory probe reads the kernel's peak resident memory at the end of a run (`add_memory_probe`, then
  `probed_memory`); conftest.py sends the same probe to each kernel nbval runs, so `make test` checks every
  notebook against Binder's memory in the one execution that also checks its outputs.
- `run_in_place` executes a committed notebook in `notebooks/` and cleans what it saves (widget state, progress
  text) for GitHub and nbconvert; tools/run_notebook.py is its command line.

Why peak RSS, and not an enforced limit. Binder puts each user in a container with a 2 GB memory cgroup, which
counts memory actually resident. We cannot rely on creating a cgroup here or in CI (it needs root and a writable
cgroup tree). An address-space limit (RLIMIT_AS, `ulimit -v`) is easy to set but measures something else:
address space reserved, including shared libraries mapped but never read and glibc's 64 MB per-thread malloc
arenas. Measured on 2026-11-27 with one thread, each cell twice: notebook 02 peaked at 929 MB resident but 2047
MiB of address space, notebook 08 at 766 MB resident, 1882 MiB of address space; a 2 GiB address-space limit
would fail notebooks that use less than half of Binder's memory. The kernel's peak RSS is honest: VmHWM is the
high-water mark the Linux kernel itself keeps for the process's memory (no sampling gap), read in the
notebook's kernel at the end; RUSAGE_CHILDREN covers any child processes. Not the kernel's own ru_maxrss: Linux
carries that across exec from the process that forked the kernel, so a kernel started from a large process
(pytest after many tests) would report the parent's size.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from lora_teach.plotting import sync_descriptions

ROOT = Path(__file__).resolve().parents[1]
BINDER_MB = 2048  # Binder's memory limit per user container, in MiB
SERVER_MB = 256  # kept for the Jupyter server that shares the container with the kernel
KERNEL_BUDGET_MB = BINDER_MB - SERVER_MB
TIMEOUT = 900  # seconds per cell

MEMORY_PROBE = """import json, resource
status = {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in open("/proc/self/status"))
          if k in ("VmPeak", "VmHWM")}
print(json.dumps({**status, "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"""

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
MODEL_REF = re.compile(r"IPY_MODEL_([0-9a-f]+)")
PROGRESS_BAR = re.compile(r"\d+%\|")


def course_notebooks() -> list[Path]:
    """Every numbered notebook of the course (notebooks/NN_*.ipynb), in course order."""
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


# ------------------------------------------------------------------------------------------------ execution
def execute(nb: nbformat.NotebookNode, cwd: Path | None = None, timeout: int = TIMEOUT) -> float:
    """Run every code cell of `nb` in a fresh python3 kernel working in `cwd` (None: an empty temporary directory,
    removed afterwards); `nb` keeps the outputs. Returns the wall time in seconds. Raises nbclient's
    CellExecutionError at the first error, except in cells tagged `raises-exception`."""
    if cwd is None:
        with tempfile.TemporaryDirectory() as tmp:
            return execute(nb, Path(tmp), timeout)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return time.perf_counter() - start


def files_in(folder: Path) -> set[str]:
    """Every file and folder under `folder` (relative POSIX paths), Jupyter's checkpoints and caches left out."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if not {".ipynb_checkpoints", "__pycache__"} & set(p.relative_to(folder).parts)}


# --------------------------------------------------------------------------------------------- the memory probe
def memory_mb(probe_output: str) -> dict[str, int]:
    """The memory probe's printed line as MB: the kernel's peak RSS (VmHWM), its children's, its peak address
    space (VmPeak)."""
    kib = json.loads(probe_output)
    return {"peak_rss_mb": round(kib["VmHWM"] / 1024), "children_peak_rss_mb": round(kib["children"] / 1024),
            "peak_address_space_mb": round(kib["VmPeak"] / 1024)}


def peak_rss_mb(memory: dict[str, int]) -> int:
    """The figure checked against the budget: the larger of the kernel's and its children's peak RSS."""
    return max(memory["peak_rss_mb"], memory["children_peak_rss_mb"])


def add_memory_probe(nb: nbformat.NotebookNode) -> None:
    """Append the memory probe as the last code cell of `nb` (read it back with `probed_memory` after a run)."""
    nb.cells.append(nbformat.v4.new_code_cell(MEMORY_PROBE))


def probed_memory(nb: nbformat.NotebookNode) -> dict[str, int] | None:
    """`memory_mb` of the probe `add_memory_probe` appended, or None if it printed nothing (the run stopped)."""
    last = nb.cells[-1]
    if last.source != MEMORY_PROBE:
        raise ValueError("the notebook's last cell is not the memory probe: call add_memory_probe before the run")
    texts = [out["text"] for out in last.get("outputs", []) if out.get("output_type") == "stream"]
    return memory_mb(texts[0]) if texts else None


# ------------------------------------------------------------------------ executing the committed notebooks
def run_in_place(path: Path, timeout: int = TIMEOUT) -> float:
    """Execute the notebook at `path` in its own folder and save it cleaned for static renderers; the wall time."""
    nb = nbformat.read(path, as_version=4)
    seconds = execute(nb, path.resolve().parent, timeout)
    strip_figure_widget_state(nb)
    strip_progress_text(nb)
    strip_elapsed_times(nb)
    sync_descriptions(nb)  # each figure's description into the cell's metadata, where myst-nb reads its alt text
    nbformat.write(nb, path)
    return seconds


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


def strip_figure_widget_state(nb: nbformat.NotebookNode) -> int:
    """Remove the saved state of widgets shown with a PNG fallback, and of the models only they use; returns the
    number of models removed. GitHub, nbviewer and nbconvert then show the PNG instead of an empty widget view."""
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


# A tqdm bar's timing, "[02:23<00:00,  3.54it/s" (saved HTML-escaped): how fast the machine that ran it was.
ELAPSED = re.compile(r"\[\d+:\d+(?::\d+)?(?:&lt;|<)[^,\]]*,\s*[^,\]]*(?:it/s|s/it)(?:, )?")


def strip_elapsed_times(nb: nbformat.NotebookNode) -> int:
    """Drop the elapsed time and rate from saved progress bars ("100/100 [02:23<00:00, 3.54it/s, loss=1.5]"
    becomes "100/100 [loss=1.5]"): a learner reads a bar's last state, not the speed of the machine that ran it.
    Returns how many bars changed."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    changed = 0
    for model in state.values():
        value = model.get("state", {}).get("value")
        if isinstance(value, str) and ELAPSED.search(value):
            model["state"]["value"] = ELAPSED.sub("[", value).replace(" []", "")
            changed += 1
    return changed


def strip_progress_text(nb: nbformat.NotebookNode) -> None:
    """Drop progress-bar text, all GitHub would show of a finished bar: a bar widget's text fallback
    ("training:   0%|...") and the bar lines libraries print to stderr. Bars keep their widget state."""
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
