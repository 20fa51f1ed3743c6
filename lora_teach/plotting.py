"""One figure style for the whole course, readable by everyone: projected in a lecture hall, printed in grey-scale,
seen by a colour-blind reader, or heard through a screen reader.

Styles. Every method keeps a colour (Okabe & Ito's palette, safe for colour-blind readers), a marker AND a line
style in every plot (`METHOD_STYLE`, `method_style`), so no two methods differ by colour alone; runs of one method
get the same three cues (`run_styles`). `use_course_style` sets fonts of at least 12 pt at 100 dpi (a 6.4-inch
figure is 640 pixels wide, its text 17 pixels high). Signed matrices use `DIVERGING`, a map whose lightness grows
from the most negative value to the most positive, so the sign still reads in grey-scale (zero is the neutral
grey in the middle), and `signed_colorbar` writes the sign on every tick. Also the course's rules: legends beside
the axes (`legend_outside`) or names written at the end of each line (`label_lines`); a chance line on every
accuracy plot (`chance_line`); log axes with plain ticks (`readable_log_axis`); a classification run's accuracy
beside its label loss (`plot_classification`).

Descriptions. Every figure is shown with `show_figure(fig, "One sentence on what it shows.")` (a widget describes
itself, see lora_teach.widgets). Where the sentence goes, and who reads it:

- the PNG output's metadata, `{"image/png": {"alt": sentence}}` (nbformat allows any metadata there). nbconvert's
  lab template writes no `alt` of its own (its exporter then fills every bare <img> with "No description has been
  provided for this image"); tools/build_html.py, the HTML edition, writes this one as the <img>'s `alt`.
- a caption output right under the figure, "*Figure:* sentence" as Markdown. JupyterLab 4 draws an image output
  as a bare <img> without `alt` or `title` (its image renderer reads only width, height, needs_background and
  unconfined), so there a screen reader reaches the description as this text, the next thing after the figure.
  nbconvert and myst-nb show the caption too (as a paragraph).
- the cell's metadata, `{"mystnb": {"image": {"alt": sentence}}}`: myst-nb, which builds the site, takes an
  image's `alt` from these cell-level render options only (not from the output's metadata). `sync_descriptions`
  copies every described output's sentence there (joined by a space if a cell shows several figures); run it on a
  notebook after executing it: `python -m lora_teach.plotting notebooks/NN_x.ipynb`.

`figure_descriptions` and `undescribed_figures` read them back, for the tests and the editions. Checked with
nbconvert 7.17 (tools/build_html.py: every figure's <img> has its sentence as `alt`), myst-nb 1.4 in Sphinx (the
<img> gets the cell's alt, the caption follows as a paragraph) and JupyterLab 4.6 in Chromium (the accessibility
tree reads the image, then the caption paragraph).
"""

from __future__ import annotations

import base64
import io
import math
import re
import sys
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

# Okabe & Ito (2008) palette, with two colours from Paul Tol's colour-blind safe "muted" set where Okabe-Ito has
# none left. Each method keeps its colour, marker and line style in every plot of the course; every pair of methods
# differs in its marker and in its line style, so a grey-scale print or a colour-blind reader loses nothing.
METHOD_STYLE = {
    "base": {"color": "#000000", "linestyle": ":", "marker": ""},  # a reference line: no marker
    "full": {"color": "#D55E00", "linestyle": (0, (7, 2)), "marker": "s"},
    "adapters": {"color": "#0072B2", "linestyle": "-.", "marker": "^"},
    "prefix": {"color": "#CC79A7", "linestyle": (0, (3, 1, 1, 1, 1, 1)), "marker": "v"},
    "prompt": {"color": "#E69F00", "linestyle": (0, (1, 1)), "marker": "D"},
    "p-tuning": {"color": "#56B4E9", "linestyle": (0, (5, 1, 1, 1)), "marker": "P"},
    "lora": {"color": "#009E73", "linestyle": "-", "marker": "o"},
    "lora-all": {"color": "#117733", "linestyle": (0, (3, 1.5)), "marker": "X"},
    "qlora": {"color": "#999933", "linestyle": (0, (6, 1, 2, 1)), "marker": "h"},
    "dora": {"color": "#882255", "linestyle": (0, (9, 2, 1, 2)), "marker": "*"},
}
METHOD_LABELS = {
    "base": "base model", "full": "full fine-tuning", "adapters": "adapters", "prefix": "prefix tuning",
    "prompt": "prompt tuning", "p-tuning": "P-tuning", "lora": "LoRA", "lora-all": "LoRA, all linear layers",
    "qlora": "QLoRA", "dora": "DoRA",
}
CHANCE_STYLE = {"color": "#777777", "linestyle": (0, (1, 3)), "linewidth": 1.5}  # loosely dotted grey

# for figures that compare several runs of ONE method (settings, seeds): Paul Tol's colour-blind safe "muted" set,
# each colour with its own line style and marker (run_styles)
RUN_COLOURS = ("#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255", "#AA4499")
RUN_LINESTYLES = ("-", (0, (6, 2)), "-.", (0, (1, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (8, 2, 2, 2)), (0, (2, 2)),
                  (0, (5, 1, 1, 1)), (0, (10, 3)))
RUN_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h", "*")

# signed matrices: lightness grows monotonically from negative (dark blue) through zero (neutral grey) to positive
# (light yellow), so the sign survives grey-scale; cividis is Nunez, Anderton & Renslow (2018), made for
# colour-vision deficiency. Red-blue maps (RdBu, bwr, coolwarm, seismic...) are as dark at -1 as at +1.
DIVERGING = "cividis"

FIGURE_DPI = 100  # inline figures: 640 pixels for the default 6.4 inches, sharp on a projector
FONT_SIZES = {"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "xtick.labelsize": 12,
              "ytick.labelsize": 12, "legend.fontsize": 12, "legend.title_fontsize": 12, "figure.titlesize": 14}
MIN_FONT_PT = 12


def run_colours(n: int) -> list[str]:
    """`n` distinct colours for `n` runs in one figure (at most len(RUN_COLOURS)); prefer `run_styles`."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= len(RUN_COLOURS):
        raise ValueError(f"n must be an int from 1 to {len(RUN_COLOURS)}, got {n!r}")
    return list(RUN_COLOURS[:n])


def run_styles(n: int) -> list[dict]:
    """`n` styles (color, linestyle, marker) for `n` runs in one figure, each pair different in all three cues."""
    return [{"color": colour, "linestyle": RUN_LINESTYLES[i], "marker": RUN_MARKERS[i]}
            for i, colour in enumerate(run_colours(n))]


def use_course_style() -> None:
    """Apply the course's matplotlib defaults: fonts of 12 pt or more at 100 dpi, a grid, the method palette."""
    mpl.rcParams.update({
        "figure.figsize": (6.4, 3.6),
        "figure.dpi": FIGURE_DPI,
        "savefig.dpi": "figure",
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.prop_cycle": mpl.cycler(color=[s["color"] for k, s in METHOD_STYLE.items() if k != "base"]),
        "lines.linewidth": 2.0,
        "lines.markersize": 7.0,
        "legend.frameon": False,
        **FONT_SIZES,
    })


def method_style(method: str) -> dict:
    """Keyword arguments (color, linestyle, marker, label) for plotting `method`."""
    if method not in METHOD_STYLE:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHOD_STYLE)}")
    return {**METHOD_STYLE[method], "label": METHOD_LABELS[method]}


def curve_style(method: str, markers: int = 8) -> dict:
    """method_style for a long curve (one point per step): about `markers` markers along it, not one per step."""
    return {**method_style(method), "markevery": 1.0 / max(1, markers)}


def plot_losses(histories: dict, ax=None, smooth: int = 10, eval_key: str | None = None):
    """Training loss curves of {method: History}, smoothed by a running mean over `smooth` steps.

    With `eval_key`, the recorded evaluations of that metric are drawn as markers on the same axes."""
    ax = ax or plt.subplots()[1]
    for method, hist in histories.items():
        style = curve_style(method)
        ax.plot(hist.steps, running_mean(hist.loss, max(1, min(smooth, len(hist.loss)))), **style)
        if eval_key and hist.evals:
            steps, values = hist.eval_series(eval_key)
            ax.plot(steps, values, marker=style["marker"] or "o", color=style["color"], linestyle="none",
                    markerfacecolor="white", label=f"{style['label']}: validation {eval_key}")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (nats per character)")
    legend_outside(ax)
    return ax


def running_mean(values, window: int) -> list[float]:
    """The mean of each value and the `window - 1` before it (fewer at the start)."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    values = list(values)
    return [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
            for i in range(len(values))]


def legend_outside(ax, **kw):
    """A legend beside the axes, on the right, so it never hides a curve; None when nothing is labelled."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kw)


def label_lines(ax, lines=None, **text_kw) -> list:
    """Write each labelled line's name in its colour just right of the axes, at the height where the line ends,
    nudged apart so no two names overlap: the reader needs no legend where lines cross. Made for lines that end
    apart (where they all end at one point, a legend says more). Call it after the axes' limits are final.
    Returns the Text artists."""
    lines = [line for line in (ax.get_lines() if lines is None else lines)
             if not line.get_label().startswith("_") and len(line.get_ydata())]
    if not lines:
        return []
    ax.figure.canvas.draw_idle()
    to_axes = ax.transAxes.inverted()
    x_ref = ax.get_xlim()[0]
    ends = []
    for line in lines:
        ys = [y for y in line.get_ydata() if y == y]  # finite values only (NaN != NaN)
        if not ys:
            continue
        y = to_axes.transform(ax.transData.transform((x_ref, ys[-1])))[1]
        ends.append([min(max(y, 0.0), 1.0), line])
    size = text_kw.pop("fontsize", mpl.rcParams["legend.fontsize"])
    height_pt = ax.get_position().height * ax.figure.get_figheight() * 72
    gap = 1.25 * mpl.font_manager.FontProperties(size=size).get_size_in_points() / max(height_pt, 1.0)
    ends.sort(key=lambda e: e[0])
    for i in range(1, len(ends)):  # push each name up until it clears the one below it
        ends[i][0] = max(ends[i][0], ends[i - 1][0] + gap)
    overflow = ends[-1][0] - 1.0
    if overflow > 0:  # then shift the whole column down, keeping the gaps
        for e in ends:
            e[0] -= overflow
    return [ax.text(1.02, y, line.get_label(), transform=ax.transAxes, color=line.get_color(), va="center",
                    ha="left", fontsize=size, clip_on=False, **text_kw) for y, line in ends]


def chance_line(ax, chance: float, label: str | None = None):
    """A loosely dotted grey horizontal line at the accuracy of guessing, labelled on the axes and in the legend."""
    if isinstance(chance, bool) or not isinstance(chance, (int, float)) or not 0 <= chance <= 1:
        raise ValueError(f"chance must be an accuracy between 0 and 1, got {chance!r}")
    line = ax.axhline(chance, **CHANCE_STYLE, label=label or f"chance ({chance:.2f})")
    ax.annotate("chance", xy=(1.0, chance), xycoords=("axes fraction", "data"), xytext=(-2, 3),
                textcoords="offset points", ha="right", va="bottom", fontsize=MIN_FONT_PT, color="#555555")
    return line


def _plain_number(value: float, _pos=None) -> str:
    """A tick label without mathtext exponents: 0.001, 0.03, 1, 300, 1e+05 only for the very large or small."""
    if value == 0:
        return "0"
    if 1e-4 <= abs(value) < 1e5:
        return f"{value:g}"
    return f"{value:.0e}"


def _signed_number(value: float, _pos=None) -> str:
    """A colour-bar tick with its sign written out: -0.02, 0, +0.02."""
    if value == 0:
        return "0"
    return ("+" if value > 0 else "\N{MINUS SIGN}") + _plain_number(abs(value))


def signed_colorbar(fig, mappable, ax=None, label: str | None = None, **kw):
    """A colour bar for a signed matrix drawn with DIVERGING: every tick carries its sign, and the bar's ends say
    which side is negative and which positive (darker: below zero; lighter: above)."""
    bar = fig.colorbar(mappable, ax=ax, **kw)
    bar.formatter = FuncFormatter(_signed_number)
    bar.update_ticks()
    if label:
        bar.set_label(label)
    return bar


def readable_log_axis(ax, axis: str = "x", subs=(1.0, 3.0)):
    """Log scale on `axis` with ticks at 1 and 3 times each power of ten, written as plain numbers."""
    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_locator(LogLocator(base=10, subs=subs))
    target.set_major_formatter(FuncFormatter(_plain_number))
    target.set_minor_formatter(NullFormatter())
    return ax


def plot_classification(histories: dict, chance: float, start: dict | None = None, axes=None,
                        smooth: int = 5, labels: dict | None = None, decision_loss: bool = False):
    """Two panels for classification runs of {method: History} trained with `eval_every`: validation accuracy
    (with the chance line) on the left, the label loss on the right (training: running mean, line; validation:
    open markers). With `decision_loss=True` a third panel: the validation decision loss (the cross-entropy over
    the labels alone) with a line at ln(1 / chance), a model that gives every label the same probability.
    `start` = the base model's task.evaluate(...) is drawn at step 0. `labels` overrides the legend names, e.g.
    {"adapters": "Houlsby adapters"}. Returns the axes (two, or three with the decision loss)."""
    if axes is None:
        panels = 3 if decision_loss else 2
        fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.8), constrained_layout=True)
    ax_acc, ax_loss = axes[:2]
    for method, hist in histories.items():
        if not hist.evals:
            raise ValueError(f"the history of {method!r} has no evaluations: train it with eval_every=...")
        style = method_style(method)
        if labels and method in labels:
            style["label"] = labels[method]
        steps, acc = hist.eval_series("accuracy")
        _, val_loss = hist.eval_series("label_loss")
        if start is not None:
            steps, acc, val_loss = [0, *steps], [start["accuracy"], *acc], [start["label_loss"], *val_loss]
        ax_acc.plot(steps, acc, **style)
        ax_loss.plot(hist.steps, running_mean(hist.loss, smooth), alpha=0.7, color=style["color"],
                     linestyle=style["linestyle"], label=f"{style['label']}, training")
        ax_loss.plot(steps, val_loss, marker=style["marker"] or "o", markerfacecolor="white", color=style["color"],
                     linestyle="none", label=f"{style['label']}, validation")
        if decision_loss:
            decision = hist.eval_series("decision_loss")[1]
            if start is not None:
                decision = [start["decision_loss"], *decision]
            axes[2].plot(steps, decision, **style)
    chance_line(ax_acc, chance)
    ax_acc.set_ylim(0, 1)
    ax_acc.set_xlabel("training step")
    ax_acc.set_ylabel("validation accuracy")
    ax_loss.set_xlabel("training step")
    ax_loss.set_ylabel("label loss (nats per character)")
    if decision_loss:  # three panels: the legends go below and inside, not beside
        ax_loss.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=MIN_FONT_PT)
        uniform = math.log(1 / chance)
        axes[2].axhline(uniform, **CHANCE_STYLE, label=f"equal probabilities, ln {round(1 / chance)} = {uniform:.3f}")
        axes[2].legend(loc="best", fontsize=MIN_FONT_PT)
        axes[2].set_xlabel("training step")
        axes[2].set_ylabel("validation decision loss (nats)")
    else:
        legend_outside(ax_loss)
    return axes


# ------------------------------------------------------------------------------------------------ descriptions
ALT_KEY = "alt"  # output.metadata["image/png"]["alt"]
CAPTION_PREFIX = "*Figure:* "
_NEXT_SENTENCE = re.compile(r"[.!?]\s+[A-Z]")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>$#|])")


def check_description(description) -> str:
    """The description, stripped, if it is one sentence of 20 to 400 characters ending in a full stop."""
    if not isinstance(description, str):
        raise TypeError(f"a figure's description must be a str (one sentence), got {type(description).__name__}")
    text = " ".join(description.split())
    if not 20 <= len(text) <= 400:
        raise ValueError(f"a figure's description must be one sentence of 20 to 400 characters, got {len(text)}: "
                         f"{text!r}")
    if not text.endswith("."):
        raise ValueError(f"a figure's description must be one sentence ending in a full stop: {text!r}")
    if _NEXT_SENTENCE.search(text[:-1]):
        raise ValueError(f"a figure's description must be ONE sentence (it reads as several): {text!r}")
    return text


def caption_markdown(description: str) -> str:
    """The visible caption line under a figure: '*Figure:* ' and the description, Markdown-escaped."""
    return CAPTION_PREFIX + _MARKDOWN_SPECIAL.sub(r"\\\1", check_description(description))


def caption_bundle(description: str) -> dict:
    """The caption as a display bundle: Markdown for renderers that show it, plain text for the others."""
    return {"text/markdown": caption_markdown(description), "text/plain": f"Figure: {check_description(description)}"}


def png_bytes(fig, dpi: float | None = None) -> bytes:
    """The figure as a compact PNG: drawn at `dpi` (the figure's own by default), cropped to what is drawn,
    reduced to a palette of 256 colours (a third of the bytes; plots have few colours)."""
    from PIL import Image as PILImage

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi, bbox_inches="tight", facecolor="white")
    image = PILImage.open(io.BytesIO(buf.getvalue())).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=256, method=PILImage.Quantize.MEDIANCUT).save(out, format="png", optimize=True)
    return out.getvalue()


def _figure_of(fig):
    """A Figure from a Figure, an Axes, or an array or list of Axes."""
    if isinstance(fig, mpl.figure.Figure):
        return fig
    if isinstance(fig, mpl.axes.Axes):
        return fig.figure
    flat = getattr(fig, "flat", fig)
    try:
        first = next(iter(flat))
    except (TypeError, StopIteration):
        first = None
    if isinstance(first, mpl.axes.Axes):
        return first.figure
    raise TypeError(f"show_figure needs a matplotlib Figure or Axes, got {type(fig).__name__}")


def figure_bundle(fig, description: str) -> tuple[dict, dict]:
    """(data, metadata) of a figure's display output: its PNG, a text form, and the description as `alt`."""
    description = check_description(description)
    data = {"image/png": base64.b64encode(png_bytes(_figure_of(fig))).decode("ascii"),
            "text/plain": f"<Figure: {description}>"}
    return data, {"image/png": {ALT_KEY: description}}


def show_figure(fig, description: str) -> None:
    """Show `fig` (a Figure or its Axes) with a one-sentence `description`: the PNG carries it as its `alt`
    and a caption line under the figure shows it; the figure is then closed (so it is not shown twice)."""
    from IPython.display import display

    description = check_description(description)  # before anything is shown or closed
    figure = _figure_of(fig)
    data, metadata = figure_bundle(figure, description)
    display(data, raw=True, metadata=metadata)
    display(caption_bundle(description), raw=True)
    plt.close(figure)


def output_description(output) -> str | None:
    """The description an image output carries (metadata image/png alt), or None."""
    meta = output.get("metadata", {}).get("image/png", {})
    return meta.get(ALT_KEY) if isinstance(meta, dict) else None


def is_caption(output) -> bool:
    return output.get("output_type") == "display_data" and \
        str(output.get("data", {}).get("text/markdown", "")).startswith(CAPTION_PREFIX)


def figure_descriptions(cell) -> list[str | None]:
    """The description of each image output of a code cell, in order (None where one has none)."""
    return [output_description(o) for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]


def undescribed_figures(nb) -> list[str]:
    """What is missing, one line per figure of a notebook (a dict or NotebookNode): an image output without a
    valid description, without the caption right after it, or a cell whose myst-nb alt is not its descriptions."""
    problems = []
    for i, cell in enumerate(nb["cells"]):
        if cell.get("cell_type") != "code":
            continue
        outputs = cell.get("outputs", [])
        for j, out in enumerate(outputs):
            if "image/png" not in out.get("data", {}):
                continue
            text = output_description(out)
            try:
                check_description(text)
            except (TypeError, ValueError) as err:
                problems.append(f"cell {i}, output {j}: no valid description ({err})")
                continue
            following = outputs[j + 1] if j + 1 < len(outputs) else {}
            if not is_caption(following) or following["data"]["text/markdown"] != caption_markdown(text):
                problems.append(f"cell {i}, output {j}: no caption line with its description right after it")
        described = [d for d in figure_descriptions(cell) if d]
        if described and _cell_alt(cell) != " ".join(described):
            problems.append(f"cell {i}: cell metadata mystnb.image.alt is not the figure's description "
                            "(run python -m lora_teach.plotting on the notebook)")
    return problems


def _cell_alt(cell) -> str | None:
    return cell.get("metadata", {}).get("mystnb", {}).get("image", {}).get(ALT_KEY)


def sync_descriptions(nb) -> int:
    """Copy each code cell's figure descriptions into its metadata mystnb.image.alt (where myst-nb reads an
    image's alt), and drop a stale one from a cell without figures; returns how many cells changed."""
    changed = 0
    for cell in nb["cells"]:
        if cell.get("cell_type") != "code":
            continue
        described = [d for d in figure_descriptions(cell) if d]
        alt = " ".join(described) if described else None
        if _cell_alt(cell) == alt:
            continue
        meta = cell.setdefault("metadata", {})
        if alt is None:
            image = meta.get("mystnb", {}).get("image", {})
            image.pop(ALT_KEY, None)
            if not image:
                meta.get("mystnb", {}).pop("image", None)
            if not meta.get("mystnb", True):
                meta.pop("mystnb")
        else:
            meta.setdefault("mystnb", {}).setdefault("image", {})[ALT_KEY] = alt
        changed += 1
    return changed


def main(argv=None) -> int:
    """python -m lora_teach.plotting NOTEBOOK...: copy the figure descriptions into the cells' myst-nb metadata."""
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        print("usage: python -m lora_teach.plotting NOTEBOOK.ipynb...", file=sys.stderr)
        return 2
    import nbformat

    for path in paths:
        nb = nbformat.read(path, as_version=4)
        changed = sync_descriptions(nb)
        if changed:
            nbformat.write(nb, path)
        missing = undescribed_figures(nb)
        print(f"{path.name}: {changed} cell(s) updated" + (f"; {len(missing)} problem(s):" if missing else ""))
        for line in missing:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
