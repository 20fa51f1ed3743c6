"""Graded exercises of notebook 03: Adapters: small bottleneck layers inside a frozen model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import (
    _base_parameters,
    _first_match,
    _to_number,
    check_choice,
    check_function,
    check_number,
    right_answer,
)

__all__ = ["check_bottleneck_adapter", "check_largest_bottleneck", "check_pfeiffer_parameter_count",
           "check_adapter_without_skip", "check_mergeable_adapter"]


def _bottleneck_case(batch_shape, d, m, seed):
    """Random x (..., d), W_down (m, d), b_down (m,), W_up (d, m), b_up (d,) in float64, from one seed."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return rand(*batch_shape, d), rand(m, d), rand(m), rand(d, m), rand(d)


def _bottleneck_reference(x, W_down, b_down, W_up, b_up):
    """The package's Adapter with these weights: x + up(gelu(down(x)))."""
    from ..adapters import Adapter

    m, d = W_down.shape
    with torch.random.fork_rng(devices=[]):  # the adapter's random init must not move the learner's random stream
        adapter = Adapter(d, m).to(torch.float64)
    with torch.no_grad():
        adapter.down.weight.copy_(W_down), adapter.down.bias.copy_(b_down)
        adapter.up.weight.copy_(W_up), adapter.up.bias.copy_(b_up)
        return adapter(x)


def _bottleneck_mistakes(case, got):
    x, W_down, b_down, W_up, b_up = case
    h = x @ W_down.T + b_down  # (..., m)
    return _first_match(got, [
        (F.gelu(h) @ W_up.T + b_up, "the skip connection is missing: add the input x to the branch's output."),
        (x + torch.relu(h) @ W_up.T + b_up, "the course's adapter uses GELU (F.gelu), the model's own non-linearity, "
                                            "not ReLU."),
        (x + h @ W_up.T + b_up, "the non-linearity is missing: apply F.gelu between the two projections."),
        (x + F.gelu(x @ W_down.T) @ W_up.T, "the biases are missing: b_down after the down-projection, b_up after "
                                            "the up-projection."),
        (x + F.gelu(x @ W_down.T) @ W_up.T + b_up, "b_down is missing: it is added before the GELU."),
        (x + F.gelu(h) @ W_up.T, "b_up is missing: it is added after the up-projection."),
        (x + F.gelu(h @ W_up.T + b_up), "the GELU goes between the projections (on the m bottleneck features), not "
                                        "after the up-projection."),
    ])


def bottleneck_adapter(x, W_down, b_down, W_up, b_up):
    """x (..., d) -> x + W_up GELU(W_down x + b_down) + b_up, shape (..., d)."""
    h = F.gelu(x @ W_down.T + b_down)  # (..., m): down to the bottleneck
    return x + h @ W_up.T + b_up  # (..., d): back up, plus the skip connection


@right_answer(lambda: bottleneck_adapter, fresh_inputs=True)
def check_bottleneck_adapter(fn) -> bool:
    """Adapters: bottleneck_adapter(x, W_down, b_down, W_up, b_up) = x + W_up gelu(W_down x + b_down) + b_up,
    compared with lora_teach.adapters.Adapter on random inputs of several sizes."""
    cases = [_bottleneck_case((2, 5), 8, 3, 0), _bottleneck_case((4,), 6, 2, 1), _bottleneck_case((1, 3, 7), 7, 4, 2)]
    return check_function(
        fn, name="bottleneck_adapter", arg_names=["x", "W_down", "b_down", "W_up", "b_up"], cases=cases,
        reference=_bottleneck_reference, diagnose=_bottleneck_mistakes,
        hint="follow x through the adapter: down to m features, the nonlinearity, back up to d, and do not forget "
             "the skip connection. W_down (m, d) and W_up (d, m) are stored like nn.Linear's weights.",
        explanation="x + W_up·GELU(W_down x + b_down) + b_up, the same function as lora_teach.adapters.Adapter on "
                    "every random case, with any leading batch shape.")


def _adapters_size(d: int, n_layer: int, per_block: int, m) -> int:
    """Trainable parameters of `per_block` adapters d → m → d (with biases) in each of `n_layer` blocks."""
    return per_block * n_layer * (2 * m * d + d + m)


def largest_bottleneck(d, n_layer, per_block, budget):
    """The largest m whose per_block * n_layer adapters d -> m -> d fit in budget parameters (0 if none fits)."""
    n_adapters = per_block * n_layer
    m = 0
    while n_adapters * (2 * (m + 1) * d + d + (m + 1)) <= budget:  # does one more bottleneck feature still fit?
        m += 1
    return m


def _largest_bottleneck_mistakes(case, got):
    d, n_layer, per_block, budget = case
    right = largest_bottleneck(*case)
    named = _first_match(got, [
        (max(0, (budget // n_layer - d) // (2 * d + 1)),
         f"there are {per_block} adapters in each of the {n_layer} blocks, not one."),
        (_adapters_size(d, n_layer, per_block, right), "that is a number of parameters; return the bottleneck size m."),
    ])
    if named:
        return named
    value = _to_number(got)
    if value is None:
        return None
    if value != int(value):
        return "m is a whole number of bottleneck features: round down to the largest m that fits."
    if value < 0:
        return "when not even m = 1 fits, return 0."
    size = _adapters_size(d, n_layer, per_block, int(value))
    if value > right:
        return (f"with m = {int(value)} the adapters have {size:,} parameters, more than the budget of {budget:,}: "
                "count each adapter's biases too (m + d), and round down to the largest m that fits.")
    bigger = _adapters_size(d, n_layer, per_block, int(value) + 1)
    return (f"m = {int(value) + 1} still fits ({bigger:,} ≤ {budget:,} parameters): a size that uses the budget "
            "exactly is allowed too (≤, not <).")


LARGEST_BOTTLENECK_CASES = [  # (d, n_layer, per_block, budget)
    (128, 4, 2, 8_345),  # our model, Houlsby placement, 1 % of the base
    (128, 4, 1, 8_345),  # the same budget, Pfeiffer placement
    (8, 1, 1, 2 * 5 * 8 + 8 + 5),  # a budget that m = 5 fills exactly
    (768, 12, 2, 2_000_000),  # a BERT-base-sized model
    (16, 2, 2, 50),  # too small for any adapter
]


@right_answer(lambda: largest_bottleneck)
def check_largest_bottleneck(fn) -> bool:
    """Adapters: largest_bottleneck(d, n_layer, per_block, budget) = the largest bottleneck size m whose adapters
    (per_block in each of n_layer blocks, 2·m·d + d + m parameters each) fit in budget, 0 if none fits."""
    ours = largest_bottleneck(*LARGEST_BOTTLENECK_CASES[0])
    pfeiffer = largest_bottleneck(*LARGEST_BOTTLENECK_CASES[1])
    return check_function(
        fn, name="largest_bottleneck", arg_names=["d", "n_layer", "per_block", "budget"],
        cases=LARGEST_BOTTLENECK_CASES, reference=largest_bottleneck, diagnose=_largest_bottleneck_mistakes,
        hint="write the parameter count of all the adapters as a function of m first (each is two Linear layers with "
             "biases, d → m → d), then find the largest m that stays within the budget (trying m = 1, 2, ... "
             "works); 0 if m = 1 is already too many.",
        explanation=f"Within 1 % of our base model (8,345 parameters, layer norms frozen) Houlsby placement affords "
                    f"m = {ours} ({_adapters_size(128, 4, 2, ours):,} parameters) and Pfeiffer placement m = "
                    f"{pfeiffer} ({_adapters_size(128, 4, 1, pfeiffer):,}): halving the number of adapters more "
                    "than doubles the affordable bottleneck, because each adapter also pays d + m biases.")


PFEIFFER_CASE = {"d": 128, "n_layer": 4, "m": 32}  # our model, one adapter per block, layer norms frozen


def _pfeiffer_reference(d: int, n_layer: int, m: int) -> int:
    return n_layer * (2 * m * d + d + m)  # one adapter per block


@right_answer(lambda: _pfeiffer_reference(**PFEIFFER_CASE))
def check_pfeiffer_parameter_count(answer) -> bool:
    """03: trainable parameters of Pfeiffer adapters with m = 32 and frozen layer norms on our model."""
    d, n_layer, m = PFEIFFER_CASE["d"], PFEIFFER_CASE["n_layer"], PFEIFFER_CASE["m"]
    one = 2 * m * d + d + m
    expected = _pfeiffer_reference(d, n_layer, m)
    layer_norms = 2 * d * (2 * n_layer + 1)
    return check_number(
        answer, expected, name="pfeiffer_m32", rel_tol=1e-6,
        hint="count one adapter's parameters (two Linear layers with biases, d → m → d), then how many adapters "
             "Pfeiffer placement puts in each block; the layer norms are frozen here.",
        explanation=f"{n_layer} × (2·{m}·{d} + {d} + {m}) = {n_layer} × {one:,} = {expected:,}, between the "
                    "table's 16,960 (m = 16) and 66,304 (m = 64): the count grows almost linearly in m. Check it: "
                    "count_parameters(add_adapters(copy.deepcopy(base), 32, 'pfeiffer', train_layer_norms=False)).",
        mistakes=[(2 * expected, "that is Houlsby placement, two adapters per block; Pfeiffer keeps one, after "
                                 "the MLP."),
                  (expected + layer_norms, f"that includes the layer norms' {layer_norms:,} parameters; here they "
                                           "are frozen."),
                  (one, f"that is one adapter; the model has {n_layer} blocks with one adapter each."),
                  (n_layer * 2 * m * d, "you left out the biases: m for the down-projection, d for the up one."),
                  (n_layer * (2 * m * d + 2 * d), "the down-projection's bias has m numbers (its output size), "
                                                  "not d."),
                  (n_layer * (m * d + d + m), "an adapter has two projections, down (d → m) and up (m → d), "
                                              "each with m·d weights."),
                  (_base_parameters() + expected, "that is every parameter of the adapted model; only the "
                                                  "adapters are trained.")])


@right_answer(lambda: "b")
def check_adapter_without_skip(answer) -> bool:
    """03: what the Houlsby-adapted model computes at step 0 if the adapter had no skip connection."""
    return check_choice(
        answer, check_adapter_without_skip.right_answer(), name="no_skip",
        wrong={"a": "without the skip connection, an adapter that outputs zero replaces the sublayer's output by "
                    "zero: the sublayer is deleted, not kept.",
               "c": "the residual stream still carries the token and position embeddings past every block; the "
                    "blocks add zero to it, they do not replace it.",
               "d": "Houlsby placement wraps both sublayers, attention and MLP. With Pfeiffer placement (after "
                    "the MLP only) this would be the answer."},
        explanation="Every wrapped sublayer now outputs zero, so the blocks add nothing to the residual stream and "
                    "the model is embeddings → final layer norm → output head, far from the pretrained model. The "
                    "skip connection is what makes a zero up-projection the identity: with it, step 2 printed "
                    "`output equals input exactly: True` and the adapted model gave the base's logits bit for bit.")


@right_answer(lambda: "c")
def check_mergeable_adapter(answer) -> bool:
    """03: which adapter variant could be folded into the frozen layer before it, as LoRA's update is."""
    return check_choice(
        answer, check_mergeable_adapter.right_answer(), name="mergeable",
        wrong={"a": "ReLU is non-linear too: no single matrix gives W_up ReLU(W_down y + b_down) for every y, so the "
                    "two projections still run in every forward pass.",
               "b": "without the skip connection the GELU is still between the two projections: the adapter stays "
                    "non-linear (and at step 0 it would delete the sublayer, as in exercise 2).",
               "d": "square or not, the GELU between the projections remains; m changes the adapter's size, not "
                    "whether it is linear."},
        explanation="Without a non-linearity the adapter is affine, y ↦ (I + W_up W_down) y + W_up b_down + b_up, "
                    "and so is the layer before it: their composition is one linear layer of the same shape, "
                    "whatever m is. With a GELU (or ReLU) no single matrix replaces it: that non-linearity keeps "
                    "a real adapter in every forward pass, the inference cost measured above.")
