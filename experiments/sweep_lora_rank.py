"""Run the LoRA sweep behind notebook 09 and write lora_teach/results/lora_rank_sweep.csv.

The CSV is package data, so Colab has it too: one row per run (the columns of `COLUMNS`: the configuration,
trainable parameters, validation and test accuracy, validation label loss, final training loss, seconds).

Each configuration is one papermill execution of notebooks/sweeps/lora_rank.ipynb (a notebook with a cell
tagged `parameters`); the executed copies go to a temporary directory and only their `RESULT` lines are kept.
Two experiments, both on the author task:
  rank:    r in 1, 2, 4, 8, 16, 32 on q_proj and v_proj, with alpha = 8 fixed (the paper: scaling 8 / r)
           and with alpha = 2r (a common practice: scaling 2 for every r);
  targets: one parameter budget (40 * d per layer, 20,480 numbers) spent on q; v; q and v; all of attention;
           or the MLP, with alpha = 2r, each with three seeds;
  seeds:   r = 8, alpha = 8 again with three other seeds, to show how much one run varies.
Every run is independent: `--append` keeps the rows already in the CSV and runs only the missing ones
(to resume an interrupted sweep, or to add an experiment).

Usage: python experiments/sweep_lora_rank.py [--steps 200] [--batch-size 16] [--only rank|targets|seeds] [--append]
Each run starts its own kernel and trains for 200 steps: about 20 s a run on two quiet CPU cores, so the 30 runs
take about 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nbformat
import papermill as pm

from lora_teach.results import RESULTS, append_row, read_csv, write_csv

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "sweeps" / "lora_rank.ipynb"
OUT = RESULTS / "lora_rank_sweep.csv"
RANKS = [1, 2, 4, 8, 16, 32]
SEEDS = [1, 2, 3]  # the other runs use the course seed, 1337
# (targets, r) pairs with the same trainable count: r * (in + out) summed = 40 * 128 per layer
BUDGET = [("q_proj", 20), ("v_proj", 20), ("q_proj,v_proj", 10), ("q_proj,k_proj,v_proj,o_proj", 5),
          ("up_proj,down_proj", 4)]
COLUMNS = ["experiment", "task", "targets", "r", "alpha", "use_rslora", "scaling", "steps", "batch_size", "lr",
           "seed", "trainable", "val_accuracy", "val_label_loss", "test_accuracy", "final_train_loss", "seconds"]


def configurations(only: str | None) -> list[dict]:
    """Every run of the sweep as (experiment, notebook parameters)."""
    runs = []
    if only in (None, "rank"):
        for r in RANKS:
            runs.append({"experiment": "rank: alpha=8", "r": r, "alpha": 8.0})
            runs.append({"experiment": "rank: alpha=2r", "r": r, "alpha": 2.0 * r})
    if only in (None, "targets"):
        for seed in [1337, *SEEDS[:2]]:
            for targets, r in BUDGET:
                runs.append({"experiment": "targets", "targets": targets, "r": r, "alpha": 2.0 * r, "seed": seed})
    if only in (None, "seeds"):
        for seed in SEEDS:
            runs.append({"experiment": "seeds", "r": 8, "alpha": 8.0, "seed": seed})
    return runs


def run_key(row: dict) -> tuple:
    """What identifies a run in the CSV: experiment, targets, r, alpha, seed."""
    return (row["experiment"], row.get("targets", "q_proj,v_proj"), int(row["r"]), float(row["alpha"]),
            int(row.get("seed", 1337)))


def run_one(params: dict, workdir: Path, index: int) -> dict:
    """Execute the sweep notebook with `params`; return its RESULT record."""
    out = workdir / f"run_{index:02d}.ipynb"
    pm.execute_notebook(str(NOTEBOOK), str(out), parameters=params, kernel_name="python3", progress_bar=False,
                        cwd=str(NOTEBOOK.parent))
    for cell in nbformat.read(out, as_version=4).cells:
        for output in cell.get("outputs", []):
            for line in output.get("text", "").splitlines():
                if line.startswith("RESULT "):
                    return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{out} printed no RESULT line")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--only", choices=["rank", "targets", "seeds"], default=None)
    parser.add_argument("--append", action="store_true", help="add the rows to an existing CSV")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    out = args.out.resolve()
    runs = configurations(args.only)
    if args.append:
        done = {run_key(row) for row in read_csv(out, missing_ok=True)}
        runs = [run for run in runs if run_key(run) not in done]
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, run in enumerate(runs):
            params = {k: v for k, v in run.items() if k != "experiment"}
            params.update(steps=args.steps, batch_size=args.batch_size, lr=args.lr, task_name="author")
            result = run_one(params, Path(tmp), i)
            record = {"experiment": run["experiment"], **result}
            rows.append({column: record[column] for column in COLUMNS})
            print(f"[{i + 1}/{len(runs)}] {run['experiment']:15s} targets={result['targets']:28s} r={result['r']:2d}"
                  f" val acc {result['val_accuracy']:.3f} test acc {result['test_accuracy']:.3f}"
                  f" ({time.perf_counter() - start:.0f} s)", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.append:
        for row in rows:
            append_row(out, row, COLUMNS)
    else:
        write_csv(out, rows)
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
