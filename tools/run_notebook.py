"""Execute course notebooks in place, as they are committed: top to bottom in a fresh kernel, in `notebooks/`.

    python tools/run_notebook.py notebooks/02_full_fine_tuning.ipynb [more.ipynb ...]
    make run-notebook NB=notebooks/02_full_fine_tuning.ipynb

After the run, the saved widget state keeps only what a static renderer can use: the state of every widget whose
output also carries a PNG (the lora_teach widgets draw their figure as a PNG fallback) is removed, with the
models only it refers to, so that GitHub, nbviewer and nbconvert show the figure instead of an empty widget view
(tests/browser/test_widget_notebooks.py checks this). Progress bars keep their state, but not their text:
a finished bar's text fallback ("training:   0%|...") and the bars libraries print to stderr are removed, since
that text is all GitHub would show of them (tests/test_notebook_hygiene.py checks this). The work is
notebook_runner.run_in_place.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from notebook_runner import run_in_place


def main(argv=None) -> int:
    # The kernel inherits this: in course mode nothing reaches the Hugging Face Hub (as under `make`, whose RUN sets
    # it too), and what the saved outputs show is what an offline learner sees.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="+", type=Path)
    args = ap.parse_args(argv)
    for path in args.notebooks:
        print(f"{path.name}: {run_in_place(path):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
