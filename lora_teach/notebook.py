"""The first code cell of every notebook: versions, one seed, the device, and the course's figure style."""

from __future__ import annotations

import platform

import torch

from . import __version__
from .plotting import use_course_style
from .training import SEED, seed_everything


def setup(seed: int = SEED, quiet: bool = False) -> torch.device:
    """Seed everything, apply the figure style, print versions; return the device (GPU when present)."""
    seed_everything(seed)
    use_course_style()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not quiet:
        print(f"python {platform.python_version()} | torch {torch.__version__} | lora_teach {__version__}")
        print(f"device: {device} | seed: {seed}")
    return device
