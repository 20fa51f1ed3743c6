"""Graded exercises of notebook 09: LoRA in practice."""

from __future__ import annotations

import math

from .core import (
    _first_match,
    check_function,
    check_number,
    right_answer,
)

__all__ = ["check_rslora_scaling", "check_adapter_file_bytes", "check_separated_pairs"]


@right_answer(lambda: 8 / math.sqrt(32))  # alpha / sqrt(r)
def check_rslora_scaling(answer) -> bool:
    """09: rsLoRA's scaling alpha / sqrt(r) at r = 32 with alpha = 8 (the sweep printed alpha / r = 0.25 there)."""
    alpha, r = 8, 32
    expected = check_rslora_scaling.right_answer()
    return check_number(
        answer, expected, name="rslora_scaling", rel_tol=0.01,
        hint="rsLoRA keeps alpha and changes only what LoRA's alpha / r divides by: the exercise says what instead "
             "of r.",
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


def adapter_bytes(shapes, r, n_layer, bytes_per_number):
    """Bytes of LoRA's A (r, in) and B (out, r) for every targeted layer of every block."""
    per_block = sum(r * (in_features + out_features) for in_features, out_features in shapes)  # A and B
    return n_layer * per_block * bytes_per_number


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


@right_answer(lambda: adapter_bytes)
def check_adapter_file_bytes(fn) -> bool:
    """09: adapter_bytes(shapes, r, n_layer, bytes_per_number) = bytes of A and B in an adapter file."""
    cases = [([(6, 10)], 2, 3, 2),  # small and non-square: every common mistake gives a different number
             ([(128, 128), (128, 128)], 8, 4, 4),  # our adapter: r = 8 on q and v, fp32
             ([(128, 512), (512, 128)], 4, 4, 4),  # our MLP at the fixed budget: up_proj and down_proj
             ([(12288, 12288), (12288, 12288)], 4, 96, 2)]  # GPT-3 175B, r = 4 on q and v, fp16
    return check_function(
        fn, name="adapter_bytes", arg_names=["shapes", "r", "n_layer", "bytes_per_number"], cases=cases,
        reference=adapter_bytes, diagnose=_adapter_bytes_mistakes,
        hint="count the numbers of A and B for each targeted layer (their shapes follow from the layer's sizes and "
             "r), in every block, then the bytes each number takes.",
        explanation="n_layer · Σ r·(in + out) · bytes. For our r = 8 adapter on q and v that is 16,384 numbers × 4 "
                    "= 65,536 bytes (64.0 KiB): the 66.0 KiB printed for the two files is these tensors plus the "
                    "safetensors header and the JSON config. For GPT-3 at r = 4 in fp16 it is 37,748,736 bytes, "
                    "the calculator's 37.7 MB. Nothing of the base model is in the file.")


def budget_runs() -> dict[str, list[float]]:
    """The fixed-budget sweep (20,480 trainable numbers): target set -> accuracy per seed (mean of val and test)."""
    from ..results import read_csv

    runs: dict[str, list[float]] = {}
    for row in read_csv("lora_rank_sweep.csv"):
        if row["experiment"] == "targets":
            accuracy = (float(row["val_accuracy"]) + float(row["test_accuracy"])) / 2
            runs.setdefault(row["targets"], []).append(accuracy)
    return runs


def separated(runs: dict[str, list[float]]) -> list[tuple[str, str]]:
    """The pairs of target sets whose runs do not overlap: every run of one above every run of the other."""
    names = list(runs)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
            if min(runs[a]) > max(runs[b]) or min(runs[b]) > max(runs[a])]


@right_answer(lambda: len(separated(budget_runs())))
def check_separated_pairs(answer) -> bool:
    """09: how many of the 10 pairs of target sets the strict test (no overlap of the seeds) tells apart."""
    runs = budget_runs()
    pairs = separated(runs)
    n_pairs = len(runs) * (len(runs) - 1) // 2

    def short(targets):
        return targets.replace("_proj", "").replace(",", "+")

    with_q = [p for p in pairs if "q_proj" in p]
    return check_number(
        answer, len(pairs), name="separated_pairs", rel_tol=0.01,
        hint="for each of the 10 pairs, compare the lowest run of one target set with the highest run of the "
             "other, both ways; count the pairs where one set's three runs all lie above the other's.",
        explanation=f"{len(pairs)} of {n_pairs}: " + "; ".join(f"{short(a)} / {short(b)}" for a, b in pairs)
                    + ". W_q alone and the MLP each lie below every attention choice that includes W_v, but not "
                    "below each other, and W_v, W_q+W_v and all four projections overlap: three seeds cannot "
                    "order them. The test is strict for a reason: if two choices were equally good, all three "
                    "runs of one would still land above all three of the other's in 2 of the 20 equally likely "
                    "orders of six runs.",
        mistakes=[(len(with_q), "that counts W_q alone against the others; compare the MLP's runs with those "
                                "of the attention choices too."),
                  (n_pairs, "not every pair separates: W_v, W_q+W_v and all four projections overlap."),
                  (0, "some pairs do separate: every run on W_q alone lies below every run on W_v."),
                  (n_pairs - len(pairs), "that is the number of pairs whose runs overlap (or W_q alone against "
                                         "all four others, but W_q's best run lies above two of the MLP's); count "
                                         "the pairs the test separates.")])
