"""Widgets: set values in code, check the state and the figure follow; the memory calculator shows
lora_teach.memory's arithmetic (tested in test_memory.py); the precomputed adapters are what they claim to be."""

import base64
from pathlib import Path

import numpy as np
import pytest
import torch

from lora_teach import memory as M
from lora_teach import widgets as W
from lora_teach.data import LanguageModelingTask
from lora_teach.training import History, train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PRECOMPUTED = Path(W.__file__).parent / "data" / "precomputed" / W.PRECOMPUTED


def small_matrices():
    g = torch.Generator().manual_seed(0)
    return {"picture": W.toy_picture(32), "signed": torch.randn(24, 16, generator=g)}


@pytest.fixture(scope="module")
def updates():
    return W.load_lora_updates()


# ------------------------------------------------------------------------------------------------- toy matrices
def test_low_rank_matrix_has_the_rank_it_promises():
    M = W.low_rank_matrix(30, 20, rank=4, noise=0.0)
    assert M.shape == (30, 20)
    assert torch.linalg.matrix_rank(M).item() == 4


def test_toy_picture_is_a_grey_scale_image_of_high_rank():
    P = W.toy_picture(64)
    assert P.shape == (64, 64) and P.min() >= 0 and P.max() <= 1
    assert torch.linalg.matrix_rank(P).item() > 8  # the roof and the sun need many directions


# ------------------------------------------------------------------------------------------------ rank explorer
def test_rank_explorer_error_is_eckart_young_and_approximation_has_rank_r():
    ex = W.RankExplorer(small_matrices(), rank=3, matrix="signed")
    M = small_matrices()["signed"].double().numpy()
    for r in (1, 3, 7, 16):
        ex.rank.value = r
        approx = ex.approximation()
        assert np.linalg.matrix_rank(approx) == r
        direct = np.linalg.norm(M - approx) / np.linalg.norm(M)
        assert ex.state["relative_error"] == pytest.approx(direct, rel=1e-9)
        assert ex.state["params_low_rank"] == r * (24 + 16) and ex.state["params_full"] == 24 * 16
    assert ex.state["relative_error"] < 1e-12  # full rank: exact


def test_rank_explorer_slider_updates_state_and_figure():
    ex = W.RankExplorer(small_matrices(), rank=2)
    before_png, before_err = ex.png(), ex.state["relative_error"]
    assert before_png.startswith(PNG_MAGIC)
    ex.rank.value = 6
    assert ex.state["rank"] == 6 and ex.state["relative_error"] < before_err
    assert ex.png() != before_png
    np.testing.assert_allclose(ex.im_approx.get_array(), ex.approximation())


def test_rank_explorer_matrix_change_clamps_rank_and_redraws():
    ex = W.RankExplorer(small_matrices(), rank=30, matrix="picture")
    before = ex.png()
    ex.matrix.value = "signed"  # 24 x 16: at most rank 16
    assert ex.rank.max == 16 and ex.rank.value == 16
    assert ex.state["shape"] == (24, 16)
    assert ex.png() != before
    assert ex.im_M.get_array().shape == (24, 16)


@pytest.mark.parametrize("bad, message", [
    ({"v": torch.ones(5)}, "2-D"),
    ({"nan": torch.full((3, 3), float("nan"))}, "NaN"),
    ({"zeros": torch.zeros(3, 3)}, "all zeros"),
    ({}, "non-empty"),
])
def test_rank_explorer_rejects_bad_matrices(bad, message):
    with pytest.raises(ValueError, match=message):
        W.RankExplorer(bad)


def test_rank_explorer_rejects_bad_rank_and_name():
    with pytest.raises(ValueError, match="rank must be an int from 1 to 16"):
        W.RankExplorer(small_matrices(), rank=17, matrix="signed")
    with pytest.raises(ValueError, match="is not one of"):
        W.RankExplorer(small_matrices(), matrix="nope")


def test_rank_explorer_defaults_offer_real_weights_and_updates(updates):
    """...and loading them (the base model) leaves the global random stream alone."""
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    ex = W.RankExplorer()  # loads the base model for its default matrices
    assert torch.equal(torch.random.get_rng_state(), before), "it drew from the global torch generator"
    _use(ex)
    assert torch.equal(torch.random.get_rng_state(), before), "using it drew from the global torch generator"
    names = list(ex.matrix.options)
    assert any(n.startswith("base weight") for n in names)
    assert any(n.startswith("full fine-tuning Delta W") for n in names)
    lora = next(n for n in names if n.startswith("LoRA update"))
    ex.matrix.value = lora
    r = updates.ranks[-1]
    S = ex._svd[lora].S
    assert (S > S[0] * 1e-4).sum() <= r  # a product B A has rank at most r


# --------------------------------------------------------------------------------------------- precomputed data
def test_precomputed_file_is_small_safetensors():
    assert PRECOMPUTED.stat().st_size < 1_000_000
    assert not list(PRECOMPUTED.parent.glob("*.pkl")) and not list(PRECOMPUTED.parent.glob("*.pt"))


def test_precomputed_adapters_have_lora_shapes_and_start_at_the_base(updates):
    for layer in updates.layers:
        W0 = updates.weights[layer]
        out_f, in_f = W0.shape
        for r in updates.ranks:
            assert updates.A(r, 0, layer).shape == (r, in_f)
            assert updates.B(r, 0, layer).shape == (out_f, r)
            assert torch.count_nonzero(updates.B(r, 0, layer)) == 0  # B = 0 at init: the update starts at zero
            assert updates.delta(r, updates.steps[-1], layer).abs().max() > 0
        assert updates.full_delta(layer).shape == (out_f, in_f)
    for r in updates.ranks:
        assert updates.loss(r, 0) == pytest.approx(updates.meta["base_loss"], abs=1e-6)
        assert updates.loss(r, updates.steps[-1]) < updates.meta["base_loss"]  # training helped
        assert updates.alpha_loss(r, updates.alpha) == pytest.approx(updates.loss(r, updates.steps[-1]), abs=1e-6)


def test_precomputed_rejects_unknown_values(updates):
    with pytest.raises(ValueError, match="r=3 was not precomputed"):
        updates.A(3, 0, updates.layers[0])
    with pytest.raises(ValueError, match="step=7 was not precomputed"):
        updates.B(updates.ranks[0], 7, updates.layers[0])
    with pytest.raises(FileNotFoundError, match="precompute_lora_updates.py"):
        W.load_lora_updates("/nonexistent/file.safetensors")


# ------------------------------------------------------------------------------------------- LoRA update viewer
def test_viewer_shows_the_scaled_update_of_the_chosen_adapter(updates):
    v = W.LoRAUpdateViewer(updates)
    layer, r, step = v.layer.value, v.rank.value, v.step.value
    expected = (updates.alpha / r) * (updates.B(r, step, layer) @ updates.A(r, step, layer))
    np.testing.assert_allclose(v.delta_shown(), expected.numpy(), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(np.asarray(v.im_sum.get_array()), (updates.weights[layer] + expected).numpy(),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("control, value", [("rank", "other"), ("alpha", "other"), ("step", 0), ("layer", "other")])
def test_viewer_controls_update_state_and_figure(updates, control, value):
    v = W.LoRAUpdateViewer(updates)
    widget = getattr(v, control)
    if value == "other":
        value = next(o for o in (widget.options if control != "layer" else updates.layers) if o != widget.value)
    before_png, before_state = v.png(), v.state
    widget.value = value
    assert v.state[control] == value and v.state != before_state
    assert v.png() != before_png


def test_viewer_alpha_scales_the_update_linearly_and_step_zero_is_no_update(updates):
    v = W.LoRAUpdateViewer(updates, alpha=updates.alphas[1])
    n1 = v.state["delta_norm"]
    v.alpha.value = updates.alphas[2]
    assert v.state["delta_norm"] == pytest.approx(n1 * updates.alphas[2] / updates.alphas[1], rel=1e-5)
    v.step.value = 0
    assert v.state["delta_norm"] == 0.0 and np.abs(v.delta_shown()).max() == 0.0
    assert v.state["loss"] is None  # alpha differs from training and it is not the last step: not precomputed
    v.alpha.value = updates.alpha
    assert v.state["loss"] == pytest.approx(updates.meta["base_loss"], abs=1e-6)


def test_viewer_rejects_values_that_were_not_precomputed(updates):
    with pytest.raises(ValueError, match="r=3 was not precomputed"):
        W.LoRAUpdateViewer(updates, rank=3)
    with pytest.raises(ValueError, match="alpha=5 was not precomputed"):
        W.LoRAUpdateViewer(updates, alpha=5)
    with pytest.raises(TypeError, match="LoRAUpdates"):
        W.LoRAUpdateViewer({"not": "updates"})


# ------------------------------------------------------------------------------------------- training dashboard
def test_dashboard_follows_train_through_its_callback(tiny_model):
    task = LanguageModelingTask("shakespeare", block_size=32)
    dash = W.TrainingDashboard("lora", redraw_seconds=0.0, eval_key="loss")
    empty = dash.png()
    seen = []
    hist = train(tiny_model, task, steps=4, lr=1e-3, batch_size=4, progress=False, eval_every=2,
                 callback=lambda s, loss, h: (dash.callback(s, loss, h), seen.append(dash.png())))
    assert dash.state["step"] == 4 and dash.state["loss"] == hist.loss[-1]
    assert len(set(seen)) == 4 and empty not in seen  # one new figure per step
    x, y = dash.line.get_data()
    assert list(x) == hist.steps and y[0] == pytest.approx(hist.loss[0])
    assert list(dash.eval_dots.get_data()[0]) == [2]  # the evaluation recorded during training
    assert "step 4" in dash.status.value


def test_dashboard_throttles_redraws(tiny_model):
    task = LanguageModelingTask("shakespeare", block_size=32)
    dash = W.TrainingDashboard("full", redraw_seconds=3600.0)
    renders = []
    train(tiny_model, task, steps=3, lr=1e-3, batch_size=2, progress=False,
          callback=lambda s, loss, h: (dash.callback(s, loss, h), renders.append(dash.png())))
    assert len(set(renders)) == 1  # only the first step redrew
    dash.redraw()
    assert dash.png() != renders[0]


def test_dashboard_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown method"):
        W.TrainingDashboard("no-such-method")
    with pytest.raises(TypeError, match="History"):
        W.TrainingDashboard("lora", baselines={"full": [1, 2, 3]})
    with pytest.raises(ValueError, match="smooth"):
        W.TrainingDashboard("lora", smooth=0)


# ------------------------------------------------------------------------------------------ memory calculator
# The arithmetic is lora_teach.memory's and is tested in tests/test_memory.py; here: the widget shows it.
def test_calculator_shows_the_memory_module_figures():
    calc = W.MemoryCalculator()
    full, lora = M.memory_estimate("gpt3-175b", "full", precision="fp16"), M.memory_estimate("gpt3-175b")
    assert calc.estimates() == (full, lora)
    for figure in (full["total"], lora["total"], lora["checkpoint"]):
        assert M.format_bytes(figure) in calc.table.value
    assert M.PRECISIONS["fp16"].description in calc.table.value  # the mode's bytes are stated on screen
    assert "1.2 TB" in calc.table.value and "Activations:" in calc.table.value


def test_calculator_precision_and_base_bits():
    calc = W.MemoryCalculator("7b", r=8, targets="all linear", precision="bf16-mixed")
    assert calc.state["full_total"] == 16 * M.MODEL_SIZES["7b"].n_params
    before = calc.state["weights"]
    calc.base_bits.value = 4
    assert calc.state["weights"] < before / 3 and calc.state["base_bits"] == M.NF4_BITS
    calc.base_bits.value = "mode"
    calc.precision.value = "qlora"  # a 4-bit base by default, compared with 16-bit mixed-precision full fine-tuning
    assert calc.state["base_bits"] == M.NF4_BITS and calc.state["full_total"] == 16 * M.MODEL_SIZES["7b"].n_params
    assert "12 bytes per adapter parameter" in calc.table.value
    calc.model.value = "65b"
    assert "48 GB" in calc.table.value and "780 GB" in calc.table.value
    calc.method.value = "full"
    assert calc.base_bits.disabled and calc.state["precision"] == "bf16-mixed"


def test_calculator_widget_controls_update_state_table_and_figure():
    calc = W.MemoryCalculator()
    assert calc.state["trainable"] == 18_874_368 and "GPT-3 175B" in calc.state["model"]
    for control, value, key, expected in [
        ("r", 8, "trainable", 37_748_736),
        ("targets", "q,k,v,o", "trainable", 75_497_472),
        ("precision", "fp32", "checkpoint", 4 * 75_497_472),
        ("base_bits", 4, "base_bits", M.NF4_BITS),
        ("model", "tiny", "model", "this course's tiny GPT"),
        ("method", "full", "trainable", W.MODEL_SIZES["tiny"].n_params),
    ]:
        before_png, before_table = calc.png(), calc.table.value
        getattr(calc, control).value = value
        assert calc.state[key] == expected
        assert calc.png() != before_png and calc.table.value != before_table
    assert calc.r.disabled and calc.targets.disabled  # rank and targets mean nothing for full fine-tuning


def test_calculator_rejects_bad_arguments_before_building():
    with pytest.raises(ValueError, match="unknown model"):
        W.MemoryCalculator(model="gpt5")
    with pytest.raises(ValueError, match="r must be one of"):
        W.MemoryCalculator(r=3)
    with pytest.raises(ValueError, match="base_bits must be"):
        W.MemoryCalculator(base_bits=32)
    with pytest.raises(ValueError, match="no frozen base"):
        W.MemoryCalculator(method="full", precision="qlora")


# ----------------------------------------------------------------------------------------- display and fallback
@pytest.mark.parametrize("make", [
    lambda: W.RankExplorer(small_matrices()),
    lambda: W.MemoryCalculator("gpt2"),
    lambda: W.TrainingDashboard("lora"),
])
def test_display_bundle_has_the_live_widget_and_a_static_png(make):
    widget = make()
    bundle = widget._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == widget.ui.model_id
    assert base64.b64decode(bundle["image/png"]) == widget.png()
    assert widget.png().startswith(PNG_MAGIC)
    assert "lora-teach-widget" in widget.ui._dom_classes
    assert type(widget).__name__ in bundle["text/plain"]


def test_quick_redraw_equals_full_redraw():
    ex = W.RankExplorer(small_matrices(), rank=2)
    ex.rank.value = 5  # quick: only the animated artists are drawn over the saved background
    quick = ex.png()
    ex.render(full=True)
    assert ex.png() == quick


def test_widgets_leave_no_pyplot_figures():
    import matplotlib.pyplot as plt

    plt.close("all")
    W.RankExplorer(small_matrices())
    W.MemoryCalculator()
    assert plt.get_fignums() == []



# ------------------------------------------------------------------------------------ the global random stream
def _use(widget) -> None:
    """What a student does with a widget: move every control to another value, or feed the dashboard steps."""
    for control in widget.controls:
        options = getattr(control, "options", None)
        if options:
            values = [o[1] if isinstance(o, tuple) else o for o in options]
            control.value = next(v for v in values if v != control.value)
        elif hasattr(control, "max") and hasattr(control, "min"):
            control.value = control.min if control.value != control.min else control.max
    if isinstance(widget, W.TrainingDashboard):
        history = History(steps=[1, 2], loss=[2.5, 2.4], evals=[(2, {"loss": 2.45})])
        for step, loss in zip(history.steps, history.loss, strict=True):
            widget.callback(step, loss, history)
        widget.redraw()
    widget._repr_mimebundle_()


@pytest.mark.parametrize("make", [
    pytest.param(lambda: W.load_lora_updates(), id="load_lora_updates"),
    pytest.param(lambda: W.load_lora_updates(with_weights=False), id="load_lora_updates-without-weights"),
    pytest.param(lambda: W.RankExplorer(small_matrices()), id="RankExplorer"),  # defaults: in the test above
    pytest.param(lambda: W.LoRAUpdateViewer(), id="LoRAUpdateViewer"),
    pytest.param(lambda: W.TrainingDashboard("lora", redraw_seconds=0.0, eval_key="loss"), id="TrainingDashboard"),
    pytest.param(lambda: W.MemoryCalculator(), id="MemoryCalculator"),
])
def test_widgets_leave_the_global_random_stream_alone(make):
    """A widget cell must not change the seeded results of the cells after it (loading the base model builds a
    GPT, whose initialisation draws from the global generator, before the pretrained weights replace it)."""
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    made = make()
    assert torch.equal(torch.random.get_rng_state(), before), "building it drew from the global torch generator"
    if isinstance(made, W.FigureWidget):
        _use(made)
        assert torch.equal(torch.random.get_rng_state(), before), "using it drew from the global torch generator"
