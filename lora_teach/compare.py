"""Every method on the same base, tasks, step budget and seeds, measured the same way.

`benchmarks/compare_methods.py` runs the full comparison and writes CSV files; notebook 10 runs a reduced one
live and reads the committed results. Each method is built by one function here from the package's own
modules, trained with `lora_teach.training.train`, and measured with `lora_teach.measure`.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .adapters import adapter_state_dict, add_adapters
from .data import LanguageModelingTask, author_task, sentence_task
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

METHODS = ("full", "adapters", "prefix", "prompt", "p-tuning", "lora")
TASKS = ("shakespeare", "author", "sentence")
LM_BLOCK = 96  # LM windows leave room for 20 virtual tokens inside the 128 positions

# learning rates per method: the best of a small grid on this base (pilot runs; see notebooks 02-09)
LEARNING_RATES = {"full": 1e-3, "adapters": 3e-3, "prefix": 3e-3, "prompt": 3e-2, "p-tuning": 1e-2, "lora": 3e-3}
SETTINGS = {
    "adapters": "Houlsby, bottleneck 16, layer norms trained",
    "prefix": "10 key/value slots per layer, MLP reparameterisation (hidden 256)",
    "prompt": "20 soft tokens, vocabulary init",
    "p-tuning": "20 virtual tokens (15 before the text, 5 after), LSTM encoder",
    "lora": "r=8, alpha=16, on q_proj and v_proj",
    "full": "every weight",
}


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
    if method == "lora":
        return apply_lora(model, LoRAConfig(r=8, alpha=16, target_modules=("q_proj", "v_proj")))
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def task_checkpoint(method: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What must be stored per task: the whole model for full fine-tuning, only the new tensors otherwise."""
    if method == "full":
        return model.state_dict()
    if method == "adapters":
        return adapter_state_dict(model)
    if method == "prefix":
        return model.export_prefix()
    if method in ("prompt", "p-tuning"):
        return model.get_prompt_embedding_to_save()
    if method == "lora":
        return lora_state_dict(model)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def for_inference(method: str, model: torch.nn.Module) -> torch.nn.Module:
    """The model as it would be served: LoRA merged, the prefix MLP and P-tuning encoder dropped."""
    if method == "lora":
        return merge_lora(model)
    if method == "prefix":
        return model.freeze_prefix()
    if method == "p-tuning":
        return model.drop_encoder()
    return model


def quality(task, model) -> dict[str, float]:
    metrics = task.evaluate(model)
    if "accuracy" in metrics:
        return {"quality": metrics["accuracy"], "label_loss": metrics["label_loss"]}
    return {"quality": metrics["loss"]}


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

    steps: dict = field(default_factory=lambda: {"shakespeare": 150, "author": 150, "sentence": 150})
    batch_size: int = 16
    seeds: tuple = (SEED, SEED + 1, SEED + 2)


QUICK = Budget(steps={"author": 20}, seeds=(SEED,))


def run_one(method: str, task_name: str, base: torch.nn.Module, seed: int, steps: int, batch_size: int,
            austen=None, progress: bool = False) -> dict:
    """Train `method` on `task_name` from `base` and return one row of measurements."""
    task = make_task(task_name)
    seed_everything(seed)
    model = build(method, base, task)
    trainable, total = count_parameters(model)
    memory = training_memory(model)
    batch = task.train_batch(batch_size, torch.Generator().manual_seed(seed))
    row = {"method": method, "task": task_name, "seed": seed, "steps": steps, "trainable": trainable,
           "total": total, "trainable_pct": 100 * trainable / total, "weights_bytes": memory["weights"],
           "gradient_bytes": memory["gradients"], "optimizer_bytes": memory["optimizer"],
           "activation_bytes": activation_memory(model, batch)}
    hist = train(model, task, steps=steps, lr=LEARNING_RATES[method], batch_size=batch_size, seed=seed,
                 progress=progress)
    row["wall_s"] = hist.seconds
    row["train_loss_end"] = statistics.mean(hist.loss[-10:])
    row.update(quality(task, model))
    if austen is not None:
        row["austen_loss"] = austen.evaluate(model)["loss"]
    row["checkpoint_bytes"] = checkpoint_size(task_checkpoint(method, model))
    row["step_ms"] = 1000 * step_time(model, batch, steps=5, warmup=2)
    return row


def run_comparison(base: torch.nn.Module, budget: Budget = QUICK, methods=METHODS, progress: bool = False,
                   log=None) -> list[dict]:
    """One row per (method, task, seed); `log(row)` is called after each run."""
    austen = LanguageModelingTask("austen", block_size=LM_BLOCK) if "shakespeare" in budget.steps else None
    rows = []
    for task_name, steps in budget.steps.items():
        for method in methods:
            for seed in budget.seeds:
                row = run_one(method, task_name, base, seed, steps, budget.batch_size,
                              austen if task_name == "shakespeare" else None, progress)
                rows.append(row)
                if log:
                    log(row)
    return rows


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


def summarise(rows: list[dict], keys=("quality", "trainable", "checkpoint_bytes", "step_ms", "activation_bytes",
                                      "austen_loss", "train_loss_end")) -> list[dict]:
    """Mean and standard deviation over seeds for each (method, task)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["task"]), []).append(row)
    out = []
    for (method, task), group in groups.items():
        summary = {"method": method, "task": task, "seeds": len(group)}
        for key in keys:
            values = [r[key] for r in group if key in r and r[key] is not None]
            if values:
                summary[key] = statistics.mean(values)
                summary[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(summary)
    return out


def small_data_curves(base: torch.nn.Module, methods=("full", "lora"), n_train: int = 8, steps: int = 150,
                      eval_every: int = 10, seeds=(SEED,), batch_size: int = 16) -> list[dict]:
    """Training and validation curves on the author task with `n_train` passages per author: does a method
    overfit? One row per (method, seed, evaluation step)."""
    task = author_task(n_train=n_train)
    rows = []
    for method in methods:
        for seed in seeds:
            seed_everything(seed)
            model = build(method, base, task)
            hist = train(model, task, steps=steps, lr=LEARNING_RATES[method], batch_size=batch_size, seed=seed,
                         eval_every=eval_every, progress=False)
            for step, metrics in hist.evals:
                window = hist.loss[max(0, step - eval_every):step]
                rows.append({"method": method, "seed": seed, "step": step,
                             "train_loss": statistics.mean(window), "val_label_loss": metrics["label_loss"],
                             "val_accuracy": metrics["accuracy"]})
    return rows
