"""Graded exercises of notebook 04: Prefix tuning: trainable keys and values at every layer."""

from __future__ import annotations

import math

import torch

from .core import (
    _base_parameters,
    _first_match,
    check_choice,
    check_function,
    check_number,
)


def check_prefix_parameter_count(fn) -> bool:
    """Prefix tuning: prefix_parameters(n_layer, prefix_len, d) = numbers kept after training, 2·L·P·d."""
    def reference(n_layer, prefix_len, d):
        return 2 * n_layer * prefix_len * d

    def mistakes(case, got):
        n_layer, prefix_len, d = case
        return _first_match(got, [
            (n_layer * prefix_len * d, "each prefix slot has a key AND a value vector."),
            (2 * prefix_len * d, "every attention layer gets its own prefix, not only the first."),
            (prefix_len * d, "that is prompt tuning's count (one vector per virtual token, at the input only); "
                             "a prefix lives at every layer, as keys and values.")])

    return check_function(
        fn, name="prefix_parameters", arg_names=["n_layer", "prefix_len", "d"],
        cases=[(4, 10, 128), (2, 3, 16), (1, 5, 8)], reference=reference, diagnose=mistakes,
        hint="per layer and per prefix slot, one key vector and one value vector of d numbers.",
        explanation="2·L·P·d: keys and values for every slot at every layer. The reparameterisation MLP used in "
                    "training is dropped afterwards; only these numbers are kept.")


def _prefix_attention_reference(q, k, v, prefix_k, prefix_v, causal_prefix=False, scale=True, append=False):
    B, T, C = q.shape
    P = prefix_k.shape[0]
    pk, pv = prefix_k.expand(B, -1, -1), prefix_v.expand(B, -1, -1)  # (B, P, C)
    keys = torch.cat([k, pk] if append else [pk, k], dim=1)  # (B, P+T, C)
    values = torch.cat([v, pv] if append else [pv, v], dim=1)
    scores = q @ keys.transpose(1, 2)  # (B, T, P+T)
    if scale:
        scores = scores / math.sqrt(C)
    mask = torch.ones(T, P + T, dtype=torch.bool).tril(diagonal=0 if causal_prefix else P)  # (T, P+T)
    scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ values  # (B, T, C)


def _prefix_attention_mistakes(case, got):
    q, k, v, prefix_k, prefix_v = case
    B, T, C = q.shape
    P = prefix_k.shape[0]
    no_mask = (q @ torch.cat([prefix_k.expand(B, -1, -1), k], 1).transpose(1, 2) / math.sqrt(C)).softmax(-1) \
        @ torch.cat([prefix_v.expand(B, -1, -1), v], 1)
    return _first_match(got, [
        (_prefix_attention_reference(*case, causal_prefix=True),
         f"every position must see all {P} prefix slots: the causal mask is (T, P+T) lower-triangular shifted by "
         "P, e.g. torch.ones(T, P + T).tril(diagonal=P)."),
        (no_mask, "positions must not see the future: mask the scores of later tokens with -inf before softmax."),
        (_prefix_attention_reference(*case, scale=False), "divide the scores by sqrt(C) before the softmax."),
        (_prefix_attention_reference(*case, append=True), "the prefix goes in front of the keys and values."),
    ])


def check_prefix_attention(fn) -> bool:
    """Prefix tuning: prefix_attention(q, k, v, prefix_k, prefix_v) for one head, q/k/v (B, T, C), prefix (P, C)."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    cases = [(rand(2, 5, 4), rand(2, 5, 4), rand(2, 5, 4), rand(3, 4), rand(3, 4)),
             (rand(1, 4, 8), rand(1, 4, 8), rand(1, 4, 8), rand(1, 8), rand(1, 8))]
    return check_function(
        fn, name="prefix_attention", arg_names=["q", "k", "v", "prefix_k", "prefix_v"], cases=cases,
        reference=_prefix_attention_reference, diagnose=_prefix_attention_mistakes,
        hint="keys = [prefix_k; k] and values = [prefix_v; v] along time (expand the prefix to the batch); "
             "scores = q @ keys^T / sqrt(C); every position sees all prefix slots and the past, never the future.",
        explanation="The prefix adds P keys and values at this layer that every position attends to; no token "
                    "is added to the input, and the output keeps the input's shape (B, T, C).")


PREFIX_TRAINING_CASE = {"d": 128, "n_layer": 4, "prefix_len": 20, "hidden": 256}  # PrefixTuning(base, 20)


def _prefix_training_reference(d: int, n_layer: int, prefix_len: int, hidden: int) -> int:
    embedding = prefix_len * d  # P' (P, d)
    mlp = (d * hidden + hidden) + (hidden * 2 * n_layer * d + 2 * n_layer * d)  # Linear(d, h), Linear(h, 2Ld)
    return embedding + mlp


def check_prefix_training_parameters(answer) -> bool:
    """04: trainable parameters of PrefixTuning(base, prefix_len=20) with the MLP (hidden 256) on our model."""
    case = PREFIX_TRAINING_CASE
    d, n_layer, prefix_len, hidden = case["d"], case["n_layer"], case["prefix_len"], case["hidden"]
    expected = _prefix_training_reference(**case)
    mlp = expected - prefix_len * d
    kept = 2 * n_layer * prefix_len * d
    at_10 = _prefix_training_reference(d, n_layer, 10, hidden)
    return check_number(
        answer, expected, name="trainable_p20", rel_tol=1e-6,
        hint="during training the parameters are P′ (P × d) and the MLP: Linear(d, h) and Linear(h, 2·L·d), "
             "both with biases.",
        explanation=f"{prefix_len}·{d} = {prefix_len * d:,} for P′ plus {mlp:,} for the MLP = {expected:,}, only "
                    f"{expected - at_10:,} more than at P = 10 ({at_10:,}): the MLP maps every row of P′ with the "
                    f"same weights, so its size does not depend on P. After freeze_prefix() the task keeps "
                    f"{kept:,} numbers, 2·L·P·d.",
        mistakes=[(at_10, "that is the count printed above for P = 10 (and also P = 20 without the MLP's "
                          "biases); P′ has one row per prefix slot, and both Linear layers have biases."),
                  (2 * at_10, "only P′ grows with P: the MLP maps each row with the same weights, so its size "
                              "does not depend on P."),
                  (kept, "that is what is kept after freeze_prefix(); during training P′ and the MLP are trained."),
                  (kept + mlp, "during training the prefix is not a parameter: the MLP computes it from P′. Count "
                               "P′ (P × d) and the MLP."),
                  (kept + expected, "during training the prefix is not a parameter: the MLP computes it from P′."),
                  (prefix_len * d, "the MLP is trained too, and it is most of the count."),
                  (expected + _base_parameters(), "the base model is frozen: count only P′ and the MLP.")])


def check_prefix_never_exact(answer) -> bool:
    """04: why no prefix can make the model compute exactly what the base model computes."""
    return check_choice(
        answer, "b", name="never_exact",
        wrong={"a": "zero vectors do not silence a prefix: a zero key still scores q · 0 = 0, weight e⁰ = 1 in "
                    "the softmax, and zero values then pull every output towards zero (step 3).",
               "c": "the prefix has no positions: the real tokens keep positions 0 … T-1, and the logits come "
                    "back aligned with the input ids.",
               "d": "a layer norm normalises each position's vector on its own, and the prefix never passes "
                    "through one: it enters each layer only as keys and values inside the attention."},
        explanation="Softmax gives every visible key a weight e^(score) > 0, so the prefix always takes a share "
                    "of the attention; silencing it for every query would need scores of -∞. Step 3 measured the "
                    "cost at init: Austen loss 1.289 instead of 1.209, almost all of it on the first characters, "
                    "where few real keys compete with the prefix.")
