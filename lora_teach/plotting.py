"""One figure style for the whole course: a colour per method (Okabe-Ito, safe for colour-blind readers),
a line style per method so figures also read in grey-scale, and labelled axes."""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt

# Okabe & Ito (2008) palette; each method keeps its colour and line style in every plot of the course.
METHOD_STYLES = {
    "base": {"color": "#000000", "linestyle": ":"},
    "full": {"color": "#D55E00", "linestyle": "-"},
    "adapters": {"color": "#0072B2", "linestyle": "--"},
    "prefix": {"color": "#CC79A7", "linestyle": "-."},
    "prompt": {"color": "#E69F00", "linestyle": (0, (5, 1))},
    "p-tuning": {"color": "#56B4E9", "linestyle": (0, (3, 1, 1, 1, 1, 1))},
    "lora": {"color": "#009E73", "linestyle": "-"},
}
METHOD_LABELS = {
    "base": "base model", "full": "full fine-tuning", "adapters": "adapters", "prefix": "prefix tuning",
    "prompt": "prompt tuning", "p-tuning": "P-tuning", "lora": "LoRA",
}


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
    ax.legend()
    return ax
