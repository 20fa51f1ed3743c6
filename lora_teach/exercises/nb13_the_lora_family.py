"""Graded exercises of notebook 13: the LoRA family."""

from __future__ import annotations

import torch

from .core import _first_match, check_choice, check_function, right_answer

__all__ = ["check_dora_trainable", "check_optimizer_only_variant", "check_mixed_from_single"]


def dora_trainable(in_features, out_features, r):
    """Trainable numbers of DoRA on one (out_features, in_features) linear layer."""
    return r * (in_features + out_features) + out_features  # A, B and one magnitude per output feature


def _dora_trainable_mistakes(case, got):
    i, o, r = case
    lora = r * (i + o)
    return _first_match(got, [
        (lora, "that is plain LoRA's A and B; DoRA also trains the magnitude vector m."),
        (lora + i, "one magnitude per INPUT feature: PEFT and lora_teach keep one per output feature (a norm over "
                   "each row of the (out, in) weight), so m has out_features entries."),
        (lora + i * o, "m is a vector, one number per output feature, not one per weight."),
        (2 * r * i + o, "2·r·in is right only for square layers: A is (r, in_features) and B is (out_features, r)."),
        (lora + r, "the magnitude vector has one entry per output feature, not one per rank."),
        (i * o + o, "that is the whole weight plus m: DoRA trains only A, B and m; W0 stays frozen."),
    ])


@right_answer(lambda: dora_trainable)
def check_dora_trainable(fn) -> bool:
    """13: dora_trainable(in_features, out_features, r) = trainable numbers DoRA adds to one linear layer."""
    cases = [(6, 10, 2),  # small and non-square: each common mistake gives a different number
             (128, 128, 8),  # our q_proj
             (128, 512, 8),  # our up_proj
             (4096, 4096, 16)]  # a 7B model's attention projection
    return check_function(
        fn, name="dora_trainable", arg_names=["in_features", "out_features", "r"], cases=cases,
        reference=dora_trainable, diagnose=_dora_trainable_mistakes,
        hint="start from what LoRA trains on this layer, then add what DoRA trains on top of it: its magnitude "
             "vector. How long is it?",
        explanation="r·(in + out) + out. For our q_proj at r = 8 that is 2,048 + 128 = 2,176: the magnitude adds "
                    "128 numbers, 6 % on top of LoRA's. At a 7B model's 4096 × 4096 projection with r = 16 it adds "
                    "4,096 to 131,072, about 3 %: DoRA's cost is not in parameters but in the per-step norm.")


@right_answer(lambda: "d")
def check_optimizer_only_variant(answer) -> bool:
    """13: which variant leaves the model (forward, parameters, initialisation) exactly as LoRA's."""
    return check_choice(
        answer, check_optimizer_only_variant.right_answer(), name="optimizer_only_variant",
        wrong={"a": "rsLoRA changes the forward pass: the constant in front of B A is α / √r instead of α / r.",
               "b": "DoRA changes the forward pass and adds a trainable magnitude vector per layer.",
               "c": "PiSSA changes the initialisation: A and B start from the top singular vectors and the base "
                    "weight keeps only the residual."},
        explanation="LoRA+ keeps LoRA's layer, parameters and initialisation; only the optimizer's parameter groups "
                    "differ (B at ratio × the learning rate of A). That is why the benchmark times it with "
                    "LoRA's step: the arithmetic per step is the same.")


def mixed_from_single(outputs, names):
    """The mixed batch's logits (B, T, V) from whole-batch single-adapter runs."""
    return torch.stack([outputs[name][i] for i, name in enumerate(names)])


def _mixed_mistakes(case, got):
    outputs, names = case
    return _first_match(got, [
        (outputs[names[0]], "every row came from the first row's adapter; row i must come from names[i]."),
        (torch.stack([outputs[name][0] for name in names]), "you took row 0 of each run; take row i from the run "
                                                            "of names[i]."),
        (sum(outputs.values()) / len(outputs), "averaging the adapters mixes them inside every row; each row uses "
                                               "one adapter only."),
        (sum(outputs.values()), "summing the runs adds every adapter to every row; each row uses one only."),
    ])


def _mixed_cases():
    gen = torch.Generator().manual_seed(13)
    cases = []
    for names in (["author", "__base__", "sentence", "author"], ["sentence", "sentence", "shakespeare"]):
        keys = ["__base__", "author", "sentence", "shakespeare"]
        outputs = {k: torch.randn(len(names), 5, 7, generator=gen) for k in keys}
        cases.append((outputs, names))
    return cases


@right_answer(lambda: mixed_from_single, fresh_inputs=True)
def check_mixed_from_single(fn) -> bool:
    """13: mixed_from_single(outputs, names) -> the mixed batch's logits from whole-batch single-adapter runs."""
    return check_function(
        fn, name="mixed_from_single", arg_names=["outputs", "names"], cases=_mixed_cases(),
        reference=mixed_from_single, diagnose=_mixed_mistakes,
        hint="row i of the mixed batch used adapter names[i] only, and rows never interact: which single-adapter "
             "run computed that same row? Put the rows together along the batch axis.",
        explanation="Each layer adds to row i only the update of adapter names[i], and rows never interact in a "
                    "linear layer, so the mixed batch is the single-adapter runs, row by row. That is what the "
                    "exactness cell measured, and why a server can batch requests for different adapters.")
