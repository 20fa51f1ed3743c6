"""Every method on the same base, tasks, step budget and seeds, tuned the same way and measured the same way.

Each method comes from the registry (`lora_teach.methods.METHODS`), is trained with `lora_teach.training.train`
and measured with `lora_teach.measure`. The protocol, whose scripts are in experiments/:
1. `experiments/lr_grid.py` trains every method on every task at each rate of `LR_GRID` with the `GRID_SEEDS`
   and writes `lora_teach/results/lr_grid.csv` (validation and test metrics of every run);
2. `choose_rates` picks each (method, task)'s rate on validation only;
3. `experiments/compare_methods.py` reports that rate's test metrics over the five `REPORT_SEEDS`
   (`comparison_runs.csv`, `comparison_summary.csv`). Notebook 10 reads both files.
Here: the protocol's constants, one measured run (`run_one`) and a comparison made of them (`run_comparison`),
what reads the results (`chosen_rates`, `summarise`, `paired`), and what notebook 05 uses to ask why soft
prompts fail in this model (`build_placement`, `linear_probe`).
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import ClassificationTask, LanguageModelingTask, author_task, sentence_task
from .measure import activation_memory, checkpoint_size, count_parameters, step_time, training_memory
from .methods import METHODS, get_method
from .p_tuning import PTuning, classification_template
from .prompt_tuning import PromptTuning
from .results import RESULTS, read_csv
from .stats import PairedComparison, paired_comparison
from .training import SEED, seed_everything, train

COURSE_METHODS = ("full", "adapters", "prefix", "prompt", "p-tuning", "lora")  # one per notebook, 02 to 09
GRID_METHODS = tuple(METHODS)  # and LoRA on every linear layer of the blocks ("lora-all")
TASKS = ("shakespeare", "author", "sentence")
LM_BLOCK = 96  # LM windows leave room for 20 virtual tokens inside the 128 positions
STEPS, BATCH_SIZE = 100, 16  # every run of the grid and of the comparison
# The second budget, to see whether the ranking holds: three times the steps, the first 10 % a linear warmup to the
# chosen rate (then constant, as in the grid), the same rates, seeds and batch size (`compare_methods.py --longer`).
LONGER_STEPS, LONGER_WARMUP = 300, 30

# Four rates per method, each spanning 30x around the range the method is usually trained with.
LR_GRID = {
    "full": (1e-4, 3e-4, 1e-3, 3e-3),
    "adapters": (1e-3, 3e-3, 1e-2, 3e-2),
    "prefix": (1e-3, 3e-3, 1e-2, 3e-2),
    "prompt": (1e-2, 3e-2, 1e-1, 3e-1),
    "p-tuning": (1e-3, 3e-3, 1e-2, 3e-2),
    "lora": (1e-3, 3e-3, 1e-2, 3e-2),
    "lora-all": (1e-3, 3e-3, 1e-2, 3e-2),
}
GRID_SEEDS = (SEED, SEED + 1)  # the rate is chosen on validation, averaged over these
REPORT_SEEDS = tuple(SEED + i for i in range(5))  # test figures at the chosen rate (the grid's seeds among them)


def make_task(name: str):
    """The comparison's version of a task: LM windows of LM_BLOCK characters, classification as shipped."""
    if name == "shakespeare":
        return LanguageModelingTask("shakespeare", block_size=LM_BLOCK)
    if name == "author":
        return author_task()
    if name == "sentence":
        return sentence_task()
    raise ValueError(f"unknown task {name!r}; choose one of {TASKS}")


def austen_task() -> LanguageModelingTask:
    """Held-out Austen in the comparison's windows: the base model's own domain, for measuring forgetting."""
    return LanguageModelingTask("austen", block_size=LM_BLOCK)


def quality(task, model, split: str = "val") -> dict[str, float]:
    """The task's metric on `split`: accuracy and label loss for classification, loss for language modelling."""
    metrics = task.evaluate(model, split=split)
    if isinstance(task, ClassificationTask):
        return {"quality": metrics["accuracy"], "label_loss": metrics["label_loss"]}
    return {"quality": metrics["loss"]}


def higher_is_better(task_name: str) -> bool:
    """Accuracy (classification) is better high; loss (language modelling) is better low."""
    return task_name != "shakespeare"


def served_forward(model: torch.nn.Module, idx: torch.Tensor) -> Callable[[], None]:
    """A function that runs one forward pass of `model` on `idx` as the model is served: eval mode and inference
    mode, so no autograd graph is recorded, whichever parameters still require a gradient. For timing."""
    model.eval()

    def forward() -> None:
        with torch.inference_mode():
            model(idx)

    return forward


# ---------------------------------------------------------------------------------------------- the runs
@dataclass
class Budget:
    """How much each run gets: steps and batch size per task, and the seeds to repeat over."""

    steps: dict = field(default_factory=lambda: dict.fromkeys(TASKS, STEPS))
    batch_size: int = BATCH_SIZE
    seeds: tuple = REPORT_SEEDS


QUICK = Budget(steps={"author": 20}, seeds=(SEED,))


RUN_FIELDS = ("method", "task", "lr", "seed", "steps", "batch_size", "trainable", "total", "trainable_pct",
              "weights_bytes", "gradient_bytes", "optimizer_bytes", "activation_bytes", "checkpoint_bytes",
              "quality_val", "label_loss_val", "austen_loss_val", "quality_test", "label_loss_test",
              "austen_loss_test", "train_loss_end", "wall_s")  # the columns of a run's row (lr_grid.csv)


def run_one(method: str, task_name: str, base: torch.nn.Module, seed: int, steps: int, batch_size: int,
            lr: float, austen=None, progress: bool = False, time_step: bool = True, warmup: int = 0) -> dict:
    """Train `method` on `task_name` from `base` at learning rate `lr` (after `warmup` steps of linear warmup);
    return one row of measurements, the task's metric on both held-out splits (`quality_val`, `quality_test`),
    and for Shakespeare runs, when `austen` is given, the loss on held-out Austen afterwards (forgetting:
    `austen_loss_val`, `_test`)."""
    spec = get_method(method)
    task = make_task(task_name)
    seed_everything(seed)
    model = spec.build(base, task)
    trainable, total = count_parameters(model)
    memory = training_memory(model)
    batch = task.train_batch(batch_size, torch.Generator().manual_seed(seed))
    row = {"method": method, "task": task_name, "lr": lr, "seed": seed, "steps": steps, "batch_size": batch_size,
           "trainable": trainable, "total": total, "trainable_pct": 100 * trainable / total,
           "weights_bytes": memory["weights"], "gradient_bytes": memory["gradients"],
           "optimizer_bytes": memory["optimizer"], "activation_bytes": activation_memory(model, batch)}
    hist = train(model, task, steps=steps, lr=lr, batch_size=batch_size, seed=seed, progress=progress,
                 warmup=warmup)
    row["wall_s"] = hist.seconds
    row["train_loss_end"] = statistics.mean(hist.loss[-10:])
    for split in ("val", "test"):
        row.update({f"{k}_{split}": v for k, v in quality(task, model, split).items()})
        if austen is not None:
            row[f"austen_loss_{split}"] = austen.evaluate(model, split=split)["loss"]
    row["checkpoint_bytes"] = checkpoint_size(spec.trainable_state(model))
    if time_step:  # taken during a long run on a shared machine: for orientation, not for reporting
        row["step_ms"] = 1000 * step_time(model, batch, steps=5, warmup=2)
    return row


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n): a process runs every n-th run of a list, starting at run i (0 <= i < n)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like 0/2 (this shard / number of shards), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


def run_key(row: dict) -> tuple[str, str, float, int, int]:
    """What identifies a run: (method, task, lr, seed, steps)."""
    return row["method"], row["task"], float(row["lr"]), int(row["seed"]), int(row["steps"])


def as_reported(row: dict) -> dict:
    """A run's row as the comparison reports it: `quality` and `austen_loss` are the test-split figures."""
    out = dict(row)
    out["quality"] = float(row["quality_test"])
    if row.get("austen_loss_test") not in (None, ""):
        out["austen_loss"] = float(row["austen_loss_test"])
    return out


def run_comparison(base: torch.nn.Module, budget: Budget = QUICK, methods=COURSE_METHODS, rates=None,
                   progress: bool = False, log=None, done=None, time_step: bool = True) -> list[dict]:
    """One row per (method, task, seed), trained at `rates[(method, task)]` (default: the rates chosen from the
    committed grid) and reported on test (`as_reported`). `done` maps `run_key`s to finished rows of the same
    runs, which are reused instead of training again; `log(row)` is called after each run."""
    rates = rates or chosen_rates()
    done = done or {}
    austen = austen_task() if "shakespeare" in budget.steps else None
    rows = []
    for task_name, steps in budget.steps.items():
        for method in methods:
            lr = rates[(method, task_name)]
            for seed in budget.seeds:
                row = done.get((method, task_name, float(lr), int(seed), int(steps)))
                if row is None or int(row.get("batch_size", budget.batch_size)) != budget.batch_size:
                    row = run_one(method, task_name, base, seed, steps, budget.batch_size, lr,
                                  austen if task_name == "shakespeare" else None, progress, time_step)
                rows.append(as_reported(row))
                if log:
                    log(rows[-1])
    return rows


# ------------------------------------------------------------------------------------ reading the results
def choose_rates(grid_rows: list[dict]) -> dict[tuple[str, str], float]:
    """{(method, task): lr} with the best mean validation metric over seeds: the highest accuracy (ties go to the
    lower validation label loss) or the lowest language-modelling loss. The test columns are never read."""
    groups: dict[tuple, list[dict]] = {}
    for row in grid_rows:
        groups.setdefault((row["method"], row["task"], float(row["lr"])), []).append(row)
    best: dict[tuple[str, str], tuple] = {}
    for (method, task, lr), rows in groups.items():
        mean = statistics.mean(float(r["quality_val"]) for r in rows)
        if higher_is_better(task):
            key = (-mean, statistics.mean(float(r["label_loss_val"]) for r in rows))
        else:
            key = (mean, 0.0)
        if (method, task) not in best or key < best[(method, task)][0]:
            best[(method, task)] = (key, lr)
    return {k: lr for k, (_, lr) in best.items()}


def grid_rates(steps: int) -> dict[str, tuple[float, ...]]:
    """The rates of the grid run at `steps` steps: LR_GRID for the real grid, its first two rates for the
    reduced grid (`experiments/lr_grid.py --quick`, a few steps)."""
    return LR_GRID if steps == STEPS else {m: rates[:2] for m, rates in LR_GRID.items()}


def complete_blocks(grid_rows: list[dict]) -> set[tuple[str, str]]:
    """The (method, task) pairs for which the grid has every rate of its grid (`grid_rates`) with every seed of
    GRID_SEEDS."""
    found: dict[tuple[str, str], set] = {}
    steps: dict[tuple[str, str], int] = {}
    for r in grid_rows:
        found.setdefault((r["method"], r["task"]), set()).add((float(r["lr"]), int(r["seed"])))
        steps[(r["method"], r["task"])] = int(r.get("steps") or STEPS)
    return {k for k, runs in found.items() if k[0] in LR_GRID
            and {(lr, s) for lr in grid_rates(steps[k])[k[0]] for s in GRID_SEEDS} <= runs}


def chosen_rates(path: str | Path | None = None) -> dict[tuple[str, str], float]:
    """The rates chosen on validation from the committed grid (`lora_teach/results/lr_grid.csv`), for every
    (method, task) whose grid is complete (a rate is never chosen from part of a grid)."""
    path = Path(path) if path else RESULTS / "lr_grid.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python experiments/lr_grid.py` first")
    rows = read_csv(path)
    complete = complete_blocks(rows)
    return {k: lr for k, lr in choose_rates(rows).items() if k in complete}


def summarise(rows: list[dict], keys=("quality", "quality_val", "label_loss_test", "trainable", "checkpoint_bytes",
                                      "activation_bytes", "austen_loss", "train_loss_end", "step_ms")) -> list[dict]:
    """Mean and standard deviation over seeds for each (method, task), with the rate and the number of seeds."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["task"]), []).append(row)
    out = []
    for (method, task), group in groups.items():
        summary = {"method": method, "task": task, "seeds": len(group)}
        if "lr" in group[0]:
            summary["lr"] = float(group[0]["lr"])
        for key in keys:
            values = [float(r[key]) for r in group if r.get(key) not in (None, "")]
            if values:
                summary[key] = statistics.mean(values)
                summary[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(summary)
    return out


def paired(rows: list[dict], method: str, other: str, task: str, key: str = "quality") -> PairedComparison:
    """`method` against `other` on `task`, paired by seed (runs with the same seed share their batches): the mean
    difference in `key` with its 95 % t interval and verdict (`lora_teach.stats.paired_comparison`), signed so
    that "better" always means better (a lower loss on Shakespeare, a higher accuracy on the others)."""
    sign = 1.0 if higher_is_better(task) else -1.0

    def by_seed(m: str) -> dict[int, float]:
        return {int(float(r["seed"])): sign * float(r[key]) for r in rows if (r["method"], r["task"]) == (m, task)}

    a, b = by_seed(method), by_seed(other)
    if not a or not b:
        raise ValueError(f"no runs of {method if not a else other!r} on {task!r} in the rows given")
    if set(a) != set(b):
        raise ValueError(f"{method} and {other} on {task} ran different seeds ({sorted(a)} and {sorted(b)}); "
                         "a paired comparison needs the same seeds on both sides")
    seeds = sorted(a)
    return paired_comparison([a[s] for s in seeds], [b[s] for s in seeds])


# --------------------------------------------------------------------------- why soft prompts fail here
PLACEMENTS = ("before", "after")  # virtual tokens in front of the passage, or between the passage and " => "


def build_placement(placement: str, base: torch.nn.Module, task: ClassificationTask,
                    num_virtual_tokens: int = 20) -> torch.nn.Module:
    """`num_virtual_tokens` free virtual tokens (vocabulary init, no encoder) on a deep copy of `base`: in front
    of the passage (prompt tuning) or right after it, before the separator (a P-tuning template without encoder)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; choose one of {PLACEMENTS}")
    model = copy.deepcopy(base)
    if placement == "before":
        return PromptTuning(model, num_virtual_tokens, init="vocab")
    return PTuning(model, classification_template(task, before=0, between=num_virtual_tokens)[1:], encoder="none")


@torch.no_grad()
def last_hidden_states(base: torch.nn.Module, task: ClassificationTask, examples) -> torch.Tensor:
    """(N, d): the frozen model's final hidden state (after the last layer norm) at the prompt's last position,
    the one whose output chooses the label."""
    captured = []
    handle = base.ln_f.register_forward_hook(lambda module, args, out: captured.append(out[:, -1]))
    try:
        was_training = base.training
        base.eval()
        for i in range(0, len(examples), 150):
            base(task.prompts(examples[i:i + 150]).to(next(base.parameters()).device))
        base.train(was_training)
    finally:
        handle.remove()
    return torch.cat(captured)


def linear_probe(base: torch.nn.Module, task: ClassificationTask, steps: int = 300, lr: float = 0.1,
                 weight_decay: float = 1e-3, seed: int = SEED) -> dict[str, float]:
    """Train a linear classifier (d -> classes) on the frozen model's last hidden states of the training split;
    return its accuracy on the training and test splits. The model itself is not changed."""
    gen = torch.Generator().manual_seed(seed)
    feats = {s: last_hidden_states(base, task, getattr(task, s)).cpu() for s in ("train", "test")}
    gold = {s: torch.tensor([task.labels.index(ex.label) for ex in getattr(task, s)]) for s in feats}
    mean, std = feats["train"].mean(0), feats["train"].std(0) + 1e-6  # standardise on train only
    probe = torch.nn.Linear(feats["train"].shape[1], len(task.labels))
    with torch.no_grad():
        probe.weight.copy_(0.01 * torch.randn(probe.weight.shape, generator=gen))
        probe.bias.zero_()
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(probe((feats["train"] - mean) / std), gold["train"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return {s: (probe((feats[s] - mean) / std).argmax(1) == gold[s]).float().mean().item() for s in feats}
