"""The README as a front door: its picture, its links and its study-time figures agree with the repository."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def markdown_words(path: Path, main_path_only: bool = False) -> int:
    """Words of a notebook's markdown; `main_path_only`: without what is folded in <details> blocks."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    texts = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    if main_path_only:
        texts = [re.sub(r"<details>.*?</details>", "", t, flags=re.S) for t in texts]
    return sum(len(re.findall(r"\S+", t)) for t in texts)


def test_the_main_path_figure_is_the_words_outside_the_optional_sections():
    m = re.search(r"About ([\d,]+) of those words are each notebook's main path", README)
    assert m, "the README states the main path's words"
    actual = sum(markdown_words(nb, main_path_only=True) for nb in NOTEBOOKS)
    assert abs(int(m[1].replace(",", "")) - actual) / actual < 0.15


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_each_notebooks_main_path_reads_in_one_sitting(path):
    """At most 2,500 words of markdown outside the optional <details> sections (about 20 minutes of reading)."""
    words = markdown_words(path, main_path_only=True)
    assert words <= 2500, f"{path.name}: {words} words on the main path; fold the optional parts into <details>"


def test_every_relative_link_and_image_of_the_readme_exists():
    targets = re.findall(r"\]\(((?!https?://|#)[^)\s]+)\)", README)
    assert targets, "the README links to the course's files"
    for target in targets:
        assert (ROOT / target.split("#")[0]).exists(), target


def test_the_picture_is_committed_and_described():
    images = re.findall(r"!\[([^\]]*)\]\(((?!https?://)[^)]+)\)", README)
    assert images and all((ROOT / src).is_file() for _, src in images)
    assert all(len(alt.split()) >= 10 for alt, _ in images), "each image needs a description a screen reader can read"


def test_every_notebook_is_on_the_course_map():
    for nb in NOTEBOOKS:
        assert f"(notebooks/{nb.name})" in README, nb.name


def _stated_thousands(label: str) -> int:
    m = re.search(label + r"[^.]*?about ([\d,]+) words", README, re.S)
    assert m, f"the README states the words of {label!r}"
    return int(m[1].replace(",", ""))


@pytest.mark.parametrize("label,numbers", [
    ("The notebooks hold", None),
    ("A LoRA fast track", ["00", "01", "02", "07", "08", "09", "11", "14"]),
])
def test_the_study_time_figures_are_the_notebooks_word_counts(label, numbers):
    chosen = [nb for nb in NOTEBOOKS if numbers is None or nb.name[:2] in numbers]
    if numbers:
        assert len(chosen) == len(numbers)
        assert ", ".join(numbers[:-1]) + " and " + numbers[-1] in README
    actual = sum(markdown_words(nb) for nb in chosen)
    stated = _stated_thousands(label)
    assert abs(stated - actual) / actual < 0.15, (label, stated, actual)
    hours = re.search(label + r"[^()]*?\(?[^()]*?about (\d+) hours? of reading", README, re.S)
    assert hours and abs(int(hours[1]) - actual / 120 / 60) <= 1, (label, actual / 120 / 60)
