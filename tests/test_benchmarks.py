"""The benchmarks run in CI, in their reduced configurations, and write what the README and notebook 10 read.

No timed assertions: the figures depend on the machine. What must hold anywhere: every file and column is
there, the counts that do not depend on timing equal the shipped full run's, and each time is a positive number.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from repo_scripts import load_script

from lora_teach.compare import METHODS

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "lora_teach" / "results"


def _script(name: str):
    return load_script(f"benchmarks/{name}.py")


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def quick_comparison(tmp_path_factory):
    out = tmp_path_factory.mktemp("comparison")
    _script("compare_methods").main(["--quick", "--out", str(out)])
    return out


def test_the_quick_comparison_writes_one_row_per_method_with_the_shipped_counts(quick_comparison):
    runs = _rows(quick_comparison / "comparison_runs.csv")
    assert [r["method"] for r in runs] == list(METHODS)
    shipped = {(r["method"], r["task"]): r for r in _rows(SHIPPED / "comparison_runs.csv")}
    for r in runs:
        full = shipped[(r["method"], "author")]
        for key in ("trainable", "total", "weights_bytes", "gradient_bytes", "optimizer_bytes", "checkpoint_bytes"):
            assert r[key] == full[key], (r["method"], key)
        assert 0.0 <= float(r["quality"]) <= 1.0 and float(r["step_ms"]) > 0
    summary = _rows(quick_comparison / "comparison_summary.csv")
    assert {r["method"] for r in summary} == set(METHODS)


def test_the_quick_comparison_writes_both_timing_files(quick_comparison):
    latency = _rows(quick_comparison / "inference_latency.csv")
    assert latency[0]["model"] == "base" and float(latency[0]["ratio_to_base"]) == 1.0
    assert [r["model"] for r in latency] == [r["model"] for r in _rows(SHIPPED / "inference_latency.csv")]
    assert all(float(r["ms"]) > 0 for r in latency)
    steps = _rows(quick_comparison / "training_step_times.csv")
    assert [(r["method"], r["task"]) for r in steps] == [(m, "author") for m in METHODS]
    assert all(float(r["step_ms"]) > 0 for r in steps)
    shipped = _rows(SHIPPED / "training_step_times.csv")
    assert {(r["method"], r["task"]) for r in shipped} == {(m, t) for m in METHODS for t in ("shakespeare", "author")}


def test_the_lora_performance_benchmark_reports_every_figure_of_the_readme(tmp_path):
    out = tmp_path / "lora_performance.json"
    result = _script("lora_performance").main(["--repeats", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["train_step_ms"]["ratio"] > 0  # peft is installed with the test requirements
    step = result["lora_vs_full_step_ms"]
    assert step["ratio"] > 0
    low, high = step["above_floor_range"]
    assert low <= step["above_floor"] <= high
    for key in ("ratio_merged", "ratio_merged_wrapped", "ratio_unmerged"):
        assert result["inference_ms"][key] > 0
    full, lora = result["memory_bytes"]["full"], result["memory_bytes"]["lora"]
    assert lora["gradients"] < full["gradients"] / 10 and lora["optimizer"] == 2 * lora["gradients"]
    assert lora["weights"] > full["weights"], "LoRA adds its factors to the frozen weights"


def test_the_readme_shows_the_shipped_lora_performance_figures():
    """The README's table and memory sentence are the committed JSON's, as the benchmark prints them."""
    script = _script("lora_performance")
    shipped = json.loads((SHIPPED / "lora_performance.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert script.markdown_table(shipped) in readme
    assert script.memory_line(shipped) in readme


def test_the_readme_comparison_table_is_the_shipped_summary():
    """The README's comparison table (test split, rates chosen on validation, both LoRA settings, mean ± standard
    deviation over three seeds) is the shipped comparison_summary.csv, formatted by the benchmark."""
    summary = _rows(SHIPPED / "comparison_summary.csv")
    table = _script("compare_methods").readme_table(summary)
    assert table in (ROOT / "README.md").read_text()
    runs = _rows(SHIPPED / "comparison_runs.csv")
    for r in summary:
        if r["method"] != "base":
            assert int(r["seeds"]) == 3, (r["method"], r["task"])
            seeds = [float(x["quality_test"]) for x in runs if (x["method"], x["task"]) == (r["method"], r["task"])]
            assert float(r["quality"]) == pytest.approx(sum(seeds) / 3, rel=1e-5)
