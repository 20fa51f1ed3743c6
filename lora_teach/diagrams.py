"""The course's LoRA diagrams, drawn with matplotlib (no image files): a layer before and after LoRA, and
LoRA inside an attention block. Frozen weights are grey, trainable ones green (the course's LoRA colour),
and every box is also labelled, so the figures read in grey-scale."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Polygon

from .plotting import METHOD_STYLES

FROZEN = {"facecolor": "#E6E6E6", "edgecolor": "#4D4D4D"}
TRAINABLE = {"facecolor": "#BFE6D6", "edgecolor": METHOD_STYLES["lora"]["color"]}
INK = "#1A1A1A"
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _box(ax, x, y, w, h, text, style, fontsize=11, **kw):
    """A rounded box centred at (x, y) with `text` inside."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                linewidth=1.6, **style, **kw))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, color=INK)


def _trapezoid(ax, x, y, w_bottom, w_top, h, text, style, fontsize=11):
    """A trapezoid centred at (x, y): a matrix that narrows (A: in -> r) or widens (B: r -> out)."""
    pts = [(x - w_bottom / 2, y - h / 2), (x + w_bottom / 2, y - h / 2), (x + w_top / 2, y + h / 2),
           (x - w_top / 2, y + h / 2)]
    ax.add_patch(Polygon(pts, closed=True, linewidth=1.6, joinstyle="round", **style))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, color=INK)


def _trapezoid_h(ax, x, y, h_left, h_right, w, text, style, fontsize=10):
    """A sideways trapezoid centred at (x, y), for left-to-right figures: tall side = more features."""
    pts = [(x - w / 2, y - h_left / 2), (x + w / 2, y - h_right / 2), (x + w / 2, y + h_right / 2),
           (x - w / 2, y + h_left / 2)]
    ax.add_patch(Polygon(pts, closed=True, linewidth=1.6, joinstyle="round", **style))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, color=INK)


def _arrow(ax, start, end, color=INK, style="-|>", lw=1.4, rad=0.0, **kw):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=14, color=color, linewidth=lw,
                                 shrinkA=0, shrinkB=0, connectionstyle=f"arc3,rad={rad}", **kw))


def _plus(ax, x, y, radius=0.17):
    ax.add_patch(Circle((x, y), radius, facecolor="white", edgecolor=INK, linewidth=1.4))
    ax.text(x, y, "+", ha="center", va="center", fontsize=14, color=INK)


def _legend(ax, x, y):
    """Two small swatches: frozen (grey) and trainable (green)."""
    for i, (style, label) in enumerate([(FROZEN, "frozen (pretrained)"), (TRAINABLE, "trainable (LoRA)")]):
        _box(ax, x + i * 3.0, y, 0.35, 0.22, "", style)
        ax.text(x + i * 3.0 + 0.28, y, label, ha="left", va="center", fontsize=9, color=INK)


def _canvas(ax, xlim, ylim, figsize):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")
    return ax.figure, ax


def draw_lora_layer(ax=None, r: int = 4):
    """Figure: an original linear layer (x -> W -> h) beside its LoRA version (h = W x + (alpha/r) B A x)."""
    fig, ax = _canvas(ax, (-0.2, 10.2), (-0.9, 6.3), figsize=(9.5, 5.6))
    # left: the original layer
    ax.text(1.6, 6.0, "Original layer", ha="center", fontsize=13, weight="bold", color=INK)
    ax.text(1.6, 0.0, "$x$  (in features)", ha="center", va="center", fontsize=12)
    _arrow(ax, (1.6, 0.25), (1.6, 1.6))
    _box(ax, 1.6, 2.6, 2.4, 2.0, "$W$\n(out × in)\npretrained", FROZEN)
    _arrow(ax, (1.6, 3.6), (1.6, 4.95))
    ax.text(1.6, 5.2, "$h = Wx$", ha="center", va="center", fontsize=12)
    ax.plot([3.75, 3.75], [-0.3, 6.0], color="#B3B3B3", linewidth=1, linestyle="--")
    # right: the LoRA-adapted layer
    ax.text(7.0, 6.0, "LoRA-adapted layer", ha="center", fontsize=13, weight="bold", color=INK)
    ax.text(7.0, -0.2, "$x$", ha="center", va="center", fontsize=12)
    _arrow(ax, (7.0, 0.0), (7.0, 0.35), style="-")
    ax.plot([5.4, 8.6], [0.35, 0.35], color=INK, linewidth=1.4)
    _arrow(ax, (5.4, 0.35), (5.4, 1.6))
    _arrow(ax, (8.6, 0.35), (8.6, 1.05))
    _box(ax, 5.4, 2.6, 2.2, 2.0, "$W$\n(out × in)\nfrozen", FROZEN)
    _trapezoid(ax, 8.6, 1.6, 2.0, 0.55, 1.1, "$A$", TRAINABLE)
    ax.text(9.75, 1.6, "(r × in)\ninit: random", ha="left", va="center", fontsize=9)
    _arrow(ax, (8.6, 2.15), (8.6, 2.5), color=TRAINABLE["edgecolor"])
    ax.text(8.85, 2.33, f"$r = {r}$", ha="left", va="center", fontsize=10, color=TRAINABLE["edgecolor"])
    _trapezoid(ax, 8.6, 3.05, 0.55, 2.0, 1.1, "$B$", TRAINABLE)
    ax.text(9.75, 3.05, "(out × r)\ninit: zeros", ha="left", va="center", fontsize=9)
    ax.text(8.6, 3.95, r"$\times\ \alpha / r$", ha="center", va="center", fontsize=12,
            color=TRAINABLE["edgecolor"])
    _plus(ax, 7.0, 4.6)
    _arrow(ax, (5.4, 3.6), (6.84, 4.52), rad=-0.25)
    _arrow(ax, (8.6, 4.15), (7.16, 4.52), rad=0.25)
    _arrow(ax, (7.0, 4.77), (7.0, 5.2))
    ax.text(7.0, 5.45, r"$h = Wx + \frac{\alpha}{r}\,BAx$", ha="center", va="center", fontsize=12)
    _legend(ax, 1.0, -0.75)
    return fig


def draw_lora_in_attention(ax=None, targets=("q_proj", "v_proj")):
    """Figure: one attention block, its q/k/v/o projections frozen, a trainable B A beside each target."""
    targets = tuple(targets)
    unknown = [t for t in targets if t not in ATTENTION_PROJECTIONS]
    if unknown:
        raise ValueError(f"targets {unknown} are not attention projections; choose from {ATTENTION_PROJECTIONS}")
    fig, ax = _canvas(ax, (-0.4, 12.6), (-1.0, 7.2), figsize=(10.5, 6.7))
    ax.text(6.1, 6.95, "LoRA inside attention", ha="center", fontsize=13, weight="bold", color=INK)
    ax.text(0.2, 3.2, "$x$\n(B, T, C)", ha="center", va="center", fontsize=11)
    rows = {"q_proj": (5.3, "$W_q$", "$Q$"), "k_proj": (3.2, "$W_k$", "$K$"), "v_proj": (1.1, "$W_v$", "$V$")}
    ax.plot([0.75, 0.95], [3.2, 3.2], color=INK, linewidth=1.4)
    ax.plot([0.95, 0.95], [1.1, 5.3], color=INK, linewidth=1.4)
    for name, (y, w_label, out_label) in rows.items():
        _arrow(ax, (0.95, y), (1.75, y))
        _box(ax, 2.45, y, 1.4, 0.9, f"{w_label}\n{name}", FROZEN, fontsize=10)
        end = 3.15
        if name in targets:
            _lora_branch(ax, y)
            end = 5.85
        _arrow(ax, (end, y), (7.1, y) if name != "k_proj" else (7.1, y))
        ax.text(6.75, y + 0.25, out_label, ha="center", va="bottom", fontsize=11)
    ax.add_patch(FancyBboxPatch((7.1, 0.55), 1.9, 5.3, boxstyle="round,pad=0.02,rounding_size=0.1",
                                facecolor="white", edgecolor="#4D4D4D", linewidth=1.6, linestyle="--"))
    ax.text(8.05, 3.2, "causal\nattention\n\n" + r"softmax$\left(\frac{QK^\top}{\sqrt{d_h}}\right)V$",
            ha="center", va="center", fontsize=10)
    _arrow(ax, (9.0, 3.2), (9.6, 3.2))
    _box(ax, 10.3, 3.2, 1.4, 0.9, "$W_o$\no_proj", FROZEN, fontsize=10)
    if "o_proj" in targets:
        ax.text(10.3, 2.45, "+ B A (LoRA)", ha="center", va="top", fontsize=9, color=TRAINABLE["edgecolor"])
    _arrow(ax, (11.0, 3.2), (11.7, 3.2))
    ax.text(12.15, 3.2, "out", ha="center", va="center", fontsize=11)
    names = " and ".join([", ".join(targets[:-1]), targets[-1]] if len(targets) > 1 else list(targets))
    ax.text(6.1, -0.8, f"LoRA on {names}: {len(targets)} of 4 projections; only their A and B train",
            ha="center", va="center", fontsize=10, color=INK)
    _legend(ax, 0.0, 6.6)
    return fig


def _lora_branch(ax, y):
    """A small B A branch beside a projection at height y, summed into its output."""
    green = TRAINABLE["edgecolor"]
    _plus(ax, 5.6, y, radius=0.2)
    _arrow(ax, (3.15, y), (5.4, y))
    ax.plot([1.35, 1.35], [y, y - 0.85], color=green, linewidth=1.4)
    _arrow(ax, (1.35, y - 0.85), (3.35, y - 0.85), color=green)
    _trapezoid_h(ax, 3.7, y - 0.85, 0.7, 0.3, 0.7, "$A$", TRAINABLE)
    _arrow(ax, (4.05, y - 0.85), (4.3, y - 0.85), color=green)
    _trapezoid_h(ax, 4.65, y - 0.85, 0.3, 0.7, 0.7, "$B$", TRAINABLE)
    _arrow(ax, (5.0, y - 0.85), (5.6, y - 0.2), color=green, rad=0.35)
    ax.text(4.2, y - 1.35, r"$\times\,\alpha/r$", ha="center", va="center", fontsize=10, color=green)
