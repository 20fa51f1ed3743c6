"""Every method's schematic draws, shows its labelled parts, and paints trained parts in the method's course
colour (lora_teach.plotting.method_style) and frozen parts grey."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from lora_teach import diagrams  # noqa: E402
from lora_teach.plotting import method_style  # noqa: E402

GREY = to_rgba(diagrams.FROZEN["edgecolor"])

# function, its method (the colour of its trained parts), labels the figure must show
SCHEMATICS = [
    (diagrams.draw_full_fine_tuning, "full", ["Full fine-tuning", "token + position embeddings", "LN$_1$",
                                              "final LN + LM head", "× L blocks"]),
    (diagrams.draw_adapters, "adapters", ["Houlsby: 2 per block", "Pfeiffer: 1 per block", "adapter", "GELU",
                                          "AdapterHub's Pfeiffer config"]),
    (diagrams.draw_prefix_tuning, "prefix", ["block 1", "block 4", "$P_k^{1}, P_v^{1}$", "during training only",
                                             "MLP"]),
    (diagrams.draw_prompt_tuning, "prompt", ["$p_{1}$", "$e(x_{1})$", "soft prompt", "frozen transformer"]),
    (diagrams.draw_p_tuning, "p-tuning", ["$h_0$", "$h_2$", "bidirectional LSTM", "template", "label"]),
    (diagrams.draw_hf_export, "lora", ["wte", "embed_tokens", "o_proj", "out_proj", "fc1", "PEFT LoRA", "c_attn"]),
    (diagrams.draw_qlora, "qlora", ["4-bit NF4", "dequantise", "$A$\n16-bit", "$B$\n16-bit"]),
    (diagrams.draw_dora, "dora", ["$W_0$", "magnitude $m$", "direction", "$A$", "$B$"]),
    (diagrams.draw_mixed_batch_serving, "lora", ["frozen base", "request 1", "adapter 'b'", "s = alpha / r",
                                                  r"$s\,B_{\mathrm{c}} A_{\mathrm{c}}\,x_{4}$"]),
    (diagrams.draw_lora_layer, "lora", ["$A$", "$B$", "Original layer"]),
    (diagrams.draw_lora_in_attention, "lora", ["$A$", "$B$", "$W_q$\nq_proj"]),
]


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def _parts(fig, role):
    return [p for ax in fig.axes for p in ax.patches if (p.get_gid() or "").startswith(role)]


@pytest.mark.parametrize("draw, method, labels", SCHEMATICS, ids=[s[0].__name__ for s in SCHEMATICS])
def test_schematic_shows_its_parts_in_the_course_colours(draw, method, labels):
    fig = draw()
    try:
        assert isinstance(fig, plt.Figure)
        texts = _texts(fig)
        for label in labels:
            assert any(label in t for t in texts), f"{draw.__name__} lacks a part labelled {label!r}"
        trained, frozen = _parts(fig, "trainable"), _parts(fig, "frozen")
        assert trained and frozen, "a schematic shows both trained and frozen parts"
        colour = to_rgba(method_style(method)["color"])
        for patch in trained:
            assert patch.get_gid() == f"trainable:{method}"
            assert patch.get_edgecolor() == pytest.approx(colour)
        for patch in frozen:
            assert patch.get_edgecolor() == pytest.approx(GREY)
    finally:
        plt.close(fig)


def test_trained_fill_is_a_tint_of_the_method_colour_and_differs_between_methods():
    fills = {m: diagrams.trained_style(m)["facecolor"] for m in ("full", "adapters", "prefix", "prompt",
                                                                   "p-tuning", "lora", "qlora", "dora")}
    assert len(set(fills.values())) == len(fills)
    for method, fill in fills.items():
        base = to_rgba(method_style(method)["color"])[:3]
        assert all(f >= b for f, b in zip(fill, base, strict=True))  # lighter than the colour itself
    with pytest.raises(ValueError, match="unknown method 'adapter'.*adapters"):
        diagrams.trained_style("adapter")


def test_only_the_target_modules_carry_lora_in_the_export_figure():
    fig = diagrams.draw_hf_export(targets=("q_proj", "v_proj", "out_proj"))
    try:
        assert len(_parts(fig, "trainable:lora")) == 2 * 3 + 1  # A and B on each target, one legend swatch
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="not OPT module names.*out_proj"):
        diagrams.draw_hf_export(targets=("o_proj",))


def test_schematic_arguments_are_checked():
    with pytest.raises(ValueError, match="n_layer must be a positive int"):
        diagrams.draw_prefix_tuning(n_layer=0)
    with pytest.raises(ValueError, match="n_prompt must be a positive int"):
        diagrams.draw_prompt_tuning(n_prompt=2.5)
    with pytest.raises(ValueError, match="adapters must be a non-empty sequence"):
        diagrams.draw_mixed_batch_serving(adapters=())


def test_houlsby_draws_twice_the_adapters_of_pfeiffer():
    fig = diagrams.draw_adapters()
    try:
        assert sum(t == "adapter" for t in _texts(fig)) == 3  # 2 Houlsby + 1 Pfeiffer
    finally:
        plt.close(fig)


def test_serving_figure_hatches_each_adapter_differently():
    fig = diagrams.draw_mixed_batch_serving(adapters=("a", "b", "a", "c"))
    try:
        boxes = [p for p in _parts(fig, "trainable:lora") if p.get_width() > 1.0]
        assert [p.get_hatch() or "" for p in boxes] == ["", "///", "", "..."]
    finally:
        plt.close(fig)


# the course's plotting rules (lora_teach.plotting)

def _history(accs, losses):
    from lora_teach.training import History

    hist = History(steps=list(range(1, 11)), loss=[2.0 - 0.1 * i for i in range(10)])
    hist.evals = [(5 * (i + 1), {"accuracy": a, "label_loss": lo}) for i, (a, lo) in enumerate(zip(accs, losses,
                                                                                                 strict=True))]
    return hist


def test_plot_classification_puts_accuracy_with_chance_beside_label_loss():
    from lora_teach.plotting import plot_classification

    ax_acc, ax_loss = plot_classification({"adapters": _history([0.5, 0.6], [0.4, 0.3]),
                                           "full": _history([0.55, 0.7], [0.5, 0.2])}, chance=1 / 3,
                                          start={"accuracy": 0.3, "label_loss": 3.0})
    try:
        lines = {line.get_label(): line for line in ax_acc.lines}
        assert list(lines["adapters"].get_xdata()) == [0, 5, 10]  # the base model at step 0, then the evaluations
        assert list(lines["full fine-tuning"].get_ydata()) == [0.3, 0.55, 0.7]
        assert lines["adapters"].get_color() != lines["full fine-tuning"].get_color()
        chance = [line for line in ax_acc.lines if line.get_label().startswith("chance")]
        assert len(chance) == 1 and list(chance[0].get_ydata()) == [1 / 3, 1 / 3]
        assert ax_loss.get_ylabel().startswith("label loss")
        legend = ax_loss.get_legend()
        assert legend is not None and legend.get_bbox_to_anchor().x0 > ax_loss.get_window_extent().x1 - 1
    finally:
        plt.close(ax_acc.figure)


def test_plot_classification_can_add_the_decision_loss_with_the_equal_probabilities_line():
    import math

    from lora_teach.plotting import plot_classification

    hist = _history([0.5, 0.6], [0.4, 0.3])
    for (_, metrics), decision in zip(hist.evals, [1.5, 2.5], strict=True):
        metrics["decision_loss"] = decision
    axes = plot_classification({"full": hist}, chance=1 / 3, decision_loss=True,
                               start={"accuracy": 0.3, "label_loss": 3.0, "decision_loss": 1.1})
    try:
        assert len(axes) == 3
        curve, uniform = axes[2].lines
        assert list(curve.get_ydata()) == [1.1, 1.5, 2.5] and list(curve.get_xdata()) == [0, 5, 10]
        assert list(uniform.get_ydata()) == pytest.approx([math.log(3)] * 2)
        assert "ln 3 = 1.099" in uniform.get_label() and "decision loss" in axes[2].get_ylabel()
        assert "ln 3 = 1.099" in [t.get_text() for t in axes[2].get_legend().get_texts()][-1]
    finally:
        plt.close(axes[0].figure)
    assert len(plot_classification({"full": hist}, chance=1 / 3)) == 2  # two panels unless asked


def test_plot_classification_refuses_a_run_without_evaluations():
    from lora_teach.plotting import plot_classification
    from lora_teach.training import History

    with pytest.raises(ValueError, match="no evaluations.*eval_every"):
        plot_classification({"lora": History(steps=[1], loss=[1.0])}, chance=0.5)


def test_readable_log_axis_writes_plain_numbers():
    from lora_teach.plotting import chance_line, readable_log_axis

    fig, ax = plt.subplots()
    try:
        ax.plot([1e-3, 1e-1], [0, 1])
        readable_log_axis(ax, "x")
        fig.canvas.draw()
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert "0.001" in labels and "0.003" in labels and "0.01" in labels
        assert not any("$" in t or "10^" in t for t in labels)
        with pytest.raises(ValueError, match="axis must be 'x' or 'y'"):
            readable_log_axis(ax, "z")
        with pytest.raises(ValueError, match="chance must be an accuracy between 0 and 1"):
            chance_line(ax, 33)
    finally:
        plt.close(fig)


def test_every_method_has_its_own_colour():
    from lora_teach.plotting import METHOD_STYLE

    colours = [s["color"] for s in METHOD_STYLE.values()]
    assert len(set(colours)) == len(colours)


def test_run_colours_are_distinct_and_bounded():
    from lora_teach.plotting import RUN_COLOURS, run_colours

    assert len(set(run_colours(len(RUN_COLOURS)))) == len(RUN_COLOURS)
    for bad in (0, len(RUN_COLOURS) + 1, 2.0, True):
        with pytest.raises(ValueError, match="n must be an int from 1 to"):
            run_colours(bad)
