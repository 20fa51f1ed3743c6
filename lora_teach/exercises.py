"""Graded exercises: instant checks that say what is wrong and give a hint, never a traceback.

Every `check_...(answer)` prints one line, `✓` and why the answer is right, or `✗` and what is wrong followed by
a hint, and returns True or False. It never raises: a missing answer (`None`, the stub of the student edition),
a wrong type, a wrong shape, or an exception inside the student's own function all become a `✗` message.

Notebook 00: check_weights_megabytes, check_linear_weight_shape
Notebook 01: check_always_austen_accuracy, check_block_parameters, check_largest_share, check_shakespeare_gap
Notebook 02: check_adamw_memory_gb, check_training_bytes, check_halved_batch, check_why_forgetting
Notebook 03: check_adapter_parameter_count, check_adapter_without_skip, check_pfeiffer_parameter_count,
    check_why_adapters_cannot_merge
Notebook 04: check_prefix_attention, check_prefix_never_exact, check_prefix_parameter_count,
    check_prefix_training_parameters
Notebook 05: check_t5_prompt_numbers, check_prepend_virtual_tokens, check_prompt_activation_memory
Notebook 06: check_label_logit_position, check_p_tuning_kept_numbers, check_why_prompt_encoder
Notebook 07: check_break_even_rank, check_low_rank_factors, check_rank_one_error, check_why_lora_works
Notebook 08: check_lora_forward, check_lora_merge, check_lora_parameter_count, check_alpha_when_rank_grows
Notebook 09: check_rslora_scaling, check_adapter_file_bytes, check_budget_targets
Notebook 10: check_lora_memory_fraction, check_method_for_serving, check_small_data_reading
Building blocks for new exercises: check_number, check_choice, check_function (see docs/WORKSHOP.md)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch

PASS, FAIL = "✓", "✗"


# ------------------------------------------------------------------------------------------------ reporting
def _passed(message: str) -> bool:
    print(f"{PASS} {message}")
    return True


def _failed(problem: str, hint: str) -> bool:
    print(f"{FAIL} {problem}\n  Hint: {hint}")
    return False


def _missing(name: str, hint: str) -> bool:
    return _failed(f"`{name}` is still None: replace the None with your answer, then run the cell again.", hint)


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


# ------------------------------------------------------------------------------------------- building blocks
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
    for case in cases:
        call = _format_call(name, case, arg_names)
        expected = reference(*case)  # before the student's code runs, in case it changes a shared object
        args = _clone(case)
        try:
            got = fn(*args)
        except Exception as err:  # the student's code failed: report it instead of a traceback
            return _failed(f"{call} raised {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                           _diagnosis(diagnose, case, err) or hint)
        if got is None:
            return _failed(f"{call} returned None: replace `return None` with your code.", hint)
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


# ----------------------------------------------------------------------------------------------- notebook 00
def _base_parameters() -> int:
    from .model import base_model_card

    return int(base_model_card()["training"]["parameters"])


def check_weights_megabytes(answer) -> bool:
    """00: megabytes (10^6 bytes) of the base model's weights in fp32."""
    n = _base_parameters()
    expected = 4 * n / 1e6
    return check_number(
        answer, expected, name="weights_mb", rel_tol=0.02,
        hint="parameters × bytes per parameter, then divide by 10^6; an fp32 number takes 4 bytes.",
        explanation=f"{n:,} parameters × 4 bytes = {4 * n:,} bytes ≈ {expected:.2f} MB, "
                    "the size of the weights file the package ships.",
        mistakes=[(n / 1e6, "that is one byte per parameter; an fp32 number takes 4 bytes."),
                  (2 * n / 1e6, "that is 2 bytes per parameter, the size in fp16; the weights are fp32."),
                  (8 * n / 1e6, "that is 8 bytes per parameter, the size in fp64; the weights are fp32."),
                  (4 * n / 2**20, "that is in MiB (2^20 bytes); this exercise asks for MB (10^6 bytes)."),
                  (4 * n, "that is in bytes; divide by 10^6 for MB.")])


def check_linear_weight_shape(answer) -> bool:
    """00: the shape of nn.Linear(128, 512).weight."""
    hint = "make one and look: `torch.nn.Linear(128, 512).weight.shape`."
    if answer is None:
        return _missing("weight_shape", hint)
    if not isinstance(answer, (tuple, list, torch.Size)) or not all(
            isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in answer):
        return _failed(f"`weight_shape` should be a tuple of ints such as (3, 4), got {_describe(answer)}.", hint)
    shape = tuple(int(n) for n in answer)
    if shape == (512, 128):
        return _passed("(512, 128) = (out_features, in_features). The layer computes y = x @ W.T + b, the "
                       "papers' h = W x. Keep it in mind for LoRA: A is (r, in) and B is (out, r).")
    if shape == (128, 512):
        return _failed("(128, 512) is (in_features, out_features): PyTorch stores the weight the other way round.",
                       "nn.Linear stores (out_features, in_features) and computes x @ W.T.")
    return _failed(f"{shape} is not the shape of that weight.", hint)


# ----------------------------------------------------------------------------------------------- notebook 01
AUTHORS_PER_SPLIT = 3  # author_task: the same number of validation passages (100) for each of 3 authors


def check_always_austen_accuracy(answer) -> bool:
    """01: validation accuracy of a model that always answers "austen" on the author task."""
    expected = 1 / AUTHORS_PER_SPLIT
    return check_number(
        answer, expected, name="always_austen", rel_tol=0.02,
        hint="how many of the validation passages are Austen's? The splits hold the same number per author.",
        explanation=f"{expected:.3f}: the validation split has 100 passages by each of the 3 authors, so "
                    "always answering 'austen' is right on 100 of 300. Chance accuracy can hide a model that "
                    "says only one thing; that is why the baseline cell also counts the predictions.",
        mistakes=[(100 * expected, "that looks like a percentage; give a fraction between 0 and 1."),
                  (1.0, "the model is right only on the passages Austen wrote, not on all of them."),
                  (0.0, "the passages Austen wrote are answered correctly."),
                  (100.0, "that is how many passages it gets right; divide by the number of passages.")])


def _block_reference(d: int) -> int:
    from .model import Block, GPTConfig

    with torch.random.fork_rng(devices=[]):  # a check must not move the notebook's random stream
        return sum(p.numel() for p in Block(GPTConfig(n_embd=d, n_head=1)).parameters())


def _block_mistakes(case, got):
    (d,) = case
    right = _block_reference(d)
    return _first_match(got, [
        (right - 4 * d, "you left out the two layer norms: each has a weight and a bias of d numbers."),
        (right - 9 * d, "you left out the biases: every Linear has one, of out_features numbers."),
        (right - 13 * d, "you left out the biases and the two layer norms."),
        (right - 6 * d * d, "the MLP goes d → 4d → d: each of its two matrices has 4·d² numbers."),
        (4 * right, "that is four blocks; the function counts one."),
    ])


def check_block_parameters(fn) -> bool:
    """01: block_parameters(d) = the number of parameters in one transformer block of width d."""
    d = 128
    right = _block_reference(d)
    return check_function(
        fn, name="block_parameters", arg_names=["d"], cases=[(8,), (16,), (128,)], reference=_block_reference,
        diagnose=_block_mistakes,
        hint="add up: ln_1 and ln_2 (weight and bias, d each), q/k/v/o_proj (d×d weight + d bias each), "
             "up_proj (d×4d + 4d) and down_proj (4d×d + d).",
        explanation=f"12·d² + 13·d. At d = {d}: {right:,} per block, and the 4 blocks hold {4 * right:,} of the "
                    f"base model's {_base_parameters():,} parameters; the rest are the embeddings, the final "
                    "layer norm and the output head.")


def check_largest_share(answer) -> bool:
    """01: in which kind of layer does full fine-tuning change the most parameters?"""
    return check_choice(
        answer, "c", name="largest_share",
        wrong={"a": "the token and position embeddings are small tables here (97 characters, 128 positions): "
                    "a few percent of the parameters (see the budget table).",
               "b": "the four attention projections come second: four d×d matrices per block, against the "
                    "MLP's two d×4d matrices, twice as many numbers.",
               "d": "a layer norm has only 2·d parameters: 0.3% of the model together."},
        explanation="up_proj and down_proj hold about 63% of the parameters. Full fine-tuning changes every "
                    "parameter, so most of what it changes sits in the MLP.")


def check_shakespeare_gap(answer) -> bool:
    """01: why is the base model's loss on Shakespeare so much higher than on Austen?"""
    return check_choice(
        answer, "c", name="shakespeare_gap",
        wrong={"a": "every shipped text is covered by the 97-character vocabulary; CharTokenizer raises an error "
                    "on a character it lacks, it never scores one as wrong.",
               "b": "the loss is a mean per character, so the length of the text does not change it.",
               "d": "fine-tuning this same model on Shakespeare brings its loss down a long way (notebook 02): "
                    "it can represent the new text, it has just never seen it."},
        explanation="Pretraining on Austen never showed the model speaker names in capitals with a colon, verse "
                    "line breaks, or words like 'thou' and 'hath'. That gap is what fine-tuning must close.")


# ----------------------------------------------------------------------------------------------- notebook 02
def check_adamw_memory_gb(answer) -> bool:
    """02: GB (10^9 bytes) of weights + gradients + AdamW state for 125 M parameters in fp32."""
    n = 125e6
    return check_number(
        answer, 16 * n / 1e9, name="adamw_gb", rel_tol=0.01,
        hint="per parameter: the weight, its gradient and Adam's two moments, 4 bytes each in fp32.",
        explanation="125e6 × 16 bytes = 2.0 GB before activations: 4 for the weight, 4 for its gradient, 8 for "
                    "Adam's two moments.",
        mistakes=[(4 * n / 1e9, "that counts only the weights; the gradients and Adam's two moments come on top."),
                  (8 * n / 1e9, "that counts the weights and gradients; Adam keeps two more numbers per parameter."),
                  (12 * n / 1e9, "AdamW keeps two moments per parameter (a mean and a mean of squares), not one."),
                  (16 * n / 2**30, "that is in GiB (2^30 bytes); this exercise asks for GB (10^9 bytes)."),
                  (16 * n, "that is in bytes; divide by 10^9 for GB.")])


def _small_models() -> list[tuple[torch.nn.Module]]:
    """Three small GPTs: all trainable, only the output head trainable, blocks frozen (as PEFT methods do)."""
    from .model import GPT, GPTConfig

    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=32)
    with torch.random.fork_rng(devices=[]):  # a check must not move the notebook's random stream
        full, head_only, blocks_frozen = GPT(cfg), GPT(cfg), GPT(cfg)
    head_only.requires_grad_(False).lm_head.requires_grad_(True)
    blocks_frozen.blocks.requires_grad_(False)
    return [(full,), (head_only,), (blocks_frozen,)]


def _memory_reference(model) -> int:
    from .measure import training_memory

    return training_memory(model)["total"]


def _memory_mistakes(case, got):
    (model,) = case
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return _first_match(got, [
        (16 * total, "you counted a gradient and Adam's moments for frozen parameters too; only parameters with "
                     "requires_grad=True get them."),
        (16 * trainable, "the frozen weights still sit in memory: count 4 bytes for every parameter, trainable "
                         "or not."),
        (total + 3 * trainable, "that counts numbers, not bytes: multiply by 4 (fp32)."),
        (4 * total + 4 * trainable, "you left out Adam's two moments (8 bytes per trainable parameter)."),
        (4 * total + 8 * trainable, "the gradients are missing (4 bytes per trainable parameter)."),
    ])


def check_training_bytes(fn) -> bool:
    """02: training_bytes(model) = bytes of weights (all) + gradients and AdamW moments (trainable only), fp32."""
    name = "training_bytes"
    hint = ("weights: 4 bytes × every parameter; gradient and two Adam moments: 4 + 8 bytes × each parameter "
            "with p.requires_grad.")
    models = _small_models() if callable(fn) else []
    flags = [[p.requires_grad for p in m.parameters()] for (m,) in models]
    ok = check_function(
        fn, name=name, arg_names=["model"], cases=models, reference=_memory_reference, diagnose=_memory_mistakes,
        hint=hint,
        explanation="4 bytes per parameter for the weights, plus 12 per trainable one (gradient and two moments). "
                    "Freeze most of the model and the 12 bytes vanish for those parameters: the first saving "
                    "of parameter-efficient fine-tuning.")
    if ok and any([p.requires_grad for p in m.parameters()] != f for (m,), f in zip(models, flags, strict=True)):
        return _failed(f"{name} changed which parameters require grad.", "only read p.requires_grad; do not set it.")
    return ok


def check_halved_batch(answer) -> bool:
    """02: what happens to the four lines of the memory table when the batch is halved?"""
    return check_choice(
        answer, "b", name="halved_batch",
        wrong={"a": "weights, gradients and Adam's moments exist once per parameter, whatever the batch size.",
               "c": "the activations are saved for every position of every example in the batch: they grow with "
                    "batch × sequence length.",
               "d": "a gradient holds one number per parameter whatever the batch; fewer examples change its "
                    "values, not its size."},
        explanation="Try it: `activation_memory(model, shakespeare.train_batch(8, torch.Generator()))` gives "
                    "about half the activation line above, while the other lines depend only on the parameters.")


def check_why_forgetting(answer) -> bool:
    """02: why does the Austen loss rise after fine-tuning on Shakespeare only?"""
    return check_choice(
        answer, "c", name="why_forgetting",
        wrong={"a": "the Shakespeare task samples only from the Shakespeare corpus; and training on Austen text "
                    "would lower the Austen loss, not raise it.",
               "b": "the learning rate sets how far the weights move; a larger one usually makes forgetting worse, "
                    "not better.",
               "d": "the validation passages are fixed; the same text now gets a higher loss because the model "
                    "changed."},
        explanation="This is catastrophic forgetting: one set of weights serves both kinds of text, and the "
                    "Shakespeare gradients move them with nothing asking them to keep serving Austen. The later "
                    "notebooks measure how much each parameter-efficient method forgets.")


# ------------------------------------------------------------------------------ later notebooks (03 - 09)
def check_adapter_parameter_count(fn) -> bool:
    """Adapters: adapter_parameters(d, m) = parameters of one bottleneck adapter d → m → d, with biases."""
    def reference(d, m):
        return 2 * m * d + d + m

    def mistakes(case, got):
        d, m = case
        return _first_match(got, [
            (2 * m * d, "you left out the biases: m for the down-projection, d for the up-projection."),
            (m * d + m, "an adapter has two projections: down (d → m) and up (m → d)."),
            (m * d + d, "an adapter has two projections: down (d → m) and up (m → d)."),
            (2 * m * d + 2 * d, "the down-projection's bias has m numbers (its output size), not d.")])

    return check_function(
        fn, name="adapter_parameters", arg_names=["d", "m"], cases=[(128, 16), (64, 8), (10, 3)],
        reference=reference, diagnose=mistakes,
        hint="down-projection: an (m, d) weight and m biases; up-projection: a (d, m) weight and d biases.",
        explanation="2·m·d + d + m: at d = 128 and m = 16 that is 4,240 per adapter, against 16,512 for one "
                    "attention projection (66,048 for the four).")


def check_prefix_parameter_count(fn) -> bool:
    """Prefix tuning: prefix_parameters(n_layer, prefix_len, d) = numbers kept after training, 2·L·P·d."""
    def reference(n_layer, prefix_len, d):
        return 2 * n_layer * prefix_len * d

    def mistakes(case, got):
        n_layer, prefix_len, d = case
        return _first_match(got, [
            (n_layer * prefix_len * d, "each prefix slot has a key AND a value vector."),
            (2 * prefix_len * d, "every attention layer gets its own prefix, not only the first."),
            (prefix_len * d, "that is prompt tuning's count (one vector per virtual token, at the input only); "
                             "a prefix lives at every layer, as keys and values.")])

    return check_function(
        fn, name="prefix_parameters", arg_names=["n_layer", "prefix_len", "d"],
        cases=[(4, 10, 128), (2, 3, 16), (1, 5, 8)], reference=reference, diagnose=mistakes,
        hint="per layer and per prefix slot, one key vector and one value vector of d numbers.",
        explanation="2·L·P·d: keys and values for every slot at every layer. The reparameterisation MLP used in "
                    "training is dropped afterwards; only these numbers are kept.")


def _prepend_reference(virtual, x):
    return torch.cat([virtual.expand(x.shape[0], -1, -1), x], dim=1)  # (B, P, C) + (B, T, C) -> (B, P+T, C)


def _prepend_mistakes(case, got):
    virtual, x = case
    if isinstance(got, Exception):
        return ("expand the (P, C) tensor to (B, P, C) first, e.g. `virtual.expand(x.shape[0], -1, -1)`, "
                "then torch.cat along dim 1 (time).") if "dimension" in str(got) or "size" in str(got) else None
    return _first_match(got, [
        (torch.cat([x, virtual.expand(x.shape[0], -1, -1)], dim=1),
         "the virtual tokens go in front of the sequence (positions 0..P-1), not after it.")])


def check_prepend_virtual_tokens(fn) -> bool:
    """Prompt tuning / prefix: prepend(virtual (P, C), x (B, T, C)) -> (B, P + T, C), the same P rows for every b."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    cases = [(rand(3, 4), rand(2, 5, 4)), (rand(1, 8), rand(3, 2, 8))]  # (P, C), (B, T, C)
    return check_function(
        fn, name="prepend", arg_names=["virtual", "x"], cases=cases, reference=_prepend_reference,
        diagnose=_prepend_mistakes,
        hint="expand `virtual` to (B, P, C) and concatenate it in front of x along the time dimension (dim 1).",
        explanation="Every sequence in the batch gets the same P vectors in front of it, along the time axis.")


def _prefix_attention_reference(q, k, v, prefix_k, prefix_v, causal_prefix=False, scale=True, append=False):
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
        (_prefix_attention_reference(*case, causal_prefix=True),
         f"every position must see all {P} prefix slots: the causal mask is (T, P+T) lower-triangular shifted by "
         "P, e.g. torch.ones(T, P + T).tril(diagonal=P)."),
        (no_mask, "positions must not see the future: mask the scores of later tokens with -inf before softmax."),
        (_prefix_attention_reference(*case, scale=False), "divide the scores by sqrt(C) before the softmax."),
        (_prefix_attention_reference(*case, append=True), "the prefix goes in front of the keys and values."),
    ])


def check_prefix_attention(fn) -> bool:
    """Prefix tuning: prefix_attention(q, k, v, prefix_k, prefix_v) for one head, q/k/v (B, T, C), prefix (P, C)."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    cases = [(rand(2, 5, 4), rand(2, 5, 4), rand(2, 5, 4), rand(3, 4), rand(3, 4)),
             (rand(1, 4, 8), rand(1, 4, 8), rand(1, 4, 8), rand(1, 8), rand(1, 8))]
    return check_function(
        fn, name="prefix_attention", arg_names=["q", "k", "v", "prefix_k", "prefix_v"], cases=cases,
        reference=_prefix_attention_reference, diagnose=_prefix_attention_mistakes,
        hint="keys = [prefix_k; k] and values = [prefix_v; v] along time (expand the prefix to the batch); "
             "scores = q @ keys^T / sqrt(C); every position sees all prefix slots and the past, never the future.",
        explanation="The prefix adds P keys and values at this layer that every position attends to; no token "
                    "is added to the input, and the output keeps the input's shape (B, T, C).")


def check_lora_parameter_count(fn) -> bool:
    """LoRA: lora_parameters(in_features, out_features, r) = trainable numbers of A (r, in) and B (out, r)."""
    def reference(in_features, out_features, r):
        return r * (in_features + out_features)

    def mistakes(case, got):
        i, o, r = case
        return _first_match(got, [
            (2 * r * i, "2·r·d is right only for square layers: A is (r, in_features) and B is (out_features, r)."),
            (2 * r * o, "2·r·d is right only for square layers: A is (r, in_features) and B is (out_features, r)."),
            (i * o, "that is the whole weight matrix; LoRA trains only A and B."),
            (r * i * o, "A and B are two thin matrices: r·in + out·r numbers, not a product of all three."),
            (r * (i + o) + o, "LoRA adds no bias: the base layer keeps its own, frozen.")])

    return check_function(
        fn, name="lora_parameters", arg_names=["in_features", "out_features", "r"],
        cases=[(128, 128, 8), (128, 512, 4), (512, 128, 1), (6, 10, 3)], reference=reference, diagnose=mistakes,
        hint="A has shape (r, in_features) and B has shape (out_features, r).",
        explanation="r·(in + out): 2,048 for a 128×128 projection at r = 8, against 16,384 numbers in its weight.")


def _lora_case(batch_shape, d_in, d_out, r, alpha, seed):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return (rand(*batch_shape, d_in), rand(d_out, d_in), rand(d_out), rand(r, d_in), rand(d_out, r), alpha, r)


def _lora_forward(x, weight, bias, lora_A, lora_B, alpha, r, scaling=None, with_bias=True):
    scaling = alpha / r if scaling is None else scaling
    base = x @ weight.T + (bias if with_bias else 0)  # (..., out)
    return base + scaling * (x @ lora_A.T @ lora_B.T)  # (..., in) -> (..., r) -> (..., out)


def _lora_forward_mistakes(case, got):
    x, weight, bias, lora_A, lora_B, alpha, r = case
    if isinstance(got, Exception):
        return ("mind the shapes: weight is (out, in) so the base is x @ weight.T; A is (r, in) so x @ A.T is "
                "(..., r); B is (out, r) so (x @ A.T) @ B.T is (..., out).") if "shape" in str(got) else None
    return _first_match(got, [
        (x @ weight.T + bias, "the LoRA branch is missing: add (alpha / r) · x Aᵀ Bᵀ."),
        (_lora_forward(*case, scaling=1.0), "the scaling alpha / r is missing."),
        (_lora_forward(*case, scaling=alpha), "you scaled by alpha instead of alpha / r: the update comes out r "
                                              "times too large (a known bug in several reimplementations)."),
        (_lora_forward(*case, scaling=r / alpha), "the scaling is upside down: alpha / r, not r / alpha."),
        (_lora_forward(*case, scaling=alpha / math.sqrt(r)), "alpha / sqrt(r) is rsLoRA's scaling; here use "
                                                             "the paper's alpha / r."),
        (_lora_forward(*case, with_bias=False), "the base layer's bias is missing."),
    ])


def check_lora_forward(fn) -> bool:
    """LoRA: lora_forward(x, weight, bias, lora_A, lora_B, alpha, r) = x Wᵀ + b + (alpha / r) x Aᵀ Bᵀ."""
    cases = [_lora_case((2, 3), 6, 4, 2, 4.0, 0), _lora_case((5,), 8, 8, 1, 1.0, 1), _lora_case((3,), 4, 10, 3, 6.0, 2)]
    return check_function(
        fn, name="lora_forward", arg_names=["x", "weight", "bias", "lora_A", "lora_B", "alpha", "r"], cases=cases,
        reference=_lora_forward, diagnose=_lora_forward_mistakes,
        hint="h = x @ weight.T + bias + (alpha / r) * (x @ lora_A.T @ lora_B.T); A is (r, in), B is (out, r).",
        explanation="h = W₀x + b + (alpha / r)·B A x, right on non-square layers too, where shape bugs hide.")


def _lora_merge_mistakes(case, got):
    weight, lora_A, lora_B, alpha, r = case
    return _first_match(got, [
        (weight + lora_B @ lora_A, "the scaling alpha / r is missing."),
        (weight + alpha * lora_B @ lora_A, "you scaled by alpha instead of alpha / r."),
        (weight - alpha / r * lora_B @ lora_A, "merging adds the update; subtracting it is unmerging."),
        (weight, "that is the unchanged weight: add (alpha / r) · B @ A."),
    ]) or ("B @ A has the weight's shape (out, in); A @ B or the transposes do not."
           if isinstance(got, torch.Tensor) and got.shape != weight.shape else None)


def check_lora_merge(fn) -> bool:
    """LoRA: lora_merge(weight, lora_A, lora_B, alpha, r) -> a new tensor W + (alpha / r) B A, shape (out, in)."""
    def reference(weight, lora_A, lora_B, alpha, r):
        return weight + (alpha / r) * (lora_B @ lora_A)  # (out, r) @ (r, in) -> (out, in)

    cases = []
    for d_in, d_out, r, alpha, seed in [(6, 4, 2, 4.0, 3), (5, 5, 1, 2.0, 4), (3, 7, 2, 1.0, 5)]:
        _x, weight, _bias, lora_A, lora_B, alpha, r = _lora_case((1,), d_in, d_out, r, alpha, seed)
        cases.append((weight, lora_A, lora_B, alpha, r))
    return check_function(
        fn, name="lora_merge", arg_names=["weight", "lora_A", "lora_B", "alpha", "r"], cases=cases,
        reference=reference, diagnose=_lora_merge_mistakes,
        hint="the merged weight is weight + (alpha / r) * (lora_B @ lora_A): (out, r) @ (r, in) = (out, in).",
        explanation="W + (alpha / r)·B A: one matrix again, so the merged layer costs no extra time at inference.")


# ----------------------------------------------------------------------------------------------- notebook 05
def check_t5_prompt_numbers(answer) -> bool:
    """05: numbers one task costs with prompt tuning on T5-XXL (d = 4096) and 100 prompt tokens."""
    n_tokens, d, n_layer = 100, 4096, 24
    expected = n_tokens * d
    return check_number(
        answer, expected, name="t5_prompt_numbers",
        hint="a soft prompt is one (n_tokens, d) tensor at the input, and nothing else trains.",
        explanation=f"{n_tokens} × {d:,} = {expected:,} numbers, about 4·10⁻⁵ of T5-XXL's 11 billion parameters "
                    "(0.004 %). Ours is 20 × 128 = 2,560, 0.3 % of the model: the fraction is tiny only when d is "
                    "small next to the model's size, one more way in which prompt tuning is a method for large models.",
        mistakes=[(n_tokens, "that counts the tokens; each one is a vector of d numbers."),
                  (d, "that is one vector; the prompt has 100 of them."),
                  (2 * n_layer * n_tokens * d, "that is prefix tuning's count (a key and a value at every layer); "
                                               "a soft prompt lives only at the input."),
                  (n_layer * n_tokens * d, "a soft prompt lives only at the input, not at every layer."),
                  (d * d, "the prompt's size does not depend on d², only on n_tokens × d.")])


def check_prompt_activation_memory(answer) -> bool:
    """05: why prompt tuning's activation memory is not 0.3 % of full fine-tuning's."""
    return check_choice(
        answer, "c", name="activation_memory_why",
        wrong={"a": "the frozen weights are stored once, with the weights; activations are per-example tensors "
                    "that the forward pass keeps for the backward pass.",
               "b": "AdamW's moments belong to the optimizer line, and prompt tuning's are tiny (20.0 KiB above).",
               "d": "nothing is recomputed here: the training loop keeps every activation autograd asks for."},
        explanation="The only trainable tensor is at the bottom, so its gradient must flow back through every "
                    "layer, and each layer keeps what that backward pass needs, on a sequence 20 positions longer. "
                    "What shrinks is what depends on the trainable parameters: gradients, optimizer state and the "
                    "checkpoint.")


# ----------------------------------------------------------------------------------------------- notebook 06
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


# ----------------------------------------------------------------------------------------------- notebook 03
PFEIFFER_CASE = {"d": 128, "n_layer": 4, "m": 32}  # our model, one adapter per block, layer norms frozen


def _pfeiffer_reference(d: int, n_layer: int, m: int) -> int:
    return n_layer * (2 * m * d + d + m)  # one adapter per block


def check_pfeiffer_parameter_count(answer) -> bool:
    """03: trainable parameters of Pfeiffer adapters with m = 32 and frozen layer norms on our model."""
    d, n_layer, m = PFEIFFER_CASE["d"], PFEIFFER_CASE["n_layer"], PFEIFFER_CASE["m"]
    one = 2 * m * d + d + m
    expected = _pfeiffer_reference(d, n_layer, m)
    layer_norms = 2 * d * (2 * n_layer + 1)
    return check_number(
        answer, expected, name="pfeiffer_m32", rel_tol=1e-6,
        hint="one adapter per block (after the MLP), each 2·m·d + d + m; the layer norms are frozen here.",
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


def check_adapter_without_skip(answer) -> bool:
    """03: what the Houlsby-adapted model computes at step 0 if the adapter had no skip connection."""
    return check_choice(
        answer, "b", name="no_skip",
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


def check_why_adapters_cannot_merge(answer) -> bool:
    """03: what stops an adapter from being merged into the frozen weights, as LoRA's update is."""
    return check_choice(
        answer, "c", name="merge_blocker",
        wrong={"a": "without the GELU the biases would fold in too: (I + W_up W_down) y + W_up b_down + b_up is "
                    "affine, and its constant joins the bias of the layer the adapter follows.",
               "b": "x + W_up W_down x = (I + W_up W_down) x is one d × d matrix: the skip connection alone would "
                    "merge without trouble.",
               "d": "the product W_up W_down is d × d whatever m is, just as LoRA's B A has the weight's shape "
                    "although neither B nor A is square."},
        explanation="With σ(z) = z the adapter would be affine, (I + W_up W_down) y + W_up b_down + b_up, and "
                    "could be folded into the projection it follows. The GELU makes it a non-linear function of "
                    "its input, which no single matrix replaces: the non-linearity adds capacity, and it keeps "
                    "the extra layers in every forward pass, the inference latency measured above.")


# ----------------------------------------------------------------------------------------------- notebook 04
PREFIX_TRAINING_CASE = {"d": 128, "n_layer": 4, "prefix_len": 20, "hidden": 256}  # PrefixTuning(base, 20)


def _prefix_training_reference(d: int, n_layer: int, prefix_len: int, hidden: int) -> int:
    embedding = prefix_len * d  # P' (P, d)
    mlp = (d * hidden + hidden) + (hidden * 2 * n_layer * d + 2 * n_layer * d)  # Linear(d, h), Linear(h, 2Ld)
    return embedding + mlp


def check_prefix_training_parameters(answer) -> bool:
    """04: trainable parameters of PrefixTuning(base, prefix_len=20) with the MLP (hidden 256) on our model."""
    case = PREFIX_TRAINING_CASE
    d, n_layer, prefix_len, hidden = case["d"], case["n_layer"], case["prefix_len"], case["hidden"]
    expected = _prefix_training_reference(**case)
    mlp = expected - prefix_len * d
    kept = 2 * n_layer * prefix_len * d
    at_10 = _prefix_training_reference(d, n_layer, 10, hidden)
    return check_number(
        answer, expected, name="trainable_p20", rel_tol=1e-6,
        hint="during training the parameters are P′ (P × d) and the MLP: Linear(d, h) and Linear(h, 2·L·d), "
             "both with biases.",
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


def check_prefix_never_exact(answer) -> bool:
    """04: why no prefix can make the model compute exactly what the base model computes."""
    return check_choice(
        answer, "b", name="never_exact",
        wrong={"a": "zero vectors do not silence a prefix: a zero key still scores q · 0 = 0, weight e⁰ = 1 in "
                    "the softmax, and zero values then pull every output towards zero (step 3).",
               "c": "the prefix has no positions: the real tokens keep positions 0 … T-1, and the logits come "
                    "back aligned with the input ids.",
               "d": "a layer norm normalises each position's vector on its own, and the prefix never passes "
                    "through one: it enters each layer only as keys and values inside the attention."},
        explanation="Softmax gives every visible key a weight e^(score) > 0, so the prefix always takes a share "
                    "of the attention; silencing it for every query would need scores of -∞. Step 3 measured the "
                    "cost at init: Austen loss 1.289 instead of 1.209, almost all of it on the first characters, "
                    "where few real keys compete with the prefix.")


# ----------------------------------------------------------------------------------------------- notebook 07
def check_break_even_rank(answer) -> bool:
    """07: the largest rank r at which B (512, r) and A (r, 128) hold fewer numbers than up_proj's 512 x 128."""
    m, n = 512, 128
    expected = (m * n - 1) // (m + n)  # the largest r with r (m + n) < m n
    return check_number(
        answer, expected, name="break_even_rank", rel_tol=1e-9,
        hint="the factors hold r · (512 + 128) numbers and the matrix 512 · 128 = 65,536: find the largest whole r "
             "for which the first is smaller.",
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


def _best_rank_r(M: torch.Tensor, r: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)  # U (m, k), S (k,), Vh (k, n), k = min(m, n)
    return U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]  # (m, r) (r, r) (r, n) -> (m, n)


def _low_rank_factor_mistakes(M: torch.Tensor, r: int, product: torch.Tensor) -> str | None:
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    candidates = [
        (U[:, :r] @ Vh[:r], "the singular values are missing: B A must include diag(S[:r]) once, e.g. "
                            "B = U[:, :r] * S[:r]."),
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


def check_low_rank_factors(fn) -> bool:
    """07: low_rank_factors(M, r) -> (B (m, r), A (r, n)) whose product B @ A is the best rank-r approximation of M."""
    name = "low_rank_factors"
    hint = ("U, S, Vh = torch.linalg.svd(M, full_matrices=False); keep the first r of each: B = U[:, :r] * S[:r] "
            "is (m, r) and A = Vh[:r] is (r, n).")
    if fn is None:
        return _missing(name, hint)
    if not callable(fn):
        return _failed(f"`{name}` should be a function, got {_describe(fn)}.", hint)
    g = torch.Generator().manual_seed(7)
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
            return _failed(f"{call} returned None: replace `return None` with your code.", hint)
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
        if not torch.allclose(product, _best_rank_r(M, r), rtol=1e-4, atol=1e-5):
            return _failed(f"{call}: B @ A is not the best rank-{r} approximation of M.",
                           _low_rank_factor_mistakes(M, r, product) or hint)
        if not torch.equal(argument, M):
            return _failed(f"{call} changed its input `M` in place.", "compute new tensors; leave M as it is.")
    return _passed("B = U_r diag(S_r) is (m, r) and A = V_rᵀ is (r, n): r · (m + n) numbers whose product is the "
                   "truncated SVD, the best rank-r approximation (Eckart–Young). Where S goes (into B, into A, or "
                   "its square root into both) does not change B A; LoRA learns such a pair directly.")


def check_rank_one_error(answer) -> bool:
    """07: relative Frobenius error of the best rank-1 approximation of a matrix with singular values 5.6478, 4.1996."""
    s1, s2 = 5.6478, 4.1996  # printed by notebook 07's first SVD cell (the other three are 0)
    norm = math.hypot(s1, s2)  # ||M||_F = sqrt(s1^2 + s2^2)
    expected = s2 / norm
    return check_number(
        answer, expected, name="rank_one_error", rel_tol=0.01,
        hint="Eckart–Young: ||M - M_1||_F = sqrt(sum of the dropped sigma_i^2), and ||M||_F = sqrt(sum of all "
             "sigma_i^2).",
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


def check_why_lora_works(answer) -> bool:
    """07: why a pretrained W0 far from low rank is no contradiction to LoRA working."""
    return check_choice(
        answer, "b", name="why_lora_works",
        wrong={"a": "LoRA never touches W₀: it stays whole and frozen. A rank-8 copy of a pretrained matrix would "
                    "keep only 0.234 to 0.662 of its energy (the table for block 0).",
               "c": "float32 rounding is about 10⁻⁷ (the three zero singular values of the 6 × 5 matrix); the "
                    "pretrained matrices spread real energy over many directions, far above that.",
               "d": "with the projections' change removed (r = 0) the model fell back to 0.340, chance level: what "
                    "was learned sits in the projections."},
        explanation="LoRA computes W₀x + BAx: W₀ keeps all its directions and only the update is low rank. The "
                    "measurement above: the top 8 directions of the change hold about 80% of its energy in the "
                    "attention projections, and rank 8 in every projection keeps 0.610 of the 0.613 accuracy.")


# for notebook 08 (its "More to think about" question on changing r): kept in this section on purpose
def check_alpha_when_rank_grows(answer) -> bool:
    """08: r = 8 -> 32 at fixed alpha = 8: how the first update's size changes, read from the measured table."""
    return check_choice(
        answer, "c", name="rank_32_update",
        wrong={"a": "the table says otherwise: 0.0098 at r = 32 against 0.0187 at r = 8. On this measurement "
                    "alpha / r removes the growth with r and then some.",
               "b": "the factor alpha / r does fall 4 times, but the unscaled update grows with r (0.0187 at r = 8, "
                    "0.0393 at r = 32), so the net change is about a half, not a quarter.",
               "d": "that is the unscaled column (alpha = r: 0.0187 -> 0.0393). With alpha fixed at 8 the factor "
                    "falls 4 times and more than cancels that growth."},
        explanation="0.0098 against 0.0187: the unscaled update grows about like sqrt(r) here and alpha / r "
                    "divides by r, so raising r at fixed alpha quietly lowers the effective learning rate. Doubling "
                    "alpha to 16 would bring it back near the r = 8 size (0.5 × 0.0393); rsLoRA's alpha / sqrt(r) "
                    "kept it nearly flat (0.0528 at r = 8, 0.0556 at r = 32).")


# ----------------------------------------------------------------------------------------------- notebook 09
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


# ----------------------------------------------------------------------------------------------- notebook 10
# the measured table of notebook 10 (first seed, 16 x 96 Shakespeare characters): state and activations in MiB
FULL_STATE_MIB, FULL_ACT_MIB = 12.73, 50.3
LORA_STATE_MIB, LORA_ACT_MIB = 3.43, 34.1


def check_lora_memory_fraction(answer) -> bool:
    """10: LoRA's training memory (state + activations) as a fraction of full fine-tuning's, from the table."""
    full, lora = FULL_STATE_MIB + FULL_ACT_MIB, LORA_STATE_MIB + LORA_ACT_MIB
    expected = lora / full
    return check_number(
        answer, expected, name="lora_memory_fraction", rel_tol=0.02,
        hint="add the state and act columns of each row, then divide LoRA's total by full fine-tuning's.",
        explanation=f"({LORA_STATE_MIB} + {LORA_ACT_MIB}) / ({FULL_STATE_MIB} + {FULL_ACT_MIB}) = {lora:.1f} / "
                    f"{full:.1f} MiB ≈ {expected:.2f}: LoRA trains 2% of the parameters but needs about 60% of the "
                    "memory here, because the activations, which every method keeps, dominate at this scale. At "
                    "175 B parameters the weights, gradients and optimizer state dominate instead, and the same "
                    "calculation gives 349 GB against 1.4 TB.",
        mistakes=[*[(share, "that is about LoRA's share of the trainable parameters (or of the gradient and "
                            "optimizer state); memory also holds the frozen weights and the activations.")
                    for share in (0.0193, 0.0196, 0.0199)],
                  (LORA_STATE_MIB / FULL_STATE_MIB, "that compares the state column only; add the activations, the "
                                                    "largest part of both rows."),
                  (LORA_ACT_MIB / FULL_ACT_MIB, "that compares the activations only; add the state column."),
                  (1 - expected, "that is the share LoRA saves; the question asks for the share it uses."),
                  (1 / expected, "upside down: LoRA's total divided by full fine-tuning's."),
                  (100 * expected, "that looks like a percentage; give a fraction between 0 and 1.")])


def check_method_for_serving(answer) -> bool:
    """10: one task per server, base-model latency, small files, accuracy above chance: which method?"""
    return check_choice(
        answer, "d", name="serving_choice",
        wrong={"a": "each task would store a whole model: 3344.5 kB here, and 13.5 GB in fp16 for a 7 B model (the "
                    "calculator). The files are not small.",
               "b": "their accuracy (0.500) and files (149.4 kB) would do, but adapters cannot be merged: every "
                    "forward pass runs the extra layers (see the latency table).",
               "c": "the files are the smallest (10.3 kB), but 0.332 is chance on three authors at this scale, and 20 "
                    "extra positions make each forward pass clearly slower (see the latency table)."},
        explanation="LoRA stores 67.0 kB per task, reached 0.534 on the author task, and merged into the weights it "
                    "runs exactly the base model's matrix products, no more. Keep it unmerged "
                    "instead if one server must switch between tasks.")


def check_small_data_reading(answer) -> bool:
    """10: what the small-data runs (24 passages) of full fine-tuning and LoRA support."""
    return check_choice(
        answer, "b", name="small_data_reading",
        wrong={"a": "LoRA memorised the 24 passages too (final training loss 0.003), and its validation loss also "
                    "climbed above its best (+0.118).",
               "c": "its lower validation loss came with a lower accuracy (0.414 against 0.517): fewer confident "
                    "mistakes, not more right answers. Which is 'better' depends on the metric; stopping early helps "
                    "both.",
               "d": "a training loss of 0.000 with a validation loss 0.194 above its best is overfitting; the higher "
                    "accuracy shows it had learned more before it started to memorise."},
        explanation="Both drive the training loss to about 0; full fine-tuning's validation loss climbs further above "
                    "its best (+0.194 against +0.118), so LoRA overfits less, but its accuracy is lower (0.414 "
                    "against 0.517): fewer trainable parameters slow learning as well as memorising.")
