"""Notebook 15 (beyond one machine): every figure its prose states is one a cell printed, and a full run from a
fresh kernel leaves no process behind.

nbval (pyproject's `--nbval-lax` over notebooks/) re-runs the notebook and compares its checked cells with the
committed outputs; the timing cell is not checked (wall-clock times). Here: the prose against the stored outputs,
without running anything, and one run through papermill in an empty folder.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "15_beyond_one_machine.ipynb"

# (what the prose says, what a cell printed that backs it)
PROSE_AND_OUTPUT = [
    ("a few hundred gradient entries", "smaller than 1e-7: 648 of 834,560"),
    ("3,338,240 bytes for full fine-tuning", "3,338,240"),
    ("65,536 for LoRA", "65,536, 65,536, 65,536"),
    ("(1/51 of it)", "0.020"),
    ("294,912 on all linear layers", "294,912"),
    ("all-reduces 14.5 GB a step", "full fine-tuning, bf16       14.5 GB"),
    ("about 56 ms", "56.3 ms"),
    ("about two seconds", "2027.7 ms"),
    ("84 MB, 173\ntimes less", "(173 times fewer)"),
    ("about 12 ms", "11.7 ms"),
    ("(24 ms with PEFT's fp32 adapters)", "23.5 ms"),
    ("half of the frozen base", "(0.5002 of the base)"),
    ("the NF4 base is 35.3 GB", "bits a weight): 35.3 GB"),
    ("would need about 40 GB", "39.9 GB"),
    ("each GPU\nholds 18.4 GB of weights", "18.4 GB"),
    ("20.9 GB, inside a\n24 GB card", "20.9 GB"),
    ("a bf16 base alone: 69 GB per GPU", "69.2 GB"),
    ("push it to 25 GB", "25 GB       0 B  False"),
    ("to 6 GB", "6.01 GB"),
    ("(120, 31.4, 16.6 and 1.9 GB)", "stage 3: ZeRO paper   1.9 | ours   1.88"),
    ("(139 GB against 141 GB)", "stage 1:   139 GB"),
    ("helps (17.7 GB)", "stage 3:  17.7 GB"),
    ("full fine-tuning needs 15 GPUs of 80 GB", "full bf16-mixed A100 80 GB            does not fit      15 GPUs"),
    ("LoRA 2 of them or 8 gaming cards", "lora bf16-mixed RTX 3090/4090 24 GB   does not fit       8 GPUs"),
    ("two 24 GB ones", "lora qlora      RTX 3090/4090 24 GB   does not fit       2 GPUs"),
]


def texts(nb) -> tuple[str, str]:
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    printed = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                        if o.get("output_type") == "stream")
    return prose, printed


@pytest.mark.parametrize("said, shown", PROSE_AND_OUTPUT, ids=[s for s, _ in PROSE_AND_OUTPUT])
def test_the_prose_states_what_a_cell_printed(said, shown):
    prose, printed = texts(nbformat.read(NOTEBOOK, as_version=4))
    assert said in prose, f"the prose no longer says {said!r}"
    assert shown in printed, f"no cell printed {shown!r} (the prose says {said!r})"


@pytest.mark.slow
@pytest.mark.notebooks
def test_a_fresh_run_leaves_no_process_behind(tmp_path):
    papermill = pytest.importorskip("papermill")
    from test_distributed import workers_alive

    work = tmp_path / "run"
    work.mkdir()
    nb = papermill.execute_notebook(str(NOTEBOOK), str(tmp_path / "out.ipynb"), kernel_name="python3",
                                    cwd=str(work), progress_bar=False, log_output=False)
    _, printed = texts(nb)
    assert "rank 1 of 2: backend" in printed and "processes: 2," in printed
    assert workers_alive("lora_teach.distributed_worker") == []
    assert workers_alive("accelerate_train.py") == []
    assert list(work.iterdir()) == []
