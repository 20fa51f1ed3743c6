"""Graded exercises of notebook 00: Start here."""

from __future__ import annotations

import torch

from .core import _base_parameters, _first_match, check_function, check_number, right_answer

__all__ = ["check_weights_megabytes", "check_linear_by_hand"]


@right_answer(lambda: 4 * _base_parameters() / 1e6)
def check_weights_megabytes(answer) -> bool:
    """00: megabytes (10^6 bytes) of the base model's weights in fp32."""
    n = _base_parameters()
    expected = check_weights_megabytes.right_answer()
    return check_number(
        answer, expected, name="weights_mb", rel_tol=0.02,
        hint="how many numbers does the model hold (printed above), and how many bytes does one fp32 number "
             "take? Mind the unit: a MB here is 10^6 bytes.",
        explanation=f"{n:,} parameters × 4 bytes = {4 * n:,} bytes ≈ {expected:.2f} MB, "
                    "the size of the weights file the package ships.",
        mistakes=[(n / 1e6, "that is one byte per parameter; an fp32 number takes 4 bytes."),
                  (2 * n / 1e6, "that is 2 bytes per parameter, the size in fp16; the weights are fp32."),
                  (8 * n / 1e6, "that is 8 bytes per parameter, the size in fp64; the weights are fp32."),
                  (4 * n / 2**20, "that is in MiB (2^20 bytes); this exercise asks for MB (10^6 bytes)."),
                  (4 * n, "that is in bytes; divide by 10^6 for MB.")])


def linear_by_hand(x, weight, bias):
    """What nn.Linear computes for x, from its stored weight and bias."""
    return x @ weight.T + bias  # weight is (out, in): its transpose maps the last axis of x


@right_answer(lambda: linear_by_hand, fresh_inputs=True)
def check_linear_by_hand(fn) -> bool:
    """00: linear_by_hand(x, weight, bias) computes what nn.Linear computes, from the weight it stores (out, in)."""
    g = torch.Generator().manual_seed(0)  # a private stream: the learner's random numbers are left alone
    cases = []
    for shape, d_in, d_out in [((5, 3), 3, 4), ((2, 6, 8), 8, 3), ((1, 2, 7), 7, 7)]:
        cases.append((torch.randn(*shape, generator=g), torch.randn(d_out, d_in, generator=g),
                      torch.randn(d_out, generator=g)))

    def reference(x, weight, bias):
        return torch.nn.functional.linear(x, weight, bias)

    def mistakes(case, got):
        x, weight, bias = case
        if isinstance(got, RuntimeError):  # the shapes did not fit: most often x @ weight
            return ("`weight` is stored (out_features, in_features) and `x` has in_features on its last axis: "
                    "the product needs the weight's in_features axis to meet that last axis. Which operation "
                    "swaps the weight's two axes? It works for any number of axes in front of x's last.")
        if isinstance(got, Exception):
            return None
        return _first_match(got, [(x @ weight.T, "the bias is missing: nn.Linear adds `bias` after the product."),
                                  (x @ weight.T - bias, "the bias is added, not subtracted.")])

    return check_function(
        fn, name="linear_by_hand", arg_names=["x", "weight", "bias"], cases=cases, reference=reference,
        diagnose=mistakes,
        hint="compare `weight.shape` with `x.shape`: which axis of the weight has to meet the last axis of x in a "
             "matrix product? nn.Linear also adds its bias.",
        explanation="x @ weight.T + bias: the weight is stored (out, in), so its transpose maps the last axis of x "
                    "(in_features) to out_features, whatever the axes in front (batch, time). LoRA's A (r, in) and "
                    "B (out, r) are stored the same way, which is why notebook 08 writes its update x @ A.T @ B.T.")
