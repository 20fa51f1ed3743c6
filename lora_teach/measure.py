"""Measurements every method reports: parameters, training memory, activation memory, step time, file size."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from safetensors.torch import save_file

from .training import train_step


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tensor shared by two modules is counted once."""
    params = list(model.parameters())  # .parameters() already skips repeats
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def print_trainable_parameters(model: torch.nn.Module) -> str:
    """Print (and return) the trainable share, in the format PEFT's print_trainable_parameters uses."""
    trainable, total = count_parameters(model)
    line = f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"
    print(line)
    return line


OPTIMIZER_STATES = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}


def training_memory(model: torch.nn.Module, optimizer: str = "adamw") -> dict[str, int]:
    """Bytes of weights (all parameters), gradients and optimizer state (trainable ones only).

    Adam keeps two moments per trainable parameter, so full fine-tuning in fp32 costs 4 + 4 + 8 = 16 bytes a
    parameter before activations."""
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZER_STATES)}, got {optimizer!r}")
    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    grads = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    states = OPTIMIZER_STATES[optimizer] * grads
    return {"weights": weights, "gradients": grads, "optimizer": states, "total": weights + grads + states}


def activation_memory(model: torch.nn.Module, batch) -> int:
    """Bytes of tensors autograd saves for the backward pass of one training step on `batch`.

    Counted with saved-tensor hooks; parameters (already counted as weights) and storages seen twice are
    skipped. `batch` is (x, y, loss_mask) as a task's train_batch returns it."""
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_storages:
            seen[ptr] = storage.nbytes()
        return t

    dev = next(model.parameters()).device
    x, y, mask = (t.to(dev) for t in batch)
    was_training = model.training
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(x, y, loss_mask=mask)
    model.train(was_training)
    del loss
    return sum(seen.values())


def training_step(model: torch.nn.Module, batch, *, lr: float = 1e-3) -> Callable[[], None]:
    """A function that runs one training step of `model` on `batch`, the very step `train` takes
    (`lora_teach.training.train_step`: forward, backward, gradient clipping, AdamW update).

    It really updates the trainable parameters, so time a throwaway model."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters to time a training step with")
    opt = torch.optim.AdamW(params, lr=lr)
    batch = tuple(t.to(params[0].device) for t in batch)

    def step() -> None:
        model.train()
        train_step(model, opt, batch)

    return step


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _check_counts(**counts) -> None:
    for name, (value, least) in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")


def step_time(model: torch.nn.Module, batch, *, steps: int = 10, warmup: int = 3, lr: float = 1e-3) -> float:
    """Median seconds of one training step (`training_step`: forward, backward, clipping, AdamW update) on `batch`.

    Works on a copy of nothing: it really updates the trainable parameters, so time a throwaway model."""
    _check_counts(steps=(steps, 1), warmup=(warmup, 0))
    step = training_step(model, batch, lr=lr)
    device = next(p for p in model.parameters() if p.requires_grad).device
    times = [_timed(step, device) for _ in range(warmup + steps)][warmup:]
    model.eval()
    return statistics.median(times)


def interleaved_times(runs: dict[str, Callable[[], object]], *, repeats: int = 50, warmup: int = 3,
                      device: torch.device | str = "cpu") -> dict[str, float]:
    """Median seconds of each function in `runs`, timed one call at a time in turn (a, b, c, b, c, a, ...: the
    order rotates), so that a slow moment of a shared machine falls on all of them alike. Use it to compare
    models: a ratio of these medians is far steadier than a ratio of two separate timings."""
    _check_counts(repeats=(repeats, 1), warmup=(warmup, 0))
    if not runs or not all(callable(f) for f in runs.values()):
        raise ValueError("runs must be a non-empty dict of name -> function taking no arguments")
    device = torch.device(device)
    names = list(runs)
    for name in names:
        for _ in range(warmup):
            runs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(_timed(runs[name], device))
    return {name: statistics.median(t) for name, t in times.items()}


def checkpoint_size(tensors: dict[str, torch.Tensor] | torch.nn.Module) -> int:
    """Bytes on disk of `tensors` (or a module's state dict) written as one safetensors file."""
    if isinstance(tensors, torch.nn.Module):
        tensors = tensors.state_dict()
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise TypeError(f"checkpoint_size takes a dict of tensors or an nn.Module, got {type(tensors).__name__}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "checkpoint.safetensors")
        save_file(tensors, path)
        return os.path.getsize(path)
