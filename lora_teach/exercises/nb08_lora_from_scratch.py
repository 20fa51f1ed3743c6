"""Graded exercises of notebook 08: LoRA from scratch."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..lora import LoRAConfig, LoRALinear, apply_lora
from .core import (
    _describe,
    _failed,
    _first_match,
    _is_stub,
    _missing,
    _not_written,
    check_function,
    check_number,
    right_answer,
)

__all__ = ["check_lora_parameter_count", "check_lora_linear_forward", "check_lora_injection", "check_lora_merge",
           "check_alpha_for_rank_32"]


def lora_parameters(in_features, out_features, r):
    """Trainable numbers of A (r, in) and B (out, r)."""
    return r * (in_features + out_features)


@right_answer(lambda: lora_parameters)
def check_lora_parameter_count(fn) -> bool:
    """LoRA: lora_parameters(in_features, out_features, r) = trainable numbers of A (r, in) and B (out, r)."""
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
        cases=[(128, 128, 8), (128, 512, 4), (512, 128, 1), (6, 10, 3)], reference=lora_parameters,
        diagnose=mistakes,
        hint="what shapes must A and B have for B A to have the weight's shape (out_features, in_features) at rank "
             "r? Count the numbers they hold.",
        explanation="r·(in + out): 2,048 for a 128×128 projection at r = 8, so r = 4 on q, k, v and o of our "
                    "4 blocks trains 16 · 1,024 = 16,384 numbers, and r = 4 on the 4 up_proj layers (128 → 512) "
                    "4 · 2,560 = 10,240.")


# ------------------------------------------------------------------------------- the LoRALinear forward pass
def _lora_forward(x, weight, bias, lora_A, lora_B, alpha, r, scaling=None, with_bias=True):
    """x Wᵀ + b + scaling · x Aᵀ Bᵀ, scaling = alpha / r unless given: (..., in) -> (..., out)."""
    scaling = alpha / r if scaling is None else scaling
    base = x @ weight.T + (bias if with_bias else 0)  # (..., out)
    return base + scaling * (x @ lora_A.T @ lora_B.T)  # (..., in) -> (..., r) -> (..., out)


FORWARD_ARGS = ["x_shape", "in_features", "out_features", "r", "alpha", "dropout", "training", "merged"]
FORWARD_CASES = [  # non-square layers, leading batch dimensions, a merged layer, dropout in training mode
    ((2, 3, 6), 6, 4, 2, 4.0, 0.0, False, False),
    ((5, 8), 8, 8, 1, 1.0, 0.0, False, False),
    ((3, 4), 4, 10, 3, 6.0, 0.0, False, True),
    ((4, 5, 6), 6, 7, 2, 2.0, 0.5, True, False),
]


def _seed_of(case) -> int:
    return sum(i * v for i, v in enumerate(case[0], start=1)) + 31 * case[1] + 7 * case[2] + case[3]


def _built_layer(cls, case):
    """(layer of class `cls` around a seeded float64 nn.Linear, with A and B filled from the same generator, x)."""
    x_shape, d_in, d_out, r, alpha, dropout, training, merged = case
    g = torch.Generator().manual_seed(_seed_of(case))
    with torch.random.fork_rng(devices=[]):  # LoRALinear's own init draws from the global generator
        base = nn.Linear(d_in, d_out).double()
        layer = cls(base, r, alpha, dropout=dropout)
    with torch.no_grad():
        base.weight.copy_(torch.randn(d_out, d_in, generator=g, dtype=torch.float64))
        base.bias.copy_(torch.randn(d_out, generator=g, dtype=torch.float64))
        layer.lora_A["default"].copy_(torch.randn(r, d_in, generator=g, dtype=torch.float64))  # (r, in)
        layer.lora_B["default"].copy_(torch.randn(d_out, r, generator=g, dtype=torch.float64))  # (out, r): not zero
    layer.train(training)
    if merged:
        layer.merge()
    return layer, torch.randn(*x_shape, generator=g, dtype=torch.float64)


def _run_layer(cls, *case):
    """The output of `cls`'s forward on the case's input; dropout masks drawn from a fixed seed."""
    layer, x = _built_layer(cls, case)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed_of(case))
        out = layer(x)
    return out.detach() if isinstance(out, torch.Tensor) else out


def _lora_linear_mistakes(case, got):
    if isinstance(got, Exception):
        return ("mind the shapes: lora_A is (r, in) so x @ lora_A.T is (..., r); lora_B is (out, r) so "
                "(x @ lora_A.T) @ lora_B.T is (..., out).") if "shape" in str(got) else None
    _x_shape, _d_in, _d_out, r, alpha, dropout, training, merged = case
    layer, x = _built_layer(LoRALinear, case)
    base, lora_A, lora_B = layer.base_layer, layer.lora_A["default"], layer.lora_B["default"]
    if merged:
        layer.unmerge()  # W0 again, to build the wrong answers from
        return _first_match(got, [(_lora_forward(x, base.weight, base.bias, lora_A, lora_B, alpha, r,
                                                 scaling=2 * alpha / r),
                                   "the layer is merged: base_layer.weight already holds W0 + (alpha / r) B A, so "
                                   "adding the branch again counts the update twice. Return the base output "
                                   "alone when self.merged is True.")])
    args = (x, base.weight, base.bias, lora_A, lora_B, alpha, r)
    if training and dropout > 0:
        return _first_match(got, [(_lora_forward(*args), "in training mode the LoRA branch sees "
                                                         "self.lora_dropout['default'](x), not x: dropout acts on "
                                                         "the input of the branch only.")])
    return _first_match(got, [
        (x @ base.weight.T + base.bias, "the LoRA branch is missing: add self.scaling['default'] · x Aᵀ Bᵀ."),
        (_lora_forward(*args, scaling=1.0), "the scaling is missing: multiply the branch by self.scaling['default']."),
        (_lora_forward(*args, scaling=alpha), "you scaled by alpha instead of alpha / r (self.scaling['default']): the "
                                              "update "
                                              "comes out r times too large (a known bug in several "
                                              "reimplementations)."),
        (_lora_forward(*args, scaling=r / alpha), "the scaling is upside down: alpha / r, not r / alpha."),
        (_lora_forward(*args, scaling=alpha / math.sqrt(r)), "alpha / sqrt(r) is rsLoRA's scaling; use "
                                                             "self.scaling['default'], here alpha / r."),
        (_lora_forward(*args, with_bias=False), "the base layer's bias is missing: self.base_layer(x) adds it."),
    ])


def lora_linear_forward(self, x):
    """Output (..., out) of a LoRALinear `self` for input x (..., in)."""
    result = self.base_layer(x)  # (..., out): W0 x + b
    if self.merged:  # scaling * B A is already inside base_layer.weight
        return result
    A, B = self.lora_A["default"], self.lora_B["default"]  # (r, in), (out, r)
    update = self.lora_dropout["default"](x) @ A.T @ B.T  # (..., in) -> (..., r) -> (..., out)
    return result + self.scaling["default"] * update


@right_answer(lambda: lora_linear_forward)
def check_lora_linear_forward(forward) -> bool:
    """08: forward(self, x), the forward pass of a LoRALinear (or a LoRALinear subclass with its own forward),
    gives the package's output: checked on random layers and inputs, merged and not, with dropout in training."""
    name = "lora_linear_forward"
    hint = ("start from the frozen layer's output. A merged layer already holds the update; otherwise add the "
            "low-rank branch: dropout on x, then A, then B (stored like nn.Linear's weights), times the layer's "
            "scaling. The layer keeps its parts in dicts, under the adapter's name 'default'.")
    if forward is None:
        return _missing(name, hint)
    if isinstance(forward, type):
        if not issubclass(forward, LoRALinear):
            return _failed(f"`{name}` should be a function forward(self, x) (or a class that subclasses LoRALinear), "
                           f"got the class {forward.__name__}.", hint)
        layer_class = forward
    elif callable(forward):
        if _is_stub(forward):
            return _not_written(name)
        layer_class = type("MyLoRALinear", (LoRALinear,), {"forward": forward})  # the package's layer, your forward
    else:
        return _failed(f"`{name}` should be a function forward(self, x), got {_describe(forward)}.", hint)
    return check_function(
        lambda *case: _run_layer(layer_class, *case), name=name, arg_names=FORWARD_ARGS, cases=FORWARD_CASES,
        reference=lambda *case: _run_layer(LoRALinear, *case), diagnose=_lora_linear_mistakes, hint=hint,
        rtol=1e-9, atol=1e-9,
        explanation="h = W₀x + b + (alpha / r)·B A dropout(x), and only W₀x + b once merged: the package's "
                    "output on non-square layers, batches of any shape, a merged layer and dropout in "
                    "training mode.")


# ------------------------------------------------------------------------------ injection into q and v
INJECTION_ARGS = ["n_layer", "n_embd", "n_head", "r", "alpha"]
INJECTION_CASES = [(2, 16, 2, 2, 4.0), (1, 8, 1, 1, 1.0), (3, 12, 3, 3, 6.0)]
INJECTION_TARGETS = ("q_proj", "v_proj")


def _small_model(n_layer, n_embd, n_head, seed):
    from ..model import GPT, GPTConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=16)).double()


def _injected(fn, n_layer, n_embd, n_head, r, alpha):
    """The model `fn(model, r, alpha)` returns, fn run on a small seeded GPT (the global random stream untouched)."""
    seed = 100 * n_layer + n_embd + r
    model = _small_model(n_layer, n_embd, n_head, seed)
    with torch.random.fork_rng(devices=[]):
        return fn(model, r, alpha)


def _probe(model, n_layer, n_embd, n_head, r, alpha):
    """(logits on random token ids with every LoRALinear's A and B set from a seeded generator, number of
    trainable numbers, number of LoRALinear layers)."""
    g = torch.Generator().manual_seed(7 * n_layer + n_embd + r)
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    with torch.no_grad():
        for layer in layers:
            for matrix in (layer.lora_A["default"], layer.lora_B["default"]):
                matrix.copy_(torch.randn(matrix.shape, generator=g, dtype=torch.float64))
        idx = torch.randint(0, model.config.vocab_size, (2, 9), generator=g)  # (B, T) token ids
        logits = model(idx)[0]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return logits, trainable, len(layers)


def _injection_reference(*case):
    def package(model, r, alpha):
        return apply_lora(model, LoRAConfig(r=r, alpha=alpha, target_modules=INJECTION_TARGETS))

    return _probe(_injected(package, *case), *case)


def _injection_mistakes(model, case) -> str | None:
    """What is wrong with the structure of the student's model, if anything."""
    r, alpha = case[3], case[4]
    wrapped = {n for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    expected = {f"blocks.{i}.attn.{t}" for i in range(case[0]) for t in INJECTION_TARGETS}
    if not wrapped:
        return ("no layer of the model is a LoRALinear: build LoRALinear(linear, r, alpha) for each q_proj and "
                "v_proj and put it in place with setattr(attention_module, 'q_proj', new_layer).")
    if wrapped != expected:
        missing, extra = sorted(expected - wrapped), sorted(wrapped - expected)
        parts = [f"not wrapped: {missing}"] * bool(missing) + [f"wrapped but not targeted: {extra}"] * bool(extra)
        return f"wrap q_proj and v_proj in every block, nothing else; {'; '.join(parts)}."
    layers = [model.get_submodule(n) for n in sorted(wrapped)]
    if any((layer.r["default"], layer.alpha["default"]) != (r, alpha) for layer in layers):
        return f"build each layer as LoRALinear(linear, r, alpha) with the r = {r} and alpha = {alpha} you were given."
    lora_params = {id(p) for layer in layers for p in layer.adapter_parameters("default")}
    if not all(p.requires_grad for layer in layers for p in layer.adapter_parameters("default")):
        return ("A and B are frozen: freeze the model first (model.requires_grad_(False)), then wrap; "
                "LoRALinear creates A and B trainable.")
    still = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in lora_params]
    if still:
        return (f"{len(still)} pretrained tensors still train, e.g. {still[0]}: call model.requires_grad_(False) "
                "before wrapping, so that only A and B train.")
    return None


def add_lora_to_q_and_v(model, r, alpha):
    """Wrap every q_proj and v_proj nn.Linear of `model` in LoRALinear(linear, r, alpha), freeze the rest."""
    model.requires_grad_(False)  # every pretrained weight; LoRALinear creates A and B trainable
    for name, module in list(model.named_modules()):  # a list: the loop replaces modules as it goes
        parent, _, child = name.rpartition(".")
        if child in ("q_proj", "v_proj") and isinstance(module, nn.Linear):
            setattr(model.get_submodule(parent), child, LoRALinear(module, r, alpha))
    return model


@right_answer(lambda: add_lora_to_q_and_v)
def check_lora_injection(fn) -> bool:
    """08: fn(model, r, alpha) wraps every q_proj and v_proj in LoRALinear and freezes the rest, like apply_lora."""
    name = "add_lora_to_q_and_v"
    hint = ("freeze the whole model first, then replace every q_proj and v_proj by a LoRALinear that wraps it: "
            "walk over a list of model.named_modules() (the model changes as you go), find each layer's parent "
            "module and set the new layer on it. Return the model.")
    if fn is None:
        return _missing(name, hint)
    if not callable(fn) or isinstance(fn, type):
        return _failed(f"`{name}` should be a function, got {_describe(fn)}.", hint)
    for case in INJECTION_CASES:  # first the structure: which layers, which parameters train
        n_layer, n_embd, _n_head, r, alpha = case
        call = f"{name}(model, r={r}, alpha={alpha:g}) on a {n_layer}-block GPT with n_embd={n_embd}"
        try:
            model = _injected(fn, *case)
        except Exception as err:  # the student's code failed: report it instead of a traceback
            return _failed(f"{call} raised {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                           hint)
        if model is None:
            if _is_stub(fn):
                return _not_written(name)
            return _failed(f"{call} returned None: end with `return model`.", hint)
        if not isinstance(model, nn.Module):
            return _failed(f"{call} returned {_describe(model)}, not the model.", "end with `return model`.")
        problem = _injection_mistakes(model, case)
        if problem:
            return _failed(f"{call}: {problem}", hint)
    return check_function(  # then the numbers: the same logits as the package's apply_lora, A and B set alike
        lambda *case: _probe(_injected(fn, *case), *case)[0], name=f"the logits after {name}",
        arg_names=INJECTION_ARGS,
        cases=INJECTION_CASES, reference=lambda *case: _injection_reference(*case)[0], rtol=1e-9, atol=1e-9,
        hint="the right layers are wrapped, yet the logits differ from apply_lora's: does each LoRALinear wrap "
             "the very nn.Linear it replaces, with the package's LoRALinear forward?",
        explanation="the same layers, the same trainable numbers and the same logits as apply_lora(model, "
                    "LoRAConfig(r, alpha, ('q_proj', 'v_proj'))): every pretrained weight frozen, only A and B "
                    "train.")


# ------------------------------------------------------------------------------------------------- merge
def _lora_case(batch_shape, d_in, d_out, r, alpha, seed):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return (rand(*batch_shape, d_in), rand(d_out, d_in), rand(d_out), rand(r, d_in), rand(d_out, r), alpha, r)


def _lora_merge_mistakes(case, got):
    weight, lora_A, lora_B, alpha, r = case
    return _first_match(got, [
        (weight + lora_B @ lora_A, "the scaling alpha / r is missing."),
        (weight + alpha * lora_B @ lora_A, "you scaled by alpha instead of alpha / r."),
        (weight - alpha / r * lora_B @ lora_A, "merging adds the update; subtracting it is unmerging."),
        (weight, "that is the unchanged weight: add (alpha / r) · B @ A."),
    ]) or ("B @ A has the weight's shape (out, in); A @ B or the transposes do not."
           if isinstance(got, torch.Tensor) and got.shape != weight.shape else None)


def lora_merge(weight, lora_A, lora_B, alpha, r):
    """W0 + (alpha / r) B A, shape (out, in)."""
    return weight + (alpha / r) * (lora_B @ lora_A)


@right_answer(lambda: lora_merge, fresh_inputs=True)
def check_lora_merge(fn) -> bool:
    """LoRA: lora_merge(weight, lora_A, lora_B, alpha, r) -> a new tensor W + (alpha / r) B A, shape (out, in)."""
    cases = []
    for d_in, d_out, r, alpha, seed in [(6, 4, 2, 4.0, 3), (5, 5, 1, 2.0, 4), (3, 7, 2, 1.0, 5)]:
        _x, weight, _bias, lora_A, lora_B, alpha, r = _lora_case((1,), d_in, d_out, r, alpha, seed)
        cases.append((weight, lora_A, lora_B, alpha, r))
    return check_function(
        fn, name="lora_merge", arg_names=["weight", "lora_A", "lora_B", "alpha", "r"], cases=cases,
        reference=lora_merge, diagnose=_lora_merge_mistakes,
        hint="merging adds the scaled update to the weight: what is LoRA's scaling, and in which order must the two "
             "factors be multiplied to give the weight's shape (out, in)?",
        explanation="W + (alpha / r)·B A: one matrix again, so the merged layer costs no extra time at inference.")


@right_answer(lambda: 8 * math.sqrt(32 / 8))  # keep alpha / sqrt(r) fixed: the unscaled update grew like sqrt(r)
def check_alpha_for_rank_32(answer) -> bool:
    """08: the alpha that gives r = 32 the first update r = 8 had at alpha = 8, read from the measured table."""
    return check_number(
        answer, check_alpha_for_rank_32.right_answer(), name="alpha_at_32", rel_tol=0.1,
        hint="the update at r = 32 is (alpha / 32) times the unscaled one (the table's column with alpha = r); "
             "set it equal to the update at r = 8 with alpha = 8 and solve for alpha.",
        explanation="about 15 to 16: the unscaled update about doubles from r = 8 to r = 32 (like sqrt(r) in this "
                    "measurement), so alpha / 32 must be half of 8 / 8. Keeping alpha at 8 would halve the first "
                    "update, and keeping alpha / r (alpha = 32) would double it. The rule behind the number, keep "
                    "alpha / sqrt(r) fixed (8 · sqrt(32 / 8) = 16), is rsLoRA's scaling.",
        mistakes=[(8, "alpha unchanged: the table's alpha / r column shows the first update about halving from r = 8 "
                      "to r = 32."),
                  (32, "that keeps alpha / r at 1, but the unscaled update itself about doubles from r = 8 to "
                       "r = 32, so the first update would double too."),
                  (64, "that doubles alpha / r; the unscaled update grows with r too, so the first update would "
                       "grow about four times."),
                  (4, "a smaller alpha shrinks the update further: at alpha = 8 the update at r = 32 is already "
                      "smaller than at r = 8.")])
