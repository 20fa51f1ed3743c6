"""The learning-rate grid: every method on every task at four rates and two seeds; resumable.

    python experiments/lr_grid.py            # the whole grid: 7 methods x 3 tasks x 4 rates x 2 seeds = 168 runs
    python experiments/lr_grid.py --quick    # reduced: prompt tuning, author task, 2 rates, 3 steps (as in the tests)
    python experiments/lr_grid.py --shard 0/2 & python experiments/lr_grid.py --shard 1/2    # two processes, one file

Each run trains for `compare.STEPS` steps of `compare.BATCH_SIZE` examples (`lora_teach.compare.run_one`) and
records the task's metric on validation and on test (and, for Shakespeare, held-out Austen afterwards). Only
the validation columns choose a rate (`compare.choose_rates`); `experiments/compare_methods.py` then reports the
chosen rate's test figures over five seeds. Rows are appended to the CSV as runs finish, and a restart skips
every run already in the file, so an interrupted grid resumes where it stopped.

Writes `lora_teach/results/lr_grid.csv` by default (one row per run, the columns of `compare.RUN_FIELDS`).
Running time: on two quiet CPU cores, as two processes (one torch thread each), about 19 s per run per process
(the last 42 runs took 6.7 minutes), so the 168 runs take about 27 minutes. (On a machine shared with other jobs,
load average 10 to 26, the first 126 runs took about 65 minutes, 50 to 140 s per run per process.) Restart every
shard at the same time with the same n: each shard takes every n-th run of the runs still missing when it starts.
The reduced grid (--quick) takes seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lora_teach import load_base_model
from lora_teach.compare import (
    GRID_METHODS,
    GRID_SEEDS,
    LR_GRID,
    RUN_FIELDS,
    STEPS,
    TASKS,
    austen_task,
    grid_rates,
    parse_shard,
    run_one,
)
from lora_teach.methods import get_method
from lora_teach.results import RESULTS, append_row, read_csv


def grid_runs(methods=GRID_METHODS, tasks=TASKS, seeds=GRID_SEEDS, grid=None) -> list[tuple[str, str, float, int]]:
    """Every (method, task, lr, seed) of the learning-rate grid, in the order they are run."""
    grid = grid or LR_GRID
    for method in methods:
        get_method(method)  # an unknown name is refused here, naming the methods there are
    return [(m, t, lr, s) for t in tasks for m in methods for lr in grid[m] for s in seeds]


def done_runs(path: Path, steps: int, batch_size: int) -> set[tuple[str, str, float, int]]:
    """The (method, task, lr, seed) already in the CSV at this budget; refuses a file with other columns."""
    rows = read_csv(path, missing_ok=True)
    if rows and tuple(rows[0]) != RUN_FIELDS:
        raise ValueError(f"{path} has the columns {list(rows[0])}, not {list(RUN_FIELDS)}: move it away or use "
                         "another --out")
    return {(r["method"], r["task"], float(r["lr"]), int(r["seed"])) for r in rows
            if int(r["steps"]) == steps and int(r["batch_size"]) == batch_size}


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the reduced grid the tests run")
    ap.add_argument("--out", type=Path, default=RESULTS / "lr_grid.csv")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: 1 for the full run, the machine being shared; torch's for --quick)")
    ap.add_argument("--shard", default="0/1", help="i/n: run only every n-th run, from run i (parallel processes)")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    shard, n_shards = parse_shard(args.shard)
    threads = args.threads if args.threads is not None else (None if args.quick else 1)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be a positive int, got {threads}")
        torch.set_num_threads(threads)
    if args.quick:
        steps, batch_size = 3, 4
        runs = grid_runs(("prompt",), ("author",), GRID_SEEDS, grid_rates(steps))
    else:
        steps, batch_size = STEPS, 16
        runs = grid_runs(GRID_METHODS, TASKS, GRID_SEEDS)
    out.parent.mkdir(parents=True, exist_ok=True)
    finished = done_runs(out, steps, batch_size)
    # prompt tuning on the classification tasks first: the placement experiment needs the rates they choose
    runs.sort(key=lambda r: not (r[0] == "prompt" and r[1] != "shakespeare"))  # stable: otherwise in grid order
    # shard the whole list, then drop what is finished: a shard owns the same runs whenever it starts
    todo = [r for r in runs[shard::n_shards] if (r[0], r[1], float(r[2]), r[3]) not in finished]
    print(f"{len(runs)} runs in the grid, {len(todo)} of them still to run in shard {args.shard}",
          file=sys.stderr, flush=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = load_base_model(device)
    austen = austen_task()
    t0 = time.perf_counter()
    bar = tqdm(todo, desc="lr grid", unit="run", file=sys.stderr)
    for method, task, lr, seed in bar:
        bar.set_postfix_str(f"{task} {method} lr={lr:g} seed={seed}")
        row = run_one(method, task, base, seed, steps, batch_size, lr, austen if task == "shakespeare" else None,
                      time_step=False)
        append_row(out, row, RUN_FIELDS)
    print(f"grid done: {len(todo)} runs in {(time.perf_counter() - t0) / 60:.1f} min; {out}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
