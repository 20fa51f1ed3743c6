import pytest
import torch

from lora_teach.compare import (
    GRID_METHODS,
    GRID_SEEDS,
    LR_GRID,
    PLACEMENTS,
    REPORT_SEEDS,
    Budget,
    austen_task,
    build_placement,
    choose_rates,
    last_hidden_states,
    linear_probe,
    make_task,
    paired,
    run_comparison,
    run_key,
    run_one,
    served_forward,
    summarise,
)
from lora_teach.methods import METHODS
from lora_teach.model import GPT, GPTConfig


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=128)).eval()


def test_unknown_names_are_refused(base):
    with pytest.raises(ValueError, match="unknown method 'bitfit'"):
        run_one("bitfit", "author", base, 0, steps=1, batch_size=2, lr=1e-3)
    with pytest.raises(ValueError, match="unknown task 'imdb'"):
        make_task("imdb")


def test_the_grid_runs_every_method_of_the_registry():
    assert GRID_METHODS == tuple(METHODS)


def test_run_one_and_summary(base):
    rows = [run_one("lora", "author", base, seed, steps=2, batch_size=4, lr=1e-3) for seed in (0, 1)]
    assert {"quality_val", "quality_test", "label_loss_val", "label_loss_test", "trainable", "checkpoint_bytes",
            "step_ms", "activation_bytes", "lr"} <= set(rows[0])
    assert rows[0]["lr"] == 1e-3
    summary = summarise([{**r, "quality": r["quality_test"]} for r in rows])
    assert len(summary) == 1 and summary[0]["seeds"] == 2 and summary[0]["lr"] == 1e-3
    assert summary[0]["quality"] == pytest.approx((rows[0]["quality_test"] + rows[1]["quality_test"]) / 2)


def test_a_shakespeare_run_reports_forgetting_on_both_austen_splits(base):
    row = run_one("lora", "shakespeare", base, 0, steps=1, batch_size=2, lr=1e-3, austen=austen_task(),
                  time_step=False)
    assert {"austen_loss_val", "austen_loss_test", "quality_val", "quality_test"} <= set(row)
    assert "step_ms" not in row and row["austen_loss_val"] != row["austen_loss_test"]


def test_served_forward_runs_the_model_as_served_without_an_autograd_graph(base):
    seen = []
    base.train().requires_grad_(True)  # a trainable model would otherwise record a graph at every forward pass
    handle = base.register_forward_hook(lambda m, args, out: seen.append((torch.is_inference_mode_enabled(),
                                                                         out[0].requires_grad)))
    try:
        forward = served_forward(base, torch.zeros(2, 5, dtype=torch.long))
        forward()
        forward()
    finally:
        handle.remove()
    assert seen == [(True, False), (True, False)]
    assert not base.training


# ------------------------------------------------------------------------------------------ the tuning protocol
def test_the_grid_gives_every_method_four_rates_spanning_thirty_times():
    assert set(LR_GRID) == set(GRID_METHODS)
    for method, rates in LR_GRID.items():
        assert len(rates) >= 4 and list(rates) == sorted(rates), method
        assert max(rates) / min(rates) == pytest.approx(30), method
    assert len(GRID_SEEDS) >= 2 and len(REPORT_SEEDS) == 5 and set(GRID_SEEDS) <= set(REPORT_SEEDS)


def _grid_row(method, task, lr, seed, val, test, label_loss=1.0):
    return {"method": method, "task": task, "lr": str(lr), "seed": str(seed), "quality_val": str(val),
            "quality_test": str(test), "label_loss_val": str(label_loss)}


def test_rates_are_chosen_on_validation_only():
    rows = [_grid_row("lora", "author", 1e-3, s, 0.5, 0.9) for s in (1, 2)]
    rows += [_grid_row("lora", "author", 1e-2, s, v, 0.1) for s, v in ((1, 0.6), (2, 0.5))]
    rows += [_grid_row("full", "shakespeare", lr, 1, v, t) for lr, v, t in ((1e-4, 1.9, 1.0), (1e-3, 1.7, 2.0))]
    rates = choose_rates(rows)
    assert rates == {("lora", "author"): 1e-2, ("full", "shakespeare"): 1e-3}  # higher accuracy, lower loss
    for row in rows:  # the test columns never matter
        row["quality_test"] = "nan"
    assert choose_rates(rows) == rates


def test_a_tie_in_validation_accuracy_goes_to_the_lower_validation_label_loss():
    rows = [_grid_row("prompt", "sentence", 1e-2, 1, 0.4, 0.0, 2.0),
            _grid_row("prompt", "sentence", 3e-2, 1, 0.4, 0.0, 1.5)]
    assert choose_rates(rows) == {("prompt", "sentence"): 3e-2}


def test_paired_compares_by_seed_and_signs_a_loss_so_that_better_means_lower():
    rows = [{"method": m, "task": t, "seed": str(seed), "quality": str(q)}
            for t in ("author", "shakespeare")
            for m, qs in (("lora", (0.50, 0.60, 0.70)), ("full", (0.45, 0.56, 0.64)))
            for seed, q in zip((3, 1, 2), qs, strict=True)]
    acc = paired(rows, "lora", "full", "author")  # differences 0.05, 0.04, 0.06: tight, above zero
    assert acc.mean == pytest.approx(0.05) and acc.verdict == "better" and acc.n == 3
    loss = paired(rows, "lora", "full", "shakespeare")  # the same numbers as losses: lora is higher, so worse
    assert loss.mean == pytest.approx(-0.05) and loss.verdict == "worse"
    # unpaired, the same gap is within the spread of the seeds (0.1 between seeds); paired, it is not
    assert acc.low > 0
    with pytest.raises(ValueError, match="different seeds"):
        paired(rows[:2] + rows[3:6], "lora", "full", "author")
    with pytest.raises(ValueError, match="no runs of 'prompt'"):
        paired(rows, "lora", "prompt", "author")


def test_run_comparison_reuses_a_finished_run_and_reports_test_figures(base):
    rates = {("lora", "author"): 1e-3, ("full", "author"): 1e-4}
    budget = Budget(steps={"author": 2}, batch_size=4, seeds=(0, 1))
    fresh = run_one("lora", "author", base, 0, 2, 4, 1e-3)
    stored = {**fresh, "quality_test": 0.123456}  # a marker: the row is taken as it is, not recomputed
    rows = run_comparison(base, budget, methods=("lora",), rates=rates, done={run_key(stored): stored})
    assert [r["seed"] for r in rows] == [0, 1]
    assert rows[0]["quality"] == 0.123456
    assert rows[1]["quality"] == rows[1]["quality_test"]


# ------------------------------------------------------------------------------- why soft prompts fail here
def test_virtual_tokens_in_front_of_the_passage_get_the_same_hidden_states_for_every_input(base):
    """The causal mask: a position in front of the passage cannot read it, so what the prompt positions hold
    (hence the keys and values they offer later positions, at every layer) is the same for any input. After
    the passage, the virtual tokens read it and differ."""
    task = make_task("author")
    x = task.prompts(task.val[:2])
    text_len = task.prompt_len - len(task.SEP)
    seen = []
    for placement, same in (("before", True), ("after", False)):
        torch.manual_seed(0)
        model = build_placement(placement, base, task).eval()
        seen.clear()
        handle = model.base_model.blocks[-1].register_forward_hook(lambda m, a, out: seen.append(out))
        with torch.no_grad():
            model(x)
        handle.remove()
        hidden = seen[0]  # (2, 20 + T, d): the last block's output, virtual positions included
        virtual = slice(0, 20) if placement == "before" else slice(text_len, text_len + 20)
        assert torch.allclose(hidden[0, virtual], hidden[1, virtual], atol=1e-6) == same, placement
    with pytest.raises(ValueError, match="unknown placement 'middle'"):
        build_placement("middle", base, task)
    assert PLACEMENTS == ("before", "after")


def test_the_linear_probe_reads_the_frozen_models_last_hidden_state(base):
    task = make_task("author")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    feats = last_hidden_states(base, task, task.val[:5])
    assert feats.shape == (5, base.config.n_embd)
    result = linear_probe(base, task, steps=20)
    assert set(result) == {"train", "test"} and all(0.0 <= v <= 1.0 for v in result.values())
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
