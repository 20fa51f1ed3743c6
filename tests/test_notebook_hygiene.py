"""Notebook hygiene: what makes two clean runs print the same numbers, and a notebook safe to run anywhere.

Static checks on every course notebook (notebooks/NN_*.ipynb) and on the package:
- determinism: every notebook has cells tagged `nbval-check-output` (nbval compares their stored output with a fresh
  run in `make test`), each with stored text output and nothing in it that changes between runs (timings,
  memory addresses, progress bars); notebooks are committed after one clean run (counts 1..N, no errors);
- one seed: the first code cell after the Colab cell is `device = setup()` (the course seed), no notebook
  replaces that seed, and no package module seeds a global generator except lora_teach/training.py;
- files: a cell that writes a file does it inside a `tempfile.TemporaryDirectory()`.
The dynamic side: under `make test`, nbval runs every notebook once, and conftest.py then checks its kernel's
peak memory against Binder's and that it left no file in its folder; .ci/run checks that `git status` stays
clean. The stricter run (each cell twice, reverse order, an empty directory) is `make check-rerun`
(tools/check_memory_limit.py), outside CI.

A literal `torch.manual_seed(n)` inside a notebook cell is sanctioned: it re-seeds torch's generator right
before a random initialisation so that this one cell prints the same numbers when it is run again on its own.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import check_memory_limit
import nbformat
import notebook_runner
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MARKER = "# NBVAL_CHECK_OUTPUT"  # the older form of the tag
TAG = "nbval-check-output"


def code_cells(path: Path) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def is_colab_cell(cell) -> bool:
    return "google.colab" in cell.source


def text_of(output) -> str:
    if output.output_type == "stream":
        return output.text
    if output.output_type in ("execute_result", "display_data"):
        return output.get("data", {}).get("text/plain", "")
    return ""


def test_there_are_course_notebooks():
    assert len(NOTEBOOKS) >= 3, NOTEBOOKS


# --------------------------------------------------------------------------------------------- determinism
UNSTABLE_SOURCE = re.compile(r"perf_counter|time\.time\(|\.seconds\b|ms_per_step|step_time\(|interleaved_times\(|"
                             r"inference_latency\(|ru_maxrss|id\(")
UNSTABLE_OUTPUT = re.compile(r"0x[0-9a-fA-F]{6,}|\d+(\.\d+)?\s*it/s|s/it\b")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_has_checked_cells_with_stored_stable_output(path):
    checked = [c for c in code_cells(path) if MARKER in c.source or TAG in c.metadata.get("tags", [])]
    assert checked, f"{path.name}: no cell tagged `{TAG}`, so nbval compares none of its numbers"
    for cell in checked:
        head = cell.source.splitlines()[0]
        if MARKER in cell.source:
            assert head.strip() == MARKER, f"{path.name}: put the marker on the first line of the cell: {head!r}"
        text = "".join(text_of(o) for o in cell.outputs)
        assert text.strip(), f"{path.name}: a checked cell has no stored text output:\n{cell.source[:200]}"
        streams = [o.name for o in cell.outputs if o.output_type == "stream"]
        assert "stderr" not in streams, f"{path.name}: a checked cell writes to stderr (progress bars, warnings)"
        assert not UNSTABLE_SOURCE.search(cell.source), f"{path.name}: a checked cell measures time:\n{cell.source}"
        assert not UNSTABLE_OUTPUT.search(text), f"{path.name}: a checked cell prints something unstable:\n{text}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_after_one_clean_run(path):
    cells = [c for c in code_cells(path) if c.source.strip()]
    counts = [c.execution_count for c in cells]
    assert counts == list(range(1, len(cells) + 1)), f"{path.name}: execution counts {counts}, expected 1..N"
    errors = [o.ename for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: error outputs {errors}"


# ---------------------------------------------------------------------------------------------- one seed
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_first_cell_after_the_colab_cell_is_the_set_up_with_the_course_seed(path):
    first = next(c for c in code_cells(path) if not is_colab_cell(c))
    assert "from lora_teach.notebook import setup" in first.source, f"{path.name}: first cell:\n{first.source}"
    assert re.search(r"^device = setup\(\)$", first.source, re.M), f"{path.name}: call `device = setup()`"


NOTEBOOK_SEED_CHANGES = re.compile(
    r"\bseed_everything\(|\bsetup\(\s*[^)\s]|(?<![\w.])random\.seed\(|np\.random\.seed\(|numpy\.random\.seed\(|"
    r"torch\.cuda\.manual_seed|torch\.random\.manual_seed\(|\bset_seed\(|^\s*SEED\s*=|\.SEED\s*=", re.M)


def seed_changes(source: str) -> list[str]:
    return [m.group(0) for m in NOTEBOOK_SEED_CHANGES.finditer(source)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_notebook_replaces_the_course_seed(path):
    found = {i: seed_changes(c.source) for i, c in enumerate(code_cells(path)) if seed_changes(c.source)}
    assert not found, f"{path.name}: seeds set outside setup() (code cell: calls): {found}"


@pytest.mark.parametrize("source, changes", [
    ("device = setup()", False),
    ("device = setup(seed=0)", True),
    ("device = setup(42)", True),
    ("seed_everything(0)", True),
    ("import random\nrandom.seed(1)", True),
    ("np.random.seed(1)", True),
    ("SEED = 7", True),
    ("torch.cuda.manual_seed_all(3)", True),
    ("g = torch.Generator().manual_seed(0)", False),
    ("rng = random.Random(0)", False),
    ("torch.manual_seed(0)  # re-seed for this cell's init", False),
])
def test_the_notebook_seed_check_can_fail(source, changes):
    assert bool(seed_changes(source)) is changes


GLOBAL_SEEDERS = {"torch.manual_seed", "torch.random.manual_seed", "torch.cuda.manual_seed",
                  "torch.cuda.manual_seed_all", "random.seed", "np.random.seed", "numpy.random.seed"}


def module_seed_problems(source: str, name: str) -> list[str]:
    """Global seeding outside training.py, a literal seed anywhere, or a second SEED constant."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            literal = bool(node.args) and isinstance(node.args[0], ast.Constant)
            if func in GLOBAL_SEEDERS and (literal or name != "training.py"):
                problems.append(f"line {node.lineno}: {ast.unparse(node)}")
            elif func.endswith("seed_everything") and literal:
                problems.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Assign) and name != "training.py":
            if any(isinstance(t, ast.Name) and t.id == "SEED" for t in node.targets):
                problems.append(f"line {node.lineno}: SEED assigned")
    return problems


def test_package_modules_seed_only_through_training():
    problems = {p.name: found for p in sorted((ROOT / "lora_teach").glob("*.py"))
                if (found := module_seed_problems(p.read_text(encoding="utf-8"), p.name))}
    assert not problems, f"global seeds outside lora_teach/training.py: {problems}"
    training = (ROOT / "lora_teach" / "training.py").read_text(encoding="utf-8")
    assert re.search(r"^SEED = \d+", training, re.M)


@pytest.mark.parametrize("source, name, bad", [
    ("torch.manual_seed(0)", "lora.py", True),
    ("torch.manual_seed(seed)", "lora.py", True),
    ("torch.manual_seed(seed)", "training.py", False),
    ("torch.manual_seed(1234)", "training.py", True),
    ("seed_everything(0)", "compare.py", True),
    ("seed_everything(seed)", "compare.py", False),
    ("g = torch.Generator().manual_seed(0)", "data.py", False),
    ("rng = random.Random(seed)", "data.py", False),
    ("SEED = 1", "compare.py", True),
])
def test_the_module_seed_check_can_fail(source, name, bad):
    assert bool(module_seed_problems(source, name)) is bad


# ---------------------------------------------------------------------------------------------------- files
WRITES = re.compile(
    r"""\bopen\([^)]*(?:["'][wax]b?\+?["']|mode\s*=\s*["'][wax])|\.write_(?:text|bytes)\(|\.savefig\(|"""
    r"""\bsave_file\(|\bsave_adapter\(|\bsave_base_model\(|\btorch\.save\(|\bnp\.save|\.to_(?:csv|json|parquet)\(|"""
    r"""\bjson\.dump\(|\.mkdir\(|\bos\.makedirs\(|\bshutil\.(?:copy|move)|\.save_pretrained\(|\bnbformat\.write\("""
)


TEMP_NAME = re.compile(r"(\w+)\s*=\s*(?:tempfile\.)?TemporaryDirectory\(|TemporaryDirectory\([^)]*\)\s+as\s+(\w+)")


def temporary_directory_names(sources: list[str]) -> set[str]:
    """Names bound to a TemporaryDirectory anywhere in the notebook (`tmp = tempfile.TemporaryDirectory()`)."""
    return {a or b for source in sources for a, b in TEMP_NAME.findall(source)}


def writes_outside_a_temporary_directory(source: str, temp_names=()) -> list[str]:
    """The write calls of a cell that neither opens a TemporaryDirectory nor uses one opened earlier."""
    if "TemporaryDirectory(" in source or any(re.search(rf"\b{n}\b", source) for n in temp_names):
        return []
    return [m.group(0) for m in WRITES.finditer(source)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_write_files_only_inside_a_temporary_directory(path):
    sources = [c.source for c in code_cells(path)]
    names = temporary_directory_names(sources)
    found = {i: w for i, s in enumerate(sources) if (w := writes_outside_a_temporary_directory(s, names))}
    assert not found, f"{path.name}: cells that write outside a tempfile.TemporaryDirectory(): {found}"


@pytest.mark.parametrize("source, writes", [
    ("save_adapter(model, 'my_adapter')", True),
    ("fig.savefig('loss.png')", True),
    ("with open('out.txt', 'w') as f:\n    f.write('x')", True),
    ("Path('a.json').write_text('{}')", True),
    ("torch.save(model.state_dict(), 'm.pt')", True),
    ("text = open('data.txt').read()", False),
    ("with tempfile.TemporaryDirectory() as tmp:\n    save_adapter(model, tmp)", False),
    ("print(checkpoint_size(lora_state_dict(model)))", False),
])
def test_the_write_check_can_fail(source, writes):
    assert bool(writes_outside_a_temporary_directory(source)) is writes


def test_a_temporary_directory_opened_in_an_earlier_cell_counts():
    cells = ["tmp = tempfile.TemporaryDirectory()", "save_adapter(model, Path(tmp.name) / 'a')",
             "save_adapter(model, 'adapters/a')"]
    names = temporary_directory_names(cells)
    assert names == {"tmp"}
    assert [bool(writes_outside_a_temporary_directory(c, names)) for c in cells] == [False, False, True]
    assert temporary_directory_names(["with tempfile.TemporaryDirectory() as folder:\n    pass"]) == {"folder"}


# ------------------------------------------------------------------ the stricter run (make check-rerun)
def synthetic_notebook(tmp_path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "99_synthetic.ipynb"
    nbformat.write(nb, path)
    return path


def test_the_memory_script_catches_a_broken_rerun_a_left_file_and_a_blown_budget(tmp_path):
    path = synthetic_notebook(
        tmp_path,
        "if 'ran' in globals():\n    raise ValueError('already done: a clear refusal')\nran = True",
        "if 'once' in globals():\n    raise KeyError('state broken by a second run')\nonce = True",
        "open('left_behind.txt', 'w').write('x')",
    )
    row = check_memory_limit.run(path, budget_mb=1, git_check=False)
    problems = "\n".join(row["problems"])
    assert "second run of code cell 2 (`if 'once' in globals():`) broke: KeyError" in problems
    assert "left_behind.txt" in problems
    assert "exceeds the budget of 1 MB" in problems
    assert len(row["refused"]) == 1 and "ValueError" in row["refused"][0]


def test_the_memory_script_passes_a_clean_notebook_and_reports_its_peak(tmp_path):
    path = synthetic_notebook(tmp_path, "x = [0] * 1000\nprint(len(x))")
    row = check_memory_limit.run(path, budget_mb=1792, git_check=False)
    assert row["problems"] == [] and row["refused"] == []
    assert 10 < row["peak_rss_mb"] < 1792 and row["peak_address_space_mb"] > 0


# ------------------------------------------------------------------------------- what a learner reads
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_test_machinery_comments_in_code_a_learner_reads(path):
    """nbval's directives are cell tags (nbval-check-output, ...), never `# NBVAL_...` comments in the code."""
    offenders = [c.source.splitlines()[0] for c in code_cells(path) if "NBVAL_" in c.source]
    assert not offenders, f"{path.name}: use a cell tag instead of {offenders}"


PROGRESS_BAR = re.compile(r"\d+%\|")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_stale_progress_bar_text_is_committed(path):
    """A tqdm bar's text fallback ("training:   0%|...") is what GitHub shows of a finished bar: never commit it."""
    for cell in code_cells(path):
        for output in cell.outputs:
            texts = [text_of(output), output.get("data", {}).get("text/plain", "")]
            assert not any(PROGRESS_BAR.search(t) for t in texts), f"{path.name}: stale progress text {texts}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_saved_progress_bar_shows_how_long_a_run_took(path):
    """A saved bar's "[02:23<00:00, 3.54it/s" tells the speed of whatever machine ran it, not the learner's."""
    state = nbformat.read(path, as_version=4).metadata.get("widgets", {})
    values = [m.get("state", {}).get("value") for s in state.values() for m in s.get("state", {}).values()]
    stale = [v for v in values if isinstance(v, str) and notebook_runner.ELAPSED.search(v)]
    assert not stale, f"{path.name}: saved progress bars show elapsed times {stale[:2]}"


def test_the_runner_keeps_a_bars_count_and_postfix_but_not_its_timing():
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {notebook_runner.WIDGET_STATE: {"state": {
        "a": {"state": {"value": " 100/100 [02:23&lt;00:00,  3.54it/s, loss=1.532]"}},
        "b": {"state": {"value": "100/100 [00:38<00:00,  2.61it/s]"}}, "c": {"state": {"value": "training"}}}}}
    assert notebook_runner.strip_elapsed_times(nb) == 2
    state = nb.metadata["widgets"][notebook_runner.WIDGET_STATE]["state"]
    assert [state[k]["state"]["value"] for k in "abc"] == [" 100/100 [loss=1.532]", "100/100", "training"]


def test_the_notebook_runner_strips_progress_text_and_figure_widget_state():
    """The clean-up after tools/run_notebook.py executes a committed notebook: bar text goes, other output stays,
    and a widget shown with a PNG fallback loses its saved state (with the models only it uses) while a bar keeps
    its."""
    view = "application/vnd.jupyter.widget-view+json"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text="Writing:   0%|  | 0/1\rWriting: 100%|##| 1/1\nkept\n"),
        nbformat.v4.new_output("stream", name="stderr", text="Loading:   0%|  | 0/69\n"),
        nbformat.v4.new_output("display_data", data={view: {"model_id": "b1"}, "text/plain": "training:   0%|  |"}),
        nbformat.v4.new_output("display_data", data={view: {"model_id": "f1"}, "image/png": "iVBOR"}),
    ])])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {
        "b1": {"state": {"layout": "IPY_MODEL_b2"}}, "b2": {"state": {}},
        "f1": {"state": {"children": ["IPY_MODEL_f2"]}}, "f2": {"state": {}}}}}
    notebook_runner.strip_progress_text(nb)
    assert notebook_runner.strip_figure_widget_state(nb) == 2
    outputs = nb.cells[0].outputs
    assert [o.get("text") for o in outputs if o.output_type == "stream"] == ["kept\n"]
    assert "text/plain" not in outputs[1]["data"] and outputs[2]["data"]["image/png"] == "iVBOR"
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert sorted(state) == ["b1", "b2"]
