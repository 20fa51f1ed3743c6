"""The benchmarks (and the comparison experiment) run in CI, in their reduced configurations, and write what the
docs/PERFORMANCE.md and notebook 10 read.

No timed assertions: the figures depend on the machine. What must hold anywhere: every file and column is
there, the counts that do not depend on timing equal the shipped full run's, and each time is a positive number.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from repo_scripts import load_script

from lora_teach.compare import COURSE_METHODS, REPORT_SEEDS

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
    load_script("experiments/compare_methods.py").main(["--quick", "--out", str(out)])
    return out


@pytest.mark.slow
def test_the_quick_comparison_writes_one_row_per_method_with_the_shipped_counts(quick_comparison):
    runs = _rows(quick_comparison / "comparison_runs.csv")
    assert [r["method"] for r in runs] == list(COURSE_METHODS)
    shipped = {(r["method"], r["task"]): r for r in _rows(SHIPPED / "comparison_runs.csv")}
    for r in runs:
        full = shipped[(r["method"], "author")]
        for key in ("trainable", "total", "weights_bytes", "gradient_bytes", "optimizer_bytes", "checkpoint_bytes"):
            assert r[key] == full[key], (r["method"], key)
        assert 0.0 <= float(r["quality"]) <= 1.0 and float(r["step_ms"]) > 0
    summary = _rows(quick_comparison / "comparison_summary.csv")
    assert {r["method"] for r in summary} == set(COURSE_METHODS)


@pytest.mark.slow
def test_the_quick_timings_write_both_timing_files(tmp_path):
    _script("method_timings").main(["--quick", "--out", str(tmp_path)])
    latency = _rows(tmp_path / "inference_latency.csv")
    assert latency[0]["model"] == "base" and float(latency[0]["ratio_to_base"]) == 1.0
    assert [r["model"] for r in latency] == [r["model"] for r in _rows(SHIPPED / "inference_latency.csv")]
    assert all(float(r["ms"]) > 0 for r in latency)
    steps = _rows(tmp_path / "training_step_times.csv")
    assert [(r["method"], r["task"]) for r in steps] == [(m, "author") for m in COURSE_METHODS]
    assert all(float(r["step_ms"]) > 0 for r in steps)
    shipped = _rows(SHIPPED / "training_step_times.csv")
    assert {(r["method"], r["task"]) for r in shipped} == {(m, t) for m in COURSE_METHODS
                                                           for t in ("shakespeare", "author")}


@pytest.fixture(scope="module")
def quick_family(tmp_path_factory):
    """benchmarks/lora_family.py --quick, whose temporary directory (it takes no --out then) is one of pytest's."""
    out = tmp_path_factory.mktemp("lora_family")
    script = _script("lora_family")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(script, "tempfile", SimpleNamespace(mkdtemp=lambda prefix="": str(out)))
        assert script.main(["--quick"]) == 0
    return out


@pytest.mark.slow
def test_the_quick_lora_family_runs_the_grid_and_the_summary_with_the_shipped_counts(quick_family):
    grid = _rows(quick_family / "lora_family_grid.csv")
    variants = ["LoRA", "DoRA", "LoRA+"]
    assert [r["variant"] for r in grid] == [v for v in variants for _ in range(3)]
    for v in variants:  # two rates on the first seed, the better one on the second
        runs = [(float(r["lr"]), int(r["seed"])) for r in grid if r["variant"] == v]
        assert runs[:2] == [(1e-3, 1337), (3e-3, 1337)] and runs[2][1] == 1338 and runs[2][0] in (1e-3, 3e-3)
    assert all(r["task"] == "author" and r["steps"] == "3" and float(r["wall_s"]) > 0 for r in grid)
    summary = _rows(quick_family / "lora_family_summary.csv")
    assert [r["variant"] for r in summary] == ["base"] + variants
    shipped = {(r["variant"], r["task"]): r for r in _rows(SHIPPED / "lora_family_summary.csv")}
    for r in summary:
        assert r["trainable"] == shipped[(r["variant"], "author")]["trainable"], r["variant"]
        assert 0.0 <= float(r["test_min"]) <= float(r["test"]) <= float(r["test_max"]) <= 1.0
        assert int(r["seeds"]) == (1 if r["variant"] == "base" else 2)


@pytest.mark.slow
def test_the_quick_lora_family_writes_the_timing_serving_and_dora_files(quick_family):
    timing = _rows(quick_family / "lora_family_timing.csv")
    shipped = _rows(SHIPPED / "lora_family_timing.csv")
    assert [(r["what"], r["variant"]) for r in timing] == [(r["what"], r["variant"]) for r in shipped]
    assert all(float(r["ms"]) > 0 and float(r["ratio"]) > 0 for r in timing)
    serving = _rows(quick_family / "lora_family_serving.csv")
    assert [r["how"] for r in serving] == ["mixed batch", "merge per request"]
    assert all(float(r["ms"]) > 0 and float(r["max_abs_diff_logits"]) < 1e-3 for r in serving)
    dora = _rows(quick_family / "dora_magnitude_direction.csv")
    layers = list(dict.fromkeys(r["layer"] for r in _rows(SHIPPED / "dora_magnitude_direction.csv")))
    assert [(r["method"], r["layer"], r["step"]) for r in dora] == [
        (m, layer, str(step)) for m in ("full", "LoRA", "DoRA") for step in (1, 2, 3) for layer in layers]
    assert all(float(r["delta_m"]) >= 0 and float(r["delta_d"]) >= 0 for r in dora)


@pytest.mark.slow
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


def test_the_performance_page_shows_the_shipped_lora_performance_figures():
    """docs/PERFORMANCE.md's table and memory sentence are the committed JSON's, as the benchmark prints them."""
    script = _script("lora_performance")
    shipped = json.loads((SHIPPED / "lora_performance.json").read_text())
    page = (ROOT / "docs" / "PERFORMANCE.md").read_text()
    assert script.markdown_table(shipped) in page
    assert script.memory_line(shipped) in page


def test_the_performance_page_comparison_table_is_the_shipped_summary():
    """docs/PERFORMANCE.md's comparison table (test split, rates chosen on validation, both LoRA settings, mean ±
    standard deviation over five seeds) is the shipped comparison_summary.csv, formatted by the benchmark."""
    summary = _rows(SHIPPED / "comparison_summary.csv")
    table = load_script("experiments/compare_methods.py").readme_table(summary)
    assert table in (ROOT / "docs" / "PERFORMANCE.md").read_text()
    runs = _rows(SHIPPED / "comparison_runs.csv")
    for r in summary:
        if r["method"] != "base":
            assert int(r["seeds"]) == len(REPORT_SEEDS) == 5, (r["method"], r["task"])
            seeds = {int(x["seed"]): float(x["quality_test"]) for x in runs
                     if (x["method"], x["task"]) == (r["method"], r["task"])}
            assert sorted(seeds) == list(REPORT_SEEDS), (r["method"], r["task"])  # the same seeds for every method
            assert float(r["quality"]) == pytest.approx(sum(seeds.values()) / 5, rel=1e-5)
