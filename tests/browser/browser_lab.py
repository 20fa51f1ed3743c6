"""Helpers for the real-browser test: start JupyterLab on localhost, and drive a notebook in it with Playwright.

Facts this relies on (measured on the project's machines): Debian's /usr/bin/chromium driven by pip's playwright
(never `playwright install`, which downloads); JupyterLab is ready about 3 s after start (poll /api/status);
waiting for the status bar to read "Idle" before "Run All Cells" is what makes the run reliable.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--disable-quic"]
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook in the visible tab
WIDGET = ".lora-teach-widget"  # the CSS class every lora_teach widget puts on its outer box
SETTINGS = {  # JupyterLab user settings for the test: no news toast, every cell rendered (no windowing)
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """JupyterLab on 127.0.0.1 serving `root`, with its own settings, runtime and workspace directories."""

    def __init__(self, root: Path, state: Path, timeout: float = 90.0):
        self.root, self.port, self.token = root, free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        for name, value in SETTINGS.items():
            path = state / "settings" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(value))
        env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(state / "settings"),
               "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"), "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
               "JUPYTER_CONFIG_DIR": str(state / "config")}
        self.log = (state / "jupyterlab.log").open("w")
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}", "--allow-root"]
        # a session of its own, so stop() can end the server and the kernels it started, and nothing else
        self.process = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {self.process.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"JupyterLab did not answer within {timeout} s; see {self.log.name}")

    def notebook_url(self, name: str) -> str:
        """Open `name` alone: `reset` drops the tabs an earlier test left open in the saved workspace."""
        return f"{self.url}/lab/tree/{name}?reset&token={self.token}"

    def stop(self) -> None:
        """End the server and its kernels: the process group this object started, by its id."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self.log.close()


def fresh_copy(notebook: Path, root: Path) -> Path:
    """Copy `notebook` into `root` without outputs or saved widget state: what a student sees before running."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb.get("metadata", {}).pop("widgets", None)
    target = root / notebook.name
    target.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    return target


def code_cell_count(notebook: Path) -> int:
    return sum(c["cell_type"] == "code" for c in json.loads(notebook.read_text(encoding="utf-8"))["cells"])


def wait_kernel_idle(page, timeout_ms: int = 60_000) -> None:
    """Wait until the status bar shows the kernel as Idle."""
    page.locator(".jp-StatusBar-Widget").filter(has_text="Idle").first.wait_for(timeout=timeout_ms)


def run_all_cells(page) -> None:
    """Run -> Run All Cells, through the menu bar."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def wait_all_executed(page, n_code_cells: int, timeout_ms: int) -> None:
    """Wait until every code cell shows an execution count ([n]) and none is running ([*])."""
    page.wait_for_function(
        """n => {
            const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
            const prompts = panel ? [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')] : [];
            return prompts.length === n && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
        }""", arg=n_code_cells, timeout=timeout_ms, polling=250)


def save_and_read(page, path: Path, timeout: float = 20.0) -> dict:
    """Save the open notebook (Ctrl+S) and return it as JupyterLab wrote it to disk."""
    before = path.stat().st_mtime_ns
    page.locator(f"{NOTEBOOK} .jp-Notebook").first.click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + timeout
    while path.stat().st_mtime_ns == before:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} was not saved within {timeout} s")
        time.sleep(0.2)
    time.sleep(0.5)  # let the write finish
    return json.loads(path.read_text(encoding="utf-8"))


def image_src(widget) -> str:
    """The src of the figure image inside a widget (a new blob URL each time the figure changes)."""
    return widget.locator("img").first.get_attribute("src") or ""


def image_loaded(widget) -> bool:
    return widget.locator("img").first.evaluate("img => img.complete && img.naturalWidth > 0")


def nudge_slider(page, widget, handle, timeout_ms: int = 10_000) -> tuple[str, float]:
    """Move one slider a step with the keyboard and wait for the figure to change.

    Returns (key pressed, seconds from the key press until the new image is loaded in the page)."""
    now, top = (float(handle.get_attribute(a) or 0) for a in ("aria-valuenow", "aria-valuemax"))
    key = "ArrowLeft" if now >= top else "ArrowRight"  # a slider at its maximum only moves left
    before = image_src(widget)
    handle.focus()
    start = time.perf_counter()
    page.keyboard.press(key)
    widget.locator("img").first.evaluate(
        """(img, [before, limit]) => new Promise((resolve, reject) => {
            const t0 = performance.now();
            const tick = () => {
                if (img.getAttribute('src') !== before && img.complete && img.naturalWidth > 0) return resolve();
                if (performance.now() - t0 > limit) return reject(new Error('the figure did not change'));
                requestAnimationFrame(tick);
            };
            tick();
        })""", [before, timeout_ms])
    return key, time.perf_counter() - start
