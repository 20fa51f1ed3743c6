"""The building blocks of every graded exercise, and the messages they print.

Every `check_...(answer)` prints one line, `✓` and why the answer is right, or `✗` and what is wrong followed by
a hint, and returns True or False. An exercise not answered yet (its `None`, or a function that still returns
None) gets a neutral line saying what to replace, and no hint: the learner has not tried yet. A check never
raises: a wrong type, a wrong shape, or an exception inside the learner's own function all become a `✗` message.

A new exercise is usually one call of `check_number`, `check_choice` or `check_function` (docs/WORKSHOP.md),
decorated with its `right_answer`: the one place the answer is written, for the check, the tests and the teacher.

Graded with nbgrader (docs/GRADING.md), a function exercise marked `right_answer(..., fresh_inputs=True)` is also
checked inside `with fresh_inputs(seed):`, on inputs of the same shapes drawn afresh: the hidden tests of the
teacher edition, which a function that only fits the cases the check shows does not pass.
"""

from __future__ import annotations

import contextlib
import dis
import math
import numbers
from collections.abc import Callable, Iterator, Sequence

import torch

__all__ = ["check_choice", "check_function", "check_number"]

PASS, FAIL, WAITING = "✓", "✗", "…"


def right_answer(answer: Callable[[], object], *, fresh_inputs: bool = False) -> Callable:
    """Decorator: `check.right_answer()` returns the check's right answer, computed when asked: the value or letter
    to give, or, for a function exercise, the solution function (the code its notebook folds under it).
    `fresh_inputs=True`: the check draws its inputs anew inside `with fresh_inputs(seed):` (`check.fresh_inputs`),
    so the teacher edition gives it hidden tests."""
    def attach(check):
        check.right_answer = answer
        check.fresh_inputs = fresh_inputs
        return check

    return attach


_FRESH: dict[str, int | None] = {"seed": None, "drawn": 0}  # the active fresh_inputs seed; tensors drawn under it


@contextlib.contextmanager
def fresh_inputs(seed: int) -> Iterator[None]:
    """Within this block, function checks call the learner's function on inputs drawn afresh from a private stream
    seeded by `seed` (1, 2, ...), with the shapes and types of the cases they show: floating-point tensors from a
    normal distribution, byte tensors uniformly, the tensors inside dicts, lists and tuples too; numbers, strings
    and modules stay as they are. The learner's own random numbers are left alone."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 1:
        raise ValueError(f"seed must be a whole number >= 1 (0 is the cases the check shows), got {seed!r}")
    previous = _FRESH["seed"]
    _FRESH["seed"] = seed
    try:
        yield
    finally:
        _FRESH["seed"] = previous


def _generator(seed: int) -> torch.Generator:
    """A private random stream for a check's cases: seeded by `seed`, or anew inside `fresh_inputs`."""
    fresh = _FRESH["seed"]
    if fresh is None:
        return torch.Generator().manual_seed(seed)
    _FRESH["drawn"] += 1
    return torch.Generator().manual_seed(1_000_003 * fresh + seed)


def _redraw(value, g: torch.Generator):
    """`value` with its tensors drawn afresh from `g` (same shapes and dtypes), inside containers too."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            _FRESH["drawn"] += 1
            return torch.randn(value.shape, generator=g, dtype=value.dtype)
        if value.dtype == torch.uint8:
            _FRESH["drawn"] += 1
            return torch.randint(0, 256, value.shape, generator=g, dtype=torch.uint8)
        return value
    if isinstance(value, dict):
        return {k: _redraw(v, g) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not isinstance(value, str):
        return type(value)(_redraw(v, g) for v in value)
    return value


def _fresh_cases(cases: Sequence[tuple]) -> Sequence[tuple]:
    """The cases as shown, or, inside `fresh_inputs`, the same cases with their tensors drawn afresh."""
    if _FRESH["seed"] is None:
        return cases
    g = torch.Generator().manual_seed(1_000_003 * _FRESH["seed"])
    return [tuple(_redraw(arg, g) for arg in case) for case in cases]


def _passed(message: str) -> bool:
    print(f"{PASS} {message}")
    return True


def _failed(problem: str, hint: str) -> bool:
    print(f"{FAIL} {problem}\n  Hint: {hint}")
    return False


def _missing(name: str, hint: str) -> bool:
    """An exercise not answered yet: no ✗ and no hint before the learner has tried (`hint` is for the ✗ lines)."""
    print(f"{WAITING} `{name}` is not answered yet: replace its None with your answer, then run this cell again.")
    return False


def _stub_function(*args):
    """The stub of a function exercise: what a learner's function is before they write it."""
    return None


def _is_stub(fn) -> bool:
    """True if `fn`'s body is only `return None` (a docstring aside): an exercise not written yet."""
    code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__func__", None), "__code__", None)
    return code is not None and _instructions(code) == _instructions(_stub_function.__code__)


def _instructions(code) -> list[tuple[str, object]]:
    """The bytecode as (operation, argument value): the same for equal bodies whatever their constants' order."""
    return [(i.opname, i.argval) for i in dis.get_instructions(code)]


def _not_written(name: str) -> bool:
    """A function exercise still equal to its stub `return None`: one short line, without the call's arguments
    (they can be large tensors)."""
    print(f"{WAITING} `{name}` is not written yet: replace its `return None` with your code, then run this cell "
          "again.")
    return False


def _describe(value) -> str:
    """A short description of a value for a message: its type, and its shape or a short repr."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _to_number(value) -> float | None:
    """`value` as a float if it is one real number (Python, NumPy or a one-element tensor), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            return None
        value = value.item()
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def _close(a: float, b: float, rel_tol: float) -> bool:
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-12)


def check_number(answer, expected: float, *, name: str, hint: str, explanation: str, rel_tol: float = 0.01,
                 mistakes: Sequence[tuple[float, str]] = ()) -> bool:
    """✓ if `answer` is a number within `rel_tol` of `expected`; a value listed in `mistakes` gets its own message."""
    if answer is None:
        return _missing(name, hint)
    value = _to_number(answer)
    if value is None:
        return _failed(f"`{name}` should be a number, got {_describe(answer)}.", hint)
    if not math.isfinite(value):
        return _failed(f"`{name}` is {value}: it should be a finite number.", hint)
    if _close(value, expected, rel_tol):
        return _passed(explanation)
    for wrong, message in mistakes:
        if _close(value, wrong, rel_tol):
            return _failed(f"{name} = {value:g}: {message}", hint)
    direction = "too large" if value > expected else "too small"
    return _failed(f"{name} = {value:g} is {direction}.", hint)


def check_choice(answer, correct: str, wrong: dict[str, str], *, name: str, explanation: str,
                 hint: str = "read each option again against the cells above; exactly one is right.") -> bool:
    """Multiple choice: `answer` is one letter; each wrong letter maps to why that option is wrong."""
    letters = sorted({correct, *wrong})
    choices = ", ".join(repr(letter) for letter in letters)
    if answer is None:
        return _missing(name, f"set it to one letter: {choices}.")
    if not isinstance(answer, str):
        return _failed(f"`{name}` should be a letter in quotes such as 'a', got {_describe(answer)}.",
                       f"set it to one of {choices}.")
    letter = answer.strip().strip("()").strip().lower()
    if letter not in letters:
        return _failed(f"{answer!r} is not one of the options {choices}.", f"set `{name}` to one of {choices}.")
    if letter == correct:
        return _passed(f"({letter}) is right. {explanation}")
    return _failed(f"({letter}) is not right: {wrong[letter]}", hint)


def _format_call(name: str, args: tuple, arg_names: Sequence[str] | None) -> str:
    parts = []
    for i, arg in enumerate(args):
        if isinstance(arg, torch.Tensor):
            shown = f"shape {tuple(arg.shape)}"
        elif isinstance(arg, torch.nn.Module):
            params = list(arg.parameters())
            trainable, total = sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
            shown = f"a {type(arg).__name__} with {trainable:,} of {total:,} parameters trainable"
        else:
            shown = repr(arg)
        parts.append(f"{arg_names[i]}={shown}" if arg_names else shown)
    return f"{name}({', '.join(parts)})"


def _clone(args: tuple) -> tuple:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _compare(got, expected, rtol: float, atol: float) -> str | None:
    """None if `got` matches `expected` (a number, a tensor, or a tuple of tensors), else what differs."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"returned {_describe(got)}, not a tensor"
        if got.shape != expected.shape:
            return f"returned shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        if got.is_complex() or not torch.allclose(got.detach().to(expected.dtype), expected, rtol=rtol, atol=atol):
            return "returned a tensor of the right shape with the wrong values"
        return None
    if isinstance(expected, tuple):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"returned {_describe(got)}, expected a tuple of {len(expected)}"
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            problem = _compare(g, e, rtol, atol)
            if problem:
                return f"item {i}: {problem}"
        return None
    value = _to_number(got)
    if value is None:
        return f"returned {_describe(got)}, not a number"
    if isinstance(expected, int):
        return None if value == expected else f"returned {value:g}, {'too large' if value > expected else 'too small'}"
    return None if _close(value, expected, rtol) else f"returned {value:g}, expected about {expected:g}"


def check_function(fn, *, name: str, cases: Sequence[tuple], reference: Callable, hint: str, explanation: str,
                   arg_names: Sequence[str] | None = None, diagnose: Callable | None = None,
                   rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """Call `fn(*case)` for each case and compare with `reference(*case)`: numbers exactly when the reference
    returns an int, tensors (or tuples of them) with allclose. `diagnose(case, got)` may name a known mistake.
    Tensor arguments are passed as copies and must come back unchanged (no in-place edits of the inputs)."""
    if fn is None:
        return _missing(name, hint)
    if not callable(fn):
        return _failed(f"`{name}` should be a function, got {_describe(fn)}.", hint)
    for case in _fresh_cases(cases):
        call = _format_call(name, case, arg_names)
        expected = reference(*case)  # before the student's code runs, in case it changes a shared object
        args = _clone(case)
        try:
            got = fn(*args)
        except Exception as err:  # the student's code failed: report it instead of a traceback
            return _failed(f"{call} raised {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                           _diagnosis(diagnose, case, err) or hint)
        if got is None:
            if _is_stub(fn):  # still the stub: say what to write, as for a missing answer
                return _not_written(name)
            return _failed(f"{call} returned None: every path of your function must return its result.", hint)
        problem = _compare(got, expected, rtol, atol)
        if problem:
            return _failed(f"{call} {problem}.", _diagnosis(diagnose, case, got) or hint)
        for i, (before, after) in enumerate(zip(case, args, strict=True)):
            if isinstance(before, torch.Tensor) and not torch.equal(before, after):
                which = arg_names[i] if arg_names else f"argument {i}"
                return _failed(f"{call} changed its input `{which}` in place.",
                               "compute a new tensor (for example `w + delta`, not `w += delta`).")
    return _passed(explanation)


def _diagnosis(diagnose, case, got) -> str | None:
    """The specific message `diagnose` gives for this wrong result, if any (a failing diagnose is ignored)."""
    if diagnose is None:
        return None
    try:
        return diagnose(case, got)
    except Exception:
        return None


def _equals(got, expected) -> bool:
    """True if `got` (any type) equals `expected`: tensors by allclose, numbers by value."""
    if isinstance(expected, torch.Tensor):
        return (isinstance(got, torch.Tensor) and got.shape == expected.shape
                and torch.allclose(got.detach().to(expected.dtype), expected, rtol=1e-4, atol=1e-5))
    value = _to_number(got)
    return value is not None and _close(value, float(expected), 1e-9)


def _first_match(got, candidates: Sequence[tuple[object, str]]) -> str | None:
    for value, message in candidates:
        if _equals(got, value):
            return message
    return None


def _base_parameters() -> int:
    from ..model import base_model_card

    return int(base_model_card()["training"]["parameters"])
