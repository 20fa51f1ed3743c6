"""The widget notebooks in a real browser, and their static rendering.

In JupyterLab, driven by Playwright with headless Chromium: open each notebook (outputs cleared, as a student
would), run all cells, check there is no error output and no browser console error, that every lora_teach widget
renders its figure, and that moving each slider changes that figure. Without Chromium or playwright this test
skips (see conftest.py). The static test needs no browser: every widget output also carries a PNG, and
nbconvert's HTML (what nbviewer shows) contains it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from browser_lab import (
    NOTEBOOK,
    WIDGET,
    code_cell_count,
    fresh_copy,
    image_loaded,
    nudge_slider,
    run_all_cells,
    save_and_read,
    wait_all_executed,
    wait_kernel_idle,
)
from notebook_runner import execute, strip_figure_widget_state

from lora_teach.widgets import FigureWidget

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "test-results"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_CLASSES = sorted(cls.__name__ for cls in FigureWidget.__subclasses__())  # RankExplorer, MemoryCalculator...
COURSE = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def shows_widgets(path: Path) -> bool:
    """True if a code cell of the notebook builds one of the lora_teach widgets."""
    pattern = re.compile(r"\b(" + "|".join(WIDGET_CLASSES) + r")\(")
    return any(cell.cell_type == "code" and pattern.search(cell.source)
               for cell in nbformat.read(path, as_version=4).cells)


# Every notebook that shows lora_teach widgets: the demo (each widget once) and the course notebooks that build
# one (found by their source, so a notebook that gets a widget is driven here without editing this list)
WIDGET_NOTEBOOKS = [HERE / "widget_demo.ipynb", *(p for p in COURSE if shows_widgets(p))]
RUN_TIMEOUT_MS = 300_000  # a course notebook runs in 45 s on two quiet cores; shared CI machines are slower


def widget_outputs(nb: dict) -> list[tuple[int, dict]]:
    """(cell index, output) of every lora_teach widget output: a live widget view that carries a PNG too."""
    return [(i, out) for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "code"
            for out in cell.get("outputs", []) if WIDGET_VIEW in out.get("data", {}) and "image/png" in out["data"]]


@pytest.mark.browser
@pytest.mark.parametrize("notebook", WIDGET_NOTEBOOKS, ids=lambda p: p.name)
def test_widgets_render_and_respond_in_jupyterlab(notebook, lab, page):
    copy = fresh_copy(notebook, lab.root)
    page.goto(lab.notebook_url(copy.name))
    page.locator(f"{NOTEBOOK} .jp-Cell").first.wait_for(timeout=60_000)
    wait_kernel_idle(page)
    run_all_cells(page)
    wait_all_executed(page, code_cell_count(copy), RUN_TIMEOUT_MS)
    saved = save_and_read(page, copy)

    errors = [(i, out.get("ename"), out.get("evalue")) for i, cell in enumerate(saved["cells"])
              for out in cell.get("outputs", []) if out["output_type"] == "error"]
    assert not errors, f"error outputs (cell, exception, message): {errors}"
    expected = len(widget_outputs(saved))
    assert expected > 0, "the notebook displayed no lora_teach widget"
    widgets = page.locator(f"{NOTEBOOK} {WIDGET}")
    assert widgets.count() == expected
    assert page.locator(NOTEBOOK).get_by_text("Error displaying widget").count() == 0

    latencies = {}
    for i in range(expected):
        widget = widgets.nth(i)
        widget.scroll_into_view_if_needed()
        assert image_loaded(widget), f"widget {i} shows no figure"
        kind = next(c for c in (widget.get_attribute("class") or "").split() if c.startswith("lora-teach-")
                    and c != "lora-teach-widget")
        handles = widget.locator(".noUi-target:not([disabled]) .noUi-handle")
        for j in range(handles.count()):
            key, seconds = nudge_slider(page, widget, handles.nth(j))
            latencies[f"{kind} slider {j} ({key})"] = round(seconds, 3)

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"latency-{notebook.stem}.json").write_text(json.dumps(latencies, indent=1), encoding="utf-8")
    print(f"\n{notebook.name}: seconds from key press to new figure in the page: {latencies}")
    if page.offline_errors:
        print(f"ignored (no internet here): {page.offline_errors}")
    assert not page.console_errors, f"browser console errors: {page.console_errors}"


def has_outputs(nb) -> bool:
    return any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")


# the demo is committed without outputs: the static test executes it first (marked `notebooks`, about 45 s)
STATIC_CASES = [pytest.param(p, marks=() if has_outputs(nbformat.read(p, as_version=4)) else pytest.mark.notebooks)
                for p in WIDGET_NOTEBOOKS]


@pytest.mark.parametrize("notebook", STATIC_CASES, ids=lambda p: p.name)
def test_static_render_shows_a_figure_for_every_widget(notebook, tmp_path):
    nb = nbformat.read(notebook, as_version=4)
    if not has_outputs(nb):
        execute(nb, tmp_path)
        strip_figure_widget_state(nb)  # as tools/run_notebook.py does for the committed notebooks
    found = widget_outputs(nb)
    assert found, f"{notebook.name} shows no lora_teach widget"
    stored = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    for i, out in found:
        assert "nbval-ignore-output" in nb.cells[i].metadata.get("tags", []), f"cell {i}: tag nbval-ignore-output"
        # with saved widget state, nbconvert and GitHub would pick the widget view (which needs JavaScript)
        assert out["data"][WIDGET_VIEW]["model_id"] not in stored, f"cell {i}: saved widget state hides the PNG"

    from nbconvert import HTMLExporter

    html, _ = HTMLExporter().from_notebook_node(nb)
    for i, out in found:
        assert out["data"]["image/png"][:200] in html, f"cell {i}: the static HTML lacks the widget's figure"


def test_every_course_notebook_with_a_widget_output_is_driven_here():
    """A committed notebook whose outputs hold a lora_teach widget must be in WIDGET_NOTEBOOKS (needs no browser)."""
    with_outputs = [p.name for p in COURSE if widget_outputs(json.loads(p.read_text(encoding="utf-8")))]
    assert with_outputs, "no course notebook shows a lora_teach widget"
    assert set(with_outputs) <= {p.name for p in WIDGET_NOTEBOOKS}
    assert len(WIDGET_CLASSES) >= 4
