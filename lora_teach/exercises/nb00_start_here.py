"""Graded exercises of notebook 00: Start here."""

from __future__ import annotations

import numbers

import torch

from .core import (
    _base_parameters,
    _describe,
    _failed,
    _missing,
    _passed,
    check_number,
)


def check_weights_megabytes(answer) -> bool:
    """00: megabytes (10^6 bytes) of the base model's weights in fp32."""
    n = _base_parameters()
    expected = 4 * n / 1e6
    return check_number(
        answer, expected, name="weights_mb", rel_tol=0.02,
        hint="parameters × bytes per parameter, then divide by 10^6; an fp32 number takes 4 bytes.",
        explanation=f"{n:,} parameters × 4 bytes = {4 * n:,} bytes ≈ {expected:.2f} MB, "
                    "the size of the weights file the package ships.",
        mistakes=[(n / 1e6, "that is one byte per parameter; an fp32 number takes 4 bytes."),
                  (2 * n / 1e6, "that is 2 bytes per parameter, the size in fp16; the weights are fp32."),
                  (8 * n / 1e6, "that is 8 bytes per parameter, the size in fp64; the weights are fp32."),
                  (4 * n / 2**20, "that is in MiB (2^20 bytes); this exercise asks for MB (10^6 bytes)."),
                  (4 * n, "that is in bytes; divide by 10^6 for MB.")])


def check_linear_weight_shape(answer) -> bool:
    """00: the shape of nn.Linear(128, 512).weight."""
    hint = "make one and look: `torch.nn.Linear(128, 512).weight.shape`."
    if answer is None:
        return _missing("weight_shape", hint)
    if not isinstance(answer, (tuple, list, torch.Size)) or not all(
            isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in answer):
        return _failed(f"`weight_shape` should be a tuple of ints such as (3, 4), got {_describe(answer)}.", hint)
    shape = tuple(int(n) for n in answer)
    if shape == (512, 128):
        return _passed("(512, 128) = (out_features, in_features). The layer computes y = x @ W.T + b, the "
                       "papers' h = W x. Keep it in mind for LoRA: A is (r, in) and B is (out, r).")
    if shape == (128, 512):
        return _failed("(128, 512) is (in_features, out_features): PyTorch stores the weight the other way round.",
                       "nn.Linear stores (out_features, in_features) and computes x @ W.T.")
    return _failed(f"{shape} is not the shape of that weight.", hint)
