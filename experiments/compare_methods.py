"""Report every method at the learning rate chosen on validation, on the test split, over five seeds.

    python experiments/compare_methods.py            # 3 tasks x 7 methods x 5 seeds at the grid's chosen rates
    python experiments/compare_methods.py --quick    # reduced: author task, the six methods, 20 steps, one seed
    python experiments/compare_methods.py --small-data   # also the small-data curves (full fine-tuning and LoRA)
    python experiments/compare_methods.py --longer --shard 0/2   # and --shard 1/2 in a second process

The rates come from `lora_teach/results/lr_grid.csv` (`python experiments/lr_grid.py`), chosen on validation by
`lora_teach.compare.choose_rates`. A run the grid already made (same method, task, rate, seed and budget) is
the same computation, so its row is reused rather than trained again: the full comparison trains only the three
seeds after the grid's two. comparison_runs.csv is rewritten after every run, and a restart reuses the runs it
holds, so an interrupted comparison resumes. Running time: 21 runs (one seed) took about 4 minutes of CPU on two
quiet cores, so the full comparison after the grid (63 runs) takes about 12; --small-data adds runs of 150
steps. --quick (six runs of 20 steps) took 105 s of CPU time, 3 minutes of wall time on two busy cores.

Writes, under --out (default lora_teach/results/, shipped with the package so notebook 10 reads it anywhere):
    comparison_runs.csv       one row per (method, task, seed); `quality` and `austen_loss` are test figures
    comparison_summary.csv    mean and standard deviation over seeds (and the untrained base, full run only)
    small_data_curves.csv     (--small-data) full fine-tuning and LoRA on 8 passages per author
and prints docs/PERFORMANCE.md's comparison table (full run). The timings of notebook 10 are a benchmark:
`benchmarks/method_timings.py`.

--longer: the second budget, to see whether the ranking holds when the run is longer and starts gently: every
method at the same chosen rate and seeds, `compare.LONGER_STEPS` steps of which the first `LONGER_WARMUP` warm the
rate up linearly. Appends one row per run to comparison_longer_runs.csv (the run columns and `warmup`); several
processes (--shard i/n, one torch thread each) may share the file, and a restart skips the runs it holds. 105 runs
of 300 steps took 23 minutes as two processes on two quiet cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from lora_teach import load_base_model  # noqa: E402
from lora_teach.compare import (  # noqa: E402
    BATCH_SIZE,
    COURSE_METHODS,
    GRID_METHODS,
    LONGER_STEPS,
    LONGER_WARMUP,
    QUICK,
    REPORT_SEEDS,
    RUN_FIELDS,
    TASKS,
    Budget,
    austen_task,
    chosen_rates,
    make_task,
    parse_shard,
    quality,
    run_comparison,
    run_key,
    run_one,
    summarise,
)
from lora_teach.data import author_task  # noqa: E402
from lora_teach.methods import get_method  # noqa: E402
from lora_teach.plotting import method_style, use_course_style  # noqa: E402
from lora_teach.results import RESULTS, append_row, read_csv, write_csv  # noqa: E402
from lora_teach.training import SEED, seed_everything, train  # noqa: E402

TABLE_NAMES = {"base": "base (no training)", "full": "full", "adapters": "adapters", "prefix": "prefix",
                "prompt": "prompt", "p-tuning": "P-tuning", "lora": "LoRA, q and v", "lora-all": "LoRA, all linear"}


def base_rows(base) -> list[dict]:
    """The untrained base on each task's test split, in the summary's columns (method 'base')."""
    rows = [{"method": "base", "task": t, "seeds": 1, "quality": quality(make_task(t), base, "test")["quality"],
             "trainable": 0} for t in TASKS]
    rows[0]["austen_loss"] = austen_task().evaluate(base, split="test")["loss"]
    return rows


def small_data_curves(base: torch.nn.Module, rates: dict[str, float], methods=("full", "lora"), n_train: int = 8,
                      steps: int = 150, eval_every: int = 10, seeds=(SEED,), batch_size: int = 16) -> list[dict]:
    """Training and validation curves on the author task with `n_train` passages per author, each method at
    `rates[method]`: does a method overfit? One row per (method, seed, evaluation step)."""
    task = author_task(n_train=n_train)
    rows = []
    for method in methods:
        for seed in seeds:
            seed_everything(seed)
            model = get_method(method).build(base, task)
            hist = train(model, task, steps=steps, lr=rates[method], batch_size=batch_size, seed=seed,
                         eval_every=eval_every, progress=False)
            for step, metrics in hist.evals:
                window = hist.loss[max(0, step - eval_every):step]
                rows.append({"method": method, "seed": seed, "step": step,
                             "train_loss": statistics.mean(window), "val_label_loss": metrics["label_loss"],
                             "val_accuracy": metrics["accuracy"]})
    return rows


def readme_table(summary: list[dict]) -> str:
    """docs/PERFORMANCE.md's comparison table: test figures, mean ± standard deviation over seeds, chosen rates."""
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
        s, a, t = (by[(method, task)] for task in TASKS)
        rates = "" if method == "base" else " / ".join(f"{float(r['lr']):g}" for r in (s, a, t))
        stored = "" if method == "base" else f"{round(float(s['checkpoint_bytes']) / 1000):,} kB"
        figures = [cell(r, key) for r, key in ((s, "quality"), (s, "austen_loss"), (a, "quality"), (t, "quality"))]
        lines.append(f"| {TABLE_NAMES[method]} | {int(float(s['trainable'])):,} | {rates} | "
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


def finished_runs(grid: Path, previous: Path) -> dict[tuple, dict]:
    """The rows to reuse, by `run_key`: the grid's runs (the first seeds), then an interrupted comparison's."""
    done = {run_key(r): r for r in read_csv(grid)}
    earlier = read_csv(previous, missing_ok=True)
    if earlier and "lr" in earlier[0]:
        done.update({run_key(r): r for r in earlier})
    return done


def longer_runs(base: torch.nn.Module, rates: dict, path: Path, seeds, shard: str = "0/1") -> list[dict]:
    """This shard's runs of the longer budget (every (task, method, seed) at the chosen rate, LONGER_STEPS steps
    with LONGER_WARMUP of warmup), appended to `path` as they finish; the runs `path` holds are skipped."""
    i, n = parse_shard(shard)
    fields = (*RUN_FIELDS, "warmup")
    held = read_csv(path, missing_ok=True)
    if held and tuple(held[0]) != fields:
        raise ValueError(f"{path} has the columns {list(held[0])}, not {list(fields)}: move it away")
    done = {(r["method"], r["task"], int(r["seed"])) for r in held}
    runs = [(m, t, s) for t in TASKS for m in GRID_METHODS for s in seeds][i::n]
    austen = austen_task()
    rows, t0 = [], time.perf_counter()
    for method, task, seed in (r for r in runs if r not in done):
        row = run_one(method, task, base, seed, LONGER_STEPS, BATCH_SIZE, rates[(method, task)],
                      austen if task == "shakespeare" else None, time_step=False, warmup=LONGER_WARMUP)
        row["warmup"] = LONGER_WARMUP
        append_row(path, row, fields)
        rows.append(row)
        print(f"[{time.perf_counter() - t0:6.0f} s] {task:11s} {method:9s} seed {seed} test {row['quality_test']:.3f}",
              file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the reduced configuration")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--grid", type=Path, default=RESULTS / "lr_grid.csv", help="the learning-rate grid to choose from")
    ap.add_argument("--small-data", action="store_true", help="also write small_data_curves.csv (full run only)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--figure", type=Path, help="also save a figure of quality against parameters and memory")
    ap.add_argument("--seeds", type=int, default=len(REPORT_SEEDS),
                    help=f"seeds per (method, task), from {SEED} up (default {len(REPORT_SEEDS)})")
    ap.add_argument("--longer", action="store_true", help="the second, longer budget with warmup (see above)")
    ap.add_argument("--shard", default="0/1", help="with --longer: i/n, run every n-th run from run i")
    args = ap.parse_args(argv)
    if args.seeds < 2:
        raise ValueError(f"--seeds must be at least 2 (a spread needs two runs), got {args.seeds}")
    out, grid = args.out.resolve(), args.grid.resolve()
    if args.longer and args.threads is None:
        args.threads = 1  # one thread per process: the shards share the cores
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be a positive int, got {args.threads}")
        torch.set_num_threads(args.threads)
    budget, methods = (QUICK, COURSE_METHODS) if args.quick else (
        Budget(seeds=tuple(SEED + i for i in range(args.seeds))), GRID_METHODS)
    rates = chosen_rates(grid)  # only the (method, task) pairs whose grid is complete
    missing = [(m, t) for t in budget.steps for m in methods if (m, t) not in rates]
    if missing:
        raise ValueError(f"the grid in {grid} is not finished for {missing}: run `python experiments/lr_grid.py`")
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = load_base_model(device)
    if args.longer:
        longer_runs(base, rates, out / "comparison_longer_runs.csv", budget.seeds, args.shard)
        return
    t0 = time.perf_counter()
    done = {} if args.quick else finished_runs(grid, out / "comparison_runs.csv")
    rows: list[dict] = []

    def log(row):
        rows.append(row)
        if not args.quick:
            write_csv(out / "comparison_runs.csv", rows)  # after every run: a restart resumes here
        print(f"[{time.perf_counter() - t0:6.0f} s] {row['task']:11s} {row['method']:9s} lr {float(row['lr']):g} "
              f"seed {row['seed']} test {row['quality']:.3f}", file=sys.stderr, flush=True)

    run_comparison(base, budget, methods=methods, rates=rates, log=log, done=done, time_step=args.quick)
    write_csv(out / "comparison_runs.csv", rows)
    summary = summarise(rows)
    if not args.quick:
        summary += base_rows(base)
        print(readme_table(summary))
    write_csv(out / "comparison_summary.csv", summary)
    if args.small_data:
        write_csv(out / "small_data_curves.csv",
                  small_data_curves(base, {m: rates[(m, "author")] for m in ("full", "lora")}, seeds=budget.seeds))
    if args.figure:
        plot(summary, args.figure)
    print(f"wrote {out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
