"""One training loop for every method, built on one training step (`train_step`, which `lora_teach.measure`
times too), and the course's single place for seeds."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from numbers import Real

import numpy as np
import torch
from tqdm.auto import tqdm

SEED = 1337  # the course's one seed
GRAD_CLIP = 1.0  # the gradient norm every training step clips to


def seed_everything(seed: int = SEED) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch.Generator seeded the same way, for batch sampling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class History:
    """What `train` records: the loss at each step, evaluations along the way, and timing."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    evals: list[tuple[int, dict]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ms_per_step(self) -> float:
        return 1000 * self.seconds / max(len(self.steps), 1)

    def eval_series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one evaluation metric, for plotting."""
        return [s for s, _ in self.evals], [m[key] for _, m in self.evals]


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def lr_at(step: int, steps: int, lr: float, warmup: int, schedule: str) -> float:
    """Learning rate at `step`: linear warmup, then constant or cosine decay to lr/10."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = (step - warmup) / max(steps - warmup, 1)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch, grad_clip: float | None = GRAD_CLIP
               ) -> torch.Tensor:
    """One update of the parameters `opt` holds: forward on `batch` = (x, y, loss_mask), backward, clip the
    gradient norm to `grad_clip` (None or 0: no clipping), optimizer step. Returns the loss, detached."""
    x, y, mask = batch
    _, loss = model(x, y, loss_mask=mask)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_([p for group in opt.param_groups for p in group["params"]], grad_clip)
    opt.step()
    return loss.detach()


def _check_groups(param_groups) -> list[dict]:
    """Optimizer groups as train takes them: a non-empty list of dicts, each with a non-empty "params" list."""
    ok = isinstance(param_groups, (list, tuple)) and param_groups and all(
        isinstance(g, dict) and isinstance(g.get("params"), (list, tuple)) for g in param_groups)
    if not ok:
        raise ValueError("param_groups must be a non-empty list of dicts like {'params': [...], 'lr': 1e-3}, as "
                         f"torch.optim takes them; got {param_groups!r:.80}")
    frozen = sum(not p.requires_grad for g in param_groups for p in g["params"])
    if frozen:
        raise ValueError(f"param_groups holds {frozen} tensors with requires_grad=False: they would never train")
    return [dict(g, params=list(g["params"])) for g in param_groups]


def train(model: torch.nn.Module, task, *, steps: int, lr: float, batch_size: int = 32, weight_decay: float = 0.0,
          warmup: int = 0, schedule: str = "constant", grad_clip: float | None = GRAD_CLIP, seed: int = SEED,
          eval_every: int | None = None, eval_task=None, eval_at_start: bool = False, progress: bool = True,
          callback=None, param_groups: list[dict] | None = None) -> History:
    """Train the parameters of `model` that require grad with AdamW on `task.train_batch` batches.

    `param_groups` (optional) are optimizer groups as torch.optim takes them, each with its own "lr" (LoRA+:
    `lora_teach.lora_variants.loraplus_param_groups`); the schedule then scales every group's rate alike, and
    `lr` is the rate of a group that gives none.
    `model(x, y, loss_mask=mask)` must return (logits, loss). Every `eval_every` steps (and at the end)
    `eval_task.evaluate(model)` (default: `task`) is recorded. With `eval_at_start=True` it is also recorded
    before the first step, as step 0 (and then at the end even without `eval_every`), so a curve starts from
    the untrained model; it changes nothing else about the run. `callback(step, loss, history)` runs after
    each step, e.g. for a live plot. Returns the History."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not isinstance(lr, Real) or isinstance(lr, bool) or not lr > 0:
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if grad_clip is not None and (not isinstance(grad_clip, Real) or isinstance(grad_clip, bool) or grad_clip < 0):
        raise ValueError(f"grad_clip must be None or 0 (no clipping) or a number > 0, got {grad_clip!r}")
    if not isinstance(eval_at_start, bool):
        raise ValueError(f"eval_at_start must be True or False, got {eval_at_start!r}")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    if param_groups is None:
        params = trainable_parameters(model)
        groups = [{"params": params}]
    else:
        groups = _check_groups(param_groups)
        params = [p for g in groups for p in g["params"]]
    if not params:
        raise ValueError("the model has no trainable parameters (none has requires_grad=True)")
    eval_task = eval_task or task
    hist = History()
    if eval_at_start:  # before seeding, so that the run is the same with or without it
        hist.evals.append((0, eval_task.evaluate(model)))
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks
    device = params[0].device
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    base_rates = [group["lr"] for group in opt.param_groups]
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(steps), disable=not progress, desc="training", leave=False)
    for step in bar:
        for group, base_rate in zip(opt.param_groups, base_rates, strict=True):  # one schedule for every group
            group["lr"] = lr_at(step, steps, base_rate, warmup, schedule)
        batch = tuple(t.to(device) for t in task.train_batch(batch_size, generator))
        loss = train_step(model, opt, batch, grad_clip)
        hist.steps.append(step + 1)
        hist.loss.append(loss.item())
        bar.set_postfix(loss=f"{hist.loss[-1]:.3f}")
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            hist.evals.append((step + 1, eval_task.evaluate(model)))
            model.train()
        if callback is not None:
            callback(step + 1, hist.loss[-1], hist)
    hist.seconds = time.perf_counter() - start
    if eval_every or eval_at_start:
        hist.evals.append((steps, eval_task.evaluate(model)))
    model.eval()
    return hist


def evaluate(model: torch.nn.Module, *tasks, **kwargs) -> dict:
    """{task.name: task.evaluate(model)} for each task."""
    return {task.name: task.evaluate(model, **kwargs) for task in tasks}
