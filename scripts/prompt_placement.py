"""Why soft prompts fail in this causal model: the same virtual tokens before the passage or after it.

    python scripts/prompt_placement.py           # 2 tasks x 2 placements x 2 losses x 3 seeds, 400 steps each
    python scripts/prompt_placement.py --quick   # author task, label loss, one seed, 4 steps (as in the tests)
    python scripts/prompt_placement.py --tasks author   # the author task only

20 free virtual tokens (vocabulary init, no encoder), trained on the frozen base at the rate the grid chose
for prompt tuning on that task (`lora_teach/results/lr_grid.csv`, validation only), batch 16:
- placement "before": in front of the passage (prompt tuning); "after": between the passage and " => ";
- loss "label": on the whole label word; "decision": on its first character only, the one that decides;
- steps: evaluated on the test split at 100 steps (the comparison's budget, `compare.STEPS`), 200, 300 and 400
  (4x). The schedule is constant, so the evaluation at 100 steps is the same model a 100-step run ends with.
Rows (one per run and evaluation step) are appended to `lora_teach/results/prompt_placement.csv` as runs
finish; a restart skips finished runs. Running time: about 43 s per 400-step run on two quiet cores (the
sentence task's 6 decision-loss runs, 4.4 min, on 2026-11-30); on cores shared with other jobs (load average 4
to 14), 130 to 290 s. The shipped CSV holds all 24 runs.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lora_teach import load_base_model
from lora_teach.compare import (
    BATCH_SIZE,
    LOSSES,
    PLACEMENTS,
    REPORT_SEEDS,
    RESULTS,
    STEPS,
    DecisionOnly,
    build_placement,
    chosen_rates,
    make_task,
    read_csv,
)
from lora_teach.training import seed_everything, train

FIELDS = ("task", "placement", "loss", "seed", "lr", "n_tokens", "batch_size", "steps", "accuracy", "label_loss",
          "decision_loss")
N_TOKENS = 20


def run(task_name: str, placement: str, loss: str, seed: int, lr: float, steps: int, eval_every: int,
        base: torch.nn.Module, batch_size: int = BATCH_SIZE) -> list[dict]:
    """Train one placement with one loss; one row per evaluation (on the test split)."""
    task = make_task(task_name)
    seed_everything(seed)
    model = build_placement(placement, base, task, N_TOKENS)
    wrapped = DecisionOnly(task, loss, split="test")
    hist = train(model, wrapped, steps=steps, lr=lr, batch_size=batch_size, seed=seed, eval_every=eval_every,
                 progress=False)
    return [{"task": task_name, "placement": placement, "loss": loss, "seed": seed, "lr": lr, "n_tokens": N_TOKENS,
             "batch_size": batch_size, "steps": step, **metrics} for step, metrics in hist.evals]


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
    threads = args.threads if args.threads is not None else (None if args.quick else 1)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be a positive int, got {threads}")
        torch.set_num_threads(threads)
    rates = chosen_rates(args.grid)
    grid = read_csv(args.grid)
    if args.quick:
        tasks, losses, seeds, steps, eval_every, batch_size = ("author",), ("label",), REPORT_SEEDS[:1], 4, 2, 4
    else:
        tasks, losses, seeds, steps, eval_every, batch_size = tuple(args.tasks), LOSSES, REPORT_SEEDS, \
            4 * STEPS, STEPS, BATCH_SIZE
    for task_name in tasks:  # the rate must be chosen from the finished grid of prompt tuning on that task
        found = {(float(r["lr"]), int(r["seed"])) for r in grid if (r["method"], r["task"]) == ("prompt", task_name)}
        rates_tried = {lr for lr, _ in found}
        if len(found) < 2 * len(rates_tried) or len(rates_tried) < 2:
            raise ValueError(f"the grid in {args.grid} has only {sorted(found)} for prompt tuning on {task_name}: "
                             "finish `python scripts/lr_grid.py` first")
    runs = [(t, p, loss, s) for t in tasks for loss in losses for p in PLACEMENTS for s in seeds]
    done = set()
    if args.out.exists():
        with args.out.open(newline="") as f:
            header = next(csv.reader(f), None)
        if header is not None and tuple(header) != FIELDS:
            raise ValueError(f"{args.out} has the columns {header}, not {list(FIELDS)}: move it away")
        done = {(r["task"], r["placement"], r["loss"], int(r["seed"])) for r in read_csv(args.out)
                if int(r["steps"]) == steps and int(r["batch_size"]) == batch_size}
    todo = [r for r in runs if r not in done]
    print(f"{len(runs) - len(todo)} of {len(runs)} runs already in {args.out}; {len(todo)} to go", file=sys.stderr)
    base = load_base_model(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    bar = tqdm(todo, desc="placement", unit="run", file=sys.stderr)
    for task_name, placement, loss, seed in bar:
        bar.set_postfix_str(f"{task_name} {placement} {loss} seed={seed}")
        rows = run(task_name, placement, loss, seed, rates[("prompt", task_name)], steps, eval_every, base,
                   batch_size)
        new = not args.out.exists() or args.out.stat().st_size == 0
        with args.out.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows)
    print(f"placement done: {len(todo)} runs in {(time.perf_counter() - t0) / 60:.1f} min; {args.out}",
          file=sys.stderr)
    return args.out


if __name__ == "__main__":
    main()
