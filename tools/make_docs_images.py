"""Draw the figures the README and the site show, into docs/images/ (committed; run again after changing a diagram).

    python tools/make_docs_images.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lora_teach.diagrams import draw_lora_layer  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def main() -> list[Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    ax = draw_lora_layer()
    path = OUT / "lora_layer.png"
    ax.figure.savefig(path, dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(ax.figure)
    return [path]


if __name__ == "__main__":
    for p in main():
        print(p.relative_to(OUT.parents[1]), f"{p.stat().st_size / 1024:.0f} KiB")
