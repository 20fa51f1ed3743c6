"""nbgrader grades the course for real: the teacher edition of notebook 00 goes through nbgrader's own
`generate_assignment`, `autograde` and `generate_feedback` in a temporary course directory, with three made-up
submissions: every exercise right, the notebook handed in as released (blank), and one named mistake."""

import os
import subprocess
import sys
from pathlib import Path

import build_editions as editions
import nbformat
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.notebooks]

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "00_start_here.ipynb"
ASSIGNMENT = "ps1"
MISTAKE = ("weights_mb = total * 4 / 1e6", "weights_mb = total / 1e6")  # one byte per parameter instead of four
MISTAKE_MESSAGE = "that is one byte per parameter; an fp32 number takes 4 bytes."
STUDENTS = {"right": 3.0, "blank": 0.0, "mistake": 2.0}  # out of 3: weights_mb (1 point), linear_by_hand (2)


def _nbgrader(course: Path, *args: str) -> str:
    """Run the venv's nbgrader in `course`, offline, with the venv's bin first on PATH (nbgrader runs `alembic`
    to set up its gradebook) and no user-level Jupyter configuration."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "JUPYTER_CONFIG_DIR": str(course / ".jupyter-config"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(Path(sys.executable).parent / "nbgrader"), *args], cwd=course, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _answered(released: nbformat.NotebookNode, solutions: dict[str, list[str]], mistake=None):
    """`released` with what a student types: each `# YOUR CODE HERE` line of a solution cell replaced by the
    folded solution of the learner's edition, at its indentation; `mistake` (old, new) changes one line."""
    nb = nbformat.from_dict(released)
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if not meta.get("solution"):
            continue
        answers = iter(solutions[meta["grade_id"]])
        lines = []
        for line in cell.source.split("\n"):
            if line.strip() == editions.STUB:
                indent = line[:len(line) - len(line.lstrip())]
                lines += [indent + code if code.strip() else "" for code in next(answers).strip("\n").split("\n")]
            else:
                lines.append(line)
        cell.source = "\n".join(lines)
        if mistake and mistake[0] in cell.source:
            cell.source = cell.source.replace(*mistake)
    return nb


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """The course directory after generate_assignment, three submissions, autograde and generate_feedback."""
    course = tmp_path_factory.mktemp("course")
    assert editions.main(["course", str(NOTEBOOK), "--assignment", ASSIGNMENT, "--out", str(course)]) == 0
    _nbgrader(course, "generate_assignment", ASSIGNMENT, "--force")
    learner = nbformat.read(NOTEBOOK, as_version=4)
    solutions = {f"nb00-{n}": editions.solutions_of(learner.cells[folded].source)
                 for n, (_, folded) in enumerate(editions.exercises(learner), start=1)}
    released = nbformat.read(course / "release" / ASSIGNMENT / NOTEBOOK.name, as_version=4)
    for student in STUDENTS:
        folder = course / "submitted" / student / ASSIGNMENT
        folder.mkdir(parents=True)
        if student == "blank":
            nb = released
        else:
            nb = _answered(released, solutions, MISTAKE if student == "mistake" else None)
        nbformat.write(nb, folder / NOTEBOOK.name)
    _nbgrader(course, "autograde", ASSIGNMENT, "--force")
    _nbgrader(course, "generate_feedback", ASSIGNMENT, "--force")
    return course


def _autograded(course: Path, student: str) -> nbformat.NotebookNode:
    return nbformat.read(course / "autograded" / student / ASSIGNMENT / NOTEBOOK.name, as_version=4)


def _grade_id(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def test_the_released_notebook_starts_unanswered_without_solutions_or_hidden_tests(course):
    released = nbformat.read(course / "release" / ASSIGNMENT / NOTEBOOK.name, as_version=4)
    text = "\n".join(cell.source for cell in released.cells)
    assert "NotImplementedError" not in text and "SOLUTION" not in text and "HIDDEN TESTS" not in text
    assert "fresh_inputs" not in text and "total * 4 / 1e6" not in text
    solution_cells = [c for c in released.cells if c.metadata.get("nbgrader", {}).get("solution")]
    assert [c.source.count(editions.STUB) for c in solution_cells] == [1, 1]
    assert "weights_mb = None" in solution_cells[0].source and "    return None" in solution_cells[1].source
    graded = {_grade_id(c): c.metadata["nbgrader"] for c in released.cells
              if c.metadata.get("nbgrader", {}).get("grade")}
    assert {k: (v["points"], v["locked"]) for k, v in graded.items()} == {"nb00-1-graded": (1, True),
                                                                       "nb00-2-graded": (2, True)}


def test_the_gradebook_gives_full_marks_zero_and_partial_marks(course):
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        scores = {}
        for student in STUDENTS:
            submission = gradebook.find_submission(ASSIGNMENT, student)
            assert submission.max_score == 3.0
            scores[student] = submission.score
        assert scores == STUDENTS
        mistake = gradebook.find_submission_notebook(NOTEBOOK.stem, ASSIGNMENT, "mistake")
        assert {g.name: g.auto_score for g in mistake.grades} == {"nb00-1-graded": 0.0, "nb00-2-graded": 2.0}


def test_the_blank_submission_runs_top_to_bottom_and_fails_only_in_the_graded_cells(course):
    """Run All goes on past every unanswered exercise: the only errors are the graded cells' assertions."""
    nb = _autograded(course, "blank")
    failed = [(_grade_id(c), o.ename) for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert failed == [("nb00-1-graded", "AssertionError"), ("nb00-2-graded", "AssertionError")]
    waiting = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
    texts = ["".join(o.get("text", "") for o in c.outputs) for c in waiting]
    assert "not answered yet" in texts[0] and "not written yet" in texts[1], texts
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code" and c.source.strip())  # every cell ran


def test_the_right_submission_passes_the_hidden_tests_too(course):
    nb = _autograded(course, "right")
    graded = [c for c in nb.cells if _grade_id(c) == "nb00-2-graded"]
    assert len(graded) == 1 and "fresh_inputs" in graded[0].source  # autograde put the hidden tests back
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


def test_the_feedback_carries_the_checks_message(course):
    html = (course / "feedback" / "mistake" / ASSIGNMENT / NOTEBOOK.with_suffix(".html").name).read_text("utf-8")
    assert MISTAKE_MESSAGE in html
    assert f"{NOTEBOOK.stem} (Score: 2.0 / 3.0)" in html
