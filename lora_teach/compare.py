"""Every method on the same base, tasks, step budget and seeds, tuned the same way and measured the same way.

Each method is built by one function here from the package's own modules, trained with
`lora_teach.training.train`, and measured with `lora_teach.measure`. The protocol:
1. `scripts/lr_grid.py` trains every method on every task at each rate of `LR_GRID` with the `GRID_SEEDS`
   and writes `lora_teach/results/lr_grid.csv` (validation and test metrics of every run);
2. `choose_rates` picks each (method, task)'s rate on validation only;
3. `benchmarks/compare_methods.py` reports that rate's test metrics over the three `REPORT_SEEDS`
   (`comparison_runs.csv`, `comparison_summary.csv`). Notebook 10 reads both files.
"""

from __future__ import annotations

import copy
import csv
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .adapters import adapter_state_dict, add_adapters
from .data import ClassificationTask, LanguageModelingTask, author_task, sentence_task
from .lora import LoRAConfig, apply_lora, lora_state_dict, merge_lora
from .measure import (
    activation_memory,
    checkpoint_size,
    count_parameters,
    interleaved_times,
    step_time,
    training_memory,
    training_step,
)
from .p_tuning import PTuning, classification_template
from .prefix import PrefixTuning
from .prompt_tuning import PromptTuning
from .training import SEED, seed_everything, train

METHODS = ("full", "adapters", "prefix", "prompt", "p-tuning", "lora")  # the six methods of notebooks 02-09
GRID_METHODS = METHODS + ("lora-all",)  # LoRA twice: q and v (the paper), every linear layer of the blocks
TASKS = ("shakespeare", "author", "sentence")
LM_BLOCK = 96  # LM windows leave room for 20 virtual tokens inside the 128 positions
RESULTS = Path(__file__).resolve().parent / "results"  # shipped with the package: Colab has it too

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")
LORA_TARGETS = {"lora": ("q_proj", "v_proj"), "lora-all": ALL_LINEAR}
LORA_R, LORA_ALPHA = 8, 16  # the same r and alpha for both LoRA settings (so lora-all trains more parameters)
STEPS, BATCH_SIZE = 100, 16  # every run of the grid and of the comparison

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
REPORT_SEEDS = (SEED, SEED + 1, SEED + 2)  # test figures at the chosen rate
SETTINGS = {
    "full": "every weight",
    "adapters": "Houlsby, bottleneck 16, layer norms trained",
    "prefix": "10 key/value slots per layer, MLP reparameterisation (hidden 256)",
    "prompt": "20 soft tokens in front of the input, vocabulary init",
    "p-tuning": "20 virtual tokens (15 before the text, 5 after it), LSTM encoder",
    "lora": f"r={LORA_R}, alpha={LORA_ALPHA}, on q_proj and v_proj",
    "lora-all": f"r={LORA_R}, alpha={LORA_ALPHA}, on {', '.join(ALL_LINEAR)}",
}


def _check_method(method: str, allowed=GRID_METHODS) -> None:
    if method not in allowed:
        raise ValueError(f"unknown method {method!r}; choose one of {allowed}")


def make_task(name: str):
    """The comparison's version of a task: LM windows of LM_BLOCK characters, classification as shipped."""
    if name == "shakespeare":
        return LanguageModelingTask("shakespeare", block_size=LM_BLOCK)
    if name == "author":
        return author_task()
    if name == "sentence":
        return sentence_task()
    raise ValueError(f"unknown task {name!r}; choose one of {TASKS}")


def build(method: str, base: torch.nn.Module, task) -> torch.nn.Module:
    """A fresh trainable model for `method`, made from a deep copy of `base` (which is left untouched)."""
    _check_method(method)
    model = copy.deepcopy(base)
    if method == "full":
        return model.requires_grad_(True)
    if method == "adapters":
        return add_adapters(model, bottleneck=16, placement="houlsby")
    if method == "prefix":
        return PrefixTuning(model, prefix_len=10, reparam=True, hidden=256)
    if method == "prompt":
        return PromptTuning(model, n_tokens=20, init="vocab")
    if method == "p-tuning":
        if isinstance(task, LanguageModelingTask):
            template = [(0, 20)]
        else:
            template = classification_template(task, before=15, between=5)
        return PTuning(model, template, encoder="lstm")
    return apply_lora(model, LoRAConfig(r=LORA_R, alpha=LORA_ALPHA, target_modules=LORA_TARGETS[method]))


def task_checkpoint(method: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What must be stored per task: the whole model for full fine-tuning, only the new tensors otherwise."""
    _check_method(method)
    if method == "full":
        return model.state_dict()
    if method == "adapters":
        return adapter_state_dict(model)
    if method == "prefix":
        return model.export_prefix()
    if method in ("prompt", "p-tuning"):
        return model.get_prompt_embedding_to_save()
    return lora_state_dict(model)


def for_inference(method: str, model: torch.nn.Module) -> torch.nn.Module:
    """The model as it would be served: LoRA merged, the prefix MLP and P-tuning encoder dropped."""
    _check_method(method)
    if method in LORA_TARGETS:
        return merge_lora(model)
    if method == "prefix":
        return model.freeze_prefix()
    if method == "p-tuning":
        return model.drop_encoder()
    return model


@torch.no_grad()
def classification_metrics(task: ClassificationTask, model: torch.nn.Module, split: str = "val",
                           batch_size: int = 150) -> dict[str, float]:
    """`task.evaluate(model, split)` in one forward pass per batch instead of two: the logits that predict the
    label's first character (position prompt_len - 1 of the encoded sequence) give the prediction, and the
    same pass gives the loss on the label word. Also the decision loss: the cross-entropy of the choice between
    the labels' first characters at that position (chance: ln of the number of labels), what accuracy reads."""
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    examples = task.val if split == "val" else task.test
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    first_ids = task.first_ids.to(dev)
    correct, label_loss, decision_loss, label_chars = 0, 0.0, 0.0, 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        x, y, mask = (t.to(dev) for t in task.encode(chunk))
        logits, _ = model(x)  # (B, T, vocab)
        at = task.prompt_len - 1  # the position whose output predicts the label's first character
        gold = torch.tensor([task.labels.index(ex.label) for ex in chunk], device=dev)
        scores = logits[:, at, first_ids]  # (B, n_labels)
        correct += (scores.argmax(dim=-1) == gold).sum().item()
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # (B, T)
        label_loss += losses[mask].sum().item()
        label_chars += mask.sum().item()
        decision_loss += torch.nn.functional.cross_entropy(scores, gold, reduction="sum").item()
    model.train(was_training)
    n = len(examples)
    return {"accuracy": correct / n, "label_loss": label_loss / label_chars, "decision_loss": decision_loss / n}


def quality(task, model, split: str = "val") -> dict[str, float]:
    """The task's metric on `split`: accuracy and label loss for classification, loss for language modelling."""
    if isinstance(task, ClassificationTask):
        metrics = classification_metrics(task, model, split)
        return {"quality": metrics["accuracy"], "label_loss": metrics["label_loss"]}
    return {"quality": task.evaluate(model, split=split)["loss"]}


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
            lr: float, austen=None, progress: bool = False, time_step: bool = True) -> dict:
    """Train `method` on `task_name` from `base` at learning rate `lr`; return one row of measurements, the
    task's metric on both held-out splits (`quality_val`, `quality_test`), and for Shakespeare runs, when
    `austen` is given, the loss on held-out Austen afterwards (forgetting: `austen_loss_val`, `_test`)."""
    _check_method(method)
    task = make_task(task_name)
    seed_everything(seed)
    model = build(method, base, task)
    trainable, total = count_parameters(model)
    memory = training_memory(model)
    batch = task.train_batch(batch_size, torch.Generator().manual_seed(seed))
    row = {"method": method, "task": task_name, "lr": lr, "seed": seed, "steps": steps, "batch_size": batch_size,
           "trainable": trainable, "total": total, "trainable_pct": 100 * trainable / total,
           "weights_bytes": memory["weights"], "gradient_bytes": memory["gradients"],
           "optimizer_bytes": memory["optimizer"], "activation_bytes": activation_memory(model, batch)}
    hist = train(model, task, steps=steps, lr=lr, batch_size=batch_size, seed=seed, progress=progress)
    row["wall_s"] = hist.seconds
    row["train_loss_end"] = statistics.mean(hist.loss[-10:])
    for split in ("val", "test"):
        row.update({f"{k}_{split}": v for k, v in quality(task, model, split).items()})
        if austen is not None:
            row[f"austen_loss_{split}"] = austen.evaluate(model, split=split)["loss"]
    row["checkpoint_bytes"] = checkpoint_size(task_checkpoint(method, model))
    if time_step:  # taken during a long run on a shared machine: for orientation, not for reporting
        row["step_ms"] = 1000 * step_time(model, batch, steps=5, warmup=2)
    return row


def austen_task() -> LanguageModelingTask:
    """Held-out Austen in the comparison's windows: the base model's own domain, for measuring forgetting."""
    return LanguageModelingTask("austen", block_size=LM_BLOCK)


def grid_runs(methods=GRID_METHODS, tasks=TASKS, seeds=GRID_SEEDS, grid=None) -> list[tuple[str, str, float, int]]:
    """Every (method, task, lr, seed) of the learning-rate grid, in the order they are run."""
    grid = grid or LR_GRID
    for method in methods:
        _check_method(method)
    return [(m, t, lr, s) for t in tasks for m in methods for lr in grid[m] for s in seeds]


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


def read_csv(path: str | Path) -> list[dict]:
    """The rows of a results CSV as dictionaries of strings."""
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n): this process runs every n-th run of the list, starting at run i (0 <= i < n)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like 0/2 (this shard / number of shards), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


def grid_rates(steps: int) -> dict[str, tuple[float, ...]]:
    """The rates of the grid run at `steps` steps: LR_GRID for the real grid, its first two rates for the
    reduced grid (`scripts/lr_grid.py --quick`, a few steps)."""
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
        raise FileNotFoundError(f"{path} is missing: run `python scripts/lr_grid.py` first")
    rows = read_csv(path)
    complete = complete_blocks(rows)
    return {k: lr for k, lr in choose_rates(rows).items() if k in complete}


def as_reported(row: dict) -> dict:
    """A run's row as the comparison reports it: `quality` and `austen_loss` are the test-split figures."""
    out = dict(row)
    out["quality"] = float(row["quality_test"])
    if row.get("austen_loss_test") not in (None, ""):
        out["austen_loss"] = float(row["austen_loss_test"])
    return out


def run_comparison(base: torch.nn.Module, budget: Budget = QUICK, methods=METHODS, rates=None,
                   progress: bool = False, log=None, done=None, time_step: bool = True) -> list[dict]:
    """One row per (method, task, seed), trained at `rates[(method, task)]` (default: the rates chosen from the
    committed grid) and reported on test (`as_reported`). `done` maps (method, task, lr, seed, steps) to a
    finished row of the same run (from the grid, or an interrupted comparison), which is reused instead of
    training again; `log(row)` is called after each run."""
    rates = rates or chosen_rates()
    done = done or {}
    austen = austen_task() if "shakespeare" in budget.steps else None
    rows = []
    for task_name, steps in budget.steps.items():
        for method in methods:
            lr = rates[(method, task_name)]
            for seed in budget.seeds:
                key = (method, task_name, float(lr), int(seed), int(steps))
                row = done.get(key)
                if row is None or int(row.get("batch_size", budget.batch_size)) != budget.batch_size:
                    row = run_one(method, task_name, base, seed, steps, budget.batch_size, lr,
                                  austen if task_name == "shakespeare" else None, progress, time_step)
                rows.append(as_reported(row))
                if log:
                    log(rows[-1])
    return rows


def run_key(row: dict) -> tuple[str, str, float, int, int]:
    """What identifies a run: (method, task, lr, seed, steps)."""
    return row["method"], row["task"], float(row["lr"]), int(row["seed"]), int(row["steps"])


def differs(a: list[float], b: list[float], k: float = 2.0) -> bool:
    """True when the means of `a` and `b` differ by more than `k` standard errors of their difference
    (sqrt(s_a^2 / n_a + s_b^2 / n_b), s the sample standard deviation over seeds)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least two seeds on each side to estimate the spread, got {len(a)} and {len(b)}")
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return abs(statistics.mean(a) - statistics.mean(b)) > k * se


def inference_latency(base: torch.nn.Module, batch_size: int = 64, repeats: int = 40) -> list[dict]:
    """Forward latency on author-task prompts for the base and each method as served (untrained is enough:
    latency does not depend on the values of the weights). The models take turns, one forward pass at a time
    (`measure.interleaved_times`), so that a slow moment of the machine falls on all of them alike."""
    task = author_task()
    device = next(base.parameters()).device
    idx = task.prompts(task.val[:batch_size]).to(device)
    models = {"base": base}
    for method in METHODS[1:]:
        models[method + (" (merged)" if method == "lora" else "")] = for_inference(method, build(method, base, task))
    models["lora (unmerged)"] = build("lora", base, task)
    seconds = interleaved_times({name: served_forward(model, idx) for name, model in models.items()},
                                repeats=repeats, device=device)
    return [{"model": name, "ms": 1000 * s, "ratio_to_base": s / seconds["base"]} for name, s in seconds.items()]


def training_step_times(base: torch.nn.Module, tasks=("shakespeare", "author"), methods=METHODS,
                        batch_size: int = 16, repeats: int = 30) -> list[dict]:
    """Training-step time of each method on each task, the methods taking turns one step at a time
    (`measure.interleaved_times`; the step times taken during the comparison's training runs do not have that
    protection against a busy machine). One row per (method, task)."""
    rows = []
    for task_name in tasks:
        task = make_task(task_name)
        batch = task.train_batch(batch_size, torch.Generator().manual_seed(SEED))
        steps = {m: training_step(build(m, base, task), batch) for m in methods}
        seconds = interleaved_times(steps, repeats=repeats, device=next(base.parameters()).device)
        rows += [{"method": m, "task": task_name, "batch": f"{batch_size} x {batch[0].shape[1]}",
                  "step_ms": 1000 * s} for m, s in seconds.items()]
    return rows


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


def small_data_curves(base: torch.nn.Module, rates: dict[str, float], methods=("full", "lora"), n_train: int = 8,
                      steps: int = 150, eval_every: int = 10, seeds=(SEED,), batch_size: int = 16) -> list[dict]:
    """Training and validation curves on the author task with `n_train` passages per author, each method at
    `rates[method]`: does a method overfit? One row per (method, seed, evaluation step)."""
    task = author_task(n_train=n_train)
    rows = []
    for method in methods:
        for seed in seeds:
            seed_everything(seed)
            model = build(method, base, task)
            hist = train(model, task, steps=steps, lr=rates[method], batch_size=batch_size, seed=seed,
                         eval_every=eval_every, progress=False)
            for step, metrics in hist.evals:
                window = hist.loss[max(0, step - eval_every):step]
                rows.append({"method": method, "seed": seed, "step": step,
                             "train_loss": statistics.mean(window), "val_label_loss": metrics["label_loss"],
                             "val_accuracy": metrics["accuracy"]})
    return rows


# --------------------------------------------------------------------------- why soft prompts fail here
PLACEMENTS = ("before", "after")  # virtual tokens in front of the passage, or between the passage and " => "
LOSSES = ("label", "decision")  # the loss on the whole label word, or on its first character only


def build_placement(placement: str, base: torch.nn.Module, task: ClassificationTask,
                    n_tokens: int = 20) -> torch.nn.Module:
    """`n_tokens` free virtual tokens (vocabulary init, no encoder) on a deep copy of `base`: in front of the
    passage (prompt tuning) or right after it, before the separator (a P-tuning template without encoder)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; choose one of {PLACEMENTS}")
    model = copy.deepcopy(base)
    if placement == "before":
        return PromptTuning(model, n_tokens=n_tokens, init="vocab")
    return PTuning(model, classification_template(task, before=0, between=n_tokens)[1:], encoder="none")


class DecisionOnly:
    """A classification task whose training batches put the loss on the label's first character only (the one
    that decides between the classes); evaluation is the task's own, on `split`, with the decision loss."""

    def __init__(self, task: ClassificationTask, loss: str = "decision", split: str = "test"):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        self.task, self.loss, self.split = task, loss, split

    def train_batch(self, batch_size: int, generator: torch.Generator | None = None):
        x, y, mask = self.task.train_batch(batch_size, generator)
        if self.loss == "decision":
            first = torch.zeros_like(mask)
            first[:, self.task.prompt_len - 1] = True  # the position that predicts the first label character
            mask = mask & first
        return x, y, mask

    def evaluate(self, model: torch.nn.Module) -> dict:
        return classification_metrics(self.task, model, self.split)


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

