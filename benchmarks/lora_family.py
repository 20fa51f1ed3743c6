"""The LoRA family side by side on the course's base model (notebook 13 reads what this writes).

    python benchmarks/lora_family.py --part grid --tasks shakespeare      # one shard of the quality runs
    python benchmarks/lora_family.py --part grid --tasks author           # the other (run both, then:)
    python benchmarks/lora_family.py --part summary                      # the table from the runs
    python benchmarks/lora_family.py --part timing                       # step time, latency, serving
    python benchmarks/lora_family.py --part dora                         # DoRA's magnitude and direction
    python benchmarks/lora_family.py --quick                             # everything, tiny, into a temp dir

Every variant is LoRA on q_proj and v_proj of the same base, trained by the same loop (`lora_teach.training.train`
with constant rate, warm-up 0, weight decay 0 and clipping at 1.0; LoRA+ passes its optimizer groups, so that B
gets its own rate) on the same batches for the same seeds.
Learning rates by default: a validation grid of three rates per variant and task on the first seed; the rate
with the best validation figure then runs the second seed; the table reports the test split over the seeds.
Grid files are appended per shard (`--shard`), so parallel runs do not share a file, and a finished run is not
trained again.

What the shipped results ran (2026-11-30): the default plan, `--part grid --tasks shakespeare author` (every
variant, three rates on seed 1337, the chosen rate on seed 1338), then `--part summary`, `--part timing` and
`--part dora`. Each grid row records its run's time (`wall_s`); the shipped runs shared two cores with other
jobs, which changes those times but not the figures.

Writes, under --out (default lora_teach/results/):
    lora_family_grid.csv      one row per (variant, task, lr, seed): validation and test figures
    lora_family_summary.csv   per (variant, task): the chosen lr, test mean and spread over seeds, trainable
    lora_family_timing.csv    training step and served forward of each variant, taking turns, as ratios
    lora_family_serving.csv   three adapters on one base: a mixed batch against merging per request
    dora_magnitude_direction.csv   magnitude and direction change of q_proj during training (full, LoRA, DoRA)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lora_teach import load_base_model
from lora_teach.compare import make_task, served_forward
from lora_teach.lora import LoRAConfig, apply_lora, merge_lora, unmerge_lora
from lora_teach.lora_variants import loraplus_param_groups
from lora_teach.measure import count_parameters, interleaved_times, training_step
from lora_teach.results import append_row, read_csv, write_csv
from lora_teach.serving import add_adapter, forward_with_adapters, set_adapter
from lora_teach.training import SEED, seed_everything, train

OUT = Path(__file__).resolve().parents[1] / "lora_teach" / "results"
TARGETS = ("q_proj", "v_proj")
VARIANTS = {  # name: (config, LoRA+ ratio or None)
    "LoRA": (LoRAConfig(r=8, alpha=16, target_modules=TARGETS), None),
    "DoRA": (LoRAConfig(r=8, alpha=16, target_modules=TARGETS, use_dora=True), None),
    "PiSSA": (LoRAConfig(r=8, alpha=16, target_modules=TARGETS, init_lora_weights="pissa"), None),
    "LoRA+": (LoRAConfig(r=8, alpha=16, target_modules=TARGETS), 16.0),
    "LoRA r=64": (LoRAConfig(r=64, alpha=16, target_modules=TARGETS), None),
    "rsLoRA r=64": (LoRAConfig(r=64, alpha=16, target_modules=TARGETS, use_rslora=True), None),
}
GRID = (1e-3, 3e-3, 1e-2)  # learning rates tried on validation (of A, for LoRA+)
SEEDS = (SEED, SEED + 1)
DORA_FIGURE_RATES = {"full": 1e-3, "LoRA": 3e-3, "DoRA": 3e-3}  # notebook 10's rates for full and LoRA
STEPS, BATCH = 100, 16


def build_variant(name: str, base: torch.nn.Module) -> torch.nn.Module:
    """A fresh trainable copy of `base` with variant `name` applied (base untouched)."""
    config, _ = VARIANTS[name]
    return apply_lora(copy.deepcopy(base), config)


def param_groups(name: str, model: torch.nn.Module, lr: float) -> list[dict] | None:
    """LoRA+'s optimizer groups (B at ratio x lr), or None: one group of every trainable tensor at `lr`."""
    ratio = VARIANTS[name][1]
    return None if ratio is None else loraplus_param_groups(model, lr=lr, loraplus_lr_ratio=ratio)


def figure(task, model, split: str) -> float:
    """The task's quality figure: accuracy for classification, loss for language modelling."""
    metrics = task.evaluate(model, split=split)
    return metrics["accuracy"] if "accuracy" in metrics else metrics["loss"]


def one_run(name: str, task_name: str, base, lr: float, seed: int, steps: int) -> dict:
    task = make_task(task_name)
    seed_everything(seed)
    model = build_variant(name, base)
    start = time.perf_counter()
    losses = train(model, task, steps=steps, lr=lr, batch_size=BATCH, seed=seed, progress=False,
                   param_groups=param_groups(name, model, lr)).loss
    return {"variant": name, "task": task_name, "lr": lr, "seed": seed, "steps": steps,
            "trainable": count_parameters(model)[0], "train_loss_end": statistics.mean(losses[-10:]),
            "val": figure(task, model, "val"), "test": figure(task, model, "test"),
            "wall_s": time.perf_counter() - start}


def better(task_name: str, a: float, b: float) -> bool:
    return a > b if task_name != "shakespeare" else a < b  # accuracy up, loss down


def grid(base, tasks, variants, out: Path, steps: int, grid_lrs=GRID, seeds=SEEDS, shard: str = "") -> None:
    """The validation grid on the first seed, then the other seeds at the chosen rate; appends to the CSV, and a
    restart skips the runs it holds."""
    path = out / f"lora_family_grid{shard}.csv"
    done = {(r["variant"], r["task"], float(r["lr"]), int(r["seed"])): r for r in read_csv(path, missing_ok=True)}

    def run(name, task_name, lr, seed) -> dict:
        row = done.get((name, task_name, lr, seed))
        if row is None:
            row = one_run(name, task_name, base, lr, seed, steps)
            append_row(path, row)
            print(f"{name:12s} {task_name:12s} lr {lr:g} seed {seed}: val {row['val']:.4f}", flush=True)
        return row

    for task_name in tasks:
        for name in variants:
            found = {lr: float(run(name, task_name, lr, seeds[0])["val"]) for lr in grid_lrs}
            best = grid_lrs[0]
            for lr in grid_lrs[1:]:
                if better(task_name, found[lr], found[best]):
                    best = lr
            for seed in seeds[1:]:
                run(name, task_name, best, seed)


def summary(out: Path, base=None, seeds=SEEDS) -> list[dict]:
    """Per (variant, task): the rate chosen on validation (first seed) and the test figure over the seeds; with
    `base`, a first row per task for the untrained base model."""
    rows = [r for path in sorted(out.glob("lora_family_grid*.csv")) for r in read_csv(path)]
    out_rows = []
    if base is not None:
        for task_name in dict.fromkeys(r["task"] for r in rows):
            test = figure(make_task(task_name), base, "test")
            out_rows.append({"variant": "base", "task": task_name, "lr": 0.0, "seeds": 1, "test": test,
                             "test_min": test, "test_max": test, "trainable": 0})
    for name in VARIANTS:
        for task_name in dict.fromkeys(r["task"] for r in rows):
            first = [r for r in rows if r["variant"] == name and r["task"] == task_name and int(r["seed"]) == seeds[0]]
            if not first:
                continue
            best = first[0]
            for r in first[1:]:
                if better(task_name, float(r["val"]), float(best["val"])):
                    best = r
            runs = [r for r in rows if r["variant"] == name and r["task"] == task_name
                    and float(r["lr"]) == float(best["lr"])]
            tests = [float(r["test"]) for r in runs]
            out_rows.append({"variant": name, "task": task_name, "lr": float(best["lr"]), "seeds": len(runs),
                             "test": statistics.mean(tests), "test_min": min(tests), "test_max": max(tests),
                             "trainable": int(best["trainable"])})
    write_csv(out / "lora_family_summary.csv", out_rows)
    return out_rows


def timing(base, out: Path, repeats: int) -> list[dict]:
    """Training step of each variant (taking turns; LoRA+ is LoRA's step with other rates, so it is not timed
    apart) and the served forward unmerged and merged, as ratios to LoRA and to the base."""
    task = make_task("shakespeare")
    batch = task.train_batch(BATCH, torch.Generator().manual_seed(SEED))
    names = [n for n in VARIANTS if n != "LoRA+"]
    steps = interleaved_times({n: training_step(build_variant(n, base), batch) for n in names}, repeats=repeats)
    prompts = make_task("author")
    idx = prompts.prompts(prompts.val[:64])
    models = {"base": base}
    for n in ("LoRA", "DoRA"):
        models[f"{n} unmerged"] = build_variant(n, base)
        models[f"{n} merged"] = merge_lora(build_variant(n, base))
    fwd = interleaved_times({k: served_forward(m, idx) for k, m in models.items()}, repeats=repeats)
    rows = [{"what": "training step", "variant": n, "ms": 1000 * s, "ratio": s / steps["LoRA"], "to": "LoRA"}
            for n, s in steps.items()]
    rows += [{"what": "served forward", "variant": k, "ms": 1000 * s, "ratio": s / fwd["base"], "to": "base"}
             for k, s in fwd.items()]
    write_csv(out / "lora_family_timing.csv", rows)
    return rows


def three_adapter_model(base, seed=SEED) -> torch.nn.Module:
    """One base, three adapters (default, 'author', 'sentence') with random B, as after training: timing and
    exactness do not depend on what the adapters learned."""
    seed_everything(seed)
    model = apply_lora(copy.deepcopy(base), LoRAConfig(r=8, alpha=16, target_modules=TARGETS))
    add_adapter(model, "author", LoRAConfig(r=8, alpha=16, target_modules=TARGETS))
    add_adapter(model, "sentence", LoRAConfig(r=8, alpha=16, target_modules=TARGETS))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def swap_per_request(model, idx, names):
    """Serve each request alone with its adapter merged into the weights, then unmerged."""
    out = []
    with torch.inference_mode():
        for i, name in enumerate(names):
            set_adapter(model, name)
            merge_lora(model)
            out.append(model(idx[i:i + 1])[0])
            unmerge_lora(model)
    set_adapter(model, "default")
    return torch.cat(out)


def serving(base, out: Path, repeats: int, n_requests: int = 24) -> list[dict]:
    """A mixed batch of n_requests (the three adapters in turn) in one forward pass, against merging each
    request's adapter, running it alone and unmerging; taking turns; plus how far apart their outputs are."""
    model = three_adapter_model(base)
    task = make_task("author")
    idx = task.prompts(task.val[:n_requests])
    names = [("default", "author", "sentence")[i % 3] for i in range(n_requests)]
    with torch.inference_mode():
        mixed = forward_with_adapters(model, idx, names)[0]
    swapped = swap_per_request(model, idx, names)
    seconds = interleaved_times({
        "mixed batch": lambda: torch.inference_mode()(forward_with_adapters)(model, idx, names),
        "merge per request": lambda: swap_per_request(model, idx, names),
    }, repeats=repeats)
    rows = [{"how": k, "requests": n_requests, "ms": 1000 * s, "ratio_to_mixed": s / seconds["mixed batch"],
             "max_abs_diff_logits": (mixed - swapped).abs().max().item()} for k, s in seconds.items()]
    write_csv(out / "lora_family_serving.csv", rows)
    return rows


def magnitude_direction(w0: torch.Tensor, w: torch.Tensor) -> tuple[float, float]:
    """DoRA's figure 2 measures for a weight (out, in): mean |m - m0| and mean 1 - cos over the output rows."""
    dm = (w.norm(dim=1) - w0.norm(dim=1)).abs().mean().item()
    dd = (1 - torch.nn.functional.cosine_similarity(w, w0, dim=1)).mean().item()
    return dm, dd


def effective_q_weights(model) -> dict[str, torch.Tensor]:
    """The weight each q_proj applies now: merged LoRA/DoRA, or the trained weight for full fine-tuning."""
    out = {}
    for i, block in enumerate(model.blocks):
        layer = block.attn.q_proj
        if hasattr(layer, "lora_A"):
            merge_lora_layer = copy.deepcopy(layer)
            merge_lora_layer.eval()
            merge_lora_layer.merge()
            out[f"layer {i}"] = merge_lora_layer.base_layer.weight.detach().clone()
        else:
            out[f"layer {i}"] = layer.weight.detach().clone()
    return out


def dora_figure(base, out: Path, steps: int, every: int, rates: dict) -> list[dict]:
    """Train full fine-tuning, LoRA and DoRA (on q_proj and v_proj) on Shakespeare and record how far each
    layer's q_proj weight has moved in magnitude and in direction every `every` steps (DoRA's figure 2)."""
    task = make_task("shakespeare")
    w0 = {f"layer {i}": b.attn.q_proj.weight.detach().clone() for i, b in enumerate(base.blocks)}
    rows = []
    for method in ("full", "LoRA", "DoRA"):
        seed_everything(SEED)
        model = copy.deepcopy(base).requires_grad_(True) if method == "full" else build_variant(method, base)

        def record(step, loss, history, model=model, method=method):
            if step % every == 0:
                for layer, w in effective_q_weights(model).items():
                    dm, dd = magnitude_direction(w0[layer], w)
                    rows.append({"method": method, "layer": layer, "step": step, "delta_m": dm, "delta_d": dd})

        train(model, task, steps=steps, lr=rates[method], batch_size=BATCH, seed=SEED, progress=False,
              callback=record)
    write_csv(out / "dora_magnitude_direction.csv", rows)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("grid", "summary", "timing", "dora", "all"), default="all")
    parser.add_argument("--tasks", nargs="+", default=["shakespeare", "author"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--lrs", nargs="+", type=float, default=list(GRID), help="the validation grid")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS), help="first seed: the grid's")
    parser.add_argument("--shard", default="", help="suffix of this process's grid file (parallel runs)")
    parser.add_argument("--quick", action="store_true", help="tiny budget into a temporary directory")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = load_base_model("cpu")
    steps, repeats, every = STEPS, 30, 10
    if args.quick:
        args.out = Path(tempfile.mkdtemp(prefix="lora_family_"))
        args.tasks, args.variants, steps, repeats, every = ["author"], ["LoRA", "DoRA", "LoRA+"], 3, 2, 1
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part in ("grid", "all"):
        lrs = GRID[:2] if args.quick else tuple(args.lrs)
        grid(base, args.tasks, args.variants, args.out, steps, lrs, tuple(args.seeds), shard=args.shard)
    if args.part in ("summary", "all"):
        for row in summary(args.out, base, tuple(args.seeds)):
            print(row)
    if args.part in ("timing", "all"):
        for row in timing(base, args.out, repeats) + serving(base, args.out, repeats):
            print(row)
    if args.part in ("dora", "all"):
        dora_figure(base, args.out, steps, every, DORA_FIGURE_RATES)
    print(f"written under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
