"""Build the teacher and student editions of the course from its one source, the learner's edition, and an
nbgrader course directory from the teacher edition.

    python tools/build_editions.py teacher                      # every notebooks/NN_*.ipynb -> build/teacher/
    python tools/build_editions.py student                      # -> build/student/
    python tools/build_editions.py student notebooks/01_meet_the_base_model.ipynb --out /tmp/student
    python tools/build_editions.py student --colab-ref student  # badges open the notebooks of branch `student`
    python tools/build_editions.py course                       # -> build/course/ (nbgrader; docs/GRADING.md)
    python tools/build_editions.py course notebooks/00_*.ipynb notebooks/07_*.ipynb --assignment week1

The notebooks in `notebooks/` are the learner's edition, the one the README, Binder and Colab open. Each graded
exercise is a code cell whose answer is a stub: a `# YOUR CODE HERE` line followed by `name = None` (or, in a
function, `return None`) at the same indentation, and a `_ = check_...(answer)` line. Its reference solution
sits folded in the markdown cell right after it: a `<details>` block whose summary starts with "Solution" and
which holds one ```python block per stub, in order (a function's solution is its body). From that one source:

- teacher: every stub's comment replaced by its solution between nbgrader's markers, at the stub's indentation,
  the rest of the stub kept where nbgrader leaves it: a value's `name = None` before the markers, a function's
  `return None` after them,

      always_austen = None
      ### BEGIN SOLUTION
      always_austen = 1 / 3
      ### END SOLUTION

  With `ClearSolutions.code_stub` set to `# YOUR CODE HERE` (the nbgrader_config.py written next to the edition),
  `nbgrader generate_assignment` turns this back into an exercise that starts as None, or a function that still
  returns None, so the released notebook runs top to bottom unanswered and each check says "not answered yet"
  or "not written yet" (nbgrader's default stub raises NotImplementedError instead). Each exercise cell is an
  nbgrader solution cell, and right after it comes a locked autograder cell worth POINTS (1 for a value, 2 for a
  function) that asserts the same check while nbgrader grades or validates (NBGRADER_EXECUTION is set), and
  stays quiet while the student works, so Run All never stops there. A function check marked `fresh_inputs`
  also runs on inputs drawn afresh, between nbgrader's hidden-test markers. Folded solutions removed, outputs
  cleared.
- student: the learner's edition without the folded solutions (for a class where solutions come later),
  outputs cleared.
- course: an nbgrader course directory: nbgrader_config.py and source/<assignment>/ with the teacher edition of
  each notebook (one assignment per notebook, named after it, or all in `--assignment`).

Both editions drop the nbval output tags (there are no outputs left to compare) and the saved widget state, and
replace the Colab / Binder badges, which open the learner's edition in the repository, by a note (or point them
at `--colab-ref`, a branch where you publish the edition with the same `notebooks/` layout).
"""

from __future__ import annotations

import argparse
import ast
import copy
import re
import sys
import textwrap
from pathlib import Path

import nbformat
from notebook_runner import ROOT, course_notebooks

from lora_teach.colab import badges, project_metadata, with_badges

STUB = "# YOUR CODE HERE"
STUB_LINE = re.compile(r"^(?P<indent>[ \t]*)# YOUR CODE HERE[ \t]*$")
STUB_BODY = re.compile(r"^[ \t]*(?:return None|[A-Za-z_]\w* = None|pass)[ \t]*$")
SOLUTION_CELL = re.compile(r"^<details>\s*<summary>(?:<b>)?Solution\b")
FENCE = re.compile(r"^```python[ \t]*\n(.*?)\n```[ \t]*$", re.S | re.M)
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
CHECK_LINE = re.compile(r"^_ = (?P<check>check_\w+)\((?P<answer>[A-Za-z_]\w*)\)[ \t]*$", re.M)
POINTS = {"value": 1, "function": 2}  # an autograder cell's points: a value to give, a function to write
FRESH_SEEDS = (1, 2)  # the hidden tests' fresh inputs (lora_teach.exercises.core.fresh_inputs)
NBGRADER_CONFIG = """\
# nbgrader's configuration for the lora-teach course (written by tools/build_editions.py; docs/GRADING.md).
c = get_config()  # noqa: F821 (nbgrader provides it)

# The released exercises start as `name = None`, or a function that still returns None, and their checks say
# "not answered yet" or "not written yet": nbgrader's default stub, `raise NotImplementedError()`, would stop
# Run All at the first exercise instead.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE"}

# A course notebook runs in under a minute on two cores; nbgrader's default is 30 s per cell.
c.Execute.timeout = 600
"""
NBVAL_TAG = "nbval-check-output"
FOLDED = re.compile(r"\s*Each solution is folded\s+under its exercise:\s+try first,\s+then click\s+\*\*Solution\*\*"
                    r"(?:\s+to compare)?\.")
NOTES = {
    "teacher": ("*Teacher edition: every exercise's solution is filled in between nbgrader's solution markers. "
                "Students get the learner's edition (the repository's notebooks) or the student edition.*"),
    "student": ("*Student edition: the exercises' solutions are removed. To run it on Colab, upload this file "
                "(File → Upload notebook); its first code cell installs the course.*"),
}


class EditionError(ValueError):
    """An exercise whose stubs and folded solutions do not pair up, or a solution that is not valid Python."""


# ------------------------------------------------------------------------------------------- one exercise
def _assigned_names(tree: ast.Module) -> list[str]:
    """Names the top-level statements of `tree` assign (in order, once each)."""
    names: list[str] = []

    def add(target):
        if isinstance(target, ast.Name) and target.id not in names:
            names.append(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                add(elt)
        elif isinstance(target, ast.Starred):
            add(target.value)

    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                add(target)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            add(node.target)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            add(ast.Name(id=node.name))
    return names


def _returns(tree: ast.Module) -> bool:
    """True if the block returns, outside any function it defines itself."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Return):
            return True
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))
    return False


def parse_solution(code: str) -> ast.Module:
    """The solution's syntax tree; a function's body (with a `return`) is parsed inside a function."""
    try:
        return ast.parse(code)
    except SyntaxError:
        pass
    try:
        return ast.parse("def _solution():\n" + textwrap.indent(code, "    ")).body[0]
    except SyntaxError as err:
        raise EditionError(f"the solution is not valid Python: {err.msg} in\n{code}") from None


def stub(solution: str, indent: str = "") -> list[str]:
    """The learner's lines for one solution: `# YOUR CODE HERE`, then `name = None` for each name the solution
    assigns, or `return None` when it is a function's body."""
    tree = parse_solution(solution)
    lines = [f"{indent}{STUB}"]
    if isinstance(tree, ast.FunctionDef) or _returns(tree):  # a function's body: its local names are its own
        lines.append(f"{indent}return None")
    else:
        lines += [f"{indent}{name} = None" for name in _assigned_names(tree)]
    if len(lines) == 1 and indent:
        lines.append(f"{indent}pass")  # an indented block needs a statement
    return lines


def stub_regions(source: str) -> list[tuple[int, int, str]]:
    """(first line, one past the last line, indentation) of each stub in a code cell's source."""
    lines = source.split("\n")
    regions = []
    for i, line in enumerate(lines):
        match = STUB_LINE.match(line)
        if not match:
            continue
        end = i + 1
        while end < len(lines) and STUB_BODY.match(lines[end]) and lines[end].startswith(match["indent"]) \
                and not lines[end][len(match["indent"]):].startswith((" ", "\t")):
            end += 1
        regions.append((i, end, match["indent"]))
    return regions


def solutions_of(markdown: str) -> list[str]:
    """The ```python blocks of a folded solution cell, in order."""
    return [textwrap.dedent(code) for code in FENCE.findall(markdown)]


def is_solution_cell(cell) -> bool:
    return cell.cell_type == "markdown" and bool(SOLUTION_CELL.match(cell.source.lstrip()))


def check_pairing(source: str, solutions: list[str]) -> None:
    """Refuse an exercise whose stubs are not exactly the stubs of its solutions."""
    regions = stub_regions(source)
    if len(regions) != len(solutions):
        raise EditionError(f"{len(regions)} `{STUB}` stub(s) but {len(solutions)} folded solution(s)")
    lines = source.split("\n")
    for (start, end, indent), solution in zip(regions, solutions, strict=True):
        expected = stub(solution, indent)
        if lines[start:end] != expected:
            raise EditionError(f"the stub {lines[start:end]} does not match its solution, whose stub is {expected}")


def teacher_source(source: str, solutions: list[str]) -> str:
    """`source` with each stub's comment replaced by its solution between nbgrader's markers, at the stub's
    indentation; a value's `name = None` lines stay before the markers, a function's `return None` (or `pass`)
    after them: where nbgrader's ClearSolutions, with the code stub `# YOUR CODE HERE`, gives the stub back."""
    check_pairing(source, solutions)
    lines = source.split("\n")
    for (start, end, indent), solution in reversed(list(zip(stub_regions(source), solutions, strict=True))):
        body = [f"{indent}{line}" if line.strip() else "" for line in solution.strip("\n").split("\n")]
        kept = lines[start + 1:end]  # the stub below its `# YOUR CODE HERE` line
        before = [line for line in kept if line.strip() not in ("return None", "pass")]
        after = [line for line in kept if line.strip() in ("return None", "pass")]
        lines[start:end] = [*before, f"{indent}{BEGIN}", *body, f"{indent}{END}", *after]
    return "\n".join(lines)


def graded_cell(check: str, answer: str, kind: str, grade_id: str, fresh: bool) -> nbformat.NotebookNode:
    """The locked autograder cell after an exercise: `POINTS[kind]` points, the exercise's own check asserted while
    nbgrader grades or validates, with hidden tests on fresh inputs when `fresh` (a function check that takes
    them). Outside nbgrader the cell does nothing, so Run All goes on past an unanswered exercise."""
    points = POINTS[kind]
    lines = [f"# Graded, {points} point{'s' if points > 1 else ''}. While you work, the line under your answer tells "
             "you where",
             "# you stand; when your notebook is graded, this cell runs the same check again.",
             "import os",
             "",
             f"from lora_teach.exercises import {check}",
             "",
             'if os.environ.get("NBGRADER_EXECUTION"):  # set while nbgrader grades or validates the notebook',
             f"    assert {check}({answer}), \"`{answer}` is not right yet: run its exercise cell to see why\""]
    if fresh:
        lines += [f"    {HIDDEN_BEGIN}",
                  "    from lora_teach.exercises.core import fresh_inputs",
                  "",
                  f"    for seed in {FRESH_SEEDS}:  # the same check, on inputs of the same shapes drawn afresh",
                  "        with fresh_inputs(seed):",
                  f"            assert {check}({answer}), f\"`{answer}` fails on fresh inputs (seed {{seed}})\"",
                  f"    {HIDDEN_END}"]
    cell = nbformat.v4.new_code_cell("\n".join(lines))
    cell.metadata["nbgrader"] = {"grade": True, "grade_id": grade_id, "locked": True, "points": points,
                                 "schema_version": 3, "solution": False, "task": False}
    return cell


def _takes_fresh_inputs(check: str) -> bool:
    from lora_teach import exercises

    found = getattr(exercises, check, None)
    if found is None:
        raise EditionError(f"`{check}` is not a check of lora_teach.exercises")
    return bool(getattr(found, "fresh_inputs", False))


# ------------------------------------------------------------------------------------------- one notebook
def exercises(nb) -> list[tuple[int, int]]:
    """(index of the exercise cell, index of its folded solution cell) for each exercise of `nb`."""
    pairs = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and stub_regions(cell.source):
            after = nb.cells[index + 1] if index + 1 < len(nb.cells) else None
            if after is None or not is_solution_cell(after):
                raise EditionError(f"cell {index}: an exercise without its folded solution in the next cell")
            pairs.append((index, index + 1))
        elif is_solution_cell(cell) and (index == 0 or not stub_regions(nb.cells[index - 1].source)):
            raise EditionError(f"cell {index}: a folded solution that follows no exercise")
    return pairs


def edition(nb, which: str, *, stem: str = "exercise",
            badge_line: str | None = None) -> tuple[nbformat.NotebookNode, int]:
    """(the `which` edition, "teacher" or "student", of learner notebook `nb`; the number of exercises).
    `nb` is unchanged. nbgrader's grade ids are `<stem>-1`, `<stem>-2`, ... for the exercise cells and
    `<stem>-1-graded`, ... for the graded cells the teacher edition adds after them (stem: the notebook's number).
    `badge_line` replaces the title's badges; None puts the edition's note there."""
    if which not in NOTES:
        raise ValueError(f"edition must be one of {sorted(NOTES)}, got {which!r}")
    pairs = exercises(nb)  # refuses a notebook whose exercises do not pair up, before anything is built
    nb = copy.deepcopy(nb)
    drop, graded = set(), {}
    for number, (code, folded) in enumerate(pairs, start=1):
        solutions = solutions_of(nb.cells[folded].source)
        source = nb.cells[code].source
        try:
            check_pairing(source, solutions)
            if which == "teacher":
                calls = CHECK_LINE.findall(source)
                if len(calls) != 1:
                    raise EditionError(f"one `_ = check_...(answer)` line per exercise, found {len(calls)}")
                (check, answer), = calls
                kind = "function" if any(line.strip() == "return None" for line in source.split("\n")) else "value"
                nb.cells[code].source = teacher_source(source, solutions)
                nb.cells[code].metadata["nbgrader"] = {
                    "grade": False, "grade_id": f"{stem}-{number}", "locked": False, "schema_version": 3,
                    "solution": True, "task": False}
                graded[code] = graded_cell(check, answer, kind, f"{stem}-{number}-graded",
                                           kind == "function" and _takes_fresh_inputs(check))
        except EditionError as err:
            raise EditionError(f"cell {code}: {err}") from None
        drop.add(folded)
    nb.cells = [new for i, cell in enumerate(nb.cells) if i not in drop
                for new in ([cell, graded[i]] if i in graded else [cell])]
    for cell in nb.cells:
        if cell.cell_type == "code":
            tags = [t for t in cell.metadata.get("tags", []) if t != NBVAL_TAG]  # no outputs left to compare
            if tags:
                cell.metadata["tags"] = tags
            else:
                cell.metadata.pop("tags", None)
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)  # the learner edition run's timestamps
        elif cell.cell_type == "markdown":
            cell.source = FOLDED.sub("", cell.source)  # there is nothing folded under the exercises any more
    if nb.cells and nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "):
        nb.cells[0].source = with_badges(nb.cells[0].source, badge_line or NOTES[which])
    nb.metadata.pop("widgets", None)  # widget state of the learner edition's run
    nb.metadata.setdefault("lora_teach", {})["edition"] = which
    return nb, len(pairs)


ASSIGNMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("edition", choices=[*sorted(NOTES), "course"])
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    ap.add_argument("--out", type=Path, help="default: build/<edition>/")
    ap.add_argument("--colab-ref", help="branch or tag where this edition is published, for its badges")
    ap.add_argument("--assignment", help="course only: one nbgrader assignment (this name) for all the notebooks; "
                                         "default: one per notebook, named after it")
    args = ap.parse_args(argv)
    if args.assignment is not None and (args.edition != "course" or not ASSIGNMENT.match(args.assignment)):
        ap.error(f"--assignment goes with `course` and is a name of letters, digits, '.', '_' and '-' (not starting "
                 f"with a punctuation mark), got {args.assignment!r} with {args.edition!r}")
    paths = args.notebooks or course_notebooks()
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        ap.error(f"no such notebook: {', '.join(missing)}")
    out = args.out or ROOT / "build" / args.edition
    name, url = project_metadata(ROOT / "pyproject.toml")
    built = []
    for path in paths:  # every notebook is built before anything is written
        learner = nbformat.read(path, as_version=4)
        line = badges(url, f"notebooks/{path.name}", args.colab_ref) if args.colab_ref else None
        try:
            nb, n = edition(learner, "teacher" if args.edition == "course" else args.edition,
                            stem=f"nb{path.stem[:2]}", badge_line=line)
        except EditionError as err:
            print(f"{path}: {err}", file=sys.stderr)
            return 1
        folder = out / "source" / (args.assignment or path.stem) if args.edition == "course" else out
        built.append((path, nb, n, folder / path.name))
    out.mkdir(parents=True, exist_ok=True)
    if args.edition != "student":  # nbgrader reads it from the course directory it runs in
        (out / "nbgrader_config.py").write_text(NBGRADER_CONFIG, encoding="utf-8")
    for path, nb, n, target in built:
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
        print(f"{path.name}: {n} exercise(s) -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
