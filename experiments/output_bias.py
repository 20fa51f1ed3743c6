"""A trainable bias on the output, the yardstick notebook 05 holds soft prompts against.

    python experiments/output_bias.py            # Shakespeare and the author task, rate chosen on validation, 5 seeds
    python experiments/output_bias.py --quick    # one rate, one seed, 20 steps (a smoke run)
    python experiments/output_bias.py --dialogue # the dialogue probe of notebook 05 (dialogue_probe.csv)

`lora_teach.prompt_tuning.OutputBias` adds one trainable vector (97 numbers) to the frozen base's logits. It is
trained exactly as the comparison trains every method (`lora_teach.compare`: 100 steps of batch 16, AdamW, the
same seeds, hence the same batches as the comparison's runs of each seed): the rate with the best mean validation
metric over the first two seeds among RATES, then the test metric at that rate over five seeds. Writes
`lora_teach/results/output_bias_runs.csv` (one row per task, rate and seed). About 15 s a run on one core;
2 tasks x (3 rates x 2 seeds + 3 more seeds) = 18 runs, about 5 minutes.

--dialogue: is there anything for a soft prompt to elicit in text the base already models? Prompt tuning and
LoRA on all linear layers, each at the rate the grid chose for it on Shakespeare (the other language-modelling
task), trained on the quoted speech of Austen's novels (`lora_teach.data.dialogue`; training half only) and
measured on held-out dialogue, three seeds: `lora_teach/results/dialogue_probe.csv` (about 2 minutes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from lora_teach import load_base_model
from lora_teach.compare import BATCH_SIZE, LM_BLOCK, STEPS, chosen_rates, make_task, quality
from lora_teach.data import LanguageModelingTask, dialogue
from lora_teach.methods import get_method
from lora_teach.prompt_tuning import OutputBias
from lora_teach.results import RESULTS, write_csv
from lora_teach.training import SEED, seed_everything, train

RATES = (0.03, 0.1, 0.3)
TASKS = ("shakespeare", "author")
SEEDS = tuple(SEED + i for i in range(5))


def run(base, task_name: str, lr: float, seed: int, steps: int = STEPS) -> dict:
    task = make_task(task_name)
    seed_everything(seed)
    model = OutputBias(base)
    train(model, task, steps=steps, lr=lr, batch_size=BATCH_SIZE, seed=seed, progress=False)
    return {"task": task_name, "lr": lr, "seed": seed, "steps": steps,
            "quality_val": quality(task, model, "val")["quality"],
            "quality_test": quality(task, model, "test")["quality"]}


def dialogue_probe(base, seeds=SEEDS[:3], steps: int = STEPS) -> list[dict]:
    """Prompt tuning and LoRA (all linear layers) on Austen's dialogue: the base's loss and each run's, on test."""
    task = LanguageModelingTask("austen", block_size=LM_BLOCK, select=dialogue, name="lm-austen-dialogue")
    rates = chosen_rates()
    base_loss = task.evaluate(base, split="test")["loss"]
    rows = [{"method": "base", "seed": "", "lr": "", "test_loss": base_loss}]
    for method in ("prompt", "lora-all"):
        for seed in seeds:
            seed_everything(seed)
            model = get_method(method).build(base, task)
            train(model, task, steps=steps, lr=rates[(method, "shakespeare")], batch_size=BATCH_SIZE, seed=seed,
                  progress=False)
            rows.append({"method": method, "seed": seed, "lr": rates[(method, "shakespeare")],
                         "test_loss": task.evaluate(model, split="test")["loss"]})
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one rate, one seed, 20 steps")
    ap.add_argument("--dialogue", action="store_true", help="the dialogue probe instead (dialogue_probe.csv)")
    ap.add_argument("--out", type=Path, help="default: lora_teach/results/output_bias_runs.csv or dialogue_probe.csv")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    base = load_base_model("cpu")
    if args.dialogue:
        rows = dialogue_probe(base)
        write_csv(args.out or RESULTS / "dialogue_probe.csv", rows)
        return rows
    args.out = args.out or RESULTS / "output_bias_runs.csv"
    rows, t0 = [], time.perf_counter()
    for task in TASKS:
        if args.quick:
            rows.append(run(base, task, RATES[1], SEED, steps=20))
            continue
        grid = [run(base, task, lr, seed) for lr in RATES for seed in SEEDS[:2]]
        better = max if task != "shakespeare" else min  # accuracy up, loss down
        chosen = better(RATES, key=lambda lr: statistics.mean(r["quality_val"] for r in grid if r["lr"] == lr))
        rows += [r for r in grid if r["lr"] == chosen]
        rows += [run(base, task, chosen, seed) for seed in SEEDS[2:]]
        print(f"[{time.perf_counter() - t0:5.0f} s] {task}: rate {chosen}", file=sys.stderr, flush=True)
    write_csv(args.out, rows)
    return rows


if __name__ == "__main__":
    main()
