"""Graded exercises of notebook 06: P-tuning."""

from __future__ import annotations

from .core import (
    check_choice,
    check_number,
)


def check_label_logit_position(answer) -> bool:
    """06: in [P0..P14] passage [P15..P19] => label, which position's logits predict the label's first letter."""
    return check_choice(
        answer, "d", name="label_position",
        wrong={"a": "P19 sits just before the first character of ` => `, so it predicts that space, not the label.",
               "b": "the last character of the passage predicts the next token after it, which is now P15.",
               "c": "a virtual token's output is dropped unless a real token follows it; P14 predicts the "
                    "passage's first character."},
        explanation="The last position, the final space of ` => `, is also the last real token, so the logits "
                    "that predict the label's first letter sit at `logits[:, -1]`, which is where `task.predict` "
                    "reads them. The logits before ` => ` are read at P19.")


def check_p_tuning_kept_numbers(answer) -> bool:
    """06: numbers a task keeps after drop_encoder() with 20 virtual tokens on our model (d = 128)."""
    n_virtual, d = 20, 128
    expected = n_virtual * d
    return check_number(
        answer, expected, name="kept_numbers",
        hint="after training the encoder runs once; its 20 output vectors of d numbers are all that is stored.",
        explanation=f"{n_virtual} × {d} = {expected:,}, the same as a 20-token soft prompt: after drop_encoder() "
                    "P-tuning costs nothing more at inference than prompt tuning. The encoder only costs during "
                    "training.",
        mistakes=[(234_240, "that is the encoder's parameter count; the encoder is dropped after training."),
                  (234_240 + expected, "the encoder is dropped after training; only its output vectors stay."),
                  (n_virtual, "that counts the virtual tokens; each one is a vector of d numbers."),
                  (2 * 4 * n_virtual * d, "that is prefix tuning's count; P-tuning's vectors live at the input "
                                          "only.")])


def check_why_prompt_encoder(answer) -> bool:
    """06: why Liu et al. produce the virtual tokens with an encoder instead of training them directly."""
    return check_choice(
        answer, "b", name="why_encoder",
        wrong={"a": "the encoder trains far more parameters than the free vectors (234,240 against 2,560 here), "
                    "and it is dropped after training anyway.",
               "c": "after drop_encoder() the model reads the same 20 vectors either way: inference costs the same.",
               "d": "the encoder's outputs are continuous vectors too; nothing restricts them to real tokens."},
        explanation="Free vectors trained by gradient descent tend to stay near where they started in the "
                    "embeddings' rather discrete space, and the virtual tokens should depend on one another; a "
                    "bidirectional LSTM builds that in. Section 5 tests the claim on our model: here the encoder "
                    "did not help.")
