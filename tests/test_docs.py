"""The teaching documents: a quiz per notebook that works in class and on the site, plans that place every notebook
and give it at least its measured run time, links between the documents that resolve, and the CPU-only set-up the
logistics page documents."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
QUIZZES = DOCS / "quizzes"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
QUIZ_FILES = sorted(QUIZZES.glob("*.md"))
DOC_FILES = sorted(DOCS.glob("*.md")) + QUIZ_FILES

QUESTION = re.compile(r"^## Question (\d+)\s*$", re.M)
CHOICE = re.compile(r"^- \(([a-z])\) (\S.*)$", re.M)
ANSWER_BLOCK = re.compile(r"<details><summary>Answer</summary>\n(.*?)\n</details>", re.S)
ANSWER = re.compile(r"^\*\*Answer: \(([a-z])\)\*\*\s*$", re.M)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
NOTEBOOK_NAME = re.compile(r"\b(\d\d) · ")
RUN_TIME = re.compile(r"\*\*Run time:\*\* about (\d+) s")
FULL_DAY_ROW = re.compile(r"^\| (\d\d):(\d\d) \| (\d+) \| ([^|]+?) \|", re.M)
TRACK_ROW = re.compile(r"^\| (\d+)-(\d+) \| ([^|]+?) \|", re.M)
WEEK_ROW = re.compile(r"^\| ([1-6]) \| (\d\d) · [^|]+ \| (\d+) \|", re.M)


def _number(path: Path) -> str:
    return path.name[:2]


def _block(path: Path, name: str) -> str:
    """The text between `<!-- plan:NAME:start -->` and `<!-- plan:NAME:end -->` (exactly one such block)."""
    found = re.findall(rf"<!-- plan:{name}:start -->\n(.*?)<!-- plan:{name}:end -->", path.read_text(), re.S)
    assert len(found) == 1, f"{path.name} needs exactly one plan:{name} block, found {len(found)}"
    return found[0]


def _questions(text: str) -> list[tuple[int, str]]:
    heads = list(QUESTION.finditer(text))
    ends = [h.start() for h in heads[1:]] + [len(text)]
    return [(int(h[1]), text[h.end():end]) for h, end in zip(heads, ends, strict=True)]


def measured_seconds() -> dict[str, float]:
    """Each notebook's run time in seconds: the README's measured budget table, else the notebook header's
    "Run time: about N s" line (a notebook that `make budget-docs` has not measured yet)."""
    readme = (ROOT / "README.md").read_text()
    table = re.search(r"<!-- budget:start -->(.*?)<!-- budget:end -->", readme, re.S)[1]
    seconds = {}
    for line in table.splitlines():
        link = re.search(r"\(notebooks/(\d\d)_[^)]+\.ipynb\)", line)
        if link:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            seconds[link[1]] = float(cells[2])
    for path in NOTEBOOKS:
        if _number(path) not in seconds:
            header = "".join(next(c["source"] for c in json.loads(path.read_text())["cells"]
                                  if c["cell_type"] == "markdown"))
            seconds[_number(path)] = float(RUN_TIME.search(header)[1])
    return seconds


# ------------------------------------------------------------------------------------------------ the quizzes
def test_every_notebook_has_a_quiz_and_every_quiz_a_notebook():
    assert NOTEBOOKS, "no notebooks found"
    assert {p.stem for p in NOTEBOOKS} <= {q.stem for q in QUIZ_FILES}, "a notebook has no quiz in docs/quizzes/"
    assert {q.stem for q in QUIZ_FILES} <= {p.stem for p in NOTEBOOKS}, "a quiz names no notebook"


@pytest.mark.parametrize("path", QUIZ_FILES, ids=lambda p: p.stem)
def test_a_quiz_has_five_questions_each_with_its_answer_among_the_choices_and_an_explanation(path):
    text = path.read_text()
    assert text.startswith(f"# Quiz · {_number(path)} · "), "the title names the notebook: '# Quiz · NN · ...'"
    assert f"](../../notebooks/{path.stem}.ipynb)" in text, "the quiz links to its notebook"
    questions = _questions(text)
    assert len(questions) >= 5, f"{len(questions)} questions, at least 5 wanted"
    assert [n for n, _ in questions] == list(range(1, len(questions) + 1)), "questions numbered 1, 2, 3, ..."
    for n, body in questions:
        stem = body.split("\n- (", 1)[0].strip()
        assert len(stem.split()) >= 5, f"question {n}: no question text before the choices"
        letters = [m[1] for m in CHOICE.finditer(body.split("<details>", 1)[0])]
        assert letters == list("abcdefgh"[:len(letters)]) and len(letters) >= 3, \
            f"question {n}: choices must be (a), (b), (c)... with at least three, got {letters}"
        blocks = ANSWER_BLOCK.findall(body)
        assert len(blocks) == 1, f"question {n}: one folded <details><summary>Answer</summary> block wanted"
        answers = ANSWER.findall(blocks[0])
        assert len(answers) == 1, f"question {n}: the answer block needs one line '**Answer: (x)**'"
        assert answers[0] in letters, f"question {n}: the answer ({answers[0]}) is not one of the choices"
        explanation = ANSWER.sub("", blocks[0]).strip()
        assert len(explanation.split()) >= 20, f"question {n}: the answer needs an explanation (20 words or more)"
        # markdown inside an HTML block renders only after a blank line, on GitHub as in MyST
        assert blocks[0].startswith("\n") and blocks[0].endswith("\n"), \
            f"question {n}: leave a blank line after <summary> and before </details>"


def test_the_right_answers_are_not_always_the_same_letter():
    answers = [a for path in QUIZ_FILES for a in ANSWER.findall(path.read_text())]
    for letter in set(answers):
        assert answers.count(letter) <= 0.4 * len(answers), f"({letter}) is the answer to too many questions"
    for path in QUIZ_FILES:
        assert len(set(ANSWER.findall(path.read_text()))) >= 2, f"{path.name}: every answer is the same letter"


# -------------------------------------------------------------------------------------------------- the plans
def test_the_full_day_places_every_notebook_in_a_schedule_that_adds_up():
    rows = FULL_DAY_ROW.findall(_block(DOCS / "WORKSHOP.md", "full-day"))
    assert rows, "the full-day plan has no rows '| HH:MM | minutes | ... |'"
    clock = int(rows[0][0]) * 60 + int(rows[0][1])
    for hh, mm, minutes, what in rows:
        assert int(hh) * 60 + int(mm) == clock, f"'{what}' starts at {hh}:{mm}, the row above ends at {clock // 60}:" \
                                                f"{clock % 60:02d}"
        clock += int(minutes)
    placed = [NOTEBOOK_NAME.match(what)[1] for *_, what in rows if NOTEBOOK_NAME.match(what)]
    assert placed == sorted(placed), "the full day keeps the notebooks in course order"
    assert set(placed) >= {_number(p) for p in NOTEBOOKS}, "a notebook is missing from the full day"
    assert len(placed) == len(set(placed)), "a notebook appears twice in the full day"
    assert any("break" in what for *_, what in rows) and any("lunch" in what for *_, what in rows)


def test_the_six_week_module_places_every_notebook_once_in_weeks_that_fit():
    rows = WEEK_ROW.findall(_block(DOCS / "MODULE.md", "six-week"))
    placed = [number for _, number, _ in rows]
    assert sorted(placed) == placed and len(set(placed)) == len(placed)
    assert set(placed) >= {_number(p) for p in NOTEBOOKS}, "a notebook is missing from the six-week module"
    assert {int(week) for week, _, _ in rows} == set(range(1, 7)), "every week has notebooks"
    for week in range(1, 7):
        minutes = sum(int(m) for w, _, m in rows if int(w) == week)
        assert minutes <= 240, f"week {week} plans {minutes} class minutes, more than its 240"


@pytest.mark.parametrize("name,length", [("90-minutes", 90), ("3-hours", 180)])
def test_the_short_tracks_add_up(name, length):
    rows = TRACK_ROW.findall(_block(DOCS / "WORKSHOP.md", name))
    assert int(rows[0][0]) == 0 and int(rows[-1][1]) == length
    for (_, end, _), (start, _, what) in zip(rows, rows[1:], strict=False):
        assert int(start) == int(end), f"'{what}' starts at minute {start}, the row above ends at {end}"


def _plan_minutes() -> list[tuple[str, str, int]]:
    """(plan, notebook number, minutes) for every notebook row of every plan."""
    out = []
    for _, _, minutes, what in FULL_DAY_ROW.findall(_block(DOCS / "WORKSHOP.md", "full-day")):
        if NOTEBOOK_NAME.match(what):
            out.append(("full day", NOTEBOOK_NAME.match(what)[1], int(minutes)))
    for _, number, minutes in WEEK_ROW.findall(_block(DOCS / "MODULE.md", "six-week")):
        out.append(("six weeks", number, int(minutes)))
    for name in ("90-minutes", "3-hours"):
        for start, end, what in TRACK_ROW.findall(_block(DOCS / "WORKSHOP.md", name)):
            if NOTEBOOK_NAME.match(what):
                out.append((name, NOTEBOOK_NAME.match(what)[1], int(end) - int(start)))
    return out


def test_every_plan_gives_a_notebook_at_least_its_measured_run_time():
    seconds = measured_seconds()
    rows = _plan_minutes()
    assert {n for plan, n, _ in rows if plan == "full day"} >= set(seconds)
    for plan, number, minutes in rows:
        assert number in seconds, f"{plan}: notebook {number} does not exist"
        assert minutes * 60 >= seconds[number], \
            f"{plan}: notebook {number} gets {minutes} min, less than its measured run time {seconds[number]:.0f} s"


def test_the_measured_run_times_come_from_the_readme_table():
    seconds = measured_seconds()
    assert seconds["02"] > 0 and set(seconds) == {_number(p) for p in NOTEBOOKS}


# -------------------------------------------------------------------------------------------------- the links
@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_links_between_the_documents_resolve(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # links inside code blocks are not links
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor in the same page
        file = target.split("#", 1)[0]
        assert (path.parent / file).exists(), f"{path.name}: the link to {target} points at nothing"


def test_the_teaching_pages_point_at_each_other():
    workshop = (DOCS / "WORKSHOP.md").read_text()
    for page in ("MODULE.md", "LOGISTICS.md", "CAPSTONE.md", "quizzes/"):
        assert f"]({page}" in workshop, f"WORKSHOP.md does not link to {page}"
    assert "](CAPSTONE.md)" in (DOCS / "MODULE.md").read_text()


# --------------------------------------------------------------------------------------------- the CPU set-up
def test_the_cpu_setup_installs_the_pinned_torch_from_the_cpu_index():
    pin = re.search(r"^torch==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert pin, "requirements.txt pins torch exactly"
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^setup-cpu:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert target, "the Makefile has a setup-cpu target"
    recipe = target[1]
    assert "--index-url https://download.pytorch.org/whl/cpu" in recipe and "^torch==" in recipe
    assert recipe.index("whl/cpu") < recipe.index("-r requirements.txt"), "torch's CPU build first, then the rest"
    logistics = (DOCS / "LOGISTICS.md").read_text()
    assert f"pip install torch=={pin[1]} --index-url https://download.pytorch.org/whl/cpu" in logistics, \
        "LOGISTICS.md's plain command pins the same torch as requirements.txt"
    assert "make setup-cpu" in logistics


# ------------------------------------------------------------------------------------------ scripts and make
def test_every_script_has_a_make_target_that_make_help_lists():
    """Every runnable script under experiments/, benchmarks/ and tools/ is run by a Makefile target with a `##`
    description (what `make help` prints); a module without a __main__ block is a library, not a script."""
    makefile = (ROOT / "Makefile").read_text()
    described = dict(re.findall(r"^([\w-]+):[^\n]*## [^\n]+\n((?:\t[^\n]*\n)+)", makefile, re.M))
    scripts = [p for folder in ("experiments", "benchmarks", "tools") for p in sorted((ROOT / folder).glob("*.py"))
               if '__name__ == "__main__"' in p.read_text()]
    assert len(scripts) >= 15, "the scan found the scripts"
    missing = [str(p.relative_to(ROOT)) for p in scripts
               if not any(str(p.relative_to(ROOT)) in recipe for recipe in described.values())]
    assert not missing, f"no described Makefile target runs {missing}"
