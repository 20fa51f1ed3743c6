"""Why soft prompts fail in this causal model: the same virtual tokens before the passage or after it.

    python experiments/prompt_placement.py           # 2 tasks x 2 placements x 2 losses x 3 seeds, 400 steps each
    python experiments/prompt_placement.py --quick   # author task, label loss, one seed, 4 steps (as in the tests)
    python experiments/prompt_placement.py --tasks author   # the author task only

20 free virtual tokens (vocabulary init, no encoder: `lora_teach.compare.build_placement`), trained on the frozen
base at the rate the grid chose for prompt tuning on that task (`lora_teach/results/lr_grid.csv`, validation
only), batch 16:
- placement "before": in front of the passage (prompt tuning); "after": between the passage and " => ";
- loss "label": on the whole label word; "decision": on its first character only, the one that decides;
- steps: evaluated on the test split at 100 steps (the comparison's budget, `compare.STEPS`), 200, 300 and 400
  (4x). The schedule is constant, so the evaluation at 100 steps is the same model a 100-step run ends with.
Writes `lora_teach/results/prompt_placement.csv` (one row per run and evaluation step: accuracy, label loss and
decision loss on test), appending rows as runs finish; a restart skips finished runs. Running time: about 43 s
per 400-step run on two quiet cores (the sentence task's 6 decision-loss runs, 4.4 min, on 2026-11-30), so about
17 minutes for all 24 runs; on cores shared with other jobs (load average 4 to 14), 130 to 290 s per run. The
shipped CSV holds all 24 runs. The reduced run (--quick) takes seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lora_teach import load_base_model
from lora_teach.compare import BATCH_SIZE, PLACEMENTS, REPORT_SEEDS, STEPS, build_placement, chosen_rates, make_task
from lora_teach.data import ClassificationTask
from lora_teach.results import RESULTS, append_row, read_csv
from lora_teach.training import seed_everything, train

FIELDS = ("task", "placement", "loss", "seed", "lr", "num_virtual_tokens", "batch_size", "steps", "accuracy",
          "label_loss", "decision_loss")
NUM_VIRTUAL_TOKENS = 20
LOSSES = ("label", "decision")  # the loss on the whole label word, or on its first character only


class DecisionOnly:
    """A classification task whose training batches put the loss on the label's first character only (the one
    that decides between the classes) with loss="decision", or on the whole label word with loss="label";
    evaluation is the task's own, on `split`."""

    def __init__(self, task: ClassificationTask, loss: str = "decision", split: str = "test"):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        self.task, self.loss, self.split = task, loss, split

    def train_batch(self, batch_size: int, generator: torch.Generator | None = None):
        x, y, mask = self.task.train_batch(batch_size, generator)
        if self.loss == "decision":
            first = torch.zeros_like(mask)
            first[:, self.task.prompt_len - 1] = True  # the position that predicts the first label character
            mask = mask & first
        return x, y, mask

    def evaluate(self, model: torch.nn.Module) -> dict:
        return self.task.evaluate(model, split=self.split)


def run(task_name: str, placement: str, loss: str, seed: int, lr: float, steps: int, eval_every: int,
        base: torch.nn.Module, batch_size: int = BATCH_SIZE) -> list[dict]:
    """Train one placement with one loss; one row per evaluation (on the test split)."""
    task = make_task(task_name)
    seed_everything(seed)
    model = build_placement(placement, base, task, NUM_VIRTUAL_TOKENS)
    hist = train(model, DecisionOnly(task, loss, split="test"), steps=steps, lr=lr, batch_size=batch_size,
                 seed=seed, eval_every=eval_every, progress=False)
    return [{"task": task_name, "placement": placement, "loss": loss, "seed": seed, "lr": lr,
             "num_virtual_tokens": NUM_VIRTUAL_TOKENS, "batch_size": batch_size, "steps": step,
             "accuracy": metrics["accuracy"], "label_loss": metrics["label_loss"],
             "decision_loss": metrics["decision_loss"]} for step, metrics in hist.evals]


def check_grid(grid: list[dict], tasks, path: Path) -> None:
    """Refuse to start unless the grid has finished prompt tuning on each task (every rate with two seeds)."""
    for task_name in tasks:
        found = {(float(r["lr"]), int(r["seed"])) for r in grid if (r["method"], r["task"]) == ("prompt", task_name)}
        rates_tried = {lr for lr, _ in found}
        if len(found) < 2 * len(rates_tried) or len(rates_tried) < 2:
            raise ValueError(f"the grid in {path} has only {sorted(found)} for prompt tuning on {task_name}: "
                             "finish `python experiments/lr_grid.py` first")


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the reduced run the tests use")
    ap.add_argument("--out", type=Path, default=RESULTS / "prompt_placement.csv")
    ap.add_argument("--tasks", nargs="+", default=["author", "sentence"], choices=["author", "sentence"],
                    help="which classification tasks (default both; the author task runs first)")
    ap.add_argument("--grid", type=Path, default=RESULTS / "lr_grid.csv", help="where the chosen rates come from")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: 1 for the full run, the machine being shared; torch's for --quick)")
    args = ap.parse_args(argv)
    out, grid_path = args.out.resolve(), args.grid.resolve()
    threads = args.threads if args.threads is not None else (None if args.quick else 1)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be a positive int, got {threads}")
        torch.set_num_threads(threads)
    rates = chosen_rates(grid_path)
    if args.quick:
        tasks, losses, seeds, steps, eval_every, batch_size = ("author",), ("label",), REPORT_SEEDS[:1], 4, 2, 4
    else:
        tasks, losses, seeds, steps, eval_every, batch_size = tuple(args.tasks), LOSSES, REPORT_SEEDS[:3], \
            4 * STEPS, STEPS, BATCH_SIZE
    check_grid(read_csv(grid_path), tasks, grid_path)  # the rate must come from a finished grid
    runs = [(t, p, loss, s) for t in tasks for loss in losses for p in PLACEMENTS for s in seeds]
    rows = read_csv(out, missing_ok=True)
    if rows and tuple(rows[0]) != FIELDS:
        raise ValueError(f"{out} has the columns {list(rows[0])}, not {list(FIELDS)}: move it away")
    done = {(r["task"], r["placement"], r["loss"], int(r["seed"])) for r in rows
            if int(r["steps"]) == steps and int(r["batch_size"]) == batch_size}
    todo = [r for r in runs if r not in done]
    print(f"{len(runs) - len(todo)} of {len(runs)} runs already in {out}; {len(todo)} to go", file=sys.stderr)
    base = load_base_model(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    bar = tqdm(todo, desc="placement", unit="run", file=sys.stderr)
    for task_name, placement, loss, seed in bar:
        bar.set_postfix_str(f"{task_name} {placement} {loss} seed={seed}")
        for row in run(task_name, placement, loss, seed, rates[("prompt", task_name)], steps, eval_every, base,
                       batch_size):
            append_row(out, row, FIELDS)
    print(f"placement done: {len(todo)} runs in {(time.perf_counter() - t0) / 60:.1f} min; {out}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
