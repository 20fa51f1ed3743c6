import subprocess
import sys
from pathlib import Path

import pytest

from lora_teach.model import base_model_card, load_base_model

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "experiments" / "pretrain_base.py"


@pytest.mark.slow
def test_pretraining_script_reduces_the_loss(tmp_path):
    subprocess.run(
        [sys.executable, str(PRETRAIN), "--steps", "40", "--n-layer", "1",
         "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--warmup", "5", "--out", str(tmp_path)],
        check=True, capture_output=True, text=True,
    )
    card = base_model_card(tmp_path)
    t = card["training"]
    assert t["val_loss"] < t["val_loss_start"] - 0.5
    model = load_base_model("cpu", directory=tmp_path)
    assert sum(p.numel() for p in model.parameters()) == t["parameters"]


def test_shipped_card_records_the_training():
    t = base_model_card()["training"]
    assert t["val_loss"] < t["val_loss_start"]
    assert (ROOT / "lora_teach" / "weights" / "base_model.safetensors").stat().st_size < 10 * 2**20
