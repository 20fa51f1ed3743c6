"""Every measured number quoted in a notebook's prose is one that a cell of that notebook printed.

The notebooks are committed with the outputs of one clean run, so the prose can be checked against them: each
decimal number with two or more decimals in a markdown cell must appear in the text output of some code cell of
the same notebook. Numbers that are not measurements (arXiv identifiers, arithmetic shown in the prose, figures
from papers) are listed below with the reason. When a re-run changes a printed number, this test names the
sentence to update. The same holds for the teacher's notes on each notebook in docs/WORKSHOP.md: their numbers
must be printed by that notebook or quoted in its prose. A number counts as shown only whole (0.41 is not in
0.414).
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d{2,}(?![\w.])")
ARXIV = re.compile(r"arXiv:\s*\d{4}\.\d{4,5}")

# notebook -> {number: why it is quoted without being printed}
NOT_MEASURED = {
    "00_start_here.ipynb": {"0.83": "834,560 parameters, printed, in millions"},
    "01_meet_the_base_model.ipynb": {"0.83": "834,560 parameters, printed, in millions",
                                     "4.57": "ln 97, the loss of a uniform guess, worked out in the prose"},
    "09_lora_in_practice.ipynb": {"0.25": "alpha / r at r = 32 and 32 / 128, worked out in the prose"},
    "11_from_our_model_to_hugging_face.ipynb": {"0.0625": "bfloat16's step between 8 and 16, 2**3 * 2**-7, worked "
                                                          "out in the prose",
                                                "0.05": "the real-model path's lora_dropout, a setting"},
    "14_fine_tuning_like_a_practitioner.ipynb": {"0.693": "ln 2, the DPO loss at step 0, worked out in the prose"},
}


def printed_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts += [data.get("text/plain", ""), data.get("text/markdown", ""), data.get("text/html", "")]
    return "\n".join(parts)


def shows(number: str, text: str) -> bool:
    """True if `text` contains `number` as a whole number (0.41 is not shown by 0.414)."""
    return re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", text) is not None


def prose_text(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def unprinted_numbers(nb, allowed: dict) -> list[str]:
    """'cell i: number in «context»' for each decimal in the prose that no output shows."""
    printed = printed_text(nb)
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        source = ARXIV.sub("", cell.source)
        for m in DECIMAL.finditer(source):
            if not shows(m[0], printed) and m[0] not in allowed:
                context = source[max(0, m.start() - 50):m.end() + 20].replace("\n", " ")
                found.append(f"cell {i}: {m[0]} in «{context}»")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_decimal_in_the_prose_was_printed_by_the_notebook(path):
    nb = nbformat.read(path, as_version=4)
    missing = unprinted_numbers(nb, NOT_MEASURED.get(path.name, {}))
    assert not missing, f"{path.name}: numbers in the prose that no cell printed:\n" + "\n".join(missing)


def test_the_check_can_fail():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print(0.633)", outputs=[nbformat.v4.new_output(
        "stream", name="stdout", text="accuracy 0.633\n")]),
        nbformat.v4.new_markdown_cell("It reaches 0.633, then 0.644 (arXiv:2106.09685).")]
    missing = unprinted_numbers(nb, {})
    assert len(missing) == 1 and missing[0].startswith("cell 1: 0.644 in «It reaches 0.633, then 0.644 (")
    assert unprinted_numbers(nb, {"0.644": "a paper's figure"}) == []


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name in NOT_MEASURED], ids=lambda p: p.name)
def test_every_exception_is_still_in_the_prose(path):
    nb = nbformat.read(path, as_version=4)
    prose = prose_text(nb)
    assert [n for n in NOT_MEASURED[path.name] if n not in prose] == [], "remove exceptions the prose dropped"


WORKSHOP = ROOT / "docs" / "WORKSHOP.md"
NOTES_HEADING = re.compile(r"^### (\d\d) · .*$", re.M)


def teachers_notes() -> dict[str, str]:
    """{"03": the text of the workshop guide's teacher's notes for notebook 03, ...}."""
    text = WORKSHOP.read_text(encoding="utf-8")
    parts = NOTES_HEADING.split(text)
    return {number: body.split("\n## ")[0] for number, body in zip(parts[1::2], parts[2::2], strict=True)}


def unbacked_numbers(notes: str, nb) -> list[str]:
    """Decimals in the notes that the notebook neither printed nor quotes in its own (checked) prose."""
    printed = printed_text(nb)
    prose = prose_text(nb)
    notes = ARXIV.sub("", notes)
    return [f"{m[0]} in «{notes[max(0, m.start() - 50):m.end() + 20].replace(chr(10), ' ')}»"
            for m in DECIMAL.finditer(notes) if not shows(m[0], printed) and not shows(m[0], prose)]


def test_the_workshop_guide_has_notes_for_every_notebook():
    assert sorted(teachers_notes()) == [p.name[:2] for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_decimal_in_the_teachers_notes_comes_from_the_notebook(path):
    nb = nbformat.read(path, as_version=4)
    missing = unbacked_numbers(teachers_notes()[path.name[:2]], nb)
    assert not missing, (f"docs/WORKSHOP.md, notes on {path.name}: numbers the notebook does not show:\n"
                         + "\n".join(missing))


def test_the_workshop_check_can_fail():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print(0.414)", outputs=[nbformat.v4.new_output(
        "stream", name="stdout", text="phi 0.414\n")])]
    assert unbacked_numbers("from 0.414 to 0.41", nb) == ["0.41 in «from 0.414 to 0.41»"]
