"""The course's site (docs/site/, `make site`): built once into a temporary folder, checked as files, then read in
headless Chromium as a reader would, from a local HTTP server on 127.0.0.1.

The build is what `make site` runs (Sphinx, myst-nb, sphinx-book-theme), with its output and caches in the
temporary folder, so nothing is written into the repository. Without Sphinx or myst-nb the site's tests skip; without
Chromium or playwright the browser test skips (see conftest.py). The release-tag option of
tools/sync_notebook_headers.py, which makes the Binder and Colab badges open a tag instead of `main`, is checked
at the end (it needs neither).
"""

from __future__ import annotations

import functools
import html
import json
import os
import re
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from build_html import static_output

from lora_teach import colab

ROOT = Path(__file__).resolve().parents[2]
COURSE = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
DOCS = sorted((ROOT / "docs").glob("*.md")) + sorted((ROOT / "docs" / "quizzes").glob("*.md"))
NAME, REPO = colab.project_metadata(ROOT / "pyproject.toml")
NO_DESCRIPTION = "No description has been provided for this image"
FIGURE = re.compile(r'<img alt="([^"]*)" src="\.\./_images/([0-9a-f]{64})\.png"')
BUILD_TIMEOUT = 600  # seconds; the build takes about 10 s on two quiet cores


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built by `make site`'s command into a temporary folder: its html folder and the build's warnings."""
    for module in ("sphinx", "myst_nb", "sphinx_book_theme"):
        pytest.importorskip(module, reason=f"the site needs {module} (pip install -r requirements-dev.txt)")
    out = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-c", "docs/site", ".", str(out / "html"),
           "-d", str(out / "doctrees")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "LORA_TEACH_SITE_REF": ""}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert proc.returncode == 0, f"the site did not build:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    warnings = [line for line in proc.stderr.splitlines() if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line)]
    return SimpleNamespace(html=out / "html", warnings=warnings)


def page_of(site, source: Path) -> Path:
    return site.html / source.relative_to(ROOT).with_suffix(".html")


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def image_outputs(notebook: Path) -> list[dict]:
    """The image outputs a page shows: the notebook's, after the widget rule of the HTML edition."""
    nb = nbformat.read(notebook, as_version=4)
    outputs = [static_output(o) for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    return [o for o in outputs if o is not None and "image/png" in o.get("data", {})]


# --------------------------------------------------------------------------------------------- the built files
@pytest.mark.slow
def test_the_site_builds_without_warnings(site):
    assert (site.html / "index.html").exists() and (site.html / "search.html").exists()
    assert not site.warnings, "the site's build warned:\n" + "\n".join(site.warnings)


@pytest.mark.slow
def test_every_notebook_has_a_page_and_the_sidebar_lists_them_in_course_order(site):
    home = read(site.html / "docs" / "site" / "index.html")
    listed = list(dict.fromkeys(re.findall(r'href="\.\./\.\./notebooks/(\d\d_\w+)\.html"', home)))
    assert listed == [p.stem for p in COURSE]
    for notebook in COURSE:
        assert page_of(site, notebook).exists(), f"no page for {notebook.name}"
    # the site's root opens the home page
    assert 'url=docs/site/index.html"' in read(site.html / "index.html")


@pytest.mark.slow
def test_every_teaching_page_and_quiz_has_a_page_in_the_sidebar(site):
    assert DOCS, "docs/ holds no page"
    home = read(site.html / "docs" / "site" / "index.html")
    for doc in DOCS:
        assert page_of(site, doc).exists(), f"no page for {doc.relative_to(ROOT)}"
        link = Path(os.path.relpath(page_of(site, doc), site.html / "docs" / "site")).as_posix()
        assert f'href="{link}"' in home, f"the sidebar does not list {doc.relative_to(ROOT)}"


@pytest.mark.slow
def test_figures_stand_in_for_widgets_each_with_its_description(site):
    for notebook in COURSE:
        page = read(page_of(site, notebook))
        shown = FIGURE.findall(page)
        expected = image_outputs(notebook)
        assert len(shown) == len(expected), f"{notebook.name}: {len(shown)} figures on the page, {len(expected)} saved"
        for (alt, _), output in zip(shown, expected, strict=True):
            description = output.get("metadata", {}).get("image/png", {}).get("alt") or NO_DESCRIPTION
            assert html.unescape(alt) == description, f"{notebook.name}: figure described as {alt!r}"
            assert (site.html / "_images").is_dir()
        assert "application/vnd.jupyter.widget" not in page, f"{notebook.name}: a live widget on a static page"
        assert "google.colab" not in page and "colab-badge.svg" not in page, f"{notebook.name}: Colab set-up shown"


@pytest.mark.slow
def test_pages_load_nothing_from_the_internet_and_maths_is_packaged(site):
    for path in site.html.rglob("*.html"):
        page = read(path)
        external = re.findall(r'<script[^>]+src="(https?:[^"]+)"|<link[^>]+rel="stylesheet"[^>]+href="(https?:[^"]+)"',
                              page)
        assert not external, f"{path.relative_to(site.html)} loads {external}"
    page = read(page_of(site, ROOT / "notebooks" / "13_the_lora_family.ipynb"))
    assert '<script defer="defer" src="../_static/mathjax/tex-chtml.js"></script>' in page
    mathjax = site.html / "_static" / "mathjax"
    assert (mathjax / "tex-chtml.js").exists()
    assert (mathjax / "output" / "chtml" / "fonts" / "woff-v2" / "MathJax_Main-Regular.woff").exists()
    assert re.search(r'<span class="math notranslate nohighlight">\\\(.+?\\\)</span>', page), "no inline maths"


@pytest.mark.slow
def test_the_search_index_finds_dora_in_notebook_13(site):
    text = read(site.html / "searchindex.js")
    index = json.loads(text[text.index("(") + 1:text.rindex(")")])
    found = set()
    for kind in ("terms", "titleterms"):  # a word of a section title is indexed there, not among the terms
        docs = index[kind].get("dora", [])
        found |= {index["docnames"][i] for i in ([docs] if isinstance(docs, int) else docs)}
    assert "notebooks/13_the_lora_family" in found


@pytest.mark.slow
def test_launch_buttons_open_the_notebook_on_binder_and_colab(site):
    page = read(page_of(site, ROOT / "notebooks" / "13_the_lora_family.ipynb"))
    slug = colab.github_slug(REPO)
    assert f'href="https://mybinder.org/v2/gh/{slug}/main?urlpath=lab/tree/notebooks/13_the_lora_family.ipynb"' in page
    assert f'href="{colab.colab_url(REPO, "notebooks/13_the_lora_family.ipynb")}"' in page


# ------------------------------------------------------------------------------------------------ in a browser
@pytest.fixture(scope="module")
def served(site):
    """The built site over HTTP on 127.0.0.1 (a free port), from a thread of this process; stopped afterwards."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            if not isinstance(sys.exc_info()[1], ConnectionError):  # a page the browser left before it loaded
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site.html)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.mark.browser
@pytest.mark.slow
def test_a_reader_walks_to_notebook_13_sees_its_figures_and_maths_and_finds_dora(served, page):
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(f"{served}/")
    page.wait_for_url("**/docs/site/index.html")

    # the sidebar opens the first notebook; "next" walks the course in order up to notebook 13
    page.locator("nav.bd-docs-nav a", has_text=re.compile(r"^00 · ")).click()
    page.wait_for_url(f"**/notebooks/{COURSE[0].stem}.html")
    for here, there in zip(COURSE[:13], COURSE[1:14], strict=True):
        assert page.locator("article h1").first.inner_text().startswith(here.name[:2] + " · ")
        page.locator("a.right-next").click()
        page.wait_for_url(f"**/notebooks/{there.stem}.html")
    assert page.locator("article h1").first.inner_text().startswith("13 · The LoRA family")

    figures = page.locator("article img[src*='_images/']")
    assert figures.count() == len(image_outputs(ROOT / "notebooks" / "13_the_lora_family.ipynb")) > 0
    for i in range(figures.count()):
        figure = figures.nth(i)
        figure.scroll_into_view_if_needed()
        figure.evaluate("""img => img.complete ? true : new Promise((resolve, reject) => {
            img.addEventListener('load', resolve); img.addEventListener('error', reject); })""")
        assert figure.evaluate("img => img.naturalWidth") > 0, f"figure {i} did not load"
    # MathJax, packaged with the site, typesets the formulas
    page.locator("article mjx-container").first.wait_for(timeout=30_000)

    # the search box, as a reader uses it
    page.locator("button.search-button__button:visible").first.click()
    box = page.locator("#pst-search-dialog input[name='q']")
    box.fill("DoRA")
    box.press("Enter")
    page.wait_for_url("**/search.html?q=DoRA*")
    hit = page.locator("#search-results a[href*='notebooks/13_the_lora_family.html']").first
    hit.wait_for(timeout=30_000)
    hit.click()
    page.wait_for_url("**/notebooks/13_the_lora_family.html*")

    outside = sorted({url for url in requests if not url.startswith(served) and not url.startswith("data:")})
    assert not outside, f"the site asked the internet for {outside}"
    assert not page.console_errors, f"browser console errors: {page.console_errors}"


# ------------------------------------------------------------------------------- badges at a release tag
def test_badges_can_point_at_a_release_tag_without_touching_the_notebooks(tmp_path):
    from sync_notebook_headers import main

    notebook = ROOT / "notebooks" / "13_the_lora_family.ipynb"
    before = notebook.read_bytes()
    assert main([str(notebook), "--ref", "v1.0", "--out", str(tmp_path)]) == 0
    assert notebook.read_bytes() == before
    copy = nbformat.read(tmp_path / "notebooks" / notebook.name, as_version=4)
    path = "notebooks/13_the_lora_family.ipynb"
    assert colab.badges(REPO, path, "v1.0") in copy.cells[0].source
    assert colab.badges(REPO, path) not in copy.cells[0].source
    assert "@v1.0" in copy.cells[1].source and "@main" not in copy.cells[1].source
    # the copy is in sync for the tag and out of sync for main; the default stays main
    original = nbformat.read(notebook, as_version=4)
    assert main([str(notebook), "--check"]) == 0
    assert main([str(notebook), "--check", "--ref", "v1.0"]) == 1
    assert nbformat.read(notebook, as_version=4) == original


@pytest.mark.parametrize("ref", ["../x", "-v1", "v1..2", "a b", "tag/"])
def test_a_bad_release_ref_is_refused_before_anything_is_written(ref, tmp_path, capsys):
    from sync_notebook_headers import main

    with pytest.raises(SystemExit):
        main([str(ROOT / "notebooks" / "13_the_lora_family.ipynb"), f"--ref={ref}", "--out", str(tmp_path)])
    assert "--ref must be a branch or tag name" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
