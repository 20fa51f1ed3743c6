"""Graded exercises of notebook 12: QLoRA from scratch."""

from __future__ import annotations

import torch

from ..quantize import NF4_CODEBOOK
from .core import (
    _first_match,
    check_choice,
    check_function,
    check_number,
    right_answer,
)

__all__ = ["check_nf4_70b_gb", "check_dequantize_block", "check_zero_level"]


def _nf4_70b_gb() -> tuple[int, float]:
    from ..memory import MODEL_SIZES
    from ..quantize import bits_per_weight

    n = MODEL_SIZES["70b"].n_params
    return n, n * bits_per_weight() / 8 / 1e9


@right_answer(lambda: _nf4_70b_gb()[1])
def check_nf4_70b_gb(answer) -> bool:
    """12: GB (1e9 bytes) of LLaMA-2 70B's weights in NF4 with double quantisation (about 4.127 bits each)."""
    n, expected = _nf4_70b_gb()
    return check_number(
        answer, expected, name="nf4_70b_gb", rel_tol=0.01,
        hint="start from the bits one weight takes in NF4 with its constants (bits_per_weight() above), then turn "
             "the whole model's bits into bytes and into GB (10^9 bytes).",
        explanation=f"{n:,} × 4.127 / 8 bytes ≈ {expected:.1f} GB: the 70B weights fit one 48 GB GPU, with room "
                    "left for the adapters, their Adam moments and the activations. In 16 bits they take "
                    f"{2 * n / 1e9:.0f} GB.",
        mistakes=[(n * 4 / 8 / 1e9, "that counts the 4-bit codes only; the block constants add about 0.127 bit "
                                    "a weight."),
                  (n * 4.5 / 8 / 1e9, "that is 4.5 bits: fp32 constants without double quantisation."),
                  (n * 2 / 1e9, "that is the 16-bit model."),
                  (n * 4.127 / 1e9, "that is in gigabits; divide by 8 for bytes."),
                  (n * 4.127 / 8 / 2**30, "that is GiB (2^30 bytes); the exercise asks for GB (1e9 bytes)."),
                  (n * 32 / 8 / 1e9, "that is the fp32 model.")])


def dequantize_block(packed, absmax):
    """The 2 * len(packed) weights of one NF4 block."""
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1).long()  # high half first
    return NF4_CODEBOOK[codes] * absmax


def _dequantize_block_mistakes(case, got):
    packed, absmax = case
    low_first = torch.stack([packed & 0xF, packed >> 4], dim=1).reshape(-1).long()
    high_first = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1).long()
    return _first_match(got, [
        (NF4_CODEBOOK[low_first] * absmax, "the two codes of a byte are swapped: the first number of the pair "
                                            "sits in the high four bits (byte >> 4)."),
        (NF4_CODEBOOK[high_first], "the levels are in [-1, 1]; multiply them by the block's absmax."),
        (high_first.float() * absmax, "those are the codes (0 to 15); look each one up in NF4_CODEBOOK first."),
        (NF4_CODEBOOK[high_first] / absmax, "multiply by absmax: quantising divided by it."),
    ])


DEQUANTIZE_CASES = [(torch.tensor([0x7F, 0x80, 0x0F, 0xF0, 0x12, 0xED], dtype=torch.uint8), 0.5),
                    (torch.arange(0, 256, 8, dtype=torch.uint8), 0.0371)]


@right_answer(lambda: dequantize_block, fresh_inputs=True)
def check_dequantize_block(fn) -> bool:
    """12: dequantize_block(packed, absmax) = the 2 * len(packed) weights of one block, back from its bytes."""
    return check_function(
        fn, name="dequantize_block", arg_names=["packed", "absmax"], cases=DEQUANTIZE_CASES,
        reference=dequantize_block, diagnose=_dequantize_block_mistakes, atol=1e-7,
        hint="each byte packs two 4-bit codes, the first in the high half: take both out with bit operations, "
             "look each code up in NF4_CODEBOOK, and undo the block's absmax scaling.",
        explanation="unpack (high half first), look up, scale: exactly what nf4_dequantize does for every block, "
                    "and what bitsandbytes' dequantize_4bit returns bit for bit. The byte 0x7F holds codes 7 and "
                    "15: the levels 0.0 and 1.0, so the weights 0 and absmax.")


@right_answer(lambda: "b")
def check_zero_level(answer) -> bool:
    """12: why NF4 keeps an exact zero level."""
    return check_choice(
        answer, check_zero_level.right_answer(), name="zero_level",
        wrong={"a": "a level at zero does not make 4 bits hold more: there are still 16 levels, and giving one "
                    "to zero costs the symmetry (7 negative levels against 8 positive).",
               "c": "the absmax scaling already maps every block into [-1, 1]; a zero level has nothing to do "
                    "with overflow.",
               "d": "the codes are looked up, never multiplied together, and a zero weight gets the code 7, not "
                    "the code 0."},
        explanation="weights at or near zero are the most common (the histogram peaks there), and a value that "
                    "is exactly zero, such as padding or a pruned weight, stays exactly zero after the round trip. "
                    "Without a zero level it would become a small nonzero number in every block.")
