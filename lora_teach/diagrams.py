"""The course's method diagrams, drawn with matplotlib (no image files): a schematic of every method (full
fine-tuning, adapters, prefix tuning, prompt tuning, P-tuning, LoRA, the Hugging Face export, QLoRA, DoRA and
serving several adapters) in one visual language. Frozen weights are grey, trained parts take the method's
course colour (`lora_teach.plotting.method_style`), and every box is also labelled, so the figures read in
grey-scale. Every box carries a gid, "frozen" or "trainable:<method>"."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.colors import to_rgb
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Polygon

from .plotting import METHOD_STYLE, method_style

FROZEN = {"facecolor": "#E6E6E6", "edgecolor": "#4D4D4D", "role": "frozen"}
TRAINABLE = {"facecolor": "#BFE6D6", "edgecolor": METHOD_STYLE["lora"]["color"], "role": "trainable:lora"}
INK = "#1A1A1A"
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _patch_kw(style: dict) -> dict:
    """Patch keywords from a box style: its colours, and its role ("frozen", "trainable:<method>") as the gid."""
    kw = {k: v for k, v in style.items() if k != "role"}
    return {**kw, "gid": style.get("role")}


def _check_counts(**counts) -> None:
    for name, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _box(ax, x, y, w, h, text, style, fontsize=11, **kw):
    """A rounded box centred at (x, y) with `text` inside."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                linewidth=1.6, **_patch_kw(style), **kw))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, color=INK)


def _trapezoid(ax, x, y, w_bottom, w_top, h, text, style, fontsize=11):
    """A trapezoid centred at (x, y): a matrix that narrows (A: in -> r) or widens (B: r -> out)."""
    pts = [(x - w_bottom / 2, y - h / 2), (x + w_bottom / 2, y - h / 2), (x + w_top / 2, y + h / 2),
           (x - w_top / 2, y + h / 2)]
    ax.add_patch(Polygon(pts, closed=True, linewidth=1.6, joinstyle="round", **_patch_kw(style)))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, color=INK)


def _trapezoid_h(ax, x, y, h_left, h_right, w, text, style, fontsize=10):
    """A sideways trapezoid centred at (x, y), for left-to-right figures: tall side = more features."""
    pts = [(x - w / 2, y - h_left / 2), (x + w / 2, y - h_right / 2), (x + w / 2, y + h_right / 2),
           (x - w / 2, y + h_left / 2)]
    ax.add_patch(Polygon(pts, closed=True, linewidth=1.6, joinstyle="round", **_patch_kw(style)))
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


# ---------------------------------------------------------------------------------------------------------------
# One schematic per method, in the same visual language: frozen parts grey, trained parts in the method's colour
# (lora_teach.plotting.method_style), every box labelled. Each patch carries a gid, "frozen" or "trainable:<method>",
# so a test (or a curious reader) can ask which parts of a figure train.
# ---------------------------------------------------------------------------------------------------------------

BLOCK_PARTS = ("embed", "ln", "attn", "mlp", "head")


def trained_style(method: str) -> dict:
    """Box style of a trained part of `method`: its course colour as the edge, a light tint of it as the fill."""
    color = method_style(method)["color"]
    rgb = to_rgb(color)
    tint = tuple(0.72 + 0.28 * c for c in rgb)  # mixed with white: readable text on top, still the method's hue
    return {"facecolor": tint, "edgecolor": color, "role": f"trainable:{method}"}


def _part(ax, x, y, w, h, text, method=None, fontsize=10, **kw):
    """A labelled box: frozen (grey) when `method` is None, else trained in that method's colour."""
    _box(ax, x, y, w, h, text, FROZEN if method is None else trained_style(method), fontsize=fontsize, **kw)


def _title(ax, x, y, text, size=13):
    ax.text(x, y, text, ha="center", va="center", fontsize=size, weight="bold", color=INK)


def _note(ax, x, y, text, color=INK, size=9.5, ha="center", **kw):
    ax.text(x, y, text, ha=ha, va="center", fontsize=size, color=color, **kw)


def _method_legend(ax, x, y, method, trained_text=None, frozen_text="frozen (pretrained)"):
    """Two swatches: frozen (grey) and trained (the method's colour)."""
    _box(ax, x, y, 0.35, 0.22, "", FROZEN)
    ax.text(x + 0.28, y, frozen_text, ha="left", va="center", fontsize=9, color=INK)
    _box(ax, x + 3.4, y, 0.35, 0.22, "", trained_style(method))
    ax.text(x + 3.68, y, trained_text or f"trained ({method_style(method)['label']})", ha="left", va="center",
            fontsize=9, color=INK)


def _block(ax, cx, y, trained=(), method=None, adapters=(), title=None, width=2.6):
    """A pre-norm transformer block drawn upwards from `y`: LN, attention, (adapter), add, LN, MLP, (adapter),
    add. Parts named in `trained` ("ln", "attn", "mlp") and every adapter are drawn in `method`'s colour.
    Returns the y of the block's output."""
    m = method if trained or adapters else None
    style = {part: (m if part in trained else None) for part in ("ln", "attn", "mlp")}
    res_x = cx - width / 2 - 0.45
    if title:
        _note(ax, cx, y + 8.45, title, size=11, weight="bold")
    ax.plot([cx, cx], [y, y + 0.65], color=INK, linewidth=1.4)
    sublayers = ((y, "attn", "attention\n$W_q$ $W_k$ $W_v$ $W_o$"), (y + 3.7, "mlp", "MLP\n(up, GELU, down)"))
    for low, sublayer, label in sublayers:
        ln_label = "LN$_1$" if sublayer == "attn" else "LN$_2$"
        ax.plot([cx, res_x, res_x], [low + 0.3, low + 0.3, low + 3.4], color=INK, linewidth=1.4)  # residual path
        _arrow(ax, (res_x, low + 3.4), (cx - 0.2, low + 3.4))
        _arrow(ax, (cx, low + 0.3), (cx, low + 0.7))
        _part(ax, cx, low + 0.95, width * 0.6, 0.5, ln_label, style["ln"])
        _arrow(ax, (cx, low + 1.2), (cx, low + 1.45))
        _part(ax, cx, low + 1.85, width, 0.8, label, style[sublayer])
        if sublayer in adapters:
            _arrow(ax, (cx, low + 2.25), (cx, low + 2.5))
            _part(ax, cx, low + 2.8, width * 0.75, 0.55, "adapter", method, fontsize=10)
            _arrow(ax, (cx, low + 3.08), (cx, low + 3.2))
        else:
            _arrow(ax, (cx, low + 2.25), (cx, low + 3.2))
        _plus(ax, cx, low + 3.4, radius=0.2)
        ax.plot([cx, cx], [low + 3.6, low + 3.7 + (0.3 if sublayer == "attn" else 0.0)], color=INK, linewidth=1.4)
    _arrow(ax, (cx, y + 7.3), (cx, y + 7.7))
    return y + 7.7


def draw_full_fine_tuning(ax=None):
    """Figure: every weight of the model trains: embeddings, each block's layer norms, attention and MLP, the head."""
    fig, ax = _canvas(ax, (-0.5, 9.5), (-2.9, 10.2), figsize=(6.6, 8.6))
    _title(ax, 4.5, 9.95, "Full fine-tuning: every weight trains")
    _part(ax, 3.0, -1.1, 4.2, 0.6, "token + position embeddings", "full")
    _note(ax, 3.0, -1.95, "$x$ (characters)", size=11)
    _arrow(ax, (3.0, -0.8), (3.0, 0.0))
    top = _block(ax, 3.0, 0.0, trained=("ln", "attn", "mlp"), method="full")
    _part(ax, 3.0, top + 0.45, 3.6, 0.7, "final LN + LM head", "full")
    _note(ax, 3.0, top + 1.25, "next-character logits", size=10)
    ax.plot([5.0, 5.25, 5.25, 5.0], [0.05, 0.05, 7.65, 7.65], color=INK, linewidth=1.2)
    _note(ax, 5.4, 3.85, "× L blocks\n(all trained)", ha="left", size=10)
    _note(ax, 7.4, 1.6, "per trained weight:\n+ a gradient\n+ two AdamW moments\n(16 bytes in fp32)", size=9.5)
    _note(ax, 7.4, 6.0, "per task:\na whole new copy\nof the model", size=9.5)
    _method_legend(ax, 1.0, -2.7, "full", trained_text="trained (full fine-tuning)")
    return fig


def draw_adapters(ax=None):
    """Figure: Houlsby placement (an adapter after attention and after the MLP) beside Pfeiffer placement (one,
    after the MLP), and the bottleneck inside an adapter. Adapters and layer norms train; the rest is frozen."""
    fig, ax = _canvas(ax, (-0.6, 14.4), (-1.5, 10.0), figsize=(11.5, 8.3))
    _title(ax, 6.9, 9.7, "Adapters: small bottlenecks inside each frozen block")
    for cx, placement, adapters in ((2.2, "Houlsby", ("attn", "mlp")), (6.6, "Pfeiffer", ("mlp",))):
        _note(ax, cx, -0.35, "$x$", size=11)
        _arrow(ax, (cx, -0.15), (cx, 0.0), style="-")
        _block(ax, cx, 0.0, trained=("ln",), method="adapters", adapters=adapters,
               title=f"{placement}: {len(adapters)} per block")
    # the bottleneck, enlarged
    bx = 11.6
    _note(ax, bx, 8.45, "inside one adapter", size=11, weight="bold")
    _note(ax, bx, 1.0, "$y$ (a sublayer's output, $d$ features)", size=9.5)
    ax.plot([bx, bx], [1.25, 1.6], color=INK, linewidth=1.4)
    ax.plot([bx, bx + 1.9, bx + 1.9], [1.6, 1.6, 6.6], color=INK, linewidth=1.4)  # the adapter's own skip
    _arrow(ax, (bx + 1.9, 6.6), (bx + 0.2, 6.8))
    _note(ax, bx + 2.05, 4.0, "skip", ha="left", size=9)
    _arrow(ax, (bx, 1.6), (bx, 2.0))
    _trapezoid(ax, bx, 2.6, 2.4, 0.8, 1.1, "$W_\\mathrm{down}$\n$d \\to m$", trained_style("adapters"), fontsize=10)
    _arrow(ax, (bx, 3.15), (bx, 3.6))
    _box(ax, bx, 3.95, 1.2, 0.55, "GELU", {"facecolor": "white", "edgecolor": "#4D4D4D"}, fontsize=10)
    _arrow(ax, (bx, 4.25), (bx, 4.7))
    _trapezoid(ax, bx, 5.3, 0.8, 2.4, 1.1, "$W_\\mathrm{up}$\n$m \\to d$\n(starts at 0)", trained_style("adapters"),
               fontsize=9)
    _arrow(ax, (bx, 5.85), (bx, 6.6))
    _plus(ax, bx, 6.8, radius=0.2)
    _arrow(ax, (bx, 7.0), (bx, 7.4))
    _note(ax, bx, 7.65, r"$y + W_\mathrm{up}\,\mathrm{GELU}(W_\mathrm{down}\,y)$", size=10)
    _note(ax, 6.9, -1.0, "In this course both placements also train the layer norms (Houlsby et al. did; "
          "AdapterHub's Pfeiffer config does not).", size=9.5)
    _method_legend(ax, 0.2, 9.1, "adapters", trained_text="trained (adapters, layer norms)")
    return fig


def draw_prefix_tuning(ax=None, n_layer: int = 4, prefix_len: int = 3):
    """Figure: trained key and value vectors prepended at every attention layer of a frozen model, and the MLP
    that writes them during training only."""
    _check_counts(n_layer=n_layer, prefix_len=prefix_len)
    rows = min(n_layer, 4)
    fig, ax = _canvas(ax, (-0.5, 13.5), (-1.6, 2.0 * rows + 1.9), figsize=(10.5, 1.5 * rows + 3.0))
    _title(ax, 6.5, 2.0 * rows + 1.55, "Prefix tuning: trained keys and values at every layer")
    _note(ax, 3.0, -0.75, "$x_1 \\ldots x_T$ (real characters, embedded by the frozen model)", size=10)
    _arrow(ax, (3.0, -0.5), (3.0, 0.2))
    for i in range(rows):
        y = 0.8 + 2.0 * i
        layer = i + 1 if i < rows - 1 or rows == n_layer else n_layer
        _part(ax, 3.0, y, 4.2, 1.1, f"block {layer}: attention + MLP\n"
              f"$K = [P_k^{{{layer}}};\\ W_k x]$,  $V = [P_v^{{{layer}}};\\ W_v x]$", fontsize=9.5)
        _part(ax, 7.3, y, 1.9, 0.9, f"$P_k^{{{layer}}}, P_v^{{{layer}}}$\n({prefix_len} slots)", "prefix",
              fontsize=9.5)
        _arrow(ax, (6.35, y), (5.1, y), color=method_style("prefix")["color"])
        if i < rows - 1:
            _arrow(ax, (3.0, y + 0.55), (3.0, y + 1.45))
    if rows < n_layer:
        _note(ax, 0.35, 0.8 + 2.0 * (rows - 1.5), f"⋮ ({n_layer} layers)", size=10)
    _arrow(ax, (3.0, 0.8 + 2.0 * (rows - 1) + 0.55), (3.0, 2.0 * rows + 0.6))
    _note(ax, 3.0, 2.0 * rows + 0.85, "next-character logits", size=10)
    # the reparameterisation
    mx = 11.2
    ax.add_patch(FancyBboxPatch((mx - 1.9, 0.2), 3.8, 2.0 * rows - 0.2, boxstyle="round,pad=0.02,rounding_size=0.1",
                                facecolor="white", edgecolor=method_style("prefix")["color"], linewidth=1.4,
                                linestyle="--"))
    _note(ax, mx, 2.0 * rows - 0.1, "during training only", size=9.5, color=method_style("prefix")["color"])
    _part(ax, mx, 1.2, 2.6, 0.7, "$P'$ (slots × $d$)", "prefix", fontsize=10)
    _arrow(ax, (mx, 1.55), (mx, 2.2))
    _part(ax, mx, 2.8, 2.6, 1.1, "MLP\nLinear, tanh, Linear\n→ $2 L d$ per slot", "prefix", fontsize=9.5)
    _arrow(ax, (mx - 1.3, 2.8), (8.25, 0.8 + 2.0 * (rows - 1)), color=method_style("prefix")["color"], rad=0.2)
    _note(ax, mx, 2.0 * rows - 1.1, "afterwards: only\n$2 \\cdot L \\cdot P \\cdot d$ numbers kept", size=9.5)
    _method_legend(ax, 0.3, -1.4, "prefix")
    return fig


def _token_row(ax, y, tokens, width=0.9, gap=0.12, x0=0.0):
    """Cells in a row from x0: tokens are (text, method or None); returns the cells' x centres."""
    xs = []
    for i, (text, method) in enumerate(tokens):
        x = x0 + i * (width + gap) + width / 2
        _part(ax, x, y, width, 0.7, text, method, fontsize=10)
        xs.append(x)
    return xs


def draw_prompt_tuning(ax=None, n_prompt: int = 4):
    """Figure: a trained soft prompt in front of the input embeddings; every layer of the model is frozen."""
    _check_counts(n_prompt=n_prompt)
    shown = min(n_prompt, 5)
    tokens = [(f"$p_{{{i + 1}}}$", "prompt") for i in range(shown)] + [(f"$e(x_{{{i + 1}}})$", None) for i in range(5)]
    width = len(tokens) * 1.02
    fig, ax = _canvas(ax, (-0.5, width + 0.5), (-1.7, 5.6), figsize=(9.5, 5.2))
    _title(ax, width / 2, 5.3, "Prompt tuning: a trained soft prompt at the input only")
    xs = _token_row(ax, 0.0, tokens)
    _note(ax, (xs[0] + xs[shown - 1]) / 2, -0.75, f"soft prompt ({n_prompt} vectors of $d$ numbers)", size=9.5,
          color=method_style("prompt")["color"])
    _note(ax, (xs[shown] + xs[-1]) / 2, -0.75, "embeddings of the real characters", size=9.5)
    for x in xs:
        _arrow(ax, (x, 0.35), (x, 1.0))
    _part(ax, width / 2 - 0.05, 2.0, width - 0.3, 1.9, "frozen transformer: every block, attention, MLP, layer norm\n"
          "(the soft prompt is seen as if it were the first tokens)", fontsize=10)
    _arrow(ax, (width / 2, 2.95), (width / 2, 3.6))
    _note(ax, width / 2, 3.9, "next-character logits (the loss ignores the prompt's positions)", size=10)
    _method_legend(ax, 0.1, -1.45, "prompt")
    return fig


def draw_p_tuning(ax=None):
    """Figure: P-tuning's template (virtual tokens between parts of the input) and the prompt encoder (BiLSTM,
    then MLP) that writes the virtual tokens during training."""
    tokens = [("$h_0$", "p-tuning"), ("$h_1$", "p-tuning"), ("$e(x_1)$", None), ("…", None), ("$e(x_T)$", None),
              ("$h_2$", "p-tuning"), ("=>", None), ("label", None)]
    width = len(tokens) * 1.17
    fig, ax = _canvas(ax, (-0.5, width + 0.5), (-4.6, 5.6), figsize=(9.5, 7.4))
    _title(ax, width / 2, 5.3, "P-tuning: virtual tokens in a template, written by a prompt encoder")
    xs = _token_row(ax, 0.0, tokens, width=1.05)
    _note(ax, width / 2, 0.72, "template: $[h_0\\ h_1]$  passage  $[h_2]$  =>  label", size=10)
    for x in xs:
        _arrow(ax, (x, 1.0), (x, 1.45))
    _part(ax, width / 2 - 0.05, 2.3, width - 0.3, 1.5, "frozen transformer (every block)\n"
          "$h_2$ comes after the passage, so it can attend to it", fontsize=10)
    _arrow(ax, (width / 2, 3.1), (width / 2, 3.6))
    _note(ax, width / 2, 3.9, "next-character logits; loss on the label", size=10)
    # the encoder, below the template
    color = method_style("p-tuning")["color"]
    ax.add_patch(FancyBboxPatch((0.1, -4.1), 4.6, 3.0, boxstyle="round,pad=0.02,rounding_size=0.1",
                                facecolor="white", edgecolor=color, linewidth=1.4, linestyle="--"))
    _note(ax, 2.4, -4.4, "prompt encoder (during training only)", size=9.5, color=color)
    _part(ax, 2.4, -3.55, 3.8, 0.6, "trainable inputs $e_0, e_1, e_2$", "p-tuning", fontsize=10)
    _arrow(ax, (2.4, -3.25), (2.4, -2.95))
    _part(ax, 2.4, -2.6, 3.8, 0.6, "bidirectional LSTM", "p-tuning", fontsize=10)
    _arrow(ax, (2.4, -2.3), (2.4, -2.05))
    _part(ax, 2.4, -1.7, 3.8, 0.6, "MLP → $h_0, h_1, h_2$", "p-tuning", fontsize=10)
    for x in (xs[0], xs[1], xs[5]):
        _arrow(ax, (x if x < 4.0 else 4.3, -1.4), (x, -0.35), color=color, rad=0.0)
    _note(ax, width - 2.3, -2.5, "afterwards only the three\nvectors $h_0, h_1, h_2$ are kept", size=9.5)
    _method_legend(ax, 5.3, -3.6, "p-tuning")
    return fig


HF_NAMES = (("wte", "embed_tokens"), ("wpe", "embed_positions (offset 2)"), ("ln_1", "self_attn_layer_norm"),
            ("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"), ("o_proj", "out_proj"),
            ("ln_2", "final_layer_norm"), ("up_proj", "fc1"), ("down_proj", "fc2"),
            ("ln_f", "decoder.final_layer_norm"),
            ("lm_head", "lm_head"))


def draw_hf_export(ax=None, targets=("q_proj", "v_proj")):
    """Figure: the course GPT's module names beside OPT's (transformers), the PEFT LoRA targets marked, and GPT-2's
    fused c_attn for contrast."""
    targets = tuple(targets)
    names = [hf for _, hf in HF_NAMES]
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise ValueError(f"targets {unknown} are not OPT module names; choose from {names}")
    n = len(HF_NAMES)
    fig, ax = _canvas(ax, (-0.5, 14.0), (-2.2, 0.75 * n + 1.6), figsize=(11.0, 0.55 * n + 3.0))
    top = 0.75 * n
    _title(ax, 6.7, top + 1.25, "The course GPT as a Hugging Face model, and PEFT LoRA on it")
    _note(ax, 1.8, top + 0.45, "course GPT (lora_teach)", size=10.5, weight="bold")
    _note(ax, 6.6, top + 0.45, "OPTForCausalLM (transformers)", size=10.5, weight="bold")
    lora = trained_style("lora")
    for i, (ours, hf) in enumerate(HF_NAMES):
        y = top - 0.75 * i - 0.2
        _part(ax, 1.8, y, 2.8, 0.55, ours, fontsize=10)
        _arrow(ax, (3.25, y), (4.75, y))
        _part(ax, 6.6, y, 3.6, 0.55, hf, fontsize=10)
        if hf in targets:
            _trapezoid_h(ax, 9.05, y, 0.5, 0.22, 0.55, "$A$", lora, fontsize=9)
            _trapezoid_h(ax, 9.7, y, 0.22, 0.5, 0.55, "$B$", lora, fontsize=9)
    _note(ax, 11.9, top - 2.4, "PEFT LoRA:\nLoraConfig(r=8,\n  target_modules=\n  " +
          repr(list(targets)).replace("'", '"') + ")\nfile keys like\n…self_attn.q_proj.lora_A.weight",
          size=9.5, color=lora["edgecolor"])
    _part(ax, 11.9, top - 6.3, 3.6, 1.6, "GPT-2 instead fuses\n$W_q, W_k, W_v$ in one c_attn\n"
          "(Conv1D, stored in × out:\nfan_in_fan_out=True)", fontsize=9)
    _note(ax, 6.7, -1.05, "same weights, same logits: only the names (and OPT's position offset of 2) change",
          size=9.5)
    _method_legend(ax, 0.3, -1.8, "lora", trained_text="trained (PEFT LoRA)")
    return fig


def draw_qlora(ax=None):
    """Figure: QLoRA's frozen 4-bit base weight, dequantised block by block in each forward pass, beside 16-bit
    LoRA matrices A and B that train."""
    fig, ax = _canvas(ax, (-0.4, 12.6), (-1.6, 6.6), figsize=(10.5, 6.2))
    _title(ax, 6.1, 6.3, "QLoRA: a 4-bit frozen base, 16-bit LoRA on top")
    _note(ax, 0.3, 2.6, "$x$", size=12)
    ax.plot([0.55, 0.9], [2.6, 2.6], color=INK, linewidth=1.4)
    ax.plot([0.9, 0.9], [1.0, 4.4], color=INK, linewidth=1.4)
    # the frozen, quantised path
    _arrow(ax, (0.9, 4.4), (1.6, 4.4))
    _box(ax, 2.75, 4.4, 2.2, 1.1, "", FROZEN, hatch="////")
    _note(ax, 2.75, 4.4, "$W$ in 4-bit NF4\n+ one absmax per\nblock of 64", size=9.5,
          bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5})
    _arrow(ax, (3.85, 4.4), (4.5, 4.4))
    _box(ax, 5.65, 4.4, 2.2, 1.1, "dequantise\n(in every forward\npass, no gradient)", {"facecolor": "white",
         "edgecolor": "#4D4D4D", "role": "frozen"}, fontsize=9.5)
    _arrow(ax, (6.75, 4.4), (7.4, 4.4))
    _box(ax, 8.4, 4.4, 1.9, 1.1, "$\\tilde W x$\n(16-bit\ncompute)", FROZEN, fontsize=9.5)
    _arrow(ax, (9.35, 4.4), (10.4, 2.8))
    # the trained LoRA path
    green = trained_style("qlora")
    _arrow(ax, (0.9, 1.0), (2.2, 1.0), color=green["edgecolor"])
    _trapezoid_h(ax, 2.9, 1.0, 1.2, 0.5, 1.3, "$A$\n16-bit", green, fontsize=9.5)
    _arrow(ax, (3.55, 1.0), (4.6, 1.0), color=green["edgecolor"])
    _trapezoid_h(ax, 5.3, 1.0, 0.5, 1.2, 1.3, "$B$\n16-bit", green, fontsize=9.5)
    _note(ax, 7.0, 1.0, "$\\times\\ \\alpha/r$", size=11, color=green["edgecolor"])
    _arrow(ax, (6.0, 1.0), (10.4, 2.4), color=green["edgecolor"])
    _plus(ax, 10.6, 2.6, radius=0.22)
    _arrow(ax, (10.82, 2.6), (11.3, 2.6))
    _note(ax, 11.75, 2.6, "$h$", size=12)
    _note(ax, 6.1, -0.5, r"$h = \mathrm{dequant}(W_\mathrm{NF4})\,x + (\alpha/r)\,B A x$:"
          " the gradient flows through $\\tilde W$ to $x$, never into the 4-bit weight", size=10)
    _method_legend(ax, 0.3, -1.35, "qlora", frozen_text="frozen (4-bit, hatched)",
                   trained_text="trained (QLoRA's LoRA, 16-bit)")
    return fig


def draw_dora(ax=None):
    """Figure: DoRA splits the adapted weight into a trained magnitude per output feature and a direction,
    the frozen weight plus a LoRA update, normalised."""
    fig, ax = _canvas(ax, (-0.4, 12.6), (-1.6, 5.6), figsize=(10.5, 5.4))
    _title(ax, 6.1, 5.3, "DoRA: a magnitude and a direction")
    color = trained_style("dora")
    _part(ax, 1.4, 3.5, 2.0, 1.1, "$W_0$\n(out × in)", fontsize=10)
    _plus(ax, 2.9, 3.5, radius=0.22)
    _trapezoid_h(ax, 3.95, 3.5, 1.0, 0.4, 0.9, "$A$", color, fontsize=10)
    _trapezoid_h(ax, 4.95, 3.5, 0.4, 1.0, 0.9, "$B$", color, fontsize=10)
    _note(ax, 4.45, 2.65, "$s\\,BA$, LoRA", size=9.5, color=color["edgecolor"])
    _arrow(ax, (5.5, 3.5), (6.3, 3.5))
    _box(ax, 7.55, 3.5, 2.4, 1.1, "direction\n$V / \\|V\\|$ per\noutput row", {"facecolor": "white",
         "edgecolor": "#4D4D4D", "role": "frozen"}, fontsize=9.5)
    _arrow(ax, (8.75, 3.5), (9.55, 3.5))
    _plus(ax, 9.8, 3.5, radius=0.22)
    ax.texts[-1].set_text("×")
    _part(ax, 9.8, 1.6, 2.2, 1.0, "magnitude $m$\n(one per output,\nstarts at $\\|W_0\\|$)", "dora", fontsize=9)
    _arrow(ax, (9.8, 2.1), (9.8, 3.28), color=color["edgecolor"])
    _arrow(ax, (10.02, 3.5), (10.9, 3.5))
    _note(ax, 11.6, 3.5, "$W'$", size=12)
    _note(ax, 4.6, 1.3, "$V = W_0 + s\\,BA$", size=11)
    _note(ax, 6.1, 0.2, r"$W' = m \cdot (W_0 + s\,BA)\,/\,\|W_0 + s\,BA\|$: equal to $W_0$ at the start (B = 0);"
          " mergeable after training", size=10)
    _method_legend(ax, 0.3, -1.2, "dora", trained_text="trained (DoRA: A, B and m)")
    return fig


def draw_mixed_batch_serving(ax=None, adapters=("a", "b", "a", "c")):
    """Figure: one frozen base serving a batch whose rows use different LoRA adapters (unmerged): the base's
    product once for the whole batch, each row's own s B A added."""
    adapters = tuple(adapters)
    if not adapters or not all(isinstance(a, str) and a for a in adapters):
        raise ValueError(f"adapters must be a non-empty sequence of adapter names (strings), got {adapters!r}")
    kinds = sorted(set(adapters))
    hatches = ["", "///", "...", "xxx", "\\\\\\", "ooo"]
    n = len(adapters)
    fig, ax = _canvas(ax, (-0.6, 15.2), (-1.8, 1.2 * n + 1.9), figsize=(12.5, 0.85 * n + 3.6))
    top = 1.2 * n
    _title(ax, 7.3, top + 1.55, "One base, several adapters in one batch")
    _part(ax, 4.6, top / 2 - 0.05, 2.3, top - 0.2, "frozen base\n$W x$\n(one product\nfor the\nwhole batch)",
          fontsize=11)
    for i, name in enumerate(adapters):
        y = top - 1.2 * i - 0.6
        _note(ax, 1.0, y, f"request {i + 1}\nadapter '{name}'", size=11)
        _arrow(ax, (2.4, y), (3.4, y))
        k = kinds.index(name)
        _box(ax, 8.1, y, 2.9, 0.8, "", trained_style("lora"), hatch=hatches[k % len(hatches)])
        ax.text(8.1, y, f"$s\\,B_{{\\mathrm{{{name}}}}} A_{{\\mathrm{{{name}}}}}\\,x_{{{i + 1}}}$", ha="center",
                va="center", fontsize=11, bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5})
        _arrow(ax, (5.8, y), (6.6, y))
        _arrow(ax, (9.6, y), (10.3, y))
        label = f"$W x_{{{i + 1}}} + s\\,B_{{\\mathrm{{{name}}}}} A_{{\\mathrm{{{name}}}}}\\,x_{{{i + 1}}}$"
        _note(ax, 10.45, y, label, size=11, ha="left")
    _note(ax, 7.3, -0.6, f"{len(kinds)} adapters stay unmerged and small; each row of the batch adds its own "
          "update, scaled by its s = alpha / r", size=11)
    _method_legend(ax, 0.3, -1.4, "lora", trained_text="trained per task (LoRA adapters)")
    return fig


def draw_all() -> dict:
    """Every method's schematic, by the notebook that shows it (for a quick look, and for the tests)."""
    return {"02 full fine-tuning": draw_full_fine_tuning(), "03 adapters": draw_adapters(),
            "04 prefix tuning": draw_prefix_tuning(), "05 prompt tuning": draw_prompt_tuning(),
            "06 P-tuning": draw_p_tuning(), "08 LoRA": draw_lora_layer(),
            "08 LoRA in attention": draw_lora_in_attention(),
            "11 Hugging Face export": draw_hf_export(), "12 QLoRA": draw_qlora(), "13 DoRA": draw_dora(),
            "13 serving": draw_mixed_batch_serving()}
