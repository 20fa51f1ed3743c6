"""The notebooks nbval runs (pyproject: `--nbval-lax`), checked once more at the end of that one execution.

Every nbval item gets the `notebooks` marker (`make test-fast` leaves them out). After each notebook's last cell,
one more item, `<notebook>::kernel memory and files`, sends the memory probe of tools/notebook_runner.py to the
same kernel: its peak resident memory must fit Binder's budget (--kernel-budget-mb), and the notebook must have
left no new file in its folder. So `make test` executes every notebook once for its outputs, its memory and its
files; the stricter run of every cell twice is `make check-rerun` (tools/check_memory_limit.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from nbval.plugin import IPyNbCell, IPyNbFile
from notebook_runner import KERNEL_BUDGET_MB, MEMORY_PROBE, files_in, memory_mb, peak_rss_mb

pytest_plugins = ["pytester"]  # tests/test_notebook_runner.py runs nbval on synthetic notebooks
FILES_BEFORE = pytest.StashKey[set]()
PEAKS = pytest.StashKey[dict]()  # notebook name: its kernel's memory figures, for the summary
PROBE_TIMEOUT = 60  # seconds


def pytest_addoption(parser):
    parser.addoption("--kernel-budget-mb", type=int, default=KERNEL_BUDGET_MB,
                     help=f"peak RSS allowed to each notebook's kernel, in MiB (default {KERNEL_BUDGET_MB}: "
                          "Binder's 2048 less 256 for the Jupyter server)")


class NotebookCheckFailed(Exception):
    """A notebook that ran over its memory budget or left a file behind."""


class KernelMemoryAndFiles(pytest.Item):
    """After the notebook's last cell, in its nbval kernel: peak RSS within the budget, no new file in its folder."""

    def runtest(self):
        memory = memory_mb(kernel_output(self.parent, MEMORY_PROBE))
        self.config.stash.setdefault(PEAKS, {})[self.parent.name] = memory
        budget = self.config.getoption("kernel_budget_mb")
        problems = []
        if peak_rss_mb(memory) > budget:
            problems.append(f"the kernel's peak RSS, {peak_rss_mb(memory)} MB, exceeds the budget of {budget} MB")
        folder = Path(self.parent.path).parent
        left = sorted(files_in(folder) - self.parent.stash.get(FILES_BEFORE, files_in(folder)))
        if left:
            problems.append(f"the notebook left files in {folder}: {left}")
        if problems:
            raise NotebookCheckFailed("\n".join(problems))

    def repr_failure(self, excinfo, style=None):
        if excinfo.errisinstance(NotebookCheckFailed):
            return f"{self.parent.name}: {excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"{self.parent.name}::{self.name}"


def kernel_output(notebook: IPyNbFile, code: str) -> str:
    """What `code` prints when run in the notebook's nbval kernel (after the cells nbval ran there)."""
    kernel = notebook.kernel
    if kernel is None or not kernel.is_alive():
        raise NotebookCheckFailed("the kernel is not running (it died, or no cell of the notebook ran)")
    msg_id = kernel.execute_cell_input(code, allow_stdin=False)
    printed = []
    while True:
        msg = kernel.get_message("iopub", timeout=PROBE_TIMEOUT)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            printed.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            raise NotebookCheckFailed(f"the memory probe failed: {msg['content']['ename']}: "
                                      f"{msg['content']['evalue']}")
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(printed)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items):
    """Mark nbval's items `notebooks`, and add the memory-and-files check after each notebook's last cell."""
    checked = []
    for index, item in enumerate(items):
        if not isinstance(item, IPyNbCell):
            continue
        item.add_marker(pytest.mark.notebooks)
        following = items[index + 1] if index + 1 < len(items) else None
        if following is None or following.parent is not item.parent:
            check = KernelMemoryAndFiles.from_parent(item.parent, name="kernel memory and files")
            check.add_marker(pytest.mark.notebooks)
            checked.append((index + 1, check))
    for position, check in reversed(checked):
        items.insert(position, check)


def pytest_runtest_setup(item):
    """Before a notebook's first cell runs: list its folder, to find files the notebook leaves there."""
    if isinstance(item, IPyNbCell) and FILES_BEFORE not in item.parent.stash:
        item.parent.stash[FILES_BEFORE] = files_in(Path(item.parent.path).parent)


def pytest_terminal_summary(terminalreporter, config):
    """One line per notebook checked: its kernel's peak RSS against the budget."""
    peaks = config.stash.get(PEAKS, {})
    if peaks:
        budget = config.getoption("kernel_budget_mb")
        terminalreporter.section(f"kernel peak RSS per notebook (budget {budget} MB)")
        for name, memory in peaks.items():
            terminalreporter.line(f"{name}: {peak_rss_mb(memory)} MB")
