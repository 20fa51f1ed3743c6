"""Graded exercises of notebook 09: LoRA in practice."""

from __future__ import annotations

import math

from .core import (
    _first_match,
    check_choice,
    check_function,
    check_number,
)


def check_rslora_scaling(answer) -> bool:
    """09: rsLoRA's scaling alpha / sqrt(r) at r = 32 with alpha = 8 (the sweep printed alpha / r = 0.25 there)."""
    alpha, r = 8, 32
    expected = alpha / math.sqrt(r)
    return check_number(
        answer, expected, name="rslora_scaling", rel_tol=0.01,
        hint="rsLoRA keeps alpha and divides by the square root of the rank: alpha / sqrt(r).",
        explanation=f"{alpha} / √{r} ≈ {expected:.3f}. Going from r = 16 (8 / 4 = 2) to r = 32 divides rsLoRA's "
                    "scaling by √2, while α / r halves it (0.5 → 0.25 in the sweep's α = 8 rows). Notebook 08 "
                    "measured why: the first update of B A grows about like √r, so α / √r keeps the update's "
                    "size nearly flat across ranks, and α / r shrinks it as the rank grows.",
        mistakes=[(alpha / r, "that is α / r, the paper's scaling (the sweep's α = 8 row at r = 32); rsLoRA "
                              "divides by √r instead."),
                  (2.0, "that is the scaling of the α = 2r rule; here α stays 8 and rsLoRA divides it by √r."),
                  (float(alpha), "that is α alone; the scaling divides it by √r."),
                  (math.sqrt(r) / alpha, "that is upside down: α / √r, not √r / α."),
                  (alpha * math.sqrt(r), "rsLoRA divides α by √r; it does not multiply."),
                  (alpha / r**2, "rsLoRA divides by the square root of r, not by its square.")])


def _adapter_bytes_reference(shapes, r, n_layer, bytes_per_number):
    return n_layer * sum(r * (i + o) for i, o in shapes) * bytes_per_number  # A (r, in) and B (out, r) per layer


def _adapter_bytes_mistakes(case, got):
    shapes, r, n_layer, b = case
    per_block = sum(r * (i + o) for i, o in shapes)  # numbers of A and B in one block
    return _first_match(got, [
        (n_layer * per_block, "that counts numbers; multiply by bytes_per_number to get bytes."),
        (per_block * b, f"that is one block; every one of the {n_layer} blocks has its own adapters."),
        (8 * n_layer * per_block * b, "that is in bits; a byte is 8 bits, and bytes_per_number is already bytes."),
        (n_layer * sum(i * o for i, o in shapes) * b, "that is the size of the whole targeted matrices (what full "
                                                      "fine-tuning of them would store); LoRA keeps only A and B."),
        (n_layer * sum(2 * r * i for i, _ in shapes) * b, "2·r·in is right only for square layers: A is "
                                                          "(r, in_features) and B is (out_features, r)."),
        (n_layer * sum(2 * r * o for _, o in shapes) * b, "2·r·out is right only for square layers: A is "
                                                          "(r, in_features) and B is (out_features, r)."),
        (n_layer * sum(r * i for i, _ in shapes) * b, "that counts A only; the file holds B (out_features, r) too."),
        (n_layer * sum(r * o for _, o in shapes) * b, "that counts B only; the file holds A (r, in_features) too."),
        (n_layer * sum(r * (i + o) + o for i, o in shapes) * b, "LoRA adds no bias: the base layer keeps its "
                                                                "own, frozen, and the adapter file does not hold it."),
    ])


def check_adapter_file_bytes(fn) -> bool:
    """09: adapter_bytes(shapes, r, n_layer, bytes_per_number) = bytes of A and B in an adapter file."""
    cases = [([(6, 10)], 2, 3, 2),  # small and non-square: every common mistake gives a different number
             ([(128, 128), (128, 128)], 8, 4, 4),  # our adapter: r = 8 on q and v, fp32
             ([(128, 512), (512, 128)], 4, 4, 4),  # our MLP at the fixed budget: up_proj and down_proj
             ([(12288, 12288), (12288, 12288)], 4, 96, 2)]  # GPT-3 175B, r = 4 on q and v, fp16
    return check_function(
        fn, name="adapter_bytes", arg_names=["shapes", "r", "n_layer", "bytes_per_number"], cases=cases,
        reference=_adapter_bytes_reference, diagnose=_adapter_bytes_mistakes,
        hint="for each targeted layer, A is (r, in_features) and B is (out_features, r); every block has them, "
             "and each number takes bytes_per_number bytes.",
        explanation="n_layer · Σ r·(in + out) · bytes. For our r = 8 adapter on q and v that is 16,384 numbers × 4 "
                    "= 65,536 bytes (64.0 KiB): the 66.0 KiB printed for the two files is these tensors plus the "
                    "safetensors header and the JSON config. For GPT-3 at r = 4 in fp16 it is 37,748,736 bytes, "
                    "the calculator's 37.7 MB. Nothing of the base model is in the file.")


def check_budget_targets(answer) -> bool:
    """09: what the fixed-budget experiment (20,480 trainable numbers, three seeds) supports."""
    return check_choice(
        answer, "c", name="budget_targets",
        wrong={"a": "W_q alone at r = 20 was the weakest choice (mean 0.436; each of its runs below every run on "
                    "W_v): a large rank on one matrix bought less than a small rank on several.",
               "b": "the MLP (mean 0.499) did worse than every attention choice that includes W_v. Its matrices "
                    "are 128 × 512, so each rank costs 640 numbers per matrix and the budget buys only r = 4.",
               "d": "W_q and W_v (0.591) came out within the seed spread of W_v alone (0.598) and of all four "
                    "projections (0.601): three seeds cannot rank these three, even though the paper found "
                    "W_q and W_v best."},
        explanation="W_v alone, W_q with W_v, and all four projections scored about the same, all clearly above "
                    "W_q alone; the differences among them are smaller than the spread between seeds. The paper's "
                    "advice holds in that form: several attention matrices, W_v among them, at a small rank.")
