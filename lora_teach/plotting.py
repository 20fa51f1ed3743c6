"""One figure style for the whole course: a colour per method (Okabe-Ito, safe for colour-blind readers),
a line style per method so figures also read in grey-scale, and labelled axes. Also the course's figure rules
in one place: legends beside the axes, never over the curves (`legend_outside`); a chance line on every accuracy
plot (`chance_line`); log axes with plain, readable ticks (`readable_log_axis`); and a classification run's
accuracy beside its label loss (`plot_classification`)."""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

# Okabe & Ito (2008) palette; each method keeps its colour and line style in every plot of the course.
METHOD_STYLES = {
    "base": {"color": "#000000", "linestyle": ":"},
    "full": {"color": "#D55E00", "linestyle": "-"},
    "adapters": {"color": "#0072B2", "linestyle": "--"},
    "prefix": {"color": "#CC79A7", "linestyle": "-."},
    "prompt": {"color": "#E69F00", "linestyle": (0, (5, 1))},
    "p-tuning": {"color": "#56B4E9", "linestyle": (0, (3, 1, 1, 1, 1, 1))},
    "lora": {"color": "#009E73", "linestyle": "-"},
    # two LoRA variants, from Paul Tol's colour-blind safe "muted" palette (Okabe-Ito has no colour left)
    "qlora": {"color": "#999933", "linestyle": (0, (6, 2))},
    "dora": {"color": "#882255", "linestyle": (0, (1, 1.5))},
}
METHOD_LABELS = {
    "base": "base model", "full": "full fine-tuning", "adapters": "adapters", "prefix": "prefix tuning",
    "prompt": "prompt tuning", "p-tuning": "P-tuning", "lora": "LoRA",
    "qlora": "QLoRA", "dora": "DoRA",
}


# for figures that compare several runs of ONE method (settings, seeds): Paul Tol's colour-blind safe "muted" set
RUN_COLOURS = ("#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255", "#AA4499")


def run_colours(n: int) -> list[str]:
    """`n` distinct colours for `n` runs in one figure (at most len(RUN_COLOURS))."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= len(RUN_COLOURS):
        raise ValueError(f"n must be an int from 1 to {len(RUN_COLOURS)}, got {n!r}")
    return list(RUN_COLOURS[:n])


def use_course_style() -> None:
    """Apply the course's matplotlib defaults (sizes, grid, a colour-blind safe cycle)."""
    mpl.rcParams.update({
        "figure.figsize": (6.4, 3.6),
        "figure.dpi": 90,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.prop_cycle": mpl.cycler(color=[s["color"] for k, s in METHOD_STYLES.items() if k != "base"]),
        "font.size": 10,
        "legend.frameon": False,
    })


def method_style(method: str) -> dict:
    """Keyword arguments (color, linestyle, label) for plotting `method`."""
    if method not in METHOD_STYLES:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHOD_STYLES)}")
    return {**METHOD_STYLES[method], "label": METHOD_LABELS[method]}


def plot_losses(histories: dict, ax=None, smooth: int = 10, eval_key: str | None = None):
    """Training loss curves of {method: History}, smoothed by a running mean over `smooth` steps.

    With `eval_key`, the recorded evaluations of that metric are drawn as markers on the same axes."""
    ax = ax or plt.subplots()[1]
    for method, hist in histories.items():
        style = method_style(method)
        loss = hist.loss
        k = max(1, min(smooth, len(loss)))
        smoothed = [sum(loss[max(0, i - k + 1):i + 1]) / len(loss[max(0, i - k + 1):i + 1]) for i in range(len(loss))]
        ax.plot(hist.steps, smoothed, **style)
        if eval_key and hist.evals:
            steps, values = hist.eval_series(eval_key)
            ax.plot(steps, values, marker="o", color=style["color"], linestyle="none")
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


def chance_line(ax, chance: float, label: str | None = None):
    """A dotted horizontal line at the accuracy of guessing, labelled on the axes and in the legend."""
    if isinstance(chance, bool) or not isinstance(chance, (int, float)) or not 0 <= chance <= 1:
        raise ValueError(f"chance must be an accuracy between 0 and 1, got {chance!r}")
    line = ax.axhline(chance, color="#777777", linestyle=":", linewidth=1.2, label=label or f"chance ({chance:.2f})")
    ax.annotate("chance", xy=(1.0, chance), xycoords=("axes fraction", "data"), xytext=(-2, 3),
                textcoords="offset points", ha="right", va="bottom", fontsize=8, color="#555555")
    return line


def _plain_number(value: float, _pos=None) -> str:
    """A tick label without mathtext exponents: 0.001, 0.03, 1, 300, 1e+05 only for the very large or small."""
    if value == 0:
        return "0"
    if 1e-4 <= abs(value) < 1e5:
        return f"{value:g}"
    return f"{value:.0e}"


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
                        smooth: int = 5, labels: dict | None = None):
    """Two panels for classification runs of {method: History} trained with `eval_every`: validation accuracy
    (with the chance line) on the left, the label loss on the right (training: running mean, line; validation:
    markers). `start` = the base model's task.evaluate(...) is drawn at step 0. `labels` overrides the legend
    names, e.g. {"adapters": "Houlsby adapters"}. Returns the two axes."""
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.4), constrained_layout=True)
    ax_acc, ax_loss = axes
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
        ax_acc.plot(steps, acc, marker="o", markersize=4, **style)
        ax_loss.plot(hist.steps, running_mean(hist.loss, smooth), alpha=0.6, color=style["color"],
                     linestyle=style["linestyle"], label=f"{style['label']}, training")
        ax_loss.plot(steps, val_loss, marker="o", markersize=4, color=style["color"], linestyle="none",
                     label=f"{style['label']}, validation")
    chance_line(ax_acc, chance)
    ax_acc.set_ylim(0, 1)
    ax_acc.set_xlabel("training step")
    ax_acc.set_ylabel("validation accuracy")
    ax_loss.set_xlabel("training step")
    ax_loss.set_ylabel("label loss (nats per character)")
    legend_outside(ax_loss, fontsize=8)
    return axes
