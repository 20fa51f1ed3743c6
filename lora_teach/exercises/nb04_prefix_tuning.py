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
    right_answer,
)

__all__ = ["check_prefix_kept_numbers", "check_prefix_attention", "check_prefix_training_parameters",
           "check_prefix_exact_start"]


def prefix_kept_numbers(n_layer, prefix_len, d, n_head, n_kv_head):
    """Numbers kept per task after freeze_prefix(), on a model whose n_head query heads share n_kv_head key/value
    heads."""
    d_h = d // n_head  # the width of one head
    return 2 * n_layer * prefix_len * n_kv_head * d_h  # a key and a value per slot, layer and key/value head


PREFIX_KEPT_CASES = [  # (n_layer, prefix_len, d, n_head, n_kv_head)
    (4, 10, 128, 4, 4),  # our model: every query head has its own keys and values
    (2, 3, 16, 8, 2),
    (32, 30, 4096, 32, 8),  # a Llama-3-8B-sized model
    (80, 10, 8192, 64, 8),  # a Llama-2-70B-sized model
]


@right_answer(lambda: prefix_kept_numbers)
def check_prefix_kept_numbers(fn) -> bool:
    """Prefix tuning: prefix_kept_numbers(n_layer, prefix_len, d, n_head, n_kv_head) = numbers kept after training
    on a model with grouped-query attention, 2·L·P·n_kv_head·d_h with d_h = d / n_head."""
    def mistakes(case, got):
        n_layer, prefix_len, d, n_head, n_kv_head = case
        d_h = d // n_head
        return _first_match(got, [
            (2 * n_layer * prefix_len * d, f"the prefix lives in key/value space, which here has only {n_kv_head} "
                                           f"heads of d_h = d / n_head = {d_h} numbers, not d = {d}."),
            (2 * n_layer * prefix_len * n_kv_head * d, "each key/value head has d_h = d / n_head numbers, not d."),
            (2 * n_layer * prefix_len * d * n_head // n_kv_head, "grouped-query attention makes the keys and values "
                                                                "smaller than d, not larger: n_kv_head · d_h."),
            (n_layer * prefix_len * n_kv_head * d_h, "each prefix slot has a key AND a value vector."),
            (2 * prefix_len * n_kv_head * d_h, "every attention layer gets its own prefix, not only the first."),
            (prefix_len * d, "that is prompt tuning's count (one vector per virtual token, at the input only); "
                             "a prefix lives at every layer, as keys and values.")])

    n_layer, prefix_len, d, n_head, n_kv_head = PREFIX_KEPT_CASES[-1]
    big = prefix_kept_numbers(*PREFIX_KEPT_CASES[-1])
    return check_function(
        fn, name="prefix_kept_numbers", arg_names=["n_layer", "prefix_len", "d", "n_head", "n_kv_head"],
        cases=PREFIX_KEPT_CASES, reference=prefix_kept_numbers, diagnose=mistakes,
        hint="what does one layer keep for one prefix slot, and how wide is it? A key is as wide as the layer's own "
             "keys: how many key heads does the layer have, and how wide is one head?",
        explanation=f"2·L·P·n_kv_head·d_h: the prefix must have the shape of the layer's own keys and values. With "
                    f"n_kv_head = n_head this is our 2·L·P·d; a model of Llama 2 70B's shape ({n_layer} layers, "
                    f"d = {d:,}, {n_head} query heads sharing {n_kv_head} key/value heads) keeps {big:,} numbers "
                    f"for {prefix_len} slots, {n_head // n_kv_head} times fewer than 2·L·P·d.")


def prefix_attention(q, k, v, prefix_k, prefix_v):
    """One head: q, k, v (B, T, C) and a prefix (P, C) per keys and values -> (B, T, C)."""
    B, T, C = q.shape
    P = prefix_k.shape[0]
    keys = torch.cat([prefix_k.expand(B, -1, -1), k], dim=1)  # (B, P+T, C): the prefix first
    values = torch.cat([prefix_v.expand(B, -1, -1), v], dim=1)  # (B, P+T, C)
    scores = q @ keys.transpose(1, 2) / C**0.5  # (B, T, P+T)
    visible = torch.ones(T, P + T, dtype=torch.bool, device=q.device).tril(diagonal=P)  # all slots + the past
    return scores.masked_fill(~visible, float("-inf")).softmax(dim=-1) @ values  # (B, T, C)


def _prefix_attention_variant(q, k, v, prefix_k, prefix_v, causal_prefix=False, scale=True, append=False):
    """prefix_attention with one of its steps changed (the mask, the scale or the prefix's place): a known mistake."""
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
        (_prefix_attention_variant(*case, causal_prefix=True),
         f"every position must see all {P} prefix slots: over the P + T keys, the causal mask has to be shifted "
         "by P so that the prefix columns stay visible to every position."),
        (no_mask, "positions must not see the future: mask the scores of later tokens with -inf before softmax."),
        (_prefix_attention_variant(*case, scale=False), "divide the scores by sqrt(C) before the softmax."),
        (_prefix_attention_variant(*case, append=True), "the prefix goes in front of the keys and values."),
    ])


@right_answer(lambda: prefix_attention, fresh_inputs=True)
def check_prefix_attention(fn) -> bool:
    """Prefix tuning: prefix_attention(q, k, v, prefix_k, prefix_v) for one head, q/k/v (B, T, C), prefix (P, C)."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    cases = [(rand(2, 5, 4), rand(2, 5, 4), rand(2, 5, 4), rand(3, 4), rand(3, 4)),
             (rand(1, 4, 8), rand(1, 4, 8), rand(1, 4, 8), rand(1, 8), rand(1, 8))]
    return check_function(
        fn, name="prefix_attention", arg_names=["q", "k", "v", "prefix_k", "prefix_v"], cases=cases,
        reference=prefix_attention, diagnose=_prefix_attention_mistakes,
        hint="put the prefix's keys and values in front of the layer's own along time (a copy for every sequence of "
             "the batch), then attend as usual: scaled scores, softmax, values. The causal mask must let every "
             "position see all the prefix slots.",
        explanation="The prefix adds P keys and values at this layer that every position attends to; no token "
                    "is added to the input, and the output keeps the input's shape (B, T, C).")


PREFIX_TRAINING_CASE = {"d": 128, "n_layer": 4, "prefix_len": 20, "hidden": 256}  # PrefixTuning(base, 20)


def _prefix_training_reference(d: int, n_layer: int, prefix_len: int, hidden: int) -> int:
    embedding = prefix_len * d  # P' (P, d)
    mlp = (d * hidden + hidden) + (hidden * 2 * n_layer * d + 2 * n_layer * d)  # Linear(d, h), Linear(h, 2Ld)
    return embedding + mlp


@right_answer(lambda: _prefix_training_reference(**PREFIX_TRAINING_CASE))
def check_prefix_training_parameters(answer) -> bool:
    """04: trainable parameters of PrefixTuning(base, num_virtual_tokens=20) with the MLP (hidden 256) on our model."""
    case = PREFIX_TRAINING_CASE
    d, n_layer, prefix_len, hidden = case["d"], case["n_layer"], case["prefix_len"], case["hidden"]
    expected = _prefix_training_reference(**case)
    mlp = expected - prefix_len * d
    kept = 2 * n_layer * prefix_len * d
    at_10 = _prefix_training_reference(d, n_layer, 10, hidden)
    return check_number(
        answer, expected, name="trainable_p20", rel_tol=1e-6,
        hint="during training the prefix itself is not a parameter: what trains is the smaller matrix P′ and the "
             "MLP that maps it to every layer's keys and values. Count both, biases included.",
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


@right_answer(lambda: "d")
def check_prefix_exact_start(answer) -> bool:
    """04: which change to the attention would let a trainable prefix start exactly at the base model."""
    return check_choice(
        answer, check_prefix_exact_start.right_answer(), name="exact_start",
        wrong={"a": "a zero key still scores q · 0 = 0, weight e⁰ = 1 in the softmax: each slot takes a share of "
                    "the attention from the real tokens, and its zero value pulls the output towards zero. Step 3's "
                    "near-zero init is close to this, and it started above the base model's loss.",
               "b": "one slot takes less attention than ten, but still some: e^(score) > 0 for any finite key.",
               "c": "a score is q · k = -100 × (the sum of q's channels): very negative for queries whose channels "
                    "sum to a positive number, but very positive for the others, which would then attend almost "
                    "only to the prefix."},
        explanation="With g = 0 the extra term vanishes and the real tokens are attended exactly as in the base "
                    "model, whose softmax never sees the prefix: the model is the base model bit for bit. The "
                    "gradient reaches g at once (as it reaches LoRA's B = 0), and the prefix learns once g has "
                    "moved. This is the zero-initialised gated attention of LLaMA-Adapter (Zhang et al., 2023); "
                    "plain prefix tuning shares one softmax between prefix and tokens, so it cannot start exactly.")
