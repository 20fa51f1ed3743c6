"""How the site reads a course notebook: the committed notebook, as a page can show it, never executed.

conf.py registers `read_notebook` as myst-nb's reader for `.ipynb` files. It applies the HTML edition's rule for
widgets (tools/build_html.py's `static_output`: a lora_teach widget keeps the PNG of its figure, a widget with
nothing else to show is left out), drops the saved widget state (so no page loads a widget manager from a CDN),
hides the Colab-only set-up cell, and takes the Colab / Binder badge line out of the title cell: the site's own
launch buttons open the same notebook on Binder or Colab, at the branch or tag the site was built for.
Each figure keeps its own one-sentence description (lora_teach.plotting puts it in the PNG output's metadata,
`image/png.alt`) as its image's alternative text: `describe_images` writes it into the page, per image, where
myst-nb alone would use the cell's one `mystnb.image.alt` for every figure of the cell. A figure without any
says so, in the words of nbconvert's HTML export, rather than with its file name.
"""

from __future__ import annotations

import hashlib
import sys
from binascii import a2b_base64
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

from build_html import static_output  # noqa: E402  (tools/ is not a package)

from lora_teach.colab import SETUP_TAG, with_badges  # noqa: E402

IMAGE_MIMES = ("image/png", "image/jpeg")  # the images myst-nb names by the SHA-256 of their bytes
NO_DESCRIPTION = "No description has been provided for this image"  # nbconvert's words for the same case
DESCRIPTIONS: dict[str, str | None] = {}  # SHA-256 of an image output's bytes: its description (None: none)


def output_description(output) -> str | None:
    """The description an image output carries in its metadata (`alt`), or None."""
    for mime in IMAGE_MIMES:
        meta = output.get("metadata", {}).get(mime, {})
        if mime in output.get("data", {}) and isinstance(meta, dict) and meta.get("alt"):
            return str(meta["alt"])
    return None


def note_descriptions(output) -> None:
    """Remember the description of an image output under the name myst-nb gives its file."""
    for mime in IMAGE_MIMES:
        if mime in output.get("data", {}):
            digest = hashlib.sha256(a2b_base64(output["data"][mime])).hexdigest()
            DESCRIPTIONS[digest] = output_description(output) or DESCRIPTIONS.get(digest)


def site_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """`nb` changed in place for the site (see the module's docstring); returns it."""
    nb.metadata.pop("widgets", None)
    for i, cell in enumerate(nb.cells):
        if i == 0 and cell.cell_type == "markdown" and cell.source.startswith("# "):
            cell.source = with_badges(cell.source, None)
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.setdefault("tags", [])
        if SETUP_TAG in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
        cell.outputs = [out for out in map(static_output, cell.outputs) if out is not None]
        for out in cell.outputs:
            note_descriptions(out)
    return nb


def read_notebook(text: str) -> nbformat.NotebookNode:
    """myst-nb's reader for the course notebooks: nbformat 4, as the site shows it."""
    return site_notebook(nbformat.reads(text, as_version=4))


def describe_images(app, doctree) -> None:
    """Sphinx's doctree-read: each notebook figure's own description as its `alt` (see the module's docstring)."""
    from docutils import nodes

    for image in doctree.findall(nodes.image):
        digest = Path(image.get("uri", "")).stem
        if digest in DESCRIPTIONS:
            image["alt"] = DESCRIPTIONS[digest] or image.get("alt") or NO_DESCRIPTION
