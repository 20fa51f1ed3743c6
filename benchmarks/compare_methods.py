"""Report every method at the learning rate chosen on validation, on the test split, over three seeds.

    python benchmarks/compare_methods.py            # full: 3 tasks x 7 methods x 3 seeds at the grid's chosen rates
    python benchmarks/compare_methods.py --quick    # reduced: author task, the six methods, 20 steps, one seed
    python benchmarks/compare_methods.py --timing-only    # only the two timing files below (about a minute)

The rates come from `lora_teach/results/lr_grid.csv` (`python scripts/lr_grid.py`), chosen on validation by
`lora_teach.compare.choose_rates`. A run the grid already made (same method, task, rate, seed and budget) is
the same computation, so its row is reused rather than trained again: the full comparison trains only the third
seed. It appends nothing to a run it finds finished in --out, so an interrupted run resumes. Running time of the
full comparison: 21 runs, about 4 minutes of CPU on two quiet cores after the grid.

Writes, under --out (default lora_teach/results/, shipped with the package so notebook 10 reads it anywhere):
    comparison_runs.csv       one row per (method, task, seed); `quality` and `austen_loss` are test figures
    comparison_summary.csv    mean and standard deviation over seeds
    inference_latency.csv     (--timing-only, and --quick) forward latency of each method as served
    training_step_times.csv   (--timing-only, and --quick) training-step time of each method, taking turns
    small_data_curves.csv     (--small-data) full fine-tuning and LoRA on 8 passages per author
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from lora_teach import load_base_model  # noqa: E402
from lora_teach.compare import (  # noqa: E402
    GRID_METHODS,
    METHODS,
    QUICK,
    RESULTS,
    Budget,
    chosen_rates,
    inference_latency,
    read_csv,
    run_comparison,
    run_key,
    small_data_curves,
    summarise,
    training_step_times,
)
from lora_teach.plotting import method_style, use_course_style  # noqa: E402

OUT = RESULTS  # package data: Colab has it too


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})


def write_timings(out: Path, base, tasks=("shakespeare", "author"), repeats: int = 40) -> None:
    """The timing files: forward latency as served, and training-step times, the models taking turns."""
    write_csv(out / "inference_latency.csv", inference_latency(base, repeats=repeats))
    write_csv(out / "training_step_times.csv", training_step_times(base, tasks=tasks, repeats=repeats))


def plot(summary: list[dict], path: Path) -> None:
    use_course_style()
    tasks = list(dict.fromkeys(r["task"] for r in summary))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(9, 3 * len(tasks)), squeeze=False)
    for row_axes, task in zip(axes, tasks, strict=True):
        for r in (r for r in summary if r["task"] == task):
            style = method_style(r["method"])
            memory = (r["activation_bytes"] + r.get("trainable", 0) * 12) / 2**20
            for ax, x in zip(row_axes, (r["trainable"], memory), strict=True):
                ax.errorbar(x, r["quality"], yerr=r.get("quality_std", 0), marker="o", color=style["color"],
                            label=style["label"], capsize=3)
        ylabel = "validation loss (lower is better)" if task == "shakespeare" else "accuracy"
        row_axes[0].set_xscale("log")
        row_axes[0].set_xlabel("trainable parameters (log scale)")
        row_axes[1].set_xlabel("training memory beyond the frozen weights (MiB)")
        for ax in row_axes:
            ax.set_ylabel(f"{task}: {ylabel}")
        row_axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the reduced configuration")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--grid", type=Path, default=RESULTS / "lr_grid.csv", help="the learning-rate grid to choose from")
    ap.add_argument("--timing-only", action="store_true",
                    help="measure and write only inference_latency.csv and training_step_times.csv")
    ap.add_argument("--small-data", action="store_true", help="also write small_data_curves.csv (full run only)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--figure", type=Path, help="also save a figure of quality against parameters and memory")
    args = ap.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be a positive int, got {args.threads}")
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = load_base_model(device)
    t0 = time.perf_counter()
    if args.timing_only:
        write_timings(args.out, base)
        print(f"wrote the timings into {args.out} in {time.perf_counter() - t0:.0f} s")
        return
    rates = chosen_rates(args.grid)
    budget, methods = (QUICK, METHODS) if args.quick else (Budget(), GRID_METHODS)
    done = {}
    if not args.quick:
        done = {run_key(r): r for r in read_csv(args.grid)}  # the grid's runs: the first seeds, already trained
        previous = args.out / "comparison_runs.csv"
        if previous.exists() and "lr" in read_csv(previous)[0]:
            done.update({run_key(r): r for r in read_csv(previous)})  # an interrupted comparison
    rows: list[dict] = []

    def log(row):
        rows.append(row)
        if not args.quick:
            write_csv(args.out / "comparison_runs.csv", rows)  # after every run: a restart resumes here
        print(f"[{time.perf_counter() - t0:6.0f} s] {row['task']:11s} {row['method']:9s} lr {float(row['lr']):g} "
              f"seed {row['seed']} test {row['quality']:.3f}", file=sys.stderr, flush=True)

    run_comparison(base, budget, methods=methods, rates=rates, log=log, done=done, time_step=args.quick)
    write_csv(args.out / "comparison_runs.csv", rows)
    summary = summarise(rows)
    write_csv(args.out / "comparison_summary.csv", summary)
    if args.quick:
        write_timings(args.out, base, tasks=tuple(budget.steps), repeats=3)
    if args.small_data:
        write_csv(args.out / "small_data_curves.csv",
                  small_data_curves(base, {m: rates[(m, "author")] for m in ("full", "lora")}, seeds=budget.seeds))
    if args.figure:
        plot(summary, args.figure)
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
