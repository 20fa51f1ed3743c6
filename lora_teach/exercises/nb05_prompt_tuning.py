"""Graded exercises of notebook 05: Prompt tuning."""

from __future__ import annotations

import torch

from .core import (
    _first_match,
    check_function,
    check_number,
    right_answer,
)

__all__ = ["check_prepend_virtual_tokens", "check_t5_prompt_numbers", "check_prompt_activation_ratio"]


def prepend(virtual, x):
    """(P, C) and (B, T, C) -> (B, P + T, C): the soft prompt in front of every sequence of the batch."""
    return torch.cat([virtual.expand(x.shape[0], -1, -1), x], dim=1)  # (B, P, C) + (B, T, C)


def _prepend_mistakes(case, got):
    virtual, x = case
    if isinstance(got, Exception):
        return ("expand the (P, C) tensor to a batch axis of size B first (no copy needed), then join it to x "
                "along time.") if "dimension" in str(got) or "size" in str(got) else None
    return _first_match(got, [
        (torch.cat([x, virtual.expand(x.shape[0], -1, -1)], dim=1),
         "the virtual tokens go in front of the sequence (positions 0..P-1), not after it.")])


@right_answer(lambda: prepend, fresh_inputs=True)
def check_prepend_virtual_tokens(fn) -> bool:
    """Prompt tuning / prefix: prepend(virtual (P, C), x (B, T, C)) -> (B, P + T, C), the same P rows for every b."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    cases = [(rand(3, 4), rand(2, 5, 4)), (rand(1, 8), rand(3, 2, 8))]  # (P, C), (B, T, C)
    return check_function(
        fn, name="prepend", arg_names=["virtual", "x"], cases=cases, reference=prepend,
        diagnose=_prepend_mistakes,
        hint="every sequence of the batch needs its own copy of the P vectors in front of it: which axis of x is "
             "time, and what shape must `virtual` have before it can be joined to x?",
        explanation="Every sequence in the batch gets the same P vectors in front of it, along the time axis.")


@right_answer(lambda: 100 * 4096)  # one (n_tokens, d) tensor, nothing else
def check_t5_prompt_numbers(answer) -> bool:
    """05: numbers one task costs with prompt tuning on T5-XXL (d = 4096) and 100 prompt tokens."""
    n_tokens, d, n_layer = 100, 4096, 24
    expected = check_t5_prompt_numbers.right_answer()
    return check_number(
        answer, expected, name="t5_prompt_numbers",
        hint="a soft prompt trains one tensor at the input and nothing else: what is its shape at T5-XXL's width?",
        explanation=f"{n_tokens} × {d:,} = {expected:,} numbers, about 4·10⁻⁵ of T5-XXL's 11 billion parameters "
                    "(0.004 %). Ours is 20 × 128 = 2,560, 0.3 % of the model: the fraction is tiny only when d is "
                    "small next to the model's size, one more way in which prompt tuning is a method for large models.",
        mistakes=[(n_tokens, "that counts the tokens; each one is a vector of d numbers."),
                  (d, "that is one vector; the prompt has 100 of them."),
                  (2 * n_layer * n_tokens * d, "that is prefix tuning's count (a key and a value at every layer); "
                                               "a soft prompt lives only at the input."),
                  (n_layer * n_tokens * d, "a soft prompt lives only at the input, not at every layer."),
                  (d * d, "the prompt's size does not depend on d², only on n_tokens × d.")])


@right_answer(lambda: (78 + 40) / (78 + 20))  # every layer keeps activations for each position, the prompt's too
def check_prompt_activation_ratio(answer) -> bool:
    """05: activation memory of prompt tuning with 40 virtual tokens over that with 20, on training examples of
    78 tokens (measured with `activation_memory`: 1.20)."""
    T, short, long = 78, 20, 40
    expected = check_prompt_activation_ratio.right_answer()
    return check_number(
        answer, expected, name="activation_ratio", rel_tol=0.03,
        hint="which positions does every frozen layer keep activations for, during the backward pass down to the "
             "prompt? Count them per example for each prompt length.",
        explanation=f"Every layer keeps its activations for each position, the prompt's included: {T + short} "
                    f"positions per example become {T + long}, a ratio of {expected:.2f} (measured with "
                    "`activation_memory` on the batch of section 5: 1.20). The trainable numbers double, but they "
                    "never were what the activations depend on.",
        mistakes=[(long / short, "that is how the trainable numbers grow; the activations follow the number of "
                                 "positions each layer processes."),
                  (1.0, "the frozen layers' activations do depend on the prompt: each layer keeps them for every "
                        "position, the prompt's included."),
                  ((T + long) ** 2 / (T + short) ** 2, "only the attention weights grow with the square of the "
                                                       "length, and they are a small part here; most activations "
                                                       "grow in proportion to the positions.")])
