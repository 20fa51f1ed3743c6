"""experiments/output_bias.py: the output-bias yardstick and the dialogue probe notebook 05 reads."""

import csv

import pytest
from repo_scripts import ROOT, load_script

from lora_teach.results import RESULTS


def _rows(name):
    with open(RESULTS / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_the_shipped_yardstick_has_five_seeds_per_task_at_one_rate():
    rows = _rows("output_bias_runs.csv")
    for task in ("shakespeare", "author"):
        runs = [r for r in rows if r["task"] == task]
        assert sorted(int(r["seed"]) for r in runs) == list(range(1337, 1342))
        assert len({r["lr"] for r in runs}) == 1 and {r["steps"] for r in runs} == {"100"}


def test_the_shipped_dialogue_probe_has_the_base_and_three_seeds_per_method():
    rows = _rows("dialogue_probe.csv")
    assert [r["method"] for r in rows if r["seed"] == ""] == ["base"]
    for method in ("prompt", "lora-all"):
        assert sorted(int(r["seed"]) for r in rows if r["method"] == method) == [1337, 1338, 1339]


@pytest.mark.slow
def test_the_quick_run_trains_the_bias_on_both_tasks(tmp_path):
    script = load_script("experiments/output_bias.py")
    rows = script.main(["--quick", "--out", str(tmp_path / "bias.csv")])
    assert [r["task"] for r in rows] == ["shakespeare", "author"]
    assert (tmp_path / "bias.csv").exists() and not (ROOT / "bias.csv").exists()
