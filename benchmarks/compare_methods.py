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
import fcntl
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
    RUN_FIELDS,
    Budget,
    as_reported,
    austen_task,
    chosen_rates,
    inference_latency,
    parse_shard,
    read_csv,
    run_comparison,
    run_key,
    run_one,
    small_data_curves,
    summarise,
    training_step_times,
)
from lora_teach.plotting import method_style, use_course_style  # noqa: E402

OUT = RESULTS  # package data: Colab has it too


def append_row(path: Path, row: dict) -> None:
    """Append one run's row to a CSV that several processes may share (locked while written)."""
    with path.open("a", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            writer = csv.DictWriter(f, fieldnames=RUN_FIELDS)
            if f.tell() == 0:
                writer.writeheader()
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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


README_NAMES = {"base": "base (no training)", "full": "full", "adapters": "adapters", "prefix": "prefix",
                "prompt": "prompt", "p-tuning": "P-tuning", "lora": "LoRA, q and v", "lora-all": "LoRA, all linear"}


def base_rows(base) -> list[dict]:
    """The untrained base on each task's test split, in the summary's columns (method 'base')."""
    from lora_teach.compare import TASKS, austen_task, make_task, quality

    rows = [{"method": "base", "task": t, "seeds": 1, "quality": quality(make_task(t), base, "test")["quality"],
             "trainable": 0} for t in TASKS]
    rows[0]["austen_loss"] = austen_task().evaluate(base, split="test")["loss"]
    return rows


def readme_table(summary: list[dict]) -> str:
    """The README's comparison table: test figures, mean ± standard deviation over the seeds, at the chosen rates."""
    by = {(r["method"], r["task"]): r for r in summary}

    def cell(row, key):
        value = float(row[key])
        if row["method"] == "base":
            return f"{value:.3f}"
        return f"{value:.3f} ± {float(row[key + '_std']):.3f}"

    lines = ["| method | trainable | learning rate (Shakespeare / author / sentence) | Shakespeare loss | "
             "Austen loss after | author accuracy | sentence accuracy | stored per task |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for method in ("base",) + GRID_METHODS:
        s, a, t = (by.get((method, task)) for task in ("shakespeare", "author", "sentence"))
        done = [r for r in (s, a, t) if r is not None]
        if not done:
            continue
        rates = "" if method == "base" else " / ".join(f"{float(r['lr']):g}" if r else "—" for r in (s, a, t))
        stored = "" if method == "base" else f"{round(float(done[0]['checkpoint_bytes']) / 1000):,} kB"
        figures = [cell(r, key) if r else "not run yet" for r, key in
                   ((s, "quality"), (s, "austen_loss"), (a, "quality"), (t, "quality"))]
        lines.append(f"| {README_NAMES[method]} | {int(float(done[0]['trainable'])):,} | {rates} | "
                     + " | ".join(figures) + f" | {stored} |")
    return "\n".join(lines)


def plot(summary: list[dict], path: Path) -> None:
    use_course_style()
    tasks = list(dict.fromkeys(r["task"] for r in summary))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(9, 3 * len(tasks)), squeeze=False)
    for row_axes, task in zip(axes, tasks, strict=True):
        for r in (r for r in summary if r["task"] == task and r["method"] != "base"):
            style = method_style("lora" if r["method"] == "lora-all" else r["method"])
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
    ap.add_argument("--shard", default=None,
                    help="i/n: only train every n-th missing run, from run i, appending rows to --cache; a final "
                         "call without --shard writes the result files from the grid and the cache")
    ap.add_argument("--ready-only", action="store_true",
                    help="with --shard: train only the runs whose (method, task) the grid has finished")
    ap.add_argument("--partial", action="store_true",
                    help="report only the (method, task) pairs whose grid is finished (the table marks the rest)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="where sharded runs append their rows (default: comparison_new_runs.csv under --out)")
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
    budget, methods = (QUICK, METHODS) if args.quick else (Budget(), GRID_METHODS)
    if args.ready_only and not args.shard:
        raise ValueError("--ready-only trains part of the comparison: use it with --shard")
    rates = chosen_rates(args.grid)  # only the (method, task) pairs whose grid is complete
    missing = [(m, t) for t in budget.steps for m in methods if (m, t) not in rates]
    if missing and not (args.ready_only or args.partial):
        raise ValueError(f"the grid in {args.grid} is not finished for {missing}: run `python scripts/lr_grid.py` "
                         "(or pass --partial to report only the finished pairs)")
    done = {}
    if not args.quick:
        done = {run_key(r): r for r in read_csv(args.grid)}  # the grid's runs: the first seeds, already trained
        previous = args.out / "comparison_runs.csv"
        if previous.exists() and "lr" in read_csv(previous)[0]:
            done.update({run_key(r): r for r in read_csv(previous)})  # an interrupted comparison
    cache = args.cache or args.out / "comparison_new_runs.csv"
    if not args.quick and cache.exists():
        done.update({run_key(r): r for r in read_csv(cache)})
    if args.shard:
        shard, n_shards = parse_shard(args.shard)
        keys = [(m, t, float(rates[(m, t)]), int(s), int(n)) for t, n in budget.steps.items() for m in methods
                for s in budget.seeds if (m, t) in rates]
        mine = [k for k in keys[shard::n_shards] if k not in done]  # a shard owns the same runs whenever it starts
        austen = austen_task()
        for m, t, lr, seed, steps in mine:
            row = run_one(m, t, base, seed, steps, budget.batch_size, lr, austen if t == "shakespeare" else None,
                          time_step=False)
            append_row(cache, row)
            print(f"[{time.perf_counter() - t0:6.0f} s] {t:11s} {m:9s} lr {lr:g} seed {seed} test "
                  f"{row['quality_test']:.3f}", file=sys.stderr, flush=True)
        return
    rows: list[dict] = []

    def log(row):
        rows.append(row)
        if not args.quick:
            write_csv(args.out / "comparison_runs.csv", rows)  # after every run: a restart resumes here
        print(f"[{time.perf_counter() - t0:6.0f} s] {row['task']:11s} {row['method']:9s} lr {float(row['lr']):g} "
              f"seed {row['seed']} test {row['quality']:.3f}", file=sys.stderr, flush=True)

    if args.partial:  # only the pairs the grid has finished, and only with all three seeds in hand
        ready = {k for k in rates if all((k[0], k[1], float(rates[k]), int(s), int(budget.steps[k[1]])) in done
                                         for s in budget.seeds)}
        for task_name, steps in budget.steps.items():
            for method in methods:
                if (method, task_name) in ready:
                    for seed in budget.seeds:
                        log(as_reported(done[(method, task_name, float(rates[(method, task_name)]), seed, steps)]))
    else:
        run_comparison(base, budget, methods=methods, rates=rates, log=log, done=done, time_step=args.quick)
    write_csv(args.out / "comparison_runs.csv", rows)
    summary = summarise(rows)
    if not args.quick:
        summary += base_rows(base)
        print(readme_table(summary))
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
