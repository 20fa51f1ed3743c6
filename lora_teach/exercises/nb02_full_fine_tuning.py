"""Graded exercises of notebook 02: Full fine-tuning."""

from __future__ import annotations

import torch

from .core import (
    _failed,
    _first_match,
    check_choice,
    check_function,
    check_number,
    right_answer,
)

__all__ = ["check_adamw_memory_gb", "check_training_bytes", "check_halved_batch", "check_less_forgetting"]


@right_answer(lambda: 125e6 * 16 / 1e9)  # 4 bytes for the weight, 4 for its gradient, 8 for Adam's moments
def check_adamw_memory_gb(answer) -> bool:
    """02: GB (10^9 bytes) of weights + gradients + AdamW state for 125 M parameters in fp32."""
    n = 125e6
    return check_number(
        answer, check_adamw_memory_gb.right_answer(), name="adamw_gb", rel_tol=0.01,
        hint="list what training with AdamW keeps for every parameter (the weight itself, what backward adds, what "
             "the optimizer remembers between steps) and the bytes each takes in fp32.",
        explanation="125e6 × 16 bytes = 2.0 GB before activations: 4 for the weight, 4 for its gradient, 8 for "
                    "Adam's two moments.",
        mistakes=[(4 * n / 1e9, "that counts only the weights; the gradients and Adam's two moments come on top."),
                  (8 * n / 1e9, "that counts the weights and gradients; Adam keeps two more numbers per parameter."),
                  (12 * n / 1e9, "AdamW keeps two moments per parameter (a mean and a mean of squares), not one."),
                  (16 * n / 2**30, "that is in GiB (2^30 bytes); this exercise asks for GB (10^9 bytes)."),
                  (16 * n, "that is in bytes; divide by 10^9 for GB.")])


def _small_models() -> list[tuple[torch.nn.Module]]:
    """Three small GPTs: all trainable, only the output head trainable, blocks frozen (as PEFT methods do)."""
    from ..model import GPT, GPTConfig

    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=32)
    with torch.random.fork_rng(devices=[]):  # a check must not move the notebook's random stream
        full, head_only, blocks_frozen = GPT(cfg), GPT(cfg), GPT(cfg)
    head_only.requires_grad_(False).lm_head.requires_grad_(True)
    blocks_frozen.blocks.requires_grad_(False)
    return [(full,), (head_only,), (blocks_frozen,)]


def _memory_reference(model) -> int:
    from ..measure import training_memory

    return training_memory(model)["total"]


def _memory_mistakes(case, got):
    (model,) = case
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return _first_match(got, [
        (16 * total, "you counted a gradient and Adam's moments for frozen parameters too; only parameters with "
                     "requires_grad=True get them."),
        (16 * trainable, "the frozen weights still sit in memory: count 4 bytes for every parameter, trainable "
                         "or not."),
        (total + 3 * trainable, "that counts numbers, not bytes: multiply by 4 (fp32)."),
        (4 * total + 4 * trainable, "you left out Adam's two moments (8 bytes per trainable parameter)."),
        (4 * total + 8 * trainable, "the gradients are missing (4 bytes per trainable parameter)."),
    ])


def training_bytes(model):
    """Bytes of fp32 weights (every parameter) plus gradients and two AdamW moments (trainable ones only)."""
    every = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 4 * every + (4 + 8) * trainable


@right_answer(lambda: training_bytes)
def check_training_bytes(fn) -> bool:
    """02: training_bytes(model) = bytes of weights (all) + gradients and AdamW moments (trainable only), fp32."""
    name = "training_bytes"
    hint = ("which of those numbers does a frozen parameter still need in memory, and which only a parameter "
            "that trains (p.requires_grad)? Count the two groups separately.")
    models = _small_models() if callable(fn) else []
    flags = [[p.requires_grad for p in m.parameters()] for (m,) in models]
    ok = check_function(
        fn, name=name, arg_names=["model"], cases=models, reference=_memory_reference, diagnose=_memory_mistakes,
        hint=hint,
        explanation="4 bytes per parameter for the weights, plus 12 per trainable one (gradient and two moments). "
                    "Freeze most of the model and the 12 bytes vanish for those parameters: the first saving "
                    "of parameter-efficient fine-tuning.")
    if ok and any([p.requires_grad for p in m.parameters()] != f for (m,), f in zip(models, flags, strict=True)):
        return _failed(f"{name} changed which parameters require grad.", "only read p.requires_grad; do not set it.")
    return ok


@right_answer(lambda: "b")
def check_halved_batch(answer) -> bool:
    """02: what happens to the four lines of the memory table when the batch is halved?"""
    return check_choice(
        answer, check_halved_batch.right_answer(), name="halved_batch",
        wrong={"a": "weights, gradients and Adam's moments exist once per parameter, whatever the batch size.",
               "c": "the activations are saved for every position of every example in the batch: they grow with "
                    "batch × sequence length.",
               "d": "a gradient holds one number per parameter whatever the batch; fewer examples change its "
                    "values, not its size."},
        explanation="Try it: `activation_memory(model, shakespeare.train_batch(8, torch.Generator()))` gives "
                    "about half the activation line above, while the other lines depend only on the parameters.")


@right_answer(lambda: "c")
def check_less_forgetting(answer) -> bool:
    """02: which change to the Shakespeare run would keep the Austen loss lowest?"""
    return check_choice(
        answer, check_less_forgetting.right_answer(), name="less_forgetting",
        wrong={"a": "more steps of the same objective keep moving the weights the way that made the Austen loss "
                    "climb; nothing in it pulls them back.",
               "b": "evaluating only measures: `train` records the numbers and changes no weight (the losses of the "
                    "run are the same with or without evaluations).",
               "d": "a larger batch averages the gradient over more Shakespeare windows, but it is still only "
                    "Shakespeare's loss that the weights follow."},
        explanation="Austen windows in the batches put Austen's loss into the objective, so every step has to keep "
                    "serving both texts. This is rehearsal (also called replay), a standard remedy for catastrophic "
                    "forgetting. The later notebooks measure how much each parameter-efficient method forgets.")
