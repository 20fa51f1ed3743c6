"""Build the static HTML edition of the course with nbconvert: one page per notebook and an index page.

    python tools/build_html.py            # every notebooks/NN_*.ipynb as committed -> build/html/
    python tools/build_html.py --execute  # run each notebook first, from a clean kernel in a temp dir
    python tools/build_html.py notebooks/00_start_here.ipynb --out /tmp/html

The committed notebooks carry the outputs of one clean run, so by default nothing is executed. Widgets need a
live kernel, so this edition leaves the live part out: a lora_teach widget's output also carries a PNG of its
figure for the default values, and that PNG is what the page shows (only the widget-view entry is dropped).
Outputs that are nothing but a widget (progress bars, a bare slider) are left out. Pages are the teacher
edition: the exercises show their solutions. `build/` is git-ignored.

Every figure's one-sentence description (lora_teach.plotting: the PNG output's metadata `image/png.alt`) becomes
its <img>'s `alt`, which screen readers read; nbconvert's own lab template writes none, and its exporter then
labels every image "No description has been provided for this image". The visible caption under each figure is an
output of its own and needs nothing here.
"""

from __future__ import annotations

import argparse
import copy
import html
import re
import sys
from pathlib import Path

import jinja2
import markupsafe
import nbformat
from nbconvert import HTMLExporter
from notebook_runner import ROOT, course_notebooks, execute

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
NOTEBOOK_LINK = re.compile(r"\]\((\d\d_\w+)\.ipynb\)")
# nbconvert's lab template, with each PNG's description written into its <img> as `alt`
ALT_TEMPLATE = "lora_teach_lab.html.j2"
ALT_TEMPLATE_SOURCE = """{%- extends 'lab/index.html.j2' -%}
{% block data_png scoped %}{{ super() | with_alt(output | get_metadata('alt', 'image/png')) }}{% endblock data_png %}
"""


def with_alt(html_text: str, alt) -> markupsafe.Markup:
    """`html_text` with `alt="..."` (escaped) added to its first <img>; unchanged without a description."""
    if not alt:
        return markupsafe.Markup(html_text)
    return markupsafe.Markup(str(html_text).replace("<img ", f'<img alt="{html.escape(str(alt), quote=True)}" ', 1))


def is_widget_output(output) -> bool:
    """True for an output that only a live widget manager can show (a widget view, a progress bar)."""
    return WIDGET_MIME in output.get("data", {})


def static_output(output):
    """The output as a page can show it: a widget view loses its widget entry and keeps its other
    representations if one of them is more than text (a lora_teach widget's PNG); a widget with nothing else
    to show (a progress bar, a bare slider, whose text/plain is only the widget's repr) becomes None."""
    if not is_widget_output(output):
        return output
    data = {mime: value for mime, value in output["data"].items() if mime != WIDGET_MIME}
    if set(data) <= {"text/plain"}:
        return None
    output = copy.deepcopy(output)
    output["data"] = data
    return output


def static_notebook(nb) -> nbformat.NotebookNode:
    """A copy of `nb` without live widgets and widget state, keeping each widget's static figure; links to other
    notebooks point at their pages."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in map(static_output, cell.outputs) if o is not None]
        elif cell.cell_type == "markdown":
            cell.source = NOTEBOOK_LINK.sub(r"](\1.html)", cell.source)
    nb.metadata.pop("widgets", None)
    return nb


def title_of(nb, fallback: str) -> str:
    """The text of the notebook's first '# ' heading."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def html_exporter() -> HTMLExporter:
    """nbconvert's HTML exporter with the lab template, writing each figure's description as its `alt`."""
    exporter = HTMLExporter(template_name="lab", template_file=ALT_TEMPLATE,
                            extra_loaders=[jinja2.DictLoader({ALT_TEMPLATE: ALT_TEMPLATE_SOURCE})])
    exporter.register_filter("with_alt", with_alt)
    return exporter


def build(paths: list[Path], out: Path, run: bool = False) -> list[Path]:
    """Write one HTML page per notebook and index.html into `out`; return the pages written."""
    out.mkdir(parents=True, exist_ok=True)
    exporter = html_exporter()
    pages, entries = [], []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if run:
            execute(nb)  # from a clean kernel in an empty temporary directory
        title = title_of(nb, path.stem)
        body, _ = exporter.from_notebook_node(static_notebook(nb), resources={"metadata": {"name": title}})
        page = out / f"{path.stem}.html"
        page.write_text(body, encoding="utf-8")
        pages.append(page)
        entries.append(f'<li><a href="{page.name}">{html.escape(title)}</a></li>')
        print(f"{path.name} -> {page}")
    index = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>lora-teach</title></head><body>\n"
             "<h1>lora-teach: the course, static edition</h1>\n<p>Figures stand in for the interactive widgets; "
             "run the notebooks (Binder, Colab or <code>make lab</code>) to move the sliders.</p>\n<ol>\n"
             + "\n".join(entries) + "\n</ol>\n</body></html>\n")
    (out / "index.html").write_text(index, encoding="utf-8")
    return pages


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "html", help="default: build/html/")
    ap.add_argument("--execute", action="store_true", help="execute each notebook before converting it")
    args = ap.parse_args(argv)
    paths = args.notebooks or course_notebooks()
    build(paths, args.out, run=args.execute)
    print(f"open {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
