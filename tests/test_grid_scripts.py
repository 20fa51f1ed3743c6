"""Reduced runs of the learning-rate grid and the prompt-placement experiment (experiments/): what they write,
and that an interrupted run resumes instead of starting again. No timed assertions."""

from __future__ import annotations

import pytest
import torch
from repo_scripts import load_script

from lora_teach.compare import GRID_METHODS, GRID_SEEDS, LR_GRID, RUN_FIELDS, TASKS, chosen_rates, make_task
from lora_teach.results import read_csv


@pytest.fixture(scope="module")
def quick_grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "lr_grid.csv"
    script = load_script("experiments/lr_grid.py")
    script.main(["--quick", "--out", str(out), "--shard", "0/2"])
    half = read_csv(out)
    script.main(["--quick", "--out", str(out), "--shard", "1/2"])
    return script, out, half


def test_the_grid_lists_every_run_once():
    script = load_script("experiments/lr_grid.py")
    runs = script.grid_runs()
    assert len(runs) == len(set(runs)) == len(GRID_METHODS) * len(TASKS) * 4 * len(GRID_SEEDS)
    with pytest.raises(ValueError, match="unknown method 'bitfit'"):
        script.grid_runs(("bitfit",))


@pytest.mark.slow
def test_the_quick_grid_writes_every_run_once_with_validation_and_test_columns(quick_grid):
    script, out, half = quick_grid
    rows = read_csv(out)
    assert tuple(rows[0]) == RUN_FIELDS
    keys = [(r["method"], r["task"], float(r["lr"]), int(r["seed"])) for r in rows]
    expected = {("prompt", "author", lr, s) for lr in LR_GRID["prompt"][:2] for s in GRID_SEEDS}
    assert sorted(keys) == sorted(expected)  # two shards, each run exactly once
    assert 0 < len(half) < len(rows)
    for r in rows:
        assert 0.0 <= float(r["quality_val"]) <= 1.0 and 0.0 <= float(r["quality_test"]) <= 1.0
        assert int(r["steps"]) == 3 and int(r["trainable"]) > 0
    assert set(chosen_rates(out)) == {("prompt", "author")}


@pytest.mark.slow
def test_a_restarted_grid_skips_the_finished_runs(quick_grid):
    script, out, _ = quick_grid
    before = out.read_text()
    script.main(["--quick", "--out", str(out)])
    assert out.read_text() == before


def test_the_grid_refuses_a_file_with_other_columns_and_a_bad_shard(tmp_path):
    script = load_script("experiments/lr_grid.py")
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="has the columns"):
        script.main(["--quick", "--out", str(other)])
    with pytest.raises(ValueError, match="0 <= i < n"):
        script.main(["--quick", "--out", str(tmp_path / "x.csv"), "--shard", "2/2"])
    with pytest.raises(ValueError, match="must look like 0/2"):
        script.main(["--quick", "--out", str(tmp_path / "x.csv"), "--shard", "half"])


@pytest.mark.slow
def test_the_quick_placement_run_trains_both_placements_at_the_grids_rate(quick_grid, tmp_path):
    _, grid, _ = quick_grid
    out = tmp_path / "prompt_placement.csv"
    script = load_script("experiments/prompt_placement.py")
    script.main(["--quick", "--grid", str(grid), "--out", str(out)])
    rows = read_csv(out)
    assert tuple(rows[0]) == script.FIELDS
    assert {(r["placement"], int(r["steps"])) for r in rows} == {(p, s) for p in ("before", "after") for s in (2, 4)}
    rate = chosen_rates(grid)[("prompt", "author")]
    assert all(float(r["lr"]) == rate and r["loss"] == "label" for r in rows)
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 and float(r["decision_loss"]) > 0 for r in rows)
    before = out.read_text()
    script.main(["--quick", "--grid", str(grid), "--out", str(out)])  # finished: nothing to add
    assert out.read_text() == before


def test_the_shipped_placement_file_has_the_experiments_columns():
    script = load_script("experiments/prompt_placement.py")
    assert tuple(read_csv("prompt_placement.csv")[0]) == script.FIELDS


def test_the_decision_loss_keeps_only_the_first_label_character():
    script = load_script("experiments/prompt_placement.py")
    task = make_task("author")
    x, y, mask = script.DecisionOnly(task, "decision").train_batch(8, torch.Generator().manual_seed(0))
    _, y_full, mask_full = script.DecisionOnly(task, "label").train_batch(8, torch.Generator().manual_seed(0))
    assert torch.equal(y, y_full) and mask_full.sum() > mask.sum()
    assert (mask.sum(dim=1) == 1).all() and mask[:, task.prompt_len - 1].all()
    assert set(y[mask].tolist()) <= set(task.first_ids.tolist())
    with pytest.raises(ValueError, match="unknown loss 'word'"):
        script.DecisionOnly(task, "word")


@pytest.mark.slow
def test_the_longer_budget_warms_up_appends_each_run_once_and_resumes(tmp_path, monkeypatch):
    """`compare_methods.py --longer`, cut to 4 steps and one of its runs: the row records the budget and the
    warmup, a second call with the file in place runs nothing, and a file with other columns is refused."""
    from lora_teach import load_base_model
    from lora_teach.compare import chosen_rates

    script = load_script("experiments/compare_methods.py")
    monkeypatch.setattr(script, "LONGER_STEPS", 4)
    monkeypatch.setattr(script, "LONGER_WARMUP", 2)
    warmups = []
    real_train = script.run_one.__globals__["train"]

    def spy(*args, **kwargs):
        warmups.append(kwargs["warmup"])
        return real_train(*args, **kwargs)

    monkeypatch.setitem(script.run_one.__globals__, "train", spy)
    path, base = tmp_path / "longer.csv", load_base_model()
    n_runs = len(TASKS) * len(GRID_METHODS)  # one seed: shard i/n_runs is run i alone
    rows = script.longer_runs(base, chosen_rates(), path, seeds=(1337,), shard=f"{n_runs - 1}/{n_runs}")
    saved = read_csv(path)
    assert len(rows) == len(saved) == 1 and warmups == [2]
    assert (saved[0]["task"], saved[0]["method"]) == (TASKS[-1], GRID_METHODS[-1])
    assert (int(saved[0]["steps"]), int(saved[0]["warmup"])) == (4, 2)
    assert script.longer_runs(base, chosen_rates(), path, seeds=(1337,), shard=f"{n_runs - 1}/{n_runs}") == []
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="has the columns"):
        script.longer_runs(base, chosen_rates(), other, seeds=(1337,))
