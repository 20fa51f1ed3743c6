"""Measure all six methods on the same base, tasks, step budget and seeds; write CSV files and figures.

    python benchmarks/compare_methods.py            # full: 3 tasks x 6 methods x 3 seeds, 150 steps each
    python benchmarks/compare_methods.py --quick    # reduced: author task, 20 steps, one seed (as in the tests)
    python benchmarks/compare_methods.py --timing-only    # only the two timing files below (a few minutes)

Writes, under --out (default lora_teach/results/, shipped with the package so notebook 10 reads it anywhere):
    comparison_runs.csv       one row per (method, task, seed)
    comparison_summary.csv    mean and standard deviation over seeds
    inference_latency.csv     forward latency of each method as served, and its ratio to the base
    training_step_times.csv   training-step time of each method, all methods timed in alternating rounds
    small_data_curves.csv     full fine-tuning and LoRA on 8 passages per author: train vs validation
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
    QUICK,
    Budget,
    inference_latency,
    run_comparison,
    small_data_curves,
    summarise,
    training_step_times,
)
from lora_teach.plotting import method_style, use_course_style  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "lora_teach" / "results"  # package data: Colab has it too


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
    ap.add_argument("--timing-only", action="store_true",
                    help="measure and write only inference_latency.csv and training_step_times.csv")
    ap.add_argument("--figure", type=Path, help="also save a figure of quality against parameters and memory")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    budget = QUICK if args.quick else Budget()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = load_base_model(device)
    t0 = time.perf_counter()
    if args.timing_only:
        write_timings(args.out, base)
        print(f"wrote the timings into {args.out} in {time.perf_counter() - t0:.0f} s")
        return

    def log(row):
        print(f"[{time.perf_counter() - t0:6.0f} s] {row['task']:11s} {row['method']:9s} seed {row['seed']} "
              f"quality {row['quality']:.3f} step {row['step_ms']:.0f} ms", file=sys.stderr, flush=True)

    rows = run_comparison(base, budget, log=log)
    summary = summarise(rows)
    write_csv(args.out / "comparison_runs.csv", rows)
    write_csv(args.out / "comparison_summary.csv", summary)
    write_timings(args.out, base, tasks=tuple(budget.steps), repeats=3 if args.quick else 40)
    if not args.quick:
        write_csv(args.out / "small_data_curves.csv", small_data_curves(base, seeds=budget.seeds))
    if args.figure:
        plot(summary, args.figure)
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
