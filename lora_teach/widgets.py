"""Interactive figures for the course: ipywidgets controls over matplotlib figures, readable without a kernel too.

    RankExplorer       a matrix, its best rank-r approximation and residual, the singular values with the cut,
                       the relative error and the parameter count r(m+n) against mn
    LoRAUpdateViewer   A, B and the scaled update (alpha/r) B A beside W and W + Delta W, for adapters trained
                       ahead (experiments/precompute_lora_updates.py) at several ranks and kept at several steps
    TrainingDashboard  live loss curves while `train()` runs: pass `dashboard.callback` to `train`
    MemoryCalculator   trainable parameters, bytes of weights, gradients and optimizer state, and the checkpoint
                       size, for a model size, a method and a rank (the LoRA paper's GPT-3 figures are its check)

How a widget works: it draws one matplotlib Figure (not pyplot, so nothing is shown twice), renders it to PNG and
puts the PNG in an `ipywidgets.Image`. A control's change redraws only what changed. Displaying a widget sends
ONE output that holds both the live widget and a PNG of its figure for the current values: JupyterLab shows the
live widget; GitHub, nbviewer and nbconvert's HTML, which cannot run widgets, show the PNG. Every widget exposes
its controls as attributes and a `state` dict, so tests (and curious students) can set values in code.

Every widget describes its figure in one sentence (`description`), kept as lora_teach.plotting describes a static
figure: the output's PNG carries it as its `alt` metadata and a caption line follows the widget (both as the
figure was first drawn, like the saved PNG); in a live kernel a visually hidden live region at the top of the
widget holds the current description, which screen readers announce after every change. (A `tooltip` on the
Image would not do: ipywidgets 8.1's image view fails to render with one.) Figures use the course's fonts
(12 pt and more) and its signed colour map, which reads in grey-scale (lora_teach.plotting.DIVERGING).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import ipywidgets as widgets
import matplotlib as mpl
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image as PILImage

from .memory import (  # noqa: F401  (re-exported for notebooks that import them from here)
    ACTIVATION_ASSUMPTIONS,
    BASE_BITS,
    METHODS,
    MODEL_SIZES,
    PRECISIONS,
    TARGET_SETS,
    ModelSize,
    activation_estimate,
    format_bytes,
    gpt_parameters,
    llama_parameters,
    lora_paper_gpt3,
    lora_parameters,
    memory_estimate,
    qlora_paper_65b,
)
from .plotting import (
    ALT_KEY,
    DIVERGING,  # signed matrices: dark blue negative, grey zero, light yellow positive
    FONT_SIZES,
    MIN_FONT_PT,
    caption_bundle,
    check_description,
    curve_style,
    method_style,
    signed_colorbar,
)

DPI = 90  # PNG resolution: 12-point text is 15 pixels high; a figure still renders in about 0.1-0.2 s
SMALL = MIN_FONT_PT  # the smallest text in a widget's figure (points)
PRECOMPUTED = "lora_updates.safetensors"  # written by experiments/precompute_lora_updates.py


# ------------------------------------------------------------------------------------------------ the machinery
class FigureWidget:
    """Controls above a matplotlib Figure shown as a PNG; displays as a live widget with a static PNG fallback."""

    kind = "figure"

    def __init__(self, controls: list, figsize: tuple[float, float]):
        """`controls`: widgets for one wrapping row, or a list of such lists (one row each) above the figure."""
        self.figure = Figure(figsize=figsize, dpi=DPI, layout="constrained")
        FigureCanvasAgg(self.figure)
        width = round(figsize[0] * DPI)  # show the PNG at its own size: stretched it would blur
        self.image = widgets.Image(format="png", layout=widgets.Layout(width=f"{width}px", max_width="100%",
                                                                       height="auto"))
        rows = controls if controls and isinstance(controls[0], (list, tuple)) else [controls] if controls else []
        self.controls = [c for row in rows for c in row]
        boxes = [widgets.HBox(list(row), layout=widgets.Layout(flex_flow="row wrap")) for row in rows]
        # first in the box, visually hidden, announced by screen readers whenever the figure changes
        self.live_description = widgets.HTML()
        self.ui = widgets.VBox([self.live_description] + boxes + [self.image])
        self.ui.add_class("lora-teach-widget")
        self.ui.add_class(f"lora-teach-{self.kind}")
        self.render_seconds = 0.0  # how long the last redraw took (for the latency budget of 0.3 s)
        self._handle = self._caption_handle = None
        self._frozen = False
        self._dynamic: list = []  # artists redrawn by a quick render
        self._background = None

    def animate(self, *artists) -> None:
        """Mark artists that change when a control moves: a quick redraw draws only them over a saved background."""
        for artist in artists:
            artist.set_animated(True)
            self._dynamic.append(artist)

    def render(self, full: bool = True) -> bytes:
        """Draw the figure into the Image widget; return the PNG bytes.

        full=True draws everything (needed when axes limits, ticks or colour bars change); full=False restores
        the background saved by the last full draw and draws only the animated artists on it (blitting)."""
        start = time.perf_counter()
        canvas = self.figure.canvas
        if full or self._background is None:
            canvas.draw()  # everything except the animated artists
            if not self._frozen:  # lay out once (constrained), then keep every axes where it is
                self.figure.set_layout_engine(None)
                self._frozen = True
            self._background = canvas.copy_from_bbox(self.figure.bbox)
        else:
            canvas.restore_region(self._background)
        for artist in sorted(self._dynamic, key=lambda a: a.get_zorder()):  # stable: images, lines, then text
            self.figure.draw_artist(artist)
        rgba = np.asarray(canvas.buffer_rgba())  # (H, W, 4)
        buf = io.BytesIO()
        # 256 colours and light compression: about 12 ms, and a third of the bytes for noisy heatmaps
        palette = PILImage.fromarray(rgba[..., :3]).quantize(colors=256, method=PILImage.Quantize.FASTOCTREE)
        palette.save(buf, format="png", compress_level=1)
        png = buf.getvalue()
        self.image.value = png
        self.live_description.value = _live_region(self.description)
        self.render_seconds = time.perf_counter() - start
        return png

    def png(self) -> bytes:
        """The PNG currently shown."""
        return bytes(self.image.value)  # the widget may hold it as a memoryview

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs) -> dict:
        """The live widget for Jupyter, and a PNG of the current figure for renderers without widgets."""
        return {
            "text/plain": f"<{type(self).__name__}: {self.summary()}>",
            "image/png": base64.b64encode(self.png()).decode("ascii"),
            "application/vnd.jupyter.widget-view+json": {
                "version_major": 2, "version_minor": 0, "model_id": self.ui.model_id},
        }

    @property
    def description(self) -> str:
        """One sentence on what the figure shows now (its alt text and caption); subclasses say more."""
        summary = self.summary().replace(". ", ", ")
        return f"The figure of the {type(self).__name__}" + (f" for {summary}." if summary else ".")

    def _metadata(self) -> dict:
        return {"image/png": {ALT_KEY: check_description(self.description)}}

    def _ipython_display_(self) -> None:
        """What Jupyter shows: the widget with its PNG and the description as the PNG's alt, then a caption."""
        self.show()

    def show(self):
        """Display the widget (as the last line of a cell does) and its caption; later `refresh_static()` updates
        the saved PNG and caption. Returns the display handle of the widget's output."""
        from IPython.display import display

        self._handle = display(self._repr_mimebundle_(), raw=True, metadata=self._metadata(), display_id=True)
        self._caption_handle = display(caption_bundle(self.description), raw=True, display_id=True)
        return self._handle

    def refresh_static(self) -> None:
        """Replace the PNG and caption saved with the notebook by the figure as it is now (after `show()`)."""
        if self._handle is not None:
            self._handle.update(self._repr_mimebundle_(), raw=True, metadata=self._metadata())
            self._caption_handle.update(caption_bundle(self.description), raw=True)

    def summary(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.state.items() if isinstance(v, (int, str)))

    @property
    def state(self) -> dict:
        raise NotImplementedError


_VISUALLY_HIDDEN = ("position:absolute;width:1px;height:1px;margin:-1px;padding:0;overflow:hidden;"
                    "clip:rect(0,0,0,0);white-space:nowrap;border:0")


def _live_region(text: str) -> str:
    """HTML that shows nothing on screen but that screen readers read, and announce again when it changes."""
    return f'<div role="status" aria-live="polite" style="{_VISUALLY_HIDDEN}">Figure: {html.escape(text)}</div>'


def _fixed_titles():
    """Axes made in this context keep their title at a fixed height, so matplotlib skips a costly search for
    overlapping tick labels at every draw (about a quarter of a full redraw)."""
    return mpl.rc_context({"axes.titley": 1.0, **FONT_SIZES, "lines.linewidth": 2.0})


def _slider_style() -> dict:
    return {"description_width": "initial"}


def _as_matrix(name: str, value) -> np.ndarray:
    """A finite 2-D float64 array from a tensor or array; ValueError naming `name` otherwise."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"matrix {name!r} must be a 2-D torch.Tensor or numpy array, got {type(value).__name__}") \
            from err
    if arr.ndim != 2 or min(arr.shape) < 2:
        raise ValueError(f"matrix {name!r} must be 2-D with at least 2 rows and 2 columns, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"matrix {name!r} holds NaN or inf values")
    if not np.abs(arr).max() > 0:
        raise ValueError(f"matrix {name!r} is all zeros: it has no singular directions to show")
    return arr


def _symmetric_limit(arr: np.ndarray, q: float = 99.0) -> float:
    """A colour limit for a signed matrix: the q-th percentile of |values| (so a few outliers do not wash it out)."""
    lim = float(np.percentile(np.abs(arr), q))
    return lim if lim > 0 else float(np.abs(arr).max()) or 1.0


# ----------------------------------------------------------------------------------------------- toy matrices
def toy_picture(n: int = 96) -> torch.Tensor:
    """A synthetic n x n grey-scale picture: sky, sun, ground, and a house with a door and a triangular roof."""
    y, x = torch.meshgrid(torch.linspace(0, 1, n), torch.linspace(0, 1, n), indexing="ij")  # y grows downwards
    img = 0.55 - 0.3 * y  # (n, n): the sky darkens towards the horizon
    img = torch.where(y > 0.78, torch.full_like(img, 0.25), img)  # ground
    img = torch.where((x - 0.8) ** 2 + (y - 0.2) ** 2 < 0.01, torch.ones_like(img), img)  # sun (a disc)
    body = (x > 0.18) & (x < 0.58) & (y > 0.52) & (y <= 0.78)
    img = torch.where(body, torch.full_like(img, 0.85), img)  # house: a rectangle, rank 1 on its own
    roof = (y > 0.28 + 0.95 * (x - 0.38).abs()) & (y <= 0.52)
    img = torch.where(roof, torch.full_like(img, 0.65), img)  # roof: a triangle, many ranks
    door = (x > 0.33) & (x < 0.43) & (y > 0.62) & (y <= 0.78)
    return torch.where(door, torch.full_like(img, 0.1), img)


def low_rank_matrix(m: int = 64, n: int = 48, rank: int = 5, noise: float = 0.02, seed: int = 0) -> torch.Tensor:
    """A random m x n matrix of rank `rank` plus a little Gaussian noise: its spectrum drops off a cliff."""
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(m, rank, generator=g)  # (m, rank)
    A = torch.randn(rank, n, generator=g)  # (rank, n)
    return B @ A / math.sqrt(rank) + noise * torch.randn(m, n, generator=g)  # (m, n)


# -------------------------------------------------------------------------------------------- precomputed data
@dataclass
class LoRAUpdates:
    """Adapters trained ahead by experiments/precompute_lora_updates.py, with the base weights W0 of their layers."""

    meta: dict
    tensors: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> W0 (out, in)

    @property
    def ranks(self) -> list[int]:
        return list(self.meta["ranks"])

    @property
    def steps(self) -> list[int]:
        return list(self.meta["steps"])

    @property
    def alphas(self) -> list[int]:
        return list(self.meta["alphas"])

    @property
    def alpha(self) -> float:
        """The alpha every adapter was trained with."""
        return self.meta["alpha"]

    @property
    def layers(self) -> list[str]:
        return list(self.meta["layers"])

    def check(self, r: int, step: int, layer: str) -> None:
        """ValueError unless (r, step, layer) was precomputed; names the values that were."""
        for what, value, allowed in (("r", r, self.ranks), ("step", step, self.steps), ("layer", layer, self.layers)):
            if value not in allowed:
                raise ValueError(f"{what}={value!r} was not precomputed; choose one of {allowed}")

    def A(self, r: int, step: int, layer: str) -> torch.Tensor:
        """LoRA's A (r, in) at `step` of the rank-r run."""
        self.check(r, step, layer)
        return self.tensors[f"r{r}.step{step}.{layer}.lora_A"].float()

    def B(self, r: int, step: int, layer: str) -> torch.Tensor:
        """LoRA's B (out, r) at `step` of the rank-r run."""
        self.check(r, step, layer)
        return self.tensors[f"r{r}.step{step}.{layer}.lora_B"].float()

    def delta(self, r: int, step: int, layer: str, alpha: float | None = None) -> torch.Tensor:
        """The update (alpha / r) B A (out, in); alpha defaults to the one used in training."""
        alpha = self.alpha if alpha is None else alpha
        return (alpha / r) * (self.B(r, step, layer) @ self.A(r, step, layer))  # (out, r) @ (r, in)

    def full_delta(self, layer: str) -> torch.Tensor:
        """Delta W = W_tuned - W0 (out, in) after full fine-tuning for the same steps."""
        self.check(self.ranks[0], self.steps[0], layer)
        return self.tensors[f"full.{layer}.delta"].float()

    def loss(self, r: int, step: int) -> float:
        """Validation loss of the rank-r adapter at `step` (trained alpha)."""
        return self.meta["loss"][str(r)][str(step)]

    def alpha_loss(self, r: int, alpha: float) -> float | None:
        """Validation loss of the final rank-r adapter rescaled to `alpha`, or None if not precomputed."""
        table = self.meta["alpha_loss"][str(r)]
        return next((loss for a, loss in table.items() if float(a) == float(alpha)), None)


def load_lora_updates(path: str | Path | None = None, with_weights: bool = True) -> LoRAUpdates:
    """Read the precomputed adapters (safetensors, no pickle); add W0 of their layers from the base model."""
    from safetensors import safe_open

    if path is None:
        path = resources.files("lora_teach") / "data" / "precomputed" / PRECOMPUTED
    path = Path(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; make it with `python experiments/precompute_lora_updates.py`")
    tensors = {}
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["lora_teach"])
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    updates = LoRAUpdates(meta, tensors)
    if with_weights:
        base = _base_model_quietly()
        updates.weights = {layer: base.get_submodule(layer).weight.detach().float().clone() for layer in updates.layers}
    return updates


def _base_model_quietly() -> torch.nn.Module:
    """The shipped base model on the CPU, loaded without moving the global torch random stream.

    `load_base_model` builds a GPT first, whose initialisation draws from the global generator before the
    pretrained weights replace it; a widget that did that would change every seeded result after it in a notebook."""
    from .model import load_base_model

    with torch.random.fork_rng(devices=[]):  # the CPU generator is restored on exit; the model is built on the CPU
        return load_base_model(torch.device("cpu"))


def default_matrices() -> dict[str, torch.Tensor]:
    """The rank explorer's choices: a toy picture, a low-rank toy matrix, base weights, and real updates."""
    matrices = {
        "toy picture (96 x 96)": toy_picture(),
        "rank-5 matrix + noise (64 x 48)": low_rank_matrix(),
    }
    base = _base_model_quietly()
    for layer in ("blocks.2.attn.v_proj", "blocks.2.mlp.up_proj"):
        W = base.get_submodule(layer).weight.detach().float()
        matrices[f"base weight W0: {layer} ({W.shape[0]} x {W.shape[1]})"] = W
    try:
        updates = load_lora_updates(with_weights=False)
    except FileNotFoundError:
        return matrices
    layer, task = updates.layers[-1], updates.meta["task"]
    matrices[f"full fine-tuning Delta W ({task}): {layer}"] = updates.full_delta(layer)
    r, step = updates.ranks[-1], updates.steps[-1]
    matrices[f"LoRA update (alpha/r) B A, r={r} ({task}): {layer}"] = updates.delta(r, step, layer)
    return matrices


# ---------------------------------------------------------------------------------------------- rank explorer
@dataclass
class _SVD:
    """A matrix with its SVD: M = U diag(S) Vh, U (m, k), S (k,), Vh (k, n), k = min(m, n)."""

    M: np.ndarray
    U: np.ndarray
    S: np.ndarray
    Vh: np.ndarray

    @classmethod
    def of(cls, M: np.ndarray) -> _SVD:
        U, S, Vh = np.linalg.svd(M, full_matrices=False)
        return cls(M, U, S, Vh)

    def approx(self, r: int) -> np.ndarray:
        """Best rank-r approximation (Eckart-Young): U_r diag(S_r) Vh_r, shape (m, n)."""
        return (self.U[:, :r] * self.S[:r]) @ self.Vh[:r]  # (m, r) @ (r, n)

    def rank(self) -> int:
        """Numerical rank: singular values above float32 rounding (matrices come from float32 tensors)."""
        tol = self.S[0] * max(self.M.shape) * np.finfo(np.float32).eps
        return int((self.S > tol).sum())

    def relative_error(self, r: int) -> float:
        """||M - M_r||_F / ||M||_F = sqrt(sum of the dropped sigma^2 / sum of all sigma^2)."""
        s2 = self.S**2
        return float(np.sqrt(s2[r:].sum() / s2.sum()))


class RankExplorer(FigureWidget):
    """Pick a matrix and a rank r: see its best rank-r approximation, the residual, the spectrum with the cut,
    the relative error and the parameter count r(m+n) against mn."""

    kind = "rank-explorer"

    def __init__(self, matrices: dict | None = None, rank: int = 4, matrix: str | None = None):
        matrices = default_matrices() if matrices is None else matrices
        if not isinstance(matrices, dict) or not matrices:
            raise ValueError("matrices must be a non-empty dict {name: 2-D tensor or array}")
        self._svd = {str(name): _SVD.of(_as_matrix(str(name), M)) for name, M in matrices.items()}
        names = list(self._svd)
        matrix = names[0] if matrix is None else matrix
        if matrix not in self._svd:
            raise ValueError(f"matrix {matrix!r} is not one of {names}")
        k = min(self._svd[matrix].M.shape)
        if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= k:
            raise ValueError(f"rank must be an int from 1 to {k} (the smaller side of {matrix!r}), got {rank!r}")

        self.matrix = widgets.Dropdown(options=names, value=matrix, description="matrix",
                                       layout=widgets.Layout(width="430px"))
        self.rank = widgets.IntSlider(value=rank, min=1, max=k, description="rank r", continuous_update=False,
                                      style=_slider_style())
        super().__init__([self.matrix, self.rank], figsize=(10.5, 5.6))
        self._loading = False
        with _fixed_titles():
            self._build()
        self._load_matrix()
        self._draw_rank()
        self.render()
        self.matrix.observe(self._on_matrix, names="value")
        self.rank.observe(self._on_rank, names="value")

    # layout: three images on top, the spectrum and the error / parameter curves below
    def _build(self) -> None:
        fig = self.figure
        fig.get_layout_engine().set(wspace=0.04, hspace=0.06)
        gs = fig.add_gridspec(2, 3, height_ratios=[1.15, 1])
        self.ax_M, self.ax_approx, self.ax_resid = (fig.add_subplot(gs[0, i]) for i in range(3))
        self.ax_spec = fig.add_subplot(gs[1, :2])
        self.ax_err = fig.add_subplot(gs[1, 2])
        blank = np.zeros((2, 2))
        self.im_M = self.ax_M.imshow(blank, aspect="auto", interpolation="nearest")
        self.im_approx = self.ax_approx.imshow(blank, aspect="auto", interpolation="nearest")
        self.im_resid = self.ax_resid.imshow(blank, aspect="auto", interpolation="nearest", cmap=DIVERGING)
        for ax in (self.ax_M, self.ax_approx, self.ax_resid):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        signed_colorbar(fig, self.im_resid, ax=self.ax_resid, fraction=0.08, pad=0.02)
        lora = method_style("lora")["color"]
        (self.spec_kept,) = self.ax_spec.semilogy([], [], "o", ms=5, color=lora, label="kept: top r")
        (self.spec_dropped,) = self.ax_spec.semilogy([], [], "x", ms=5, color="#999999", label="dropped")
        self.spec_cut = self.ax_spec.axvline(1, color="black", linestyle=":")
        self.ax_spec.set_xlabel("index i of the singular value")
        self.ax_spec.set_ylabel(r"singular value $\sigma_i$")
        self.ax_spec.legend(loc="upper right")
        (self.err_line,) = self.ax_err.plot([], [], color=lora, label="relative error")
        (self.par_line,) = self.ax_err.plot([], [], color="black", linestyle="--", label="numbers r(m+n) / mn")
        (self.err_dot,) = self.ax_err.plot([], [], "o", color=lora)
        (self.par_dot,) = self.ax_err.plot([], [], "s", color="black")
        self.err_cut = self.ax_err.axvline(1, color="black", linestyle=":")
        self.ax_err.set_xlabel("rank r")
        self.ax_err.set_ylabel("% of the full matrix")
        self.ax_err.set_ylim(0, 105)
        self.ax_err.legend(loc="upper right", fontsize=SMALL)
        self.animate(self.im_approx, self.im_resid, self.spec_kept, self.spec_dropped, self.spec_cut, self.err_cut,
                     self.err_dot, self.par_dot, self.ax_approx.title, self.ax_resid.title, self.ax_spec.title,
                     self.ax_err.title)

    def _current(self) -> _SVD:
        return self._svd[self.matrix.value]

    def _load_matrix(self) -> None:
        """Set everything that depends on the matrix only (images' colour scales, spectrum, curves)."""
        svd = self._current()
        M = svd.M
        m, n = M.shape
        k = len(svd.S)
        if M.min() >= 0:  # a picture: grey levels
            for im in (self.im_M, self.im_approx):
                im.set_cmap("gray")
                im.set_clim(M.min(), M.max())
        else:  # a signed matrix: one symmetric diverging scale
            lim = _symmetric_limit(M)
            for im in (self.im_M, self.im_approx):
                im.set_cmap(DIVERGING)
                im.set_clim(-lim, lim)
        resid_lim = float(np.abs(M - svd.approx(1)).max())  # the residual fades from this as r grows
        self.im_resid.set_clim(-resid_lim, resid_lim)
        for im in (self.im_M, self.im_approx, self.im_resid):
            im.set_extent((-0.5, n - 0.5, m - 0.5, -0.5))
        self.im_M.set_data(M)
        self.ax_M.set_title(f"M: {m} x {n}, rank {svd.rank()}")
        idx = np.arange(1, k + 1)
        floor = svd.S[0] * 1e-7  # exact zeros cannot be drawn on a log axis
        self._spec_x, self._spec_y = idx, np.maximum(svd.S, floor)
        self.ax_spec.set_xlim(0, k + 1)
        self.ax_spec.set_ylim(self._spec_y.min() / 2, svd.S[0] * 2)
        ranks = np.arange(1, k + 1)
        self.err_line.set_data(ranks, [100 * svd.relative_error(r) for r in ranks])
        self.par_line.set_data(ranks, 100 * ranks * (m + n) / (m * n))
        self.ax_err.set_xlim(0, k + 1)
        self._loading = True  # a clamped rank value must not trigger a quick redraw on the old background
        try:
            self.rank.max = k
        finally:
            self._loading = False

    def _draw_rank(self) -> None:
        """Set everything that depends on r."""
        svd, r = self._current(), self.rank.value
        m, n = svd.M.shape
        approx = svd.approx(r)
        self.im_approx.set_data(approx)
        self.im_resid.set_data(svd.M - approx)
        err = svd.relative_error(r)
        self.ax_approx.set_title(f"best rank-{r} approximation M_r")
        self.ax_resid.set_title(f"residual M - M_r: {100 * err:.1f}% of ||M||")
        self.spec_kept.set_data(self._spec_x[:r], self._spec_y[:r])
        self.spec_dropped.set_data(self._spec_x[r:], self._spec_y[r:])
        self.spec_cut.set_xdata([r + 0.5, r + 0.5])
        energy = 1 - err**2
        self.ax_spec.set_title(f"singular values: the top {r} keep {100 * energy:.1f}% of the energy "
                               r"$\sum \sigma_i^2$")
        self.err_dot.set_data([r], [100 * err])
        self.par_dot.set_data([r], [100 * r * (m + n) / (m * n)])
        self.err_cut.set_xdata([r, r])
        self.ax_err.set_title(f"r(m+n) = {r * (m + n):,} of mn = {m * n:,} numbers", fontsize=SMALL)

    def _on_matrix(self, change) -> None:
        self._load_matrix()
        self._draw_rank()
        self.render()

    def _on_rank(self, change) -> None:
        if self._loading:
            return
        self._draw_rank()
        self.render(full=False)  # only the animated artists changed

    @property
    def state(self) -> dict:
        svd, r = self._current(), self.rank.value
        m, n = svd.M.shape
        err = svd.relative_error(r)
        return {"matrix": self.matrix.value, "rank": r, "shape": (m, n), "relative_error": err,
                "energy": 1 - err**2, "params_low_rank": r * (m + n), "params_full": m * n}

    @property
    def description(self) -> str:
        st = self.state
        m, n = st["shape"]
        shape = "" if f"{m} x {n}" in st["matrix"] else f" ({m} x {n})"
        return (f"Three heatmaps (the matrix {st['matrix']!r}{shape}, its best rank-{st['rank']} approximation "
                f"and the residual) above its singular values with the top {st['rank']} kept: they hold "
                f"{100 * st['energy']:.1f}% of the energy and leave a relative error of "
                f"{100 * st['relative_error']:.1f}%, using {st['params_low_rank']:,} of {st['params_full']:,} numbers.")

    def approximation(self) -> np.ndarray:
        """The rank-r approximation currently shown, (m, n)."""
        return self._current().approx(self.rank.value)


# ----------------------------------------------------------------------------------------- LoRA update viewer
class LoRAUpdateViewer(FigureWidget):
    """Heatmaps of A, B, the scaled update (alpha/r) B A, W and W + Delta W for adapters trained ahead; sliders
    for the rank, alpha and the training step (all precomputed, so every move is instant)."""

    kind = "lora-update-viewer"

    def __init__(self, updates: LoRAUpdates | None = None, *, rank: int | None = None, alpha: float | None = None,
                 step: int | None = None, layer: str | None = None):
        updates = load_lora_updates() if updates is None else updates
        if not isinstance(updates, LoRAUpdates):
            raise TypeError(f"updates must be a LoRAUpdates (see load_lora_updates), got {type(updates).__name__}")
        rank = updates.ranks[min(2, len(updates.ranks) - 1)] if rank is None else rank
        alpha = updates.alpha if alpha is None else alpha
        step = updates.steps[-1] if step is None else step
        layer = updates.layers[-1] if layer is None else layer
        updates.check(rank, step, layer)
        if alpha not in updates.alphas:
            raise ValueError(f"alpha={alpha!r} was not precomputed; choose one of {updates.alphas}")
        if set(updates.weights) != set(updates.layers):
            raise ValueError("updates has no base weights W0; load it with load_lora_updates(with_weights=True)")
        self.updates = updates

        self.layer = widgets.ToggleButtons(options=updates.layers, value=layer, description="layer",
                                           style={"button_width": "190px"})
        self.rank = widgets.SelectionSlider(options=updates.ranks, value=rank, description="rank r",
                                            continuous_update=False, style=_slider_style())
        self.alpha = widgets.SelectionSlider(options=updates.alphas, value=alpha, description="alpha",
                                             continuous_update=False, style=_slider_style())
        self.step = widgets.SelectionSlider(options=updates.steps, value=step, description="training step",
                                            continuous_update=False, style=_slider_style())
        super().__init__([[self.layer], [self.rank, self.alpha, self.step]], figsize=(11, 5.8))
        self._limits = {layer: self._layer_limits(layer) for layer in updates.layers}
        with _fixed_titles():
            self._build()
        self._draw_layer()
        self._draw()
        self.render()
        for control in (self.layer, self.rank, self.alpha, self.step):
            control.observe(self._on_change, names="value")

    def _layer_limits(self, layer: str) -> dict:
        """Fixed colour scales per layer, so growth over steps and the effect of alpha stay visible."""
        u, last = self.updates, self.updates.steps[-1]
        W = u.weights[layer].numpy()
        return {
            "W": _symmetric_limit(W),
            "delta": max(_symmetric_limit(u.delta(r, last, layer).numpy()) for r in u.ranks),
            "A": {r: max(_symmetric_limit(u.A(r, s, layer).numpy()) for s in u.steps) for r in u.ranks},
            "B": {r: _symmetric_limit(u.B(r, last, layer).numpy()) for r in u.ranks},
        }

    def _build(self) -> None:
        fig = self.figure
        fig.get_layout_engine().set(wspace=0.03)
        gs = fig.add_gridspec(2, 4, height_ratios=[1, 2.6], width_ratios=[0.5, 3, 3, 3])
        self.ax_A = fig.add_subplot(gs[0, 1])
        self.ax_B = fig.add_subplot(gs[1, 0])
        self.ax_delta = fig.add_subplot(gs[1, 1])
        self.ax_W = fig.add_subplot(gs[1, 2])
        self.ax_sum = fig.add_subplot(gs[1, 3])
        self.ax_step = fig.add_subplot(gs[0, 2])
        self.ax_alpha = fig.add_subplot(gs[0, 3])
        blank = np.zeros((2, 2))
        kw = {"aspect": "auto", "interpolation": "nearest", "cmap": DIVERGING}
        self.im_A = self.ax_A.imshow(blank, **kw)
        self.im_B = self.ax_B.imshow(blank, **kw)
        self.im_delta = self.ax_delta.imshow(blank, **kw)
        self.im_W = self.ax_W.imshow(blank, **kw)
        self.im_sum = self.ax_sum.imshow(blank, **kw)
        for ax in (self.ax_A, self.ax_B, self.ax_delta, self.ax_W, self.ax_sum):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        signed_colorbar(fig, self.im_delta, ax=self.ax_delta, fraction=0.06, pad=0.02)
        signed_colorbar(fig, self.im_sum, ax=[self.ax_W, self.ax_sum], fraction=0.03, pad=0.02)
        u = self.updates
        lora, full = method_style("lora"), method_style("full")
        self.ax_step.axhline(u.meta["base_loss"], **method_style("base"))
        self.ax_step.axhline(u.meta["full_loss"], color=full["color"], linestyle="--", label="full FT, last step")
        self.step_lines = {}
        for r in u.ranks:
            (self.step_lines[r],) = self.ax_step.plot(u.steps, [u.loss(r, s) for s in u.steps], color="#BBBBBB",
                                                      lw=1)
        (self.step_dot,) = self.ax_step.plot([], [], "o", color=lora["color"])
        self.ax_step.set_xscale("symlog", linthresh=10)
        self.ax_step.set_xlabel("training step", fontsize=SMALL)
        self.ax_step.set_ylabel("val loss", fontsize=SMALL)
        self.ax_step.legend(fontsize=SMALL, loc="lower left")
        self.ax_alpha.axhline(u.meta["base_loss"], **method_style("base"))
        (self.alpha_line,) = self.ax_alpha.plot([], [], "-", color=lora["color"], marker=".")
        (self.alpha_dot,) = self.ax_alpha.plot([], [], "s", color="black")
        self.ax_alpha.axvline(u.alpha, color="#999999", linestyle=":")
        self.ax_alpha.set_xscale("log", base=2)
        self.ax_alpha.set_xlabel("α (dotted: the α used in training)", fontsize=SMALL)
        self.ax_alpha.set_ylabel("val loss", fontsize=SMALL)
        losses = [u.alpha_loss(r, a) for r in u.ranks for a in u.alphas] + [u.meta["base_loss"]]
        pad = 0.05 * (max(losses) - min(losses))
        self.ax_alpha.set_xlim(min(u.alphas) / 1.5, max(u.alphas) * 1.5)
        self.ax_alpha.set_ylim(min(losses) - pad, max(losses) + pad)  # fixed: moving a slider redraws no ticks
        for ax in (self.ax_step, self.ax_alpha):
            ax.tick_params(labelsize=SMALL)
        self.title = fig.suptitle(" ", fontsize=SMALL + 1)
        self.animate(self.im_A, self.im_B, self.im_delta, self.im_sum, *self.step_lines.values(), self.step_dot,
                     self.alpha_line, self.alpha_dot, self.title,
                     *(ax.title for ax in (self.ax_A, self.ax_B, self.ax_delta, self.ax_sum, self.ax_step,
                                           self.ax_alpha)))

    def _draw_layer(self) -> None:
        """What depends on the layer only: W0 and the colour scales (drawn in the background)."""
        lim, W = self._limits[self.layer.value], self.updates.weights[self.layer.value].numpy()
        self.im_W.set_data(W)
        for im in (self.im_W, self.im_sum):
            im.set_clim(-lim["W"], lim["W"])
        self.im_delta.set_clim(-lim["delta"], lim["delta"])
        self.ax_W.set_title(f"W0 ({W.shape[0]} x {W.shape[1]}), frozen", fontsize=SMALL)
        self.ax_B.set_ylabel(f"B: {W.shape[0]} x r", fontsize=SMALL)

    def _draw(self) -> None:
        """What depends on the rank, alpha and step (the animated artists)."""
        u, lim = self.updates, self._limits[self.layer.value]
        layer, r, alpha, step = self.layer.value, self.rank.value, self.alpha.value, self.step.value
        A, B = u.A(r, step, layer).numpy(), u.B(r, step, layer).numpy()  # (r, in), (out, r)
        delta = (alpha / r) * (B @ A)  # (out, in)
        W = u.weights[layer].numpy()
        self.im_A.set_data(A)
        self.im_A.set_extent((-0.5, A.shape[1] - 0.5, r - 0.5, -0.5))
        self.im_A.set_clim(-lim["A"][r], lim["A"][r])
        self.im_B.set_data(B)
        self.im_B.set_extent((-0.5, r - 0.5, B.shape[0] - 0.5, -0.5))
        self.im_B.set_clim(-lim["B"][r], lim["B"][r])
        self.im_delta.set_data(delta)
        self.im_sum.set_data(W + delta)
        self.ax_A.set_title(f"A ({r} x {A.shape[1]})", fontsize=SMALL)
        self.ax_B.set_title("B", fontsize=SMALL)
        self.ax_delta.set_title(f"ΔW = (α/r) B A, α/r = {alpha / r:g}", fontsize=SMALL)
        rel = np.linalg.norm(delta) / np.linalg.norm(W)
        self.ax_sum.set_title(f"W0 + ΔW: ‖ΔW‖ = {100 * rel:.1f}% of ‖W0‖", fontsize=SMALL)
        for rank, line in self.step_lines.items():
            line.set_color(method_style("lora")["color"] if rank == r else "#BBBBBB")
            line.set_linewidth(2 if rank == r else 1)
            line.set_zorder(3 if rank == r else 2)
        self.step_dot.set_data([step], [u.loss(r, step)])
        self.ax_step.set_title(f"val loss by step (α = {u.alpha:g})", fontsize=SMALL)
        alphas = u.alphas
        self.alpha_line.set_data(alphas, [u.alpha_loss(r, a) for a in alphas])
        loss = self.loss
        self.alpha_dot.set_data([alpha], [u.alpha_loss(r, alpha)])
        self.ax_alpha.set_title("val loss, α changed after training", fontsize=SMALL)
        shown = f"{loss:.3f}" if loss is not None else "not precomputed (α differs, before the last step)"
        self.title.set_text(f"{u.meta['task']}: {layer}, rank {r}, α = {alpha:g}, step {step} | "
                            f"validation loss {shown} (base {u.meta['base_loss']:.3f})")

    @property
    def loss(self) -> float | None:
        """Validation loss of what is shown: known for the trained alpha at every step, for others at the end."""
        u, r, alpha, step = self.updates, self.rank.value, self.alpha.value, self.step.value
        if alpha == u.alpha:
            return u.loss(r, step)
        return u.alpha_loss(r, alpha) if step == u.steps[-1] else None

    def _on_change(self, change) -> None:
        if change["owner"] is self.layer:  # W0 and the colour scales change: draw everything
            self._draw_layer()
        self._draw()
        self.render(full=change["owner"] is self.layer)

    @property
    def state(self) -> dict:
        u, layer, r, alpha, step = self.updates, self.layer.value, self.rank.value, self.alpha.value, self.step.value
        delta = u.delta(r, step, layer, alpha)
        return {"layer": layer, "rank": r, "alpha": alpha, "step": step, "scaling": alpha / r,
                "delta_norm": float(delta.norm()), "weight_norm": float(u.weights[layer].norm()),
                "loss": self.loss}

    @property
    def description(self) -> str:
        st, u = self.state, self.updates
        loss = self.loss
        shown = f"validation loss {loss:.3f} against the base model's {u.meta['base_loss']:.3f}" if loss is not None \
            else f"base model's validation loss {u.meta['base_loss']:.3f}"
        return (f"Heatmaps of LoRA's A and B at rank {st['rank']}, the update (alpha/r) B A with alpha = "
                f"{st['alpha']:g} after {st['step']} steps on the {u.meta['task']} task, the frozen weight W0 of "
                f"{st['layer']} and W0 + Delta W (Delta W is {100 * st['delta_norm'] / st['weight_norm']:.1f}% of "
                f"W0's norm), beside line plots of the validation loss by step and by alpha ({shown}).")

    def delta_shown(self) -> np.ndarray:
        """The Delta W (out, in) drawn in the figure now."""
        return np.asarray(self.im_delta.get_array())


# ------------------------------------------------------------------------------------------ training dashboard
class TrainingDashboard(FigureWidget):
    """Live loss curves while `train()` runs. Use it as a context manager and pass its callback to train:

        with TrainingDashboard("lora") as dash:
            history = train(model, task, steps=200, lr=3e-3, callback=dash.callback)
    """

    kind = "training-dashboard"

    def __init__(self, method: str = "lora", *, baselines: dict | None = None, eval_key: str | None = None,
                 smooth: int = 10, redraw_seconds: float = 1.0, title: str | None = None):
        style = method_style(method)  # ValueError for an unknown method, naming the allowed ones
        baselines = dict(baselines or {})
        for name, hist in baselines.items():
            method_style(name)
            if not hasattr(hist, "steps") or not hasattr(hist, "loss"):
                raise TypeError(f"baseline {name!r} must be a History (from train()), got {type(hist).__name__}")
        if not isinstance(smooth, int) or smooth < 1:
            raise ValueError(f"smooth must be a positive int (steps in the running mean), got {smooth!r}")
        if not redraw_seconds >= 0:
            raise ValueError(f"redraw_seconds must be >= 0, got {redraw_seconds!r}")
        self.method, self.eval_key, self.smooth, self.redraw_seconds = method, eval_key, smooth, redraw_seconds
        self.status = widgets.HTML(value="waiting for the first step")
        super().__init__([self.status], figsize=(7.5, 3.6))
        with _fixed_titles():
            ax = self.ax = self.figure.add_subplot()
        for name, hist in baselines.items():
            ax.plot(hist.steps, _running_mean(hist.loss, smooth), alpha=0.6, **curve_style(name))
        (self.raw_line,) = ax.plot([], [], color=style["color"], alpha=0.25, lw=1)
        (self.line,) = ax.plot([], [], color=style["color"], linestyle=style["linestyle"], lw=2,
                               label=f"{style['label']} (running mean of {smooth})")
        (self.eval_dots,) = ax.plot([], [], style["marker"] or "o", color=style["color"], markerfacecolor="white",
                                    label=f"evaluation: {eval_key}"
                                    if eval_key else None)
        ax.set_xlabel("training step")
        ax.set_ylabel("loss (nats per character)")
        ax.set_title(title or "training loss")
        ax.legend(loc="upper right", fontsize=SMALL)
        self.step, self.last_loss, self.history = 0, None, None
        self._t0 = self._last_draw = None
        self.render()

    def callback(self, step: int, loss: float, history) -> None:
        """Give this to train(callback=...): records the step; redraws at most every `redraw_seconds`."""
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
        self.step, self.last_loss, self.history = step, loss, history
        # at least redraw_seconds apart, and ten draw-times apart, so drawing costs under 10% of the training
        # time; redraw_seconds=0 draws every step (slow: for tests)
        wait = max(self.redraw_seconds, 10 * self.render_seconds) if self.redraw_seconds > 0 else 0.0
        if self._last_draw is None or now - self._last_draw >= wait:
            self.redraw()

    def redraw(self) -> None:
        """Draw the curves as recorded so far."""
        hist = self.history
        if hist is not None and hist.steps:
            self.raw_line.set_data(hist.steps, hist.loss)
            self.line.set_data(hist.steps, _running_mean(hist.loss, self.smooth))
            if self.eval_key and hist.evals:
                self.eval_dots.set_data(*hist.eval_series(self.eval_key))
            self.ax.relim()
            self.ax.autoscale_view()
            elapsed = time.perf_counter() - self._t0 if self._t0 is not None else 0.0
            rate = f"{self.step / elapsed:.1f} steps/s" if elapsed > 0 else ""
            self.status.value = f"step {self.step} | loss {self.last_loss:.3f} | {rate}"
        self.render()
        self._last_draw = time.perf_counter()

    def __enter__(self) -> TrainingDashboard:
        self.show()
        return self

    def __exit__(self, *exc) -> None:
        self.redraw()
        self.refresh_static()  # the saved notebook keeps the final curves, not the empty axes

    @property
    def state(self) -> dict:
        return {"method": self.method, "step": self.step, "loss": self.last_loss}

    @property
    def description(self) -> str:
        label = method_style(self.method)["label"]
        hist = self.history
        if hist is None or not hist.steps:
            return f"Empty axes that fill with the training loss of {label}, step by step, while it trains."
        evals = ""
        if self.eval_key and hist.evals:
            evals = f", with {len(hist.evals)} evaluations of {self.eval_key} as open markers"
        mean = float(_running_mean(hist.loss, self.smooth)[-1])
        return (f"The training loss of {label} over {len(hist.steps)} steps, each step faint and the running mean "
                f"of {self.smooth} in bold{evals}, the running mean ending at {mean:.3f} nats per character.")


def _running_mean(values: list[float], k: int) -> np.ndarray:
    """Mean of the last k values at each position (fewer at the start)."""
    v = np.asarray(values, dtype=float)
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - k, 0)
    return (c[idx] - c[lo]) / (idx - lo)


# ------------------------------------------------------------------------------------- memory and parameters
# The arithmetic lives in lora_teach.memory; the calculator only displays it (names kept here for old imports).


class MemoryCalculator(FigureWidget):
    """Choose a model size, a method, a rank, the LoRA targets, a precision mode and the frozen base's bit width:
    see trainable parameters, training memory (weights, gradients, optimizer state), activations on a separate
    line, and the checkpoint size, against full fine-tuning. The arithmetic is lora_teach.memory's."""

    kind = "memory-calculator"
    RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    BASE_OPTIONS = (("mode's", "mode"), ("16 bit", 16), ("8 bit", 8), ("4 bit (NF4)", 4))

    def __init__(self, model: str = "gpt3-175b", method: str = "lora", r: int = 4, targets: str = "q,v",
                 precision: str = "fp16", base_bits: int | None = None):
        memory_estimate(model, method, r, targets, precision, base_bits=base_bits)  # checks before anything is built
        if r not in self.RANKS:
            raise ValueError(f"r must be one of {self.RANKS} in the calculator, got {r!r}")
        if not isinstance(targets, str):
            raise ValueError(f"targets must be one of {list(TARGET_SETS)} in the calculator, got {targets!r}")
        if base_bits is not None and base_bits not in (16, 8, 4):
            raise ValueError(f"base_bits must be None, 16, 8 or 4 in the calculator, got {base_bits!r}")
        self.model = widgets.Dropdown(options=[(m.name, key) for key, m in MODEL_SIZES.items()], value=model,
                                      description="model")
        self.method = widgets.ToggleButtons(options=[("full fine-tuning", "full"), ("LoRA", "lora")], value=method,
                                            description="method")
        self.r = widgets.SelectionSlider(options=self.RANKS, value=r, description="rank r", continuous_update=False,
                                         style=_slider_style())
        self.targets = widgets.Dropdown(options=list(TARGET_SETS), value=targets, description="LoRA on",
                                        layout=widgets.Layout(width="190px"))
        self.precision = widgets.Dropdown(options=list(PRECISIONS), value=precision, description="precision",
                                          layout=widgets.Layout(width="220px"))
        self.base_bits = widgets.ToggleButtons(options=list(self.BASE_OPTIONS),
                                               value="mode" if base_bits is None else base_bits,
                                               description="frozen base", style={"button_width": "80px"})
        self.table = widgets.HTML()
        super().__init__([[self.model, self.precision], [self.method, self.base_bits], [self.r, self.targets]],
                         figsize=(10, 3.2))
        self.ui.children = (*self.ui.children[:-1], self.table, self.image)
        with _fixed_titles():
            self._build()
        self._draw_scales()
        self._draw()
        self.render()
        for control in (self.model, self.method, self.r, self.targets, self.precision, self.base_bits):
            control.observe(self._on_change, names="value")

    # colour, and a hatch so the three parts of a bar also differ in grey-scale
    PARTS = (("weights", "#777777", ""), ("gradients", "#E69F00", "//"), ("optimizer", "#D55E00", ".."))

    def _build(self) -> None:
        """Two rows of stacked bars (full fine-tuning, LoRA) and two checkpoint bars, all updated in place."""
        self.ax_mem, self.ax_ckpt = self.figure.subplots(1, 2, width_ratios=[1.6, 1])
        ax = self.ax_mem
        self.mem_bars = {row: {part: ax.barh(y, 0, height=0.5, color=colour, hatch=hatch, edgecolor="white",
                                             label=part if y == 0 else None)[0]
                               for part, colour, hatch in self.PARTS} for y, row in enumerate(("full", "lora"))}
        self.mem_labels = {row: ax.text(0, y - 0.32, "", fontsize=SMALL) for y, row in enumerate(("full", "lora"))}
        self.mem_totals = {row: ax.text(0, y, "", va="center", fontsize=SMALL)
                           for y, row in enumerate(("full", "lora"))}
        ax.set_ylim(1.5, -0.8)
        ax.set_yticks([])
        ax.legend(loc="lower right", fontsize=SMALL)
        ax = self.ax_ckpt
        colours = {"full": method_style("full")["color"], "lora": method_style("lora")["color"]}
        self.ckpt_bars = {row: ax.barh(y, 1, height=0.5, color=colours[row])[0] for y, row in enumerate(colours)}
        self.ckpt_labels = {row: ax.text(0, y - 0.32, name, fontsize=SMALL)
                            for (y, row), name in zip(enumerate(colours), ("whole model", "LoRA adapter"), strict=True)}
        self.ckpt_totals = {row: ax.text(0, y, "", va="center", fontsize=SMALL) for y, row in enumerate(colours)}
        ax.set_xscale("log")
        ax.set_ylim(1.5, -0.8)
        ax.set_yticks([])
        ax.set_xlabel("checkpoint file (bytes, log scale)")
        self.animate(*(b for row in self.mem_bars.values() for b in row.values()), *self.mem_labels.values(),
                     *self.mem_totals.values(), *self.ckpt_bars.values(), *self.ckpt_labels.values(),
                     *self.ckpt_totals.values(), self.ax_mem.title, self.ax_ckpt.title)

    @property
    def full_precision(self) -> str:
        """The precision of the full fine-tuning row: the chosen one, or bf16-mixed beside QLoRA."""
        return "bf16-mixed" if self.precision.value == "qlora" else self.precision.value

    def _draw_scales(self) -> None:
        """Axis limits and units, which depend on the model and the precision only (a full redraw)."""
        m = self.model.value
        full = memory_estimate(m, "full", precision=self.full_precision)
        smallest = memory_estimate(m, "lora", self.RANKS[0], "q,v", "bf16")["checkpoint"]
        self._scale, unit = _unit(full["total"])
        self.ax_mem.set_xlim(0, full["total"] / self._scale * 1.3)
        self.ax_mem.set_xlabel(f"training memory ({unit}), activations not included")
        self.ax_ckpt.set_xlim(smallest / 3, 4 * full["checkpoint"] * 300)

    def estimates(self) -> tuple[dict, dict]:
        """(full fine-tuning, the chosen method) for the current model and precision."""
        m, bits = self.model.value, self.base_bits.value
        full = memory_estimate(m, "full", precision=self.full_precision)
        if self.method.value == "full":
            return full, full
        return full, memory_estimate(m, "lora", self.r.value, self.targets.value, self.precision.value,
                                     base_bits=None if bits == "mode" else bits)

    def _draw(self) -> None:
        full, chosen = self.estimates()
        lora = chosen["method"] == "lora"
        self.r.disabled = self.targets.disabled = self.base_bits.disabled = not lora
        rows = {"full": full, "lora": chosen}
        names = {"full": f"full fine-tuning ({full['precision']})",
                 "lora": f"LoRA, r={self.r.value} on {self.targets.value}, base {chosen['base_bits'] or 0:.3g} bit"}
        for row, est in rows.items():
            visible = row == "full" or lora
            left = 0.0
            for part, _, _ in self.PARTS:
                bar = self.mem_bars[row][part]
                bar.set_x(left)
                bar.set_width(est[part] / self._scale)
                bar.set_visible(visible)
                left += est[part] / self._scale
            self.mem_labels[row].set_text(names[row])
            self.mem_totals[row].set_x(left)
            self.mem_totals[row].set_text(f" {format_bytes(est['total'])}")
            lo = self.ax_ckpt.get_xlim()[0]
            self.ckpt_bars[row].set_x(lo)
            self.ckpt_bars[row].set_width(est["checkpoint"] - lo)
            self.ckpt_labels[row].set_x(lo)
            self.ckpt_totals[row].set_x(est["checkpoint"])
            self.ckpt_totals[row].set_text(f" {format_bytes(est['checkpoint'])}")
            for artist in (self.mem_labels[row], self.mem_totals[row], self.ckpt_bars[row], self.ckpt_labels[row],
                           self.ckpt_totals[row]):
                artist.set_visible(visible)
        self.ax_mem.set_title(f"{full['model']}, {self.precision.value}, Adam", fontsize=SMALL)
        ratio = full["checkpoint"] / chosen["checkpoint"]
        self.ax_ckpt.set_title(f"adapter: {ratio:,.0f}x smaller" if lora else "checkpoint", fontsize=SMALL)
        self.table.value = (_table_html(full, chosen, self.model.value) + _precision_note(self.precision.value)
                            + _paper_note(self.model.value))

    def _on_change(self, change) -> None:
        scales = change["owner"] in (self.model, self.precision)
        if scales:
            self._draw_scales()
        self._draw()
        self.render(full=scales)

    @property
    def state(self) -> dict:
        full, chosen = self.estimates()
        return {**chosen, "model_key": self.model.value, "full_total": full["total"]}

    @property
    def description(self) -> str:
        full, chosen = self.estimates()
        if chosen["method"] != "lora":
            return (f"A stacked bar of the training memory of full fine-tuning of {full['model']} "
                    f"({format_bytes(full['total'])} for weights, gradients and optimizer state) beside its "
                    f"checkpoint file of {format_bytes(full['checkpoint'])}.")
        return (f"Stacked bars of training memory (weights, gradients, optimizer state) for {full['model']}: "
                f"{format_bytes(full['total'])} for full fine-tuning against {format_bytes(chosen['total'])} for "
                f"LoRA with r = {self.r.value} on {self.targets.value}, beside checkpoint files of "
                f"{format_bytes(full['checkpoint'])} against {format_bytes(chosen['checkpoint'])}.")


def _unit(n: float) -> tuple[float, str]:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return size, unit
    return 1.0, "B"


def _precision_note(precision: str) -> str:
    """What the chosen mode counts, stated on screen."""
    return f"<p style='font-size:90%'><b>{precision}</b>: {PRECISIONS[precision].description}.</p>"


def _paper_note(model_key: str) -> str:
    """The LoRA paper's GPT-3 figures or QLoRA's 65B figure beside this calculator's arithmetic."""
    if model_key == "gpt3-175b":
        p = lora_paper_gpt3()
        return ("<p style='font-size:90%'>The LoRA paper (Hu et al., 2021) reports for GPT-3 175B with Adam: training "
                "memory 1.2 TB &rarr; 350 GB, checkpoint 350 GB &rarr; 35 MB (r = 4 on W<sub>q</sub>, W<sub>v</sub>). "
                f"In pure fp16: LoRA {format_bytes(p['lora_total'])} and {format_bytes(p['lora_checkpoint'])}; full "
                f"fine-tuning {format_bytes(p['full_weights_and_moments'])} for weights and Adam's moments, "
                f"{format_bytes(p['full_total'])} with gradients: the paper's 1.2 TB lies between. Mixed precision "
                f"as ZeRO counts it (16 bytes a parameter) would need {format_bytes(p['full_mixed_precision'])}.</p>")
    if model_key == "65b":
        p = qlora_paper_65b()
        return ("<p style='font-size:90%'>QLoRA (Dettmers et al., 2023) fine-tunes LLaMA 65B on one 48 GB GPU, "
                "against more than 780 GB for 16-bit full fine-tuning. Precision 'qlora', r = 64 on all linear "
                f"layers: {format_bytes(p['qlora_total'])}, plus {format_bytes(p['activations_checkpointed'])} of "
                "activations for one sequence of 512 tokens with gradient checkpointing. Full fine-tuning with 16-bit "
                f"weights and gradients and 32-bit Adam moments (12 bytes a parameter): "
                f"{format_bytes(p['full_16bit_12_bytes'])}.</p>")
    return ""


def _table_html(full: dict, chosen: dict, model_key: str) -> str:
    cols = [("full fine-tuning", full)] + ([("LoRA", chosen)] if chosen["method"] == "lora" else [])
    head = "".join(f"<th style='text-align:right;padding:0 12px'>{name}</th>" for name, _ in cols)
    share = lambda e: f"{e['trainable']:,} ({100 * e['trainable'] / e['total_parameters']:.3g}%)"
    size = MODEL_SIZES[model_key]
    act = activation_estimate(size, 1, size.context)
    act_ckpt = activation_estimate(size, 1, size.context, checkpointing=True)
    rows = [("trainable parameters", share),
            ("weights", lambda e: format_bytes(e["weights"])),
            ("gradients", lambda e: format_bytes(e["gradients"])),
            ("optimizer state (Adam; master weights)", lambda e: format_bytes(e["optimizer"])),
            ("training memory", lambda e: format_bytes(e["total"])),
            ("checkpoint file", lambda e: format_bytes(e["checkpoint"])),
            (f"activations, 1 &times; {size.context} tokens (separate; checkpointed)",
             lambda e: f"{format_bytes(act)} ({format_bytes(act_ckpt)})")]
    body = "".join(f"<tr><td>{label}</td>" + "".join(f"<td style='text-align:right;padding:0 12px'>{fmt(e)}</td>"
                                                      for _, e in cols) + "</tr>" for label, fmt in rows)
    return (f"<table><tr><th></th>{head}</tr>{body}</table><p style='font-size:90%'>Activations: "
            f"{ACTIVATION_ASSUMPTIONS}.</p>")



# ---------------------------------------------------------------------------- how many GPUs (notebook 15)
class GPUCountCalculator(FigureWidget):
    """How many GPUs of which kind does this fine-tune need? Choose a model, a method, a precision mode, LoRA's
    rank and the tokens per GPU: a grid gives, for every GPU kind and every sharding (replicated, ZeRO-1, ZeRO-2 =
    SHARD_GRAD_OP, ZeRO-3 = FULL_SHARD, ZeRO-3 with CPU offload), the fewest GPUs that hold it (lora_teach.memory's
    `gpus_needed`), and a table below it the memory per GPU."""

    kind = "gpu-count-calculator"
    SHARDINGS = (("replicated\n(DDP)", 0, "none"), ("ZeRO-1", 1, "none"), ("ZeRO-2\nSHARD_GRAD_OP", 2, "none"),
                 ("ZeRO-3\nFULL_SHARD", 3, "none"), ("ZeRO-3 +\nCPU offload", 3, "all"))
    RANKS = (8, 16, 32, 64)
    TOKENS = (512, 1024, 2048, 4096)

    def __init__(self, model: str = "70b", method: str = "lora", precision: str = "qlora", r: int = 16,
                 seq: int = 512):
        from .memory import REAL_MODELS

        models = {**MODEL_SIZES, **REAL_MODELS}
        checks = (("model", model, list(models)), ("method", method, list(METHODS)),
                  ("precision", precision, list(PRECISIONS)), ("r", r, self.RANKS), ("seq", seq, self.TOKENS))
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)} in the calculator, got {value!r}")
        if method == "full" and precision == "qlora":
            raise ValueError("full fine-tuning has no frozen base to store in 4 bits: use method='lora' with "
                             "precision='qlora', or another precision")
        self.model = widgets.Dropdown(options=[(m.name, key) for key, m in models.items()], value=model,
                                      description="model")
        self.precision = widgets.Dropdown(options=list(PRECISIONS), value=precision, description="precision",
                                          layout=widgets.Layout(width="220px"))
        self.method = widgets.ToggleButtons(options=[("full fine-tuning", "full"), ("LoRA", "lora")], value=method,
                                            description="method")
        self.r = widgets.Dropdown(options=self.RANKS, value=r, description="LoRA r",
                                  layout=widgets.Layout(width="160px"))
        self.seq = widgets.Dropdown(options=self.TOKENS, value=seq, description="tokens / GPU",
                                    layout=widgets.Layout(width="200px"), style=_slider_style())
        self.table = widgets.HTML()
        super().__init__([[self.model, self.precision], [self.method, self.r, self.seq]], figsize=(10, 3.6))
        self.ui.children = (*self.ui.children[:-1], self.image, self.table)
        self.ax = self.figure.subplots()
        self._draw()
        self.render()
        for control in (self.model, self.method, self.precision, self.r, self.seq):
            control.observe(self._on_change, names="value")

    def _settings(self, batch: int = 1) -> dict:
        s = {"precision": self.precision.value, "batch": batch, "seq": self.seq.value}
        if self.method.value == "lora":
            s.update(r=self.r.value, targets="all linear")
        return s

    def counts(self) -> dict:
        """{GPU kind: {sharding: fewest GPUs, or None}} for the current choices (shardings named on one line)."""
        from .memory import GPU_KINDS, gpus_needed

        m, method = self.model.value, self.method.value
        return {gpu: {label.replace("\n", " "): gpus_needed(m, method, gpu, stage=stage, offload=offload,
                                                            **self._settings())
                      for label, stage, offload in self.SHARDINGS} for gpu in GPU_KINDS}

    def _draw(self) -> None:
        from .memory import GPU_KINDS, SHARDING_ASSUMPTIONS, sharded_memory

        self.r.disabled = self.method.value == "full"
        counts = self.counts()
        grid = np.array([[np.nan if n is None else math.log2(n) for n in row.values()] for row in counts.values()])
        ax = self.ax
        ax.clear()
        ax.imshow(grid, cmap="Blues", vmin=-1, vmax=max(8.0, np.nanmax(grid) if np.isfinite(grid).any() else 8.0),
                  aspect="auto")
        for i, row in enumerate(counts.values()):
            for j, n in enumerate(row.values()):
                ax.text(j, i, "does not fit" if n is None else f"{n:,}", ha="center", va="center",
                        fontsize=SMALL, color="black" if n is None or n < 64 else "white")
        ax.set_xticks(range(len(self.SHARDINGS)), [label for label, _, _ in self.SHARDINGS], fontsize=SMALL)
        ax.set_yticks(range(len(GPU_KINDS)), list(GPU_KINDS), fontsize=SMALL)
        ax.tick_params(length=0)
        ax.set_title(self._title(), fontsize=SMALL)
        rows = []
        for label, stage, offload in self.SHARDINGS:
            n = counts[next(iter(counts))][label.replace("\n", " ")]  # on the first GPU kind
            e = sharded_memory(self.model.value, self.method.value, gpus=n or 1, stage=stage, offload=offload,
                               **self._settings())
            rows.append(f"<tr><td>{label.replace(chr(10), ' ')}</td><td>{n or 1}</td>"
                        + "".join(f"<td style='text-align:right;padding:0 10px'>{format_bytes(e[k])}</td>"
                                  for k in ("model_states", "gathered", "activations", "total", "cpu")) + "</tr>")
        head = "".join(f"<th style='padding:0 10px'>{h}</th>" for h in
                       ("sharding", "GPUs", "model states", "gathered blocks", "activations", "per GPU", "in CPU"))
        first = next(iter(GPU_KINDS))
        self.table.value = (f"<p style='font-size:90%'>Memory per GPU on {first}s (one GPU where it does not "
                            f"fit):</p><table><tr>{head}</tr>{''.join(rows)}</table><p style='font-size:90%'>"
                            f"Counted: {SHARDING_ASSUMPTIONS}.</p>")

    def _what(self) -> str:
        what = ("full fine-tuning" if self.method.value == "full"
                else f"LoRA r = {self.r.value} on all linear layers")
        return f"{what} of {self.model.label} in {self.precision.value}, {self.seq.value} tokens per GPU"

    def _title(self) -> str:
        return f"fewest GPUs for {self._what()}"

    def _on_change(self, change) -> None:
        if self.method.value == "full" and self.precision.value == "qlora":
            self.precision.value = "bf16-mixed"  # full fine-tuning has no 4-bit base; this triggers the redraw
            return
        self._draw()
        self.render()

    @property
    def state(self) -> dict:
        return {"model": self.model.value, "method": self.method.value, "precision": self.precision.value,
                "r": self.r.value, "seq": self.seq.value}

    @property
    def description(self) -> str:
        counts = self.counts()
        fits = {gpu: row["ZeRO-3 FULL_SHARD"] for gpu, row in counts.items()}
        listed = ", ".join(f"{n} x {gpu}" for gpu, n in fits.items() if n is not None) or "none of the GPU kinds"
        return (f"A grid of the fewest GPUs of each kind that hold {self._what()} under each sharding, where fully "
                f"sharded (ZeRO-3) it needs {listed}.")
