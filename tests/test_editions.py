"""One source, three editions. The notebooks are the learner's edition: every exercise starts unsolved and its
solution is folded right under it. The teacher edition (solutions filled in between nbgrader's markers) passes
every check and is accepted by nbgrader's own ClearSolutions; the student edition drops the folded solutions;
the static HTML edition shows figures in place of widgets."""

import ast
import re
from pathlib import Path

import build_editions as editions
import build_html as static_html
import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager
from notebook_runner import execute

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHECK_CALL = re.compile(r"^\s*(?:_ = )?(check_\w+)\(", re.M)
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"



def _read(path):
    return nbformat.read(path, as_version=4)


def _python(source: str) -> str:
    """A cell's source as plain Python (IPython magics turned into calls)."""
    return TransformerManager().transform_cell(source)


def is_checked(cell) -> bool:
    """nbval compares this cell's output (the cell tag)."""
    return "nbval-check-output" in cell.metadata.get("tags", [])


def _exercise_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code" and CHECK_CALL.search(c.source)]


def _stream(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _folded(*codes: str) -> str:
    fences = "".join(f"```python\n{code}\n```\n\n" for code in codes)
    return f"<details><summary><b>Solution</b> (try the exercise first)</summary>\n\n{fences}</details>"


def _learner(*cells) -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 99 · T\n\n[![Open In Colab](https://"
                                                                          "colab.research.google.com/assets/colab-badge"
                                                                          ".svg)](https://x)\n\nText."), *cells])


# ------------------------------------------------------------------------------------------- the stub rules
def test_an_answer_stub_names_each_assigned_name():
    assert editions.stub("a, b = 1, 2\nc: int = 3") == ["# YOUR CODE HERE", "a = None", "b = None", "c = None"]


def test_a_function_body_stub_returns_none_at_its_indentation():
    assert editions.stub("n = d * d\nreturn n", "    ") == ["    # YOUR CODE HERE", "    return None"]


def test_a_solution_that_assigns_nothing_leaves_a_valid_block():
    assert editions.stub("print(i)", "    ") == ["    # YOUR CODE HERE", "    pass"]


def test_the_teacher_source_puts_each_solution_between_nbgraders_markers():
    """A function's `return None` stays after the markers, a value's `name = None` before them: where nbgrader's
    ClearSolutions, with our code stub, gives the learner's stub back."""
    source = "def f(d):\n    \"\"\"Doc.\"\"\"\n    # YOUR CODE HERE\n    return None\n\n\n_ = check(f)"
    out = editions.teacher_source(source, ["n = d * d\nreturn n"])
    assert out == ("def f(d):\n    \"\"\"Doc.\"\"\"\n    ### BEGIN SOLUTION\n    n = d * d\n    return n\n"
                   "    ### END SOLUTION\n    return None\n\n\n_ = check(f)")
    namespace = {"check": lambda f: f(3)}
    exec(out, namespace)
    assert namespace["_"] == 9
    out = editions.teacher_source("# YOUR CODE HERE\na = None\nb = None\n_ = check(a)", ["a, b = 1, 2"])
    assert out == "a = None\nb = None\n### BEGIN SOLUTION\na, b = 1, 2\n### END SOLUTION\n_ = check(a)"
    namespace = {"check": lambda a: a}
    exec(out, namespace)
    assert namespace["_"] == 1


@pytest.mark.parametrize(("source", "solutions"), [
    ("# YOUR CODE HERE\nx = None\ncheck(x)", []),                       # a stub without its solution
    ("# YOUR CODE HERE\nx = None\ncheck(x)", ["x = 1", "y = 2"]),       # a solution without its stub
    ("# YOUR CODE HERE\nx = None\ncheck(x)", ["y = 2"]),                # the stub names another answer
    ("# YOUR CODE HERE\nx = None\ncheck(x)", ["x = = 1"]),              # not Python
])
def test_stubs_and_solutions_that_do_not_pair_up_are_refused(source, solutions):
    with pytest.raises(editions.EditionError):
        editions.teacher_source(source, solutions)


def test_an_exercise_without_its_folded_solution_is_refused_before_anything_is_built():
    nb = _learner(nbformat.v4.new_code_cell("# YOUR CODE HERE\nx = None\n_ = check_x(x)"),
                  nbformat.v4.new_markdown_cell("Next."))
    before = nbformat.writes(nb)
    with pytest.raises(editions.EditionError, match="without its folded solution"):
        editions.edition(nb, "teacher")
    with pytest.raises(ValueError, match="teacher"):
        editions.edition(nb, "solutions")
    assert nbformat.writes(nb) == before


def test_both_editions_clear_outputs_tags_and_widgets_and_leave_the_learner_edition_alone():
    exercise = nbformat.v4.new_code_cell("# YOUR CODE HERE\nx = None\n_ = check_x(x)", execution_count=1,
                                         outputs=[nbformat.v4.new_output("stream", text="… waiting\n")],
                                         metadata={"tags": ["nbval-check-output", "keep-me"]})
    nb = _learner(exercise, nbformat.v4.new_markdown_cell(_folded("x = 1")))
    nb.metadata["widgets"] = {"state": {}}
    before = nbformat.writes(nb)
    teacher, n = editions.edition(nb, "teacher", stem="nb99")
    student, _ = editions.edition(nb, "student")
    assert nbformat.writes(nb) == before and n == 1
    assert len(student.cells) == 2 and len(teacher.cells) == 3  # the folded solution is gone; a graded cell added
    assert teacher.cells[1].source == "x = None\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n_ = check_x(x)"
    assert teacher.cells[1].metadata["nbgrader"]["solution"] is True
    assert teacher.cells[1].metadata["nbgrader"]["grade_id"] == "nb99-1"
    graded = teacher.cells[2]
    assert graded.metadata["nbgrader"] == {"grade": True, "grade_id": "nb99-1-graded", "locked": True, "points": 1,
                                           "schema_version": 3, "solution": False, "task": False}
    assert "    assert check_x(x)" in graded.source and "HIDDEN" not in graded.source
    assert student.cells[1].source == exercise.source
    for built in (teacher, student):
        cell = built.cells[1]
        assert cell.outputs == [] and cell.execution_count is None and cell.metadata["tags"] == ["keep-me"]
        assert "colab-badge" not in built.cells[0].source and "widgets" not in built.metadata
    assert "Teacher edition" in teacher.cells[0].source and "Student edition" in student.cells[0].source
    student, _ = editions.edition(nb, "student", badge_line="[badge](student-branch)")
    assert student.cells[0].source == "# 99 · T\n\n[badge](student-branch)\n\nText."


# ------------------------------------------------------------------------------- the course's notebooks
@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name[:2] != "00"], ids=lambda p: p.name)
def test_every_notebook_from_01_on_has_two_graded_exercises(path):
    assert len(editions.exercises(_read(path))) >= 2, (
        f"{path.name}: add graded exercises (see docs/WORKSHOP.md, 'For course authors')")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_exercise_starts_unsolved_with_its_solution_folded_under_it(path):
    """What the learner opens: no ✓ before they act, a stub that matches its folded solution, and the check's
    one waiting line compared by nbval (the check's True/False is assigned, so nothing is echoed below it)."""
    nb = _read(path)
    pairs = editions.exercises(nb)  # raises on a stub without its folded solution, or the other way round
    assert [c for c, _ in pairs] == [nb.cells.index(c) for c in _exercise_cells(nb)], "a check cell without a stub"
    for code, folded in pairs:
        cell = nb.cells[code]
        editions.check_pairing(cell.source, editions.solutions_of(nb.cells[folded].source))
        assert is_checked(cell), cell.source
        text = _stream(cell)
        assert text.startswith("… ") and "✓" not in text and "✗" not in text, text
        assert not [o for o in cell.outputs if o.output_type == "execute_result"], "assign: `_ = check_...(x)`"
    assert not [c for c in nb.cells if c.cell_type == "code" and "✓" in _stream(c)], "a ✓ before the learner acts"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_later_cell_depends_on_an_exercise_answer(path):
    """So the learner's edition, with its answers left as None, runs top to bottom."""
    nb = _read(path)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    for code, folded in editions.exercises(nb):
        names = set()
        for solution in editions.solutions_of(nb.cells[folded].source):
            tree = editions.parse_solution(solution)
            if isinstance(tree, ast.FunctionDef) or editions._returns(tree):  # the function is the answer
                names |= {n.name for n in ast.parse(_python(nb.cells[code].source)).body
                          if isinstance(n, ast.FunctionDef)}
            else:
                names |= set(editions._assigned_names(tree))
        assert names, "an exercise must leave an answer (a name or a function) for its check"
        for later in code_cells[code_cells.index(nb.cells[code]) + 1:]:
            used = {n.id for n in ast.walk(ast.parse(_python(later.source))) if isinstance(n, ast.Name)}
            assert not names & used, f"a later cell uses the exercise's answer {names & used}"


@pytest.fixture(scope="module")
def teacher_edition(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    assert editions.main(["teacher", *map(str, NOTEBOOKS), "--out", str(out)]) == 0
    return out


def _graded_cells(nb):
    return [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]


def _nbgrader_release(nb, config_dir: Path):
    """What `nbgrader generate_assignment` makes of a teacher notebook: nbgrader's own ClearSolutions (metadata
    enforced), configured by the nbgrader_config.py written next to the edition, and ClearHiddenTests."""
    from nbgrader.preprocessors import ClearHiddenTests, ClearSolutions
    from traitlets.config import Config

    namespace = {"get_config": Config}
    exec((config_dir / "nbgrader_config.py").read_text(), namespace)
    released, _ = ClearSolutions(config=namespace["c"], enforce_metadata=True).preprocess(nb, {})
    released, _ = ClearHiddenTests(config=namespace["c"]).preprocess(released, {})
    return released


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_nbgrader_releases_the_teacher_edition_as_the_learners_exercises_with_a_graded_cell_each(
        path, teacher_edition):
    """A teacher on a JupyterHub with nbgrader can use the teacher edition as an assignment source as it is:
    nbgrader's ClearSolutions, with the code stub of our nbgrader_config.py, gives back the learner's exercise
    (a value's `name = None` above the `# YOUR CODE HERE` line), never `raise NotImplementedError()`; each
    exercise is followed by a locked graded cell with its points, and only function checks have hidden tests."""
    learner = _read(path)
    teacher = _read(teacher_edition / path.name)
    n = len(editions.exercises(learner))
    assert sum("### BEGIN SOLUTION" in c.source for c in teacher.cells) == n
    released = _nbgrader_release(teacher, teacher_edition)
    text = "\n".join(c.source for c in released.cells)
    assert "NotImplementedError" not in text and "SOLUTION" not in text and "HIDDEN TESTS" not in text
    exercises = [c for c in released.cells if c.metadata.get("nbgrader", {}).get("solution")]
    assert len(exercises) == n
    for ours, cleared in zip([c.source for c in _exercise_cells(learner)], exercises, strict=True):
        lines = ours.split("\n")
        for start, end, _ in reversed(editions.stub_regions(ours)):
            stub = lines[start:end]
            kept = [line for line in stub[1:] if line.strip() not in ("return None", "pass")]
            lines[start:end] = [*kept, stub[0], *[line for line in stub[1:] if line not in kept]]
        assert "\n".join(lines) == cleared.source
        after = released.cells[released.cells.index(cleared) + 1]
        meta = after.metadata.get("nbgrader", {})
        assert meta.get("grade") and meta["locked"] and meta["grade_id"] == meta_id(cleared) + "-graded"
        function = "return None" in cleared.source
        assert meta["points"] == (2 if function else 1)
        (check,) = editions.CHECK_LINE.findall(cleared.source)
        assert f"    assert {check[0]}({check[1]})" in after.source
    hidden = [c for c in _graded_cells(teacher) if editions.HIDDEN_BEGIN in c.source]
    assert all(c.metadata["nbgrader"]["points"] == 2 for c in hidden)


def meta_id(cell) -> str:
    return cell.metadata["nbgrader"]["grade_id"]


def test_the_teacher_edition_configures_nbgraders_stub(teacher_edition):
    config = (teacher_edition / "nbgrader_config.py").read_text()
    assert config == editions.NBGRADER_CONFIG and 'code_stub = {"python": "# YOUR CODE HERE"}' in config


def test_the_course_directory_holds_the_config_and_one_source_folder_per_assignment(tmp_path):
    paths = [str(p) for p in NOTEBOOKS[:2]]
    assert editions.main(["course", *paths, "--out", str(tmp_path / "a")]) == 0
    assert sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.ipynb")) == [
        f"source/{p.stem}/{p.name}" for p in NOTEBOOKS[:2]]
    assert editions.main(["course", *paths, "--assignment", "week1", "--out", str(tmp_path / "b")]) == 0
    assert sorted(p.name for p in (tmp_path / "b" / "source" / "week1").iterdir()) == [p.name for p in NOTEBOOKS[:2]]
    assert (tmp_path / "b" / "nbgrader_config.py").read_text() == editions.NBGRADER_CONFIG


@pytest.mark.parametrize("argv", [["teacher", "--assignment", "week1"], ["course", "--assignment", "../up"],
                                  ["course", "notebooks/99_missing.ipynb"]])
def test_bad_course_arguments_are_refused_before_anything_is_written(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        editions.main([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and not (tmp_path / "out").exists()
    assert "--assignment" in err or "no such notebook" in err, err


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_solution_passes_its_check(path, teacher_edition, monkeypatch):
    """The teacher edition runs top to bottom, every check cell prints one ✓ line per check, and every graded
    cell passes as nbgrader runs it (NBGRADER_EXECUTION set), hidden tests on fresh inputs included."""
    nb = _read(teacher_edition / path.name)
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")  # the kernel inherits it: the graded cells assert
    execute(nb, ROOT / "notebooks")  # raises on any error
    cells = _exercise_cells(nb)
    assert cells
    for cell in cells:
        text = _stream(cell)
        assert text.startswith("✓ ") and text.count("✓ ") == len(CHECK_CALL.findall(cell.source)), text
        assert "✗" not in text and "…" not in text.split("\n")[0], text


def test_the_student_edition_hides_every_solution(tmp_path):
    assert editions.main(["student", *map(str, NOTEBOOKS), "--out", str(tmp_path)]) == 0
    for path in NOTEBOOKS:
        learner, student = _read(path), _read(tmp_path / path.name)
        solutions = [s for _, f in editions.exercises(learner) for s in editions.solutions_of(learner.cells[f].source)]
        text = "\n".join(c.source for c in student.cells)
        assert not [c for c in student.cells if editions.is_solution_cell(c)] and "<details><summary><b>Solution" \
            not in text
        for solution in solutions:
            for line in solution.splitlines():
                if line.strip() and not line.strip().endswith("= None") and len(line.strip()) > 12:
                    assert line.strip() not in text, f"{path.name}: solution line left in: {line!r}"


# ------------------------------------------------------------------------------------------ the HTML edition
def _interactive_widget(output) -> bool:
    """A widget view that is not a progress bar. tqdm's bar is shown without a text fallback (a stale '0%|' text
    is never committed: tests/test_notebook_hygiene.py), or with one that ends in a rate such as 'it/s]'."""
    data = output.get("data", {})
    return WIDGET_MIME in data and "text/plain" in data and "it/s]" not in data["text/plain"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_widget_comes_after_a_static_figure(path):
    code = [c for c in _read(path).cells if c.cell_type == "code"]
    for i, cell in enumerate(code):
        if any(_interactive_widget(o) for o in cell.outputs):
            before = [o for c in code[max(i - 1, 0):i + 1] for o in c.outputs]
            assert any("image/png" in o.get("data", {}) for o in before), f"cell {i}: no static figure before it"


def test_the_html_edition_shows_figures_in_place_of_widgets(tmp_path):
    path = ROOT / "notebooks" / "00_start_here.ipynb"
    nb = _read(path)
    figures = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs
                  if WIDGET_MIME not in o.get("data", {}))
    assert figures >= 1 and any(_interactive_widget(o) for c in nb.cells for o in c.get("outputs", []))
    (page,) = static_html.build([path], tmp_path)
    text = page.read_text(encoding="utf-8")
    assert len(re.findall(r'<img[^>]*src="data:image/png;base64,', text)) == figures
    assert WIDGET_MIME not in text and "00 · Start here" in text
    assert 'href="00_start_here.html"' in (tmp_path / "index.html").read_text(encoding="utf-8")


def test_build_directory_is_git_ignored():
    assert "build/" in (ROOT / ".gitignore").read_text().split()
