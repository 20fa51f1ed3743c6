"""Build the teacher and student editions of the course from its one source, the learner's edition.

    python tools/build_editions.py teacher                      # every notebooks/NN_*.ipynb -> build/teacher/
    python tools/build_editions.py student                      # -> build/student/
    python tools/build_editions.py student notebooks/01_meet_the_base_model.ipynb --out /tmp/student
    python tools/build_editions.py student --colab-ref student  # badges open the notebooks of branch `student`

The notebooks in `notebooks/` are the learner's edition, the one the README, Binder and Colab open. Each graded
exercise is a code cell whose answer is a stub: a `# YOUR CODE HERE` line followed by `name = None` (or, in a
function, `return None`) at the same indentation. Its reference solution sits folded in the markdown cell right
after it: a `<details>` block whose summary starts with "Solution" and which holds one ```python block per stub,
in order (a function's solution is its body). From that one source:

- teacher: every stub replaced by its solution between nbgrader's markers, at the stub's indentation,

      ### BEGIN SOLUTION
      always_austen = 1 / 3
      ### END SOLUTION

  each exercise cell marked as an nbgrader solution cell (so nbgrader's `ClearSolutions` accepts the notebook
  as an assignment source), the folded solution cells removed, outputs cleared.
- student: the learner's edition without the folded solutions (for a class where solutions come later),
  outputs cleared.

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
    """`source` with each stub replaced by its solution between nbgrader's markers, at the stub's indentation."""
    check_pairing(source, solutions)
    lines = source.split("\n")
    for (start, end, indent), solution in reversed(list(zip(stub_regions(source), solutions, strict=True))):
        body = [f"{indent}{line}" if line.strip() else "" for line in solution.strip("\n").split("\n")]
        lines[start:end] = [f"{indent}{BEGIN}", *body, f"{indent}{END}"]
    return "\n".join(lines)


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
    `nb` is unchanged. nbgrader's grade ids are `<stem>-1`, `<stem>-2`, ... (stem: the notebook's number).
    `badge_line` replaces the title's badges; None puts the edition's note there."""
    if which not in NOTES:
        raise ValueError(f"edition must be one of {sorted(NOTES)}, got {which!r}")
    pairs = exercises(nb)  # refuses a notebook whose exercises do not pair up, before anything is built
    nb = copy.deepcopy(nb)
    drop = set()
    for number, (code, folded) in enumerate(pairs, start=1):
        solutions = solutions_of(nb.cells[folded].source)
        try:
            check_pairing(nb.cells[code].source, solutions)
            if which == "teacher":
                nb.cells[code].source = teacher_source(nb.cells[code].source, solutions)
                nb.cells[code].metadata["nbgrader"] = {
                    "grade": False, "grade_id": f"{stem}-{number}", "locked": False, "schema_version": 3,
                    "solution": True, "task": False}
        except EditionError as err:
            raise EditionError(f"cell {code}: {err}") from None
        drop.add(folded)
    nb.cells = [cell for i, cell in enumerate(nb.cells) if i not in drop]
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("edition", choices=sorted(NOTES))
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    ap.add_argument("--out", type=Path, help="default: build/<edition>/")
    ap.add_argument("--colab-ref", help="branch or tag where this edition is published, for its badges")
    args = ap.parse_args(argv)
    paths = args.notebooks or course_notebooks()
    out = args.out or ROOT / "build" / args.edition
    name, url = project_metadata(ROOT / "pyproject.toml")
    out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        learner = nbformat.read(path, as_version=4)
        line = badges(url, f"notebooks/{path.name}", args.colab_ref) if args.colab_ref else None
        try:
            nb, n = edition(learner, args.edition, stem=f"nb{path.stem[:2]}", badge_line=line)
        except EditionError as err:
            print(f"{path}: {err}", file=sys.stderr)
            return 1
        nbformat.write(nb, out / path.name)
        print(f"{path.name}: {n} exercise(s) -> {out / path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
