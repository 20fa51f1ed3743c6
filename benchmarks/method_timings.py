"""Time every method as notebook 10 reports it: a training step, and a forward pass as the model is served.

    python benchmarks/method_timings.py            # Shakespeare and author batches, 40 turns (about a minute)
    python benchmarks/method_timings.py --quick    # author batches only, 3 turns (as in the tests)

The models take turns, one step or one forward pass at a time (`lora_teach.measure.interleaved_times`), so that a
slow moment of a shared machine falls on all of them alike; each figure is a median. Untrained models are enough:
time does not depend on the values of the weights. Writes, under --out (default lora_teach/results/):
    inference_latency.csv     forward latency on 64 author-task prompts of the base and of each method as served
    training_step_times.csv   training-step time of each method on each task, batch 16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from lora_teach import load_base_model
from lora_teach.compare import COURSE_METHODS, make_task, served_forward
from lora_teach.data import author_task
from lora_teach.measure import interleaved_times, training_step
from lora_teach.methods import METHODS
from lora_teach.results import RESULTS, write_csv
from lora_teach.training import SEED


def inference_latency(base: torch.nn.Module, batch_size: int = 64, repeats: int = 40) -> list[dict]:
    """Forward latency on author-task prompts for the base and each method as served, and for LoRA unmerged.
    One row per model: milliseconds and the ratio to the base."""
    task = author_task()
    device = next(base.parameters()).device
    idx = task.prompts(task.val[:batch_size]).to(device)
    models = {"base": base}
    for name in COURSE_METHODS[1:]:
        method = METHODS[name]
        models[name + (" (merged)" if name == "lora" else "")] = method.for_inference(method.build(base, task))
    models["lora (unmerged)"] = METHODS["lora"].build(base, task)
    seconds = interleaved_times({name: served_forward(model, idx) for name, model in models.items()},
                                repeats=repeats, device=device)
    return [{"model": name, "ms": 1000 * s, "ratio_to_base": s / seconds["base"]} for name, s in seconds.items()]


def training_step_times(base: torch.nn.Module, tasks=("shakespeare", "author"), batch_size: int = 16,
                        repeats: int = 40) -> list[dict]:
    """Training-step time of each method on each task, the methods taking turns one step at a time.
    One row per (method, task)."""
    rows = []
    for task_name in tasks:
        task = make_task(task_name)
        batch = task.train_batch(batch_size, torch.Generator().manual_seed(SEED))
        steps = {name: training_step(METHODS[name].build(base, task), batch) for name in COURSE_METHODS}
        seconds = interleaved_times(steps, repeats=repeats, device=next(base.parameters()).device)
        rows += [{"method": m, "task": task_name, "batch": f"{batch_size} x {batch[0].shape[1]}",
                  "step_ms": 1000 * s} for m, s in seconds.items()]
    return rows


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="author batches only, 3 turns: the reduced run of the tests")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be a positive int, got {args.threads}")
        torch.set_num_threads(args.threads)
    tasks, repeats = (("author",), 3) if args.quick else (("shakespeare", "author"), 40)
    out.mkdir(parents=True, exist_ok=True)
    base = load_base_model(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    write_csv(out / "inference_latency.csv", inference_latency(base, repeats=repeats))
    write_csv(out / "training_step_times.csv", training_step_times(base, tasks=tasks, repeats=repeats))
    print(f"wrote the timings into {out} in {time.perf_counter() - t0:.0f} s")
    return out


if __name__ == "__main__":
    main()
