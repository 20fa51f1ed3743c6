"""Load an experiment or a benchmark (experiments/, benchmarks/) as a module, for the tests that call its functions.

The tools in tools/ need no loader: pyproject.toml puts tools/ on pytest's path, so tests import them by name."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str) -> ModuleType:
    """The module in `relative_path` (e.g. "benchmarks/lora_performance.py"), executed fresh."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
