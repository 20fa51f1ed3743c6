"""Graded exercises of notebook 07: Low rank: the intuition behind LoRA."""

from __future__ import annotations

import functools
import math

import torch

from .core import (
    _describe,
    _failed,
    _first_match,
    _format_call,
    _generator,
    _is_stub,
    _missing,
    _not_written,
    _passed,
    check_number,
    right_answer,
)

__all__ = ["check_break_even_rank", "check_low_rank_factors", "check_rank_one_error", "check_rank_8_weight_error"]


@right_answer(lambda: (512 * 128 - 1) // (512 + 128))  # the largest r with r (m + n) < m n
def check_break_even_rank(answer) -> bool:
    """07: the largest rank r at which B (512, r) and A (r, 128) hold fewer numbers than up_proj's 512 x 128."""
    m, n = 512, 128
    expected = check_break_even_rank.right_answer()
    return check_number(
        answer, expected, name="break_even_rank", rel_tol=1e-9,
        hint="count the numbers B and A hold at rank r, and the numbers up_proj holds; find the largest whole r for "
             "which the factors are still fewer.",
        explanation=f"{expected} · 640 = {expected * (m + n):,} < 65,536, while {expected + 1} · 640 = "
                    f"{(expected + 1) * (m + n):,} is already more. The break-even is m·n / (m + n), half the side "
                    "of a square matrix; LoRA's usual r of 1 to 64 stays far below it, where the factors are small.",
        mistakes=[(expected + 1, f"at r = {expected + 1} the factors hold {(expected + 1) * (m + n):,} numbers, "
                                 "more than the matrix's 65,536."),
                  (m * n / (m + n), "r counts columns of B (and rows of A): it is a whole number. Round the right "
                                    "way."),
                  *[(r, "that is the break-even of a square 128 × 128 matrix (r · 256 against 16,384); up_proj is "
                        "512 × 128, so the factors hold r · (512 + 128).") for r in (63, 64)],
                  *[(r, "that is the break-even of a square 512 × 512 matrix; up_proj is 512 × 128.")
                    for r in (255, 256)],
                  (128, "a 512 × 128 matrix has rank at most 128, but the factors outgrow the matrix well before that: "
                        "at r = 128 they hold 81,920 numbers.")])


def low_rank_factors(M, r):
    """(B (m, r), A (r, n)) with B @ A the best rank-r approximation of M (m, n)."""
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)  # U (m, k), S (k,), Vh (k, n)
    return U[:, :r] * S[:r], Vh[:r]  # B = U_r diag(S_r) (m, r), A = V_r^T (r, n)


def _low_rank_factor_mistakes(M: torch.Tensor, r: int, product: torch.Tensor) -> str | None:
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    candidates = [
        (U[:, :r] @ Vh[:r], "the singular values are missing: B A must include the r largest singular values "
                            "once, in B or in A."),
        (U[:, :r] @ torch.diag(S[:r] ** 2) @ Vh[:r], "the singular values are in twice: put S[:r] into B or into A "
                                                      "(or its square root into both), not S into both."),
        (U[:, -r:] @ torch.diag(S[-r:]) @ Vh[-r:], "those are the r smallest directions: torch.linalg.svd sorts S "
                                                   "in decreasing order, so keep the first r."),
    ]
    if M.shape[0] >= M.shape[1]:  # a transposed Vh only has the right shape here
        candidates.append((U[:, :r] @ torch.diag(S[:r]) @ Vh[:, :r].T,
                           "wrong right singular vectors: torch.linalg.svd returns Vh = Vᵀ, whose ROWS are the right "
                           "singular vectors, so A = Vh[:r] (with the older torch.svd, which returns V: V[:, :r].T)."))
    return _first_match(product, candidates)


@right_answer(lambda: low_rank_factors, fresh_inputs=True)
def check_low_rank_factors(fn) -> bool:
    """07: low_rank_factors(M, r) -> (B (m, r), A (r, n)) whose product B @ A is the best rank-r approximation of M."""
    name = "low_rank_factors"
    hint = ("Eckart–Young: the best rank-r approximation keeps the r largest singular directions. Take the SVD "
            "of M (torch.linalg.svd, full_matrices=False) and split what you keep between B (m, r) and A (r, n).")
    if fn is None:
        return _missing(name, hint)
    if not callable(fn):
        return _failed(f"`{name}` should be a function, got {_describe(fn)}.", hint)
    g = _generator(7)  # a private stream; drawn afresh inside fresh_inputs
    cases = [(torch.randn(6, 4, generator=g, dtype=torch.float64), 2),  # tall, wide and square
             (torch.randn(5, 8, generator=g, dtype=torch.float64), 3),
             (torch.randn(7, 7, generator=g, dtype=torch.float64), 1)]
    for M, r in cases:
        m, n = M.shape
        call = _format_call(name, (M, r), ["M", "r"])
        argument = M.clone()
        try:
            got = fn(argument, r)
        except Exception as err:  # the student's code failed: report it instead of a traceback
            return _failed(f"{call} raised {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", hint)
        if got is None:
            if _is_stub(fn):
                return _not_written(name)
            return _failed(f"{call} returned None: every path of your function must return its result.", hint)
        if not (isinstance(got, (tuple, list)) and len(got) == 2 and all(isinstance(t, torch.Tensor) for t in got)):
            if isinstance(got, torch.Tensor) and tuple(got.shape) == (m, n):
                return _failed(f"{call} returned one ({m}, {n}) matrix.",
                               "return the two factors `B, A` that LoRA would store, not their product.")
            return _failed(f"{call} returned {_describe(got)}, expected a pair (B, A) of tensors.", hint)
        B, A = got
        if tuple(B.shape) != (m, r) or tuple(A.shape) != (r, n):
            return _failed(f"{call} returned B of shape {tuple(B.shape)} and A of shape {tuple(A.shape)}; expected "
                           f"B ({m}, {r}) and A ({r}, {n}).",
                           "B takes the first r columns of U (scaled by S), A the first r rows of Vh.")
        if B.is_complex() or A.is_complex():
            return _failed(f"{call} returned complex tensors.", hint)
        product = B.detach().to(M.dtype) @ A.detach().to(M.dtype)  # (m, r) @ (r, n) -> (m, n)
        best_B, best_A = low_rank_factors(M, r)
        if not torch.allclose(product, best_B @ best_A, rtol=1e-4, atol=1e-5):
            return _failed(f"{call}: B @ A is not the best rank-{r} approximation of M.",
                           _low_rank_factor_mistakes(M, r, product) or hint)
        if not torch.equal(argument, M):
            return _failed(f"{call} changed its input `M` in place.", "compute new tensors; leave M as it is.")
    return _passed("B = U_r diag(S_r) is (m, r) and A = V_rᵀ is (r, n): r · (m + n) numbers whose product is the "
                   "truncated SVD, the best rank-r approximation (Eckart–Young). Where S goes (into B, into A, or "
                   "its square root into both) does not change B A; LoRA learns such a pair directly.")


@right_answer(lambda: 4.1996 / math.hypot(5.6478, 4.1996))  # sqrt(dropped sigma^2) / sqrt(all sigma^2)
def check_rank_one_error(answer) -> bool:
    """07: relative Frobenius error of the best rank-1 approximation of a matrix with singular values 5.6478, 4.1996."""
    s1, s2 = 5.6478, 4.1996  # printed by notebook 07's first SVD cell (the other three are 0)
    norm = math.hypot(s1, s2)  # ||M||_F = sqrt(s1^2 + s2^2)
    expected = check_rank_one_error.right_answer()
    return check_number(
        answer, expected, name="rank_one_error", rel_tol=0.01,
        hint="a Frobenius norm is the square root of a sum of squared singular values; Eckart–Young says which "
             "singular values the error of the best rank-1 approximation is made of.",
        explanation=f"sqrt(4.1996²) / sqrt(5.6478² + 4.1996²) = 4.1996 / {norm:.4f} ≈ {expected:.3f}. Squared, "
                    f"{expected ** 2:.3f} is the share of the energy dropped: relative error = sqrt(1 - energy kept), "
                    "as the picture's 90.3% kept and 31.2% error showed above.",
        mistakes=[(s2, "that is the absolute error ||M - M_1||_F; divide by ||M||_F for the relative error."),
                  (s2 / s1, "that divides by sigma_1 alone (the error in the spectral norm); ||M||_F is "
                            "sqrt(sigma_1² + sigma_2²)."),
                  (s2 / (s1 + s2), "the Frobenius norm adds squares: sqrt(sigma_1² + sigma_2²), not "
                                   "sigma_1 + sigma_2."),
                  (s2 ** 2 / norm ** 2, "that is the share of the energy dropped; the relative error is its square "
                                        "root."),
                  (s1 ** 2 / norm ** 2, "that is the share of the energy kept; the error comes from what is dropped."),
                  (s1 / norm, "that is ||M_1||_F / ||M||_F, the size of what is kept, not of the error."),
                  (100 * s2 / norm, "that looks like a percentage; give a fraction between 0 and 1."),
                  (0.0, "M has rank 2: a rank-1 approximation cannot be exact (rank 2 would be).")])


@functools.cache
def _pretrained_energy(layer: str = "blocks.0.attn.q_proj.weight", r: int = 8) -> float:
    """The share of a shipped pretrained weight's energy (sum of squared singular values) in its top r directions."""
    from ..model import load_base_model

    with torch.random.fork_rng():  # building the model draws random numbers: the learner's stream stays as it was
        W = load_base_model("cpu").get_parameter(layer).detach().double()
    s2 = torch.linalg.svdvals(W) ** 2
    return (s2[:r].sum() / s2.sum()).item()


@right_answer(lambda: math.sqrt(1 - _pretrained_energy()))  # the square root of the energy dropped
def check_rank_8_weight_error(answer) -> bool:
    """07: the relative error of a rank-8 copy of block 0's pretrained q_proj, from its energy share alone."""
    kept = _pretrained_energy()
    expected = check_rank_8_weight_error.right_answer()
    return check_number(
        answer, expected, name="weight_rank8_error", rel_tol=0.01,
        hint="by Eckart–Young, ||M - M_r||_F² is the sum of the σᵢ² that rank r drops; write the relative error with "
             "the share of the energy that rank 8 keeps.",
        explanation=f"sqrt(1 - {kept:.3f}) ≈ {expected:.2f}: a rank-8 copy of W₀ is off by {100 * expected:.0f}% of "
                    "its norm, and no fine-tuning would start from that. LoRA never makes such a copy: it keeps W₀ "
                    "whole and frozen, and bets only that the change is close to low rank: the change measured "
                    "above is 5.1% to 17.4% of W₀'s norm, and its top 8 directions hold about 0.8 of its energy in the "
                    "attention projections (the second table).",
        mistakes=[(1 - kept, "that is the share of the energy dropped (a sum of squares); the relative error is its "
                             "square root."),
                  (kept, "that is the share of the energy kept; the error comes from what is dropped."),
                  (math.sqrt(kept), "that is ||M_8||_F / ||M||_F, the size of what is kept, not of the error."),
                  (100 * expected, "that looks like a percentage; give a fraction between 0 and 1.")])
