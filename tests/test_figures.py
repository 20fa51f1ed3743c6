"""Figures everyone can read (lora_teach.plotting): no two methods differ by colour alone, signed colour maps keep
their sign in grey-scale, text is large enough to project, and every figure in every course notebook carries a
one-sentence description that screen readers reach (the PNG's alt metadata, a caption line under it, the cell's
myst-nb alt), which the HTML edition writes into its <img> tags."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib as mpl  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from nbformat.v4 import new_code_cell, new_notebook, new_output  # noqa: E402

from lora_teach import plotting  # noqa: E402
from lora_teach.methods import METHODS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="  # 1x1


# ------------------------------------------------------------------------------------ colour is never alone
def dash_pattern(linestyle) -> tuple:
    """A line style as its dash sequence in points (() for a solid line), so "--" and (0, (3.7, 1.6)) compare."""
    named = {"-": (), "solid": (), "--": mpl.rcParams["lines.dashed_pattern"], "dashed": mpl.rcParams[
        "lines.dashed_pattern"], "-.": mpl.rcParams["lines.dashdot_pattern"], "dashdot": mpl.rcParams[
        "lines.dashdot_pattern"], ":": mpl.rcParams["lines.dotted_pattern"], "dotted": mpl.rcParams[
        "lines.dotted_pattern"], "none": None, "": None, " ": None, "None": None}
    if isinstance(linestyle, str):
        pattern = named[linestyle]
        return None if pattern is None else tuple(float(x) for x in pattern)
    _offset, seq = linestyle
    return tuple(float(x) for x in seq)


def differ_by_colour_alone(a: dict, b: dict) -> bool:
    """True if two styles share their marker and their line style: only the colour tells them apart."""
    return (a.get("marker") or "") == (b.get("marker") or "") and \
        dash_pattern(a.get("linestyle", "-")) == dash_pattern(b.get("linestyle", "-"))


def test_every_method_has_a_colour_a_marker_and_a_line_style():
    assert set(METHODS) <= set(plotting.METHOD_STYLE)
    for method in METHODS:
        style = plotting.method_style(method)
        assert style["marker"], f"{method} has no marker"
        assert dash_pattern(style["linestyle"]) is not None, f"{method} has no line"
        assert mpl.colors.is_color_like(style["color"]) and style["label"]
    colours = [s["color"] for s in plotting.METHOD_STYLE.values()]
    assert len(set(colours)) == len(colours)


def test_no_two_methods_differ_by_colour_alone():
    pairs = [(a, b) for a, b in itertools.combinations(plotting.METHOD_STYLE, 2)
             if differ_by_colour_alone(plotting.METHOD_STYLE[a], plotting.METHOD_STYLE[b])]
    assert not pairs, f"these methods differ by colour alone: {pairs}"
    markers = [s["marker"] for m, s in plotting.METHOD_STYLE.items() if s["marker"]]
    assert len(set(markers)) == len(markers), "two methods share a marker"


def test_runs_of_one_method_differ_by_more_than_colour():
    styles = plotting.run_styles(len(plotting.RUN_COLOURS))
    for a, b in itertools.combinations(styles, 2):
        assert not differ_by_colour_alone(a, b)
        assert a["marker"] != b["marker"] and dash_pattern(a["linestyle"]) != dash_pattern(b["linestyle"])
    with pytest.raises(ValueError, match="n must be an int from 1 to"):
        plotting.run_styles(0)


def test_the_colour_alone_check_can_fail():
    # the course's old styles: full fine-tuning and LoRA both solid lines without markers
    assert differ_by_colour_alone({"color": "#D55E00", "linestyle": "-"}, {"color": "#009E73", "linestyle": "-"})
    assert differ_by_colour_alone({"linestyle": "--"}, {"linestyle": (0, mpl.rcParams["lines.dashed_pattern"])})
    assert not differ_by_colour_alone({"linestyle": "-", "marker": "o"}, {"linestyle": "-", "marker": "s"})


def test_curves_drawn_by_the_package_keep_each_methods_marker_and_line():
    from lora_teach.training import History

    hist = History(steps=list(range(1, 101)), loss=[2.0 - 0.01 * i for i in range(100)],
                   evals=[(50, {"loss": 1.5}), (100, {"loss": 1.2})])
    ax = plotting.plot_losses({"full": hist, "lora": hist}, eval_key="loss")
    try:
        lines = {line.get_label(): line for line in ax.get_lines()}
        full, lora = lines["full fine-tuning"], lines["LoRA"]
        assert full.get_marker() == "s" and lora.get_marker() == "o"
        assert full.get_linestyle() != lora.get_linestyle()
        assert full.get_markevery() is not None  # about eight markers along 100 steps, not one per step
    finally:
        plt.close(ax.figure)


def test_label_lines_names_each_line_without_overlap():
    fig, ax = plt.subplots()
    try:
        for i, method in enumerate(["full", "lora", "adapters"]):
            ax.plot([0, 1], [1.0, 1.0 + 0.001 * i], **plotting.method_style(method))  # three ends almost together
        ax.set_ylim(0, 2)
        texts = plotting.label_lines(ax)
        assert sorted(t.get_text() for t in texts) == ["LoRA", "adapters", "full fine-tuning"]
        fig.canvas.draw()
        boxes = [t.get_window_extent() for t in texts]
        assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
        assert {t.get_color() for t in texts} == {plotting.method_style(m)["color"] for m in ["full", "lora",
                                                                                             "adapters"]}
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------- grey-scale maps
def grey_levels(cmap, n: int = 64) -> np.ndarray:
    """The relative luminance (Rec. 709, linear light) of `n` colours along a colour map: its grey-scale print."""
    rgb = mpl.colormaps[cmap](np.linspace(0, 1, n))[:, :3] if isinstance(cmap, str) else cmap(np.linspace(0, 1, n))[
        :, :3]
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return linear @ np.array([0.2126, 0.7152, 0.0722])


def sign_reads_in_grey(cmap) -> bool:
    """True if lightness rises strictly from one end of the map to the other: below zero is darker than zero,
    above it lighter, so a grey-scale print still tells the sign."""
    return bool(np.all(np.diff(grey_levels(cmap)) > 0))


def test_the_signed_colour_maps_keep_the_sign_in_grey_scale():
    from lora_teach import widgets

    assert sign_reads_in_grey(plotting.DIVERGING)
    assert widgets.DIVERGING == plotting.DIVERGING
    levels = grey_levels(plotting.DIVERGING)
    assert levels[-1] - levels[0] > 0.5  # a wide range of greys, not a faint ramp


@pytest.mark.parametrize("cmap", ["RdBu_r", "bwr", "coolwarm", "seismic", "PuOr"])
def test_the_grey_scale_check_can_fail(cmap):
    assert not sign_reads_in_grey(cmap)  # the usual diverging maps are as dark at -1 as at +1


RED_BLUE = re.compile(r"""cmap\s*=\s*["'](RdBu|bwr|coolwarm|seismic|PiYG|PRGn|BrBG|PuOr|RdGy|RdYlBu|RdYlGn|"""
                      r"""Spectral)(_r)?["']""")


@pytest.mark.parametrize("path", [*sorted((ROOT / "lora_teach").glob("*.py")), *NOTEBOOKS], ids=lambda p: p.name)
def test_no_figure_uses_a_map_that_loses_the_sign_in_grey_scale(path):
    if path.suffix == ".ipynb":
        text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    else:
        text = path.read_text(encoding="utf-8")
    found = [m.group(0) for m in RED_BLUE.finditer(text)]
    assert not found, f"{path.name} uses {found}: use lora_teach.plotting.DIVERGING (reads in grey-scale)"


def test_signed_colorbar_writes_the_sign_on_its_ticks():
    fig, ax = plt.subplots()
    try:
        im = ax.imshow(np.linspace(-1, 1, 16).reshape(4, 4), cmap=plotting.DIVERGING, vmin=-1, vmax=1)
        bar = plotting.signed_colorbar(fig, im, ax=ax)
        fig.canvas.draw()
        labels = [t.get_text() for t in bar.ax.get_yticklabels() if t.get_text()]
        assert "0" in labels and any(t.startswith("+") for t in labels) and any(t.startswith("\N{MINUS SIGN}")
                                                                                for t in labels)
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------------------- large enough text
def test_the_course_style_sets_fonts_of_12_points_or_more_at_100_dpi():
    with mpl.rc_context():
        plotting.use_course_style()
        assert mpl.rcParams["figure.dpi"] >= 100
        for key in plotting.FONT_SIZES:
            size = mpl.font_manager.FontProperties(size=mpl.rcParams[key]).get_size_in_points()
            assert size >= 12, f"{key} is {size} pt"


def visible_text_sizes(fig) -> list[tuple[str, float]]:
    fig.canvas.draw()
    return [(t.get_text(), t.get_fontsize()) for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


@pytest.mark.parametrize("make", [
    pytest.param(lambda W: W.RankExplorer({"m": np.random.default_rng(0).normal(size=(12, 10))}, rank=3),
                 id="RankExplorer"),
    pytest.param(lambda W: W.MemoryCalculator("gpt2"), id="MemoryCalculator"),
    pytest.param(lambda W: W.TrainingDashboard("lora"), id="TrainingDashboard"),
])
def test_widget_figures_use_no_text_under_12_points(make):
    from lora_teach import widgets as W

    widget = make(W)
    small = [(text, size) for text, size in visible_text_sizes(widget.figure) if size < 12]
    assert not small, f"text under 12 pt: {small}"


FONTSIZE = re.compile(r"\b(?:fontsize|labelsize|size)\s*=\s*(\d+(?:\.\d+)?)")


@pytest.mark.parametrize("path", [ROOT / "lora_teach" / "widgets.py", ROOT / "lora_teach" / "plotting.py",
                                  *NOTEBOOKS[:11]], ids=lambda p: p.name)
def test_no_figure_code_asks_for_text_under_12_points(path):
    if path.suffix == ".ipynb":
        text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    else:
        text = path.read_text(encoding="utf-8")
    small = [m.group(0) for m in FONTSIZE.finditer(text) if float(m.group(1)) < 12]
    assert not small, f"{path.name}: {small}"


# ------------------------------------------------------------------------------------------- descriptions
def _figure_notebook(alt=None, caption=True, cell_alt=None) -> nbformat.NotebookNode:
    outputs = [new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"},
                          metadata={"image/png": {"alt": alt}} if alt else {})]
    if caption and alt:
        outputs.append(new_output("display_data", data=plotting.caption_bundle(alt)))
    cell = new_code_cell("show_figure(fig, ...)", outputs=outputs)
    if cell_alt:
        cell.metadata["mystnb"] = {"image": {"alt": cell_alt}}
    return new_notebook(cells=[cell])


SENTENCE = "A line of the validation loss against the training step, falling from 2.2 to 1.6."


def test_a_described_figure_passes_and_each_missing_piece_is_named():
    assert plotting.undescribed_figures(_figure_notebook(SENTENCE, cell_alt=SENTENCE)) == []
    (problem,) = plotting.undescribed_figures(_figure_notebook())
    assert "no valid description" in problem
    (problem,) = plotting.undescribed_figures(_figure_notebook(SENTENCE, caption=False, cell_alt=SENTENCE))
    assert "no caption line" in problem
    (problem,) = plotting.undescribed_figures(_figure_notebook(SENTENCE))
    assert "mystnb.image.alt" in problem
    nb = _figure_notebook(SENTENCE)
    assert plotting.sync_descriptions(nb) == 1 and plotting.undescribed_figures(nb) == []
    assert nb.cells[0].metadata["mystnb"]["image"]["alt"] == SENTENCE
    assert plotting.sync_descriptions(nb) == 0


@pytest.mark.parametrize("bad, message", [
    (None, "must be a str"), ("", "20 to 400 characters"), ("A line without a full stop at its end", "full stop"),
    ("A first sentence about the plot. A second one that should not be here.", "ONE sentence"),
    ("x" * 401 + ".", "20 to 400 characters"),
])
def test_bad_descriptions_are_refused_with_the_rule(bad, message):
    with pytest.raises((TypeError, ValueError), match=message):
        plotting.check_description(bad)


def test_show_figure_sends_the_png_with_its_alt_then_the_caption_and_closes_the_figure(monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: shown.append((obj, kw)))
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4], **plotting.method_style("lora"))
    with pytest.raises(ValueError, match="full stop"):
        plotting.show_figure(fig, "no full stop here at all")
    assert plt.fignum_exists(fig.number) and not shown  # refused before anything was shown or closed
    plotting.show_figure(ax, SENTENCE)
    (figure, kw), (caption, kw2) = shown
    assert figure["image/png"] and kw["metadata"] == {"image/png": {"alt": SENTENCE}} and kw["raw"]
    assert caption["text/markdown"] == "*Figure:* " + SENTENCE and kw2["raw"]
    assert not plt.fignum_exists(fig.number)


def _hidden(widget) -> str:
    """The text of a widget's visually hidden live region (what a screen reader announces)."""
    import html

    region = widget.live_description.value
    assert 'aria-live="polite"' in region and widget.ui.children[0] is widget.live_description
    return html.unescape(re.sub(r"<[^>]+>", "", region)).removeprefix("Figure: ")


def test_a_widget_output_carries_its_description_and_caption(monkeypatch):
    import IPython.display

    from lora_teach import widgets as W

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: shown.append((obj, kw)))
    calc = W.MemoryCalculator("gpt2")
    calc._ipython_display_()
    (bundle, kw), (caption, _) = shown
    assert "application/vnd.jupyter.widget-view+json" in bundle and bundle["image/png"]
    assert kw["metadata"]["image/png"]["alt"] == calc.description == _hidden(calc)
    assert caption["text/markdown"] == plotting.caption_markdown(calc.description)
    before = calc.description
    calc.r.value = 64
    assert calc.description != before and _hidden(calc) == calc.description  # the live region follows


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_figure_in_the_notebook_has_a_description(path):
    """Reads the committed outputs (nothing runs): each PNG has its alt, its caption and its cell's myst-nb alt."""
    problems = plotting.undescribed_figures(nbformat.read(path, as_version=4))
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS[:11], ids=lambda p: p.name)
def test_figures_stay_small_files(path):
    sizes = [len(o["data"]["image/png"]) * 3 // 4 for c in nbformat.read(path, as_version=4).cells
             if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert all(size < 150_000 for size in sizes), f"{path.name}: PNG sizes {sizes}"


# ---------------------------------------------------------------------------------------- the HTML edition
def test_the_html_edition_writes_each_description_as_the_images_alt():
    import build_html

    nb = _figure_notebook('A bar chart of "quoted" <values> by layer type, largest first.')
    nb.cells.append(new_code_cell("plt.show()", outputs=[new_output("display_data", data={"image/png": PNG})]))
    body, _ = build_html.html_exporter().from_notebook_node(build_html.static_notebook(nb))
    alts = re.findall(r'<img[^>]*\balt=("[^"]*"|\'[^\']*\')', body)
    assert len(alts) == 2
    assert "&lt;values&gt;" in alts[0] and "quoted" in alts[0]  # escaped, so it cannot break the page
    assert alts[1] == '"No description has been provided for this image"'  # what nbconvert says without one
    assert "Figure:" in body  # the visible caption


def test_the_html_page_of_a_course_notebook_describes_every_figure(tmp_path):
    import build_html

    path = ROOT / "notebooks" / "09_lora_in_practice.ipynb"
    (page,) = build_html.build([path], tmp_path)
    text = page.read_text(encoding="utf-8")
    images = re.findall(r"<img[^>]*>", text)
    assert images and not [i for i in images if "No description" in i or "alt=" not in i]
