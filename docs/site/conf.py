"""Sphinx configuration of the course's site: Jupyter Book 1's stack (Sphinx, myst-nb, sphinx-book-theme).

    make site                       # -> build/site/html/index.html
    make site REF=v1.0              # launch buttons open the notebooks of tag v1.0 on Binder and Colab
    python -m sphinx -b html -E -c docs/site . build/site/html -d build/site/.doctrees  # what `make site` runs

The source directory is the repository's root, so that every link between notebooks and docs resolves as it does
on GitHub; `include_patterns` takes only the course: the notebooks (notebooks/NN_*.ipynb, in course order, new
ones included as they appear), docs/*.md and docs/quizzes/*.md, and this folder's pages. The notebooks are shown
with the outputs they were committed with, never executed (`nb_execution_mode = "off"`); site_notebooks.py says
what changes on the way. Maths is typeset by MathJax 3 copied from the sphinx-mathjax-offline package into the
site, so formulas render without internet; without that package the pages load MathJax from its CDN.
Nothing is downloaded at build time.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

_pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
REPOSITORY = _pyproject["urls"]["Repository"].rstrip("/")
REF = os.environ.get("LORA_TEACH_SITE_REF") or "main"  # the branch or tag the launch buttons open
if not re.fullmatch(r"(?!.*\.\.)\w[\w./-]*(?<![./])", REF):
    from sphinx.errors import ConfigError

    raise ConfigError(f"REF (LORA_TEACH_SITE_REF) must be a branch or tag name: letters, digits and . _ / -, "
                      f"not starting with . or - and without '..'; got {REF!r}")

# -- Project ---------------------------------------------------------------------------------------------------
project = "lora-teach"
author = "the lora-teach authors"
copyright = "the lora-teach authors, MIT licence"
release = version = _pyproject["version"]

# -- Sources: the course only, from the repository's root ---------------------------------------------------------
root_doc = "docs/site/index"
include_patterns = [
    "docs/site/*.md",
    "notebooks/[0-9][0-9]_*.ipynb",
    "docs/*.md",
    "docs/quizzes/*.md",
]
# Folders never walked (the virtual environment alone holds tens of thousands of files)
exclude_patterns = [".venv", ".git", "build", "lora_teach", "tests", "tools", "experiments", "benchmarks",
                    "test-results", "**/.ipynb_checkpoints", ".hypothesis", ".ruff_cache", ".pytest_cache",
                    "*.egg-info", "node_modules"]

# The teachers' pages, in the order a teacher reads them; the pages that exist are listed in the sidebar,
# then any other docs/*.md, then the quizzes (see fill_teaching_toctree below)
TEACHING_PAGES = ["WORKSHOP", "MODULE", "LOGISTICS", "GRADING", "CAPSTONE", "PERFORMANCE"]

extensions = ["myst_nb", "sphinx.ext.mathjax"]

# -- Notebooks (myst-nb) -----------------------------------------------------------------------------------------
nb_execution_mode = "off"  # the committed outputs, as they are
nb_custom_formats = {".ipynb": ["site_notebooks.read_notebook", {}, False]}
nb_merge_streams = True  # one block for a cell's printed lines
nb_ipywidgets_js = {}  # no widget manager from a CDN: widgets show their saved figure (site_notebooks.py)
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# -- HTML ---------------------------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "lora-teach"
html_copy_source = False  # the notebooks are in the repository; search does not need _sources/
html_show_sourcelink = False
html_extra_path = ["_root"]  # index.html at the site's root, which opens the course's home page
html_static_path = ["_static"]
html_css_files = ["site.css"]
html_favicon = "_static/favicon.svg"
html_context = {"default_mode": "light"}  # figures are drawn on white; the theme's switch offers dark
html_theme_options = {
    "repository_url": REPOSITORY,
    "repository_branch": REF,
    "path_to_docs": "",
    "use_repository_button": True,
    "launch_buttons": {
        "binderhub_url": "https://mybinder.org",
        "colab_url": "https://colab.research.google.com",
        "notebook_interface": "jupyterlab",
    },
    "home_page_in_toc": True,
    "show_toc_level": 2,
}

# -- Maths, offline -------------------------------------------------------------------------------------------------
# MathJax 3.2.2 as the sphinx-mathjax-offline package ships it; only what tex-chtml.js loads is copied (its fonts,
# the TeX extensions it loads on demand, and the accessibility extensions of its menu): about 7 MB of its 24.
MATHJAX_PARTS = ["tex-chtml.js", "input/tex/extensions", "output/chtml", "a11y", "sre", "ui", "adaptors"]


def packaged_mathjax() -> Path | None:
    """The MathJax folder of the installed sphinx-mathjax-offline package, or None."""
    import importlib.util

    spec = importlib.util.find_spec("sphinx-mathjax-offline")  # the package's import name has hyphens
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax"
    return folder if (folder / "tex-chtml.js").exists() else None


MATHJAX = packaged_mathjax()
if MATHJAX is not None:
    mathjax_path = "mathjax/tex-chtml.js"  # relative to _static/


def copy_mathjax(app, exc) -> None:
    if exc is not None or MATHJAX is None or app.builder.format != "html":
        return
    target = Path(app.outdir) / "_static" / "mathjax"
    for part in MATHJAX_PARTS:
        source = MATHJAX / part
        if source.is_dir():
            shutil.copytree(source, target / part, dirs_exist_ok=True)
        else:
            (target / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / part)


# -- The sidebar's teaching pages: those that exist ----------------------------------------------------------------
def teaching_toctree_entries(srcdir: Path) -> tuple[list[str], list[str]]:
    """Docnames of docs/*.md in TEACHING_PAGES's order, then the others, then docs/quizzes/*.md."""
    docs = sorted(p.stem for p in (srcdir / "docs").glob("*.md"))
    ordered = [name for name in TEACHING_PAGES if name in docs] + [d for d in docs if d not in TEACHING_PAGES]
    quizzes = sorted(p.stem for p in (srcdir / "docs" / "quizzes").glob("*.md"))
    return [f"/docs/{name}" for name in ordered], [f"/docs/quizzes/{name}" for name in quizzes]


def fill_teaching_toctree(app, docname, source) -> None:
    """Replace the markers in the home page's toctrees by the pages that exist (a missing page is no error)."""
    if docname != app.config.root_doc:
        return
    teaching, quizzes = teaching_toctree_entries(Path(app.srcdir))
    source[0] = source[0].replace("TEACHING-PAGES\n", "".join(f"{d}\n" for d in teaching))
    source[0] = source[0].replace("QUIZ-PAGES\n", "".join(f"{d}\n" for d in quizzes))


def reread_home_page(app, env, added, changed, removed) -> list[str]:
    """The home page's toctrees list the docs that exist: read it again on every build."""
    return [app.config.root_doc]


def setup(app) -> None:
    from site_notebooks import describe_images

    app.connect("doctree-read", describe_images)
    app.connect("source-read", fill_teaching_toctree)
    app.connect("env-get-outdated", reread_home_page)
    app.connect("build-finished", copy_mathjax)
