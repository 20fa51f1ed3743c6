"""The course's measured results: where they live and the one way to read and write them (CSV, 6 significant digits).

Experiments (experiments/) and benchmarks (benchmarks/) write into `RESULTS`; notebooks read from it. The files
ship with the package, so a notebook on Colab finds them too.
"""

from __future__ import annotations

import csv
import fcntl
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _resolve(path: str | Path) -> Path:
    """A bare file name ('lr_grid.csv') means the shipped file in RESULTS; anything with a folder is a path."""
    path = Path(path)
    return RESULTS / path if str(path) == path.name else path


def _formatted(row: dict) -> dict:
    return {k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()}


def read_csv(path: str | Path, *, missing_ok: bool = False) -> list[dict]:
    """The rows of a results CSV as dictionaries of strings; a bare name ('lr_grid.csv') is read from RESULTS.
    A missing file raises FileNotFoundError, or gives [] with missing_ok=True."""
    path = _resolve(path)
    if not path.is_file():
        if missing_ok:
            return []
        raise FileNotFoundError(f"no results file {path}; the experiment or benchmark that writes it says how "
                                "to make it (see the Makefile's help)")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: str | Path, rows: list[dict]) -> Path:
    """Write `rows` (dicts; the columns are their keys in first-seen order) to a new CSV, floats to 6 digits."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    path = Path(path)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(_formatted(row) for row in rows)
    return path


def append_row(path: str | Path, row: dict, fields: list[str] | tuple[str, ...] | None = None) -> None:
    """Append one row (the header first into a new file), floats to 6 digits. The file is locked while it is
    written, so several processes may share it. With `fields`, a row with other keys is refused."""
    path = Path(path)
    fields = list(fields) if fields is not None else list(row)
    with path.open("a", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            if f.tell() == 0:
                csv.DictWriter(f, fieldnames=fields).writeheader()
            else:
                with path.open(newline="") as existing:
                    header = next(csv.reader(existing), None)
                if header != fields:
                    raise ValueError(f"{path} has the columns {header}, not {fields}: move it away or write "
                                     "to another file")
            csv.DictWriter(f, fieldnames=fields, extrasaction="raise").writerow(_formatted(row))
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
