"""The static HTML edition (tools/build_html.py): a lora_teach widget's output keeps its PNG and loses only its
live widget view; outputs that are nothing but a widget (progress bars, bare sliders) are left out."""

import copy
import re
from pathlib import Path

import build_html
import nbformat
from nbformat.v4 import new_code_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parents[1]
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="  # 1x1


def _view(model_id: str) -> dict:
    return {"version_major": 2, "version_minor": 0, "model_id": model_id}


def _outputs():
    """A lora_teach widget (view + PNG + text), a progress bar and a bare slider (view + text), a stream."""
    return [
        new_output("display_data", data={"text/plain": "<LoRAUpdateViewer: rank=4>", "image/png": PNG,
                                          WIDGET_MIME: _view("a" * 32)}),
        new_output("display_data", data={"text/plain": "training:   0%|          | 0/150 [00:00<?, ?it/s]",
                                         WIDGET_MIME: _view("b" * 32)}),
        new_output("display_data", data={"text/plain": "IntSlider(value=4)", WIDGET_MIME: _view("c" * 32)}),
        new_output("stream", name="stdout", text="loss 1.234\n"),
    ]


def test_a_widget_keeps_its_png_and_loses_only_the_widget_view():
    widget, bar, slider, stream = _outputs()
    kept = build_html.static_output(widget)
    assert kept["data"] == {"text/plain": "<LoRAUpdateViewer: rank=4>", "image/png": PNG}
    assert WIDGET_MIME in widget["data"]  # the input is not changed
    assert build_html.static_output(bar) is None and build_html.static_output(slider) is None
    assert build_html.static_output(stream) is stream


def test_static_notebook_keeps_widget_figures_and_drops_widget_state():
    nb = new_notebook(cells=[new_code_cell("LoRAUpdateViewer()", outputs=_outputs())],
                      metadata={"widgets": {"application/vnd.jupyter.widget-state+json": {"state": {}}}})
    before = copy.deepcopy(nb)
    static = build_html.static_notebook(nb)
    assert nb == before  # a copy: the notebook itself is untouched
    assert "widgets" not in static.metadata
    (cell,) = static.cells
    assert [o.output_type for o in cell.outputs] == ["display_data", "stream"]
    assert cell.outputs[0]["data"]["image/png"] == PNG and WIDGET_MIME not in cell.outputs[0]["data"]


def test_the_html_page_shows_every_widgets_figure(tmp_path):
    """On the course's notebook 09 as committed: every image/png output, widget or not, is an <img> in the page."""
    path = ROOT / "notebooks" / "09_lora_in_practice.ipynb"
    nb = nbformat.read(path, as_version=4)
    pngs = [o["data"]["image/png"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
    widget_pngs = [o["data"]["image/png"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if WIDGET_MIME in o.get("data", {}) and "image/png" in o["data"]]
    assert len(widget_pngs) >= 2  # the update viewer and the memory calculator
    (page,) = build_html.build([path], tmp_path)
    text = page.read_text(encoding="utf-8")
    assert len(re.findall(r'<img[^>]*src="data:image/png;base64,', text)) == len(pngs)
    for png in widget_pngs:
        assert png.replace("\n", "")[:200] in text
    assert WIDGET_MIME not in text
