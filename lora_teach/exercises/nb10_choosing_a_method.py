"""Graded exercises of notebook 10: Choosing a method."""

from __future__ import annotations

from .core import (
    check_choice,
    check_number,
    right_answer,
)

__all__ = ["check_lora_memory_fraction", "check_method_for_serving", "check_small_data_reading"]

# the measured table of notebook 10 (first seed, 16 x 96 Shakespeare characters): state and activations in MiB
FULL_STATE_MIB, FULL_ACT_MIB = 12.73, 50.3


LORA_STATE_MIB, LORA_ACT_MIB = 3.43, 34.1


@right_answer(lambda: (LORA_STATE_MIB + LORA_ACT_MIB) / (FULL_STATE_MIB + FULL_ACT_MIB))
def check_lora_memory_fraction(answer) -> bool:
    """10: LoRA's training memory (state + activations) as a fraction of full fine-tuning's, from the table."""
    full, lora = FULL_STATE_MIB + FULL_ACT_MIB, LORA_STATE_MIB + LORA_ACT_MIB
    expected = check_lora_memory_fraction.right_answer()
    return check_number(
        answer, expected, name="lora_memory_fraction", rel_tol=0.02,
        hint="a method's training memory is everything it keeps: which columns of the table make up its total? "
             "Then compare LoRA's total with full fine-tuning's.",
        explanation=f"({LORA_STATE_MIB} + {LORA_ACT_MIB}) / ({FULL_STATE_MIB} + {FULL_ACT_MIB}) = {lora:.1f} / "
                    f"{full:.1f} MiB ≈ {expected:.2f}: LoRA trains 2% of the parameters but needs about 60% of the "
                    "memory here, because the activations, which every method keeps, dominate at this scale. At "
                    "175 B parameters the weights, gradients and optimizer state dominate instead, and the same "
                    "calculation gives 349 GB against 1.4 TB in pure fp16 (2.79 TB in bf16 mixed precision).",
        mistakes=[*[(share, "that is about LoRA's share of the trainable parameters (or of the gradient and "
                            "optimizer state); memory also holds the frozen weights and the activations.")
                    for share in (0.0193, 0.0196, 0.0199)],
                  (LORA_STATE_MIB / FULL_STATE_MIB, "that compares the state column only; add the activations, the "
                                                    "largest part of both rows."),
                  (LORA_ACT_MIB / FULL_ACT_MIB, "that compares the activations only; add the state column."),
                  (1 - expected, "that is the share LoRA saves; the question asks for the share it uses."),
                  (1 / expected, "upside down: LoRA's total divided by full fine-tuning's."),
                  (100 * expected, "that looks like a percentage; give a fraction between 0 and 1.")])


def _measured() -> dict[tuple[str, str], dict]:
    """The shipped comparison summary (test split, chosen rates), keyed by (method, task)."""
    from ..results import read_csv

    return {(r["method"], r["task"]): r for r in read_csv("comparison_summary.csv")}


@right_answer(lambda: "d")
def check_method_for_serving(answer) -> bool:
    """10: one task per server, base-model latency, small files, accuracy above chance: which method?"""
    m = _measured()

    def acc(method):
        return float(m[(method, "author")]["quality"])

    def kb(method):
        return float(m[(method, "author")]["checkpoint_bytes"]) / 1000

    return check_choice(
        answer, check_method_for_serving.right_answer(), name="serving_choice",
        wrong={"a": f"each task would store a whole model: {kb('full'):.1f} kB here, and 13.5 GB in fp16 for a 7 B "
                    "model (the calculator). The files are not small.",
               "b": f"their accuracy ({acc('adapters'):.3f}) and files ({kb('adapters'):.1f} kB) would do, but "
                    "adapters cannot be merged: every forward pass runs the extra layers (see the latency table).",
               "c": f"the files are the smallest ({kb('prompt'):.1f} kB), but {acc('prompt'):.3f} is near chance "
                    "(0.333) on three authors here, and 20 extra positions make each forward pass cost 1.70 times "
                    "the base's (see the latency table)."},
        explanation=f"LoRA stores {kb('lora'):.1f} kB per task on q and v ({kb('lora-all'):.1f} kB on all linear "
                    f"layers), reached {acc('lora'):.3f} ({acc('lora-all'):.3f}) on the author task, and merged into "
                    "the weights it runs exactly the base model's matrix products, no more. Keep it unmerged "
                    "instead if one server must switch between tasks.")


@right_answer(lambda: "c")
def check_small_data_reading(answer) -> bool:
    """10: what the small-data runs (24 passages, five seeds, each method at its chosen rate) of full fine-tuning
    and LoRA support."""
    return check_choice(
        answer, check_small_data_reading.right_answer(), name="small_data_reading",
        wrong={"a": "LoRA memorised the 24 passages too (final training loss 0.001), and its validation loss also "
                    "climbed above its best (+0.143).",
               "b": "LoRA's accuracy is the higher one here (0.423 against 0.366; paired over the five seeds, "
                    "+0.057 [+0.022, +0.093]): it did not learn less.",
               "d": "a training loss of 0.000 with a validation loss 0.245 above its best is overfitting; full "
                    "fine-tuning's accuracy (0.366) ends barely above chance (0.333)."},
        explanation="Both drive the training loss to about 0; full fine-tuning's validation loss climbs further above "
                    "its best (+0.245 against +0.143), and LoRA ends with the higher accuracy (0.423 against 0.366), "
                    "an interval of +0.022 to +0.093 over five paired seeds. On this draw of 24 passages, at the "
                    "rates chosen on the full task and this budget, fewer trainable parameters overfit less and "
                    "generalised better; stopping early or a smaller rate might narrow the gap.")
