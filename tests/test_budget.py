"""tools/notebook_budget.py writes measured run times into the README, the workshop guide and the headers.

The measurement itself (executing every notebook) is `make budget`, run by hand; these tests check the parts
that edit the documents, on the real documents, so a renamed notebook or a moved marker fails here.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import notebook_budget as budget
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture
def rows():
    return [{"notebook": p.name, "seconds": 10.0 + i, "peak_rss_mb": 500 + i} for i, p in enumerate(NOTEBOOKS)]


def test_the_course_map_gets_every_notebooks_time_and_memory(rows):
    text = budget.course_map((ROOT / "README.md").read_text(), rows)
    block = text[text.index("<!-- budget:start -->"):text.index("<!-- budget:end -->")]
    for r in rows:
        line = next(line for line in block.splitlines() if f"(notebooks/{r['notebook']})" in line)
        assert line.endswith(f"| {r['seconds']:.0f} | {r['peak_rss_mb']} |"), line
        assert line.count("|") == 5, f"the course map has four columns: {line}"
    total = sum(r["seconds"] for r in rows)
    assert f"| **whole course** | | **{total:.0f}** | max {max(r['peak_rss_mb'] for r in rows)} |" in block
    assert budget.course_map(text, rows) == text, "filling the map twice changes nothing"


def test_the_course_map_lists_every_notebook():
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("<!-- budget:start -->"):readme.index("<!-- budget:end -->")]
    assert [p.name for p in NOTEBOOKS if f"(notebooks/{p.name})" not in block] == []


def test_the_workshop_table_gets_one_row_per_notebook(rows):
    text = budget.workshop_table((ROOT / "docs" / "WORKSHOP.md").read_text(), rows)
    assert "| 03 · adapters | 13 | 503 |" in text
    assert "**TBD**" not in text[text.index("<!-- budget:start -->"):text.index("<!-- budget:end -->")]
    assert budget.workshop_table(text, rows) == text


def test_a_document_without_markers_is_refused(rows):
    with pytest.raises(ValueError, match="budget:start"):
        budget.course_map("no table here", rows)
    with pytest.raises(ValueError, match="budget:start"):
        budget.workshop_table("no table here", rows)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_header_has_a_run_time_line_the_script_can_rewrite(path):
    nb = nbformat.read(path, as_version=4)
    headers = [c for c in nb.cells if c.cell_type == "markdown" and budget.HEADER.search(c.source)]
    assert len(headers) == 1, f"{path.name}: one '**Run time:** about N s on two CPU cores' line"
    new = budget.HEADER.sub(lambda m: m[1] + budget.about(41.2), headers[0].source, count=1)
    assert "**Run time:** about 45 s on two CPU cores" in new


@pytest.mark.parametrize("seconds,wording", [(4.7, "about 5 s"), (45.0, "about 45 s"), (45.1, "about 50 s")])
def test_times_are_rounded_up_to_five_seconds(seconds, wording):
    assert budget.about(seconds) == f"{wording} on two CPU cores"
