"""Graded exercises of notebook 08: LoRA from scratch."""

from __future__ import annotations

import math

import torch

from .core import (
    _first_match,
    check_choice,
    check_function,
)


def check_lora_parameter_count(fn) -> bool:
    """LoRA: lora_parameters(in_features, out_features, r) = trainable numbers of A (r, in) and B (out, r)."""
    def reference(in_features, out_features, r):
        return r * (in_features + out_features)

    def mistakes(case, got):
        i, o, r = case
        return _first_match(got, [
            (2 * r * i, "2·r·d is right only for square layers: A is (r, in_features) and B is (out_features, r)."),
            (2 * r * o, "2·r·d is right only for square layers: A is (r, in_features) and B is (out_features, r)."),
            (i * o, "that is the whole weight matrix; LoRA trains only A and B."),
            (r * i * o, "A and B are two thin matrices: r·in + out·r numbers, not a product of all three."),
            (r * (i + o) + o, "LoRA adds no bias: the base layer keeps its own, frozen.")])

    return check_function(
        fn, name="lora_parameters", arg_names=["in_features", "out_features", "r"],
        cases=[(128, 128, 8), (128, 512, 4), (512, 128, 1), (6, 10, 3)], reference=reference, diagnose=mistakes,
        hint="A has shape (r, in_features) and B has shape (out_features, r).",
        explanation="r·(in + out): 2,048 for a 128×128 projection at r = 8, against 16,384 numbers in its weight.")


def _lora_case(batch_shape, d_in, d_out, r, alpha, seed):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return (rand(*batch_shape, d_in), rand(d_out, d_in), rand(d_out), rand(r, d_in), rand(d_out, r), alpha, r)


def _lora_forward(x, weight, bias, lora_A, lora_B, alpha, r, scaling=None, with_bias=True):
    scaling = alpha / r if scaling is None else scaling
    base = x @ weight.T + (bias if with_bias else 0)  # (..., out)
    return base + scaling * (x @ lora_A.T @ lora_B.T)  # (..., in) -> (..., r) -> (..., out)


def _lora_forward_mistakes(case, got):
    x, weight, bias, lora_A, lora_B, alpha, r = case
    if isinstance(got, Exception):
        return ("mind the shapes: weight is (out, in) so the base is x @ weight.T; A is (r, in) so x @ A.T is "
                "(..., r); B is (out, r) so (x @ A.T) @ B.T is (..., out).") if "shape" in str(got) else None
    return _first_match(got, [
        (x @ weight.T + bias, "the LoRA branch is missing: add (alpha / r) · x Aᵀ Bᵀ."),
        (_lora_forward(*case, scaling=1.0), "the scaling alpha / r is missing."),
        (_lora_forward(*case, scaling=alpha), "you scaled by alpha instead of alpha / r: the update comes out r "
                                              "times too large (a known bug in several reimplementations)."),
        (_lora_forward(*case, scaling=r / alpha), "the scaling is upside down: alpha / r, not r / alpha."),
        (_lora_forward(*case, scaling=alpha / math.sqrt(r)), "alpha / sqrt(r) is rsLoRA's scaling; here use "
                                                             "the paper's alpha / r."),
        (_lora_forward(*case, with_bias=False), "the base layer's bias is missing."),
    ])


def check_lora_forward(fn) -> bool:
    """LoRA: lora_forward(x, weight, bias, lora_A, lora_B, alpha, r) = x Wᵀ + b + (alpha / r) x Aᵀ Bᵀ."""
    cases = [_lora_case((2, 3), 6, 4, 2, 4.0, 0), _lora_case((5,), 8, 8, 1, 1.0, 1), _lora_case((3,), 4, 10, 3, 6.0, 2)]
    return check_function(
        fn, name="lora_forward", arg_names=["x", "weight", "bias", "lora_A", "lora_B", "alpha", "r"], cases=cases,
        reference=_lora_forward, diagnose=_lora_forward_mistakes,
        hint="h = x @ weight.T + bias + (alpha / r) * (x @ lora_A.T @ lora_B.T); A is (r, in), B is (out, r).",
        explanation="h = W₀x + b + (alpha / r)·B A x, right on non-square layers too, where shape bugs hide.")


def _lora_merge_mistakes(case, got):
    weight, lora_A, lora_B, alpha, r = case
    return _first_match(got, [
        (weight + lora_B @ lora_A, "the scaling alpha / r is missing."),
        (weight + alpha * lora_B @ lora_A, "you scaled by alpha instead of alpha / r."),
        (weight - alpha / r * lora_B @ lora_A, "merging adds the update; subtracting it is unmerging."),
        (weight, "that is the unchanged weight: add (alpha / r) · B @ A."),
    ]) or ("B @ A has the weight's shape (out, in); A @ B or the transposes do not."
           if isinstance(got, torch.Tensor) and got.shape != weight.shape else None)


def check_lora_merge(fn) -> bool:
    """LoRA: lora_merge(weight, lora_A, lora_B, alpha, r) -> a new tensor W + (alpha / r) B A, shape (out, in)."""
    def reference(weight, lora_A, lora_B, alpha, r):
        return weight + (alpha / r) * (lora_B @ lora_A)  # (out, r) @ (r, in) -> (out, in)

    cases = []
    for d_in, d_out, r, alpha, seed in [(6, 4, 2, 4.0, 3), (5, 5, 1, 2.0, 4), (3, 7, 2, 1.0, 5)]:
        _x, weight, _bias, lora_A, lora_B, alpha, r = _lora_case((1,), d_in, d_out, r, alpha, seed)
        cases.append((weight, lora_A, lora_B, alpha, r))
    return check_function(
        fn, name="lora_merge", arg_names=["weight", "lora_A", "lora_B", "alpha", "r"], cases=cases,
        reference=reference, diagnose=_lora_merge_mistakes,
        hint="the merged weight is weight + (alpha / r) * (lora_B @ lora_A): (out, r) @ (r, in) = (out, in).",
        explanation="W + (alpha / r)·B A: one matrix again, so the merged layer costs no extra time at inference.")


# for notebook 08 (its "More to think about" question on changing r): kept in this section on purpose
def check_alpha_when_rank_grows(answer) -> bool:
    """08: r = 8 -> 32 at fixed alpha = 8: how the first update's size changes, read from the measured table."""
    return check_choice(
        answer, "c", name="rank_32_update",
        wrong={"a": "the table says otherwise: 0.0098 at r = 32 against 0.0187 at r = 8. On this measurement "
                    "alpha / r removes the growth with r and then some.",
               "b": "the factor alpha / r does fall 4 times, but the unscaled update grows with r (0.0187 at r = 8, "
                    "0.0393 at r = 32), so the net change is about a half, not a quarter.",
               "d": "that is the unscaled column (alpha = r: 0.0187 -> 0.0393). With alpha fixed at 8 the factor "
                    "falls 4 times and more than cancels that growth."},
        explanation="0.0098 against 0.0187: the unscaled update grows about like sqrt(r) here and alpha / r "
                    "divides by r, so raising r at fixed alpha quietly lowers the effective learning rate. Doubling "
                    "alpha to 16 would bring it back near the r = 8 size (0.5 × 0.0393); rsLoRA's alpha / sqrt(r) "
                    "kept it nearly flat (0.0528 at r = 8, 0.0556 at r = 32).")
