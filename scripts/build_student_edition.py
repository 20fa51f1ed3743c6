"""Build the student edition of the course from the teacher edition (the committed notebooks).

    python scripts/build_student_edition.py                        # every notebooks/NN_*.ipynb -> build/student/
    python scripts/build_student_edition.py notebooks/01_meet_the_base_model.ipynb --out /tmp/student
    python scripts/build_student_edition.py --colab-ref student    # badges open the notebooks of branch `student`

One source, two editions. In a teacher notebook each reference solution sits between two comment lines at the
same indentation; the check that grades it stays outside them:

    # BEGIN SOLUTION
    always_austen = 1 / 3
    # END SOLUTION
    check_always_austen_accuracy(always_austen)

The student edition replaces the lines in between by `# YOUR CODE HERE` and `return None` when the solution
returns (a function's body), else `name = None` for each name the solution assigns at its own level. So the
checks answer with a ✗ and a hint, and the notebook still runs top to bottom. Also in the student edition:
every output is cleared, the `# NBVAL_CHECK_OUTPUT` markers and `nbval-check-output` tags are dropped (there
are no outputs to compare), and the Colab / Binder badges, which open the teacher edition, are replaced by a
note, or pointed at `--colab-ref` if you publish the student edition on a branch of the repository (with the
same `notebooks/` layout).
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

from lora_teach.colab import badges, project_metadata, with_badges

ROOT = Path(__file__).resolve().parents[1]
BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION[ \t]*$")
END = re.compile(r"^(?P<indent>[ \t]*)# END SOLUTION[ \t]*$")
STUB = "# YOUR CODE HERE"
NBVAL_MARK = "# NBVAL_CHECK_OUTPUT"
NBVAL_TAG = "nbval-check-output"  # the same, as a cell tag
STUDENT_NOTE = ("*Student edition: the exercises' solutions are removed. To run it on Colab, upload this file "
                "(File → Upload notebook); its first code cell installs the course.*")


class SolutionMarkerError(ValueError):
    """Solution markers that do not pair up, or a solution that is not valid Python."""


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


def stub(solution: list[str], indent: str) -> list[str]:
    """The student's lines for one solution block: `# YOUR CODE HERE`, then `name = None` / `return None`."""
    code = textwrap.dedent("\n".join(solution))
    try:
        tree = ast.parse(code)
    except SyntaxError as err:
        raise SolutionMarkerError(f"the solution is not valid Python: {err}") from None
    lines = [f"{indent}{STUB}"]
    if _returns(tree):  # a function's body: its local names are the student's business
        lines.append(f"{indent}return None")
    else:
        lines += [f"{indent}{name} = None" for name in _assigned_names(tree)]
    if len(lines) == 1 and indent:
        lines.append(f"{indent}pass")  # an indented block needs a statement
    return lines


def student_source(source: str) -> tuple[str, int]:
    """(`source` with each solution block replaced by its stub, number of blocks replaced)."""
    out: list[str] = []
    solution: list[str] | None = None
    indent = ""
    count = 0
    for number, line in enumerate(source.split("\n"), start=1):
        begin, end = BEGIN.match(line), END.match(line)
        if begin:
            if solution is not None:
                raise SolutionMarkerError(f"line {number}: BEGIN SOLUTION inside another solution")
            solution, indent = [], begin["indent"]
        elif end:
            if solution is None:
                raise SolutionMarkerError(f"line {number}: END SOLUTION without a BEGIN SOLUTION")
            if end["indent"] != indent:
                raise SolutionMarkerError(f"line {number}: END SOLUTION is not indented like its BEGIN SOLUTION")
            out += stub(solution, indent)
            solution, count = None, count + 1
        elif solution is not None:
            solution.append(line)
        else:
            out.append(line)
    if solution is not None:
        raise SolutionMarkerError("BEGIN SOLUTION without an END SOLUTION")
    return "\n".join(out), count


def student_notebook(nb, *, badge_line: str | None = None) -> tuple[nbformat.NotebookNode, int, list[str]]:
    """(the student edition of teacher notebook `nb`, number of solutions replaced, warnings); `nb` is unchanged.

    `badge_line` replaces the title's badges; None puts the student-edition note there instead."""
    nb = copy.deepcopy(nb)
    warnings, solutions = [], 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            try:
                cell.source, n = student_source(cell.source)
            except SolutionMarkerError as err:
                raise SolutionMarkerError(f"cell {index}: {err}") from None
            solutions += n
            cell.source = "\n".join(line for line in cell.source.split("\n") if line.strip() != NBVAL_MARK)
            tags = [t for t in cell.metadata.get("tags", []) if t != NBVAL_TAG]  # no outputs left to compare
            if tags:
                cell.metadata["tags"] = tags
            else:
                cell.metadata.pop("tags", None)
            cell.outputs, cell.execution_count = [], None
    if nb.cells and nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "):
        nb.cells[0].source = with_badges(nb.cells[0].source, badge_line or STUDENT_NOTE)
    nb.metadata.pop("widgets", None)  # widget state of the teacher's run
    nb.metadata["lora_teach"] = {"edition": "student"}
    if not solutions:
        warnings.append("no solutions are marked: the student edition equals the teacher edition")
    return nb, solutions, warnings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "student", help="default: build/student/")
    ap.add_argument("--colab-ref", help="branch or tag where the student edition is published, for its badges")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a notebook has a warning")
    args = ap.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    name, url = project_metadata(ROOT / "pyproject.toml")
    args.out.mkdir(parents=True, exist_ok=True)
    warned = False
    for path in paths:
        teacher = nbformat.read(path, as_version=4)
        line = badges(url, f"notebooks/{path.name}", args.colab_ref) if args.colab_ref else None
        student, n, warnings = student_notebook(teacher, badge_line=line)
        nbformat.write(student, args.out / path.name)
        print(f"{path.name}: {n} solution(s) replaced -> {args.out / path.name}")
        for warning in warnings:
            print(f"  warning: {warning}")
        warned = warned or bool(warnings)
    return 1 if args.strict and warned else 0


if __name__ == "__main__":
    sys.exit(main())
