"""The exercise checks: right answers pass, wrong ones get a specific message and a hint, nothing ever raises."""

import ast
import inspect
import math
import re
import textwrap
from pathlib import Path

import build_editions as editions
import nbformat
import pytest
import torch
import torch.nn.functional as F

from lora_teach import exercises as ex
from lora_teach.measure import training_memory
from lora_teach.model import GPT, CausalSelfAttention, GPTConfig

BUILDING_BLOCKS = {"check_number", "check_choice", "check_function"}
CHECKS = sorted(name for name in dir(ex) if name.startswith("check_") and name not in BUILDING_BLOCKS)
# each check's right answer, from the module that defines the check (for a function exercise: its solution)
RIGHT = {name: getattr(ex, name).right_answer() for name in CHECKS if hasattr(getattr(ex, name), "right_answer")}


# ------------------------------------------------------------------------------------ wrong answers' builders
def _lora_linear(forward):
    """A LoRALinear subclass whose forward is `forward(layer, x)`: an answer to notebook 08's class exercise."""
    from lora_teach.lora import LoRALinear

    return type("MyLoRALinear", (LoRALinear,), {"forward": forward})


def _wrap_q_and_v(model, r, alpha, targets=("q_proj", "v_proj"), freeze="before"):
    """An answer to notebook 08's injection exercise, wrong in the way its arguments say."""
    from lora_teach.lora import LoRALinear

    if freeze == "before":
        model.requires_grad_(False)
    for name, module in list(model.named_modules()):
        if name.rsplit(".", 1)[-1] in targets:
            parent, child = name.rsplit(".", 1)
            setattr(model.get_submodule(parent), child, LoRALinear(module, r, alpha))
    if freeze == "after":
        model.requires_grad_(False)
    return model


def _branch(layer, x, name="default"):
    return layer.lora_dropout[name](x) @ layer.lora_A[name].T @ layer.lora_B[name].T  # (..., r) -> (..., out)


def _prefix_attention(q, k, v, prefix_k, prefix_v, causal=True, see_prefix=True):
    B, T, C = q.shape
    P = prefix_k.shape[0]
    keys = torch.cat([prefix_k.expand(B, -1, -1), k], dim=1)
    values = torch.cat([prefix_v.expand(B, -1, -1), v], dim=1)
    mask = torch.ones(T, P + T, dtype=torch.bool).tril(diagonal=P if see_prefix else 0)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask if causal else None)


# (check, a wrong answer, words the message must contain): the common mistakes get their own message
MISTAKES = [
    ("check_weights_megabytes", 834_560 * 4 / 2**20, "MiB"),
    ("check_weights_megabytes", 834_560 / 1e6, "4 bytes"),
    ("check_linear_by_hand", lambda x, weight, bias: x @ weight + bias, "swaps the weight's two axes"),
    ("check_linear_by_hand", lambda x, weight, bias: x @ weight.T, "bias is missing"),
    ("check_linear_by_hand", lambda x, weight, bias: x @ weight.T - bias, "added, not subtracted"),
    ("check_always_austen_accuracy", 66.7, "percentage"),
    ("check_always_austen_accuracy", 1 / 3, "balanced split"),
    ("check_block_parameters", lambda d: 12 * d * d + 9 * d, "layer norms"),
    ("check_block_parameters", lambda d: 12 * d * d + 4 * d, "biases"),
    ("check_frozen_mlp_share", (264_192 + 262_656) / 834_560, "the share you froze"),
    ("check_frozen_mlp_share", (834_560 - 264_192) / 834_560, "freeze both"),
    ("check_frozen_mlp_share", 36.9, "percentage"),
    ("check_shakespeare_gap", "a", "vocabulary"),
    ("check_adamw_memory_gb", 0.5, "only the weights"),
    ("check_adamw_memory_gb", 1.5, "two moments"),
    ("check_adamw_memory_gb", 1.86, "GiB"),
    ("check_training_bytes", lambda m: 16 * sum(p.numel() for p in m.parameters()), "frozen"),
    ("check_training_bytes", lambda m: 16 * sum(p.numel() for p in m.parameters() if p.requires_grad),
     "frozen weights still sit in memory"),
    ("check_halved_batch", "a", "whatever the batch size"),
    ("check_less_forgetting", "b", "changes no weight"),
    ("check_less_forgetting", "a", "more steps"),
    ("check_prepend_virtual_tokens", lambda v, x: torch.cat([v, x], dim=1), "expand"),
    ("check_prepend_virtual_tokens", lambda v, x: torch.cat([x, v.expand(x.shape[0], -1, -1)], dim=1), "in front"),
    ("check_prefix_attention", lambda q, k, v, pk, pv: _prefix_attention(q, k, v, pk, pv, causal=False),
     "must not see the future"),
    ("check_prefix_attention", lambda q, k, v, pk, pv: _prefix_attention(q, k, v, pk, pv, see_prefix=False),
     "all 3 prefix slots"),
    ("check_lora_parameter_count", lambda i, o, r: 2 * r * i, "square"),
    ("check_lora_linear_forward", _lora_linear(
        lambda self, x: self.base_layer(x) + self.alpha["default"] * _branch(self, x)), "instead of alpha / r"),
    ("check_lora_linear_forward", _lora_linear(lambda self, x: self.base_layer(x) + _branch(self, x)),
     "scaling is missing"),
    ("check_lora_linear_forward", _lora_linear(lambda self, x: x @ self.base_layer.weight + self.base_layer.bias),
     "shapes"),
    ("check_lora_linear_forward", _lora_linear(
        lambda self, x: x @ self.base_layer.weight.T + self.scaling["default"] * _branch(self, x)), "bias"),
    ("check_lora_linear_forward", _lora_linear(
        lambda self, x: self.base_layer(x) + self.scaling["default"] * _branch(self, x)), "counts the update twice"),
    ("check_lora_linear_forward", _lora_linear(
        lambda self, x: self.base_layer(x) if self.merged
        else self.base_layer(x) + self.scaling["default"] * (x @ self.lora_A["default"].T @ self.lora_B["default"].T)),
     "lora_dropout['default'](x)"),
    ("check_lora_linear_forward", torch.nn.Linear, "subclasses LoRALinear"),
    ("check_lora_linear_forward", lambda self, x: self.base_layer(x), "branch is missing"),
    ("check_lora_injection", lambda m, r, alpha: _wrap_q_and_v(m, r, alpha, freeze="never"), "still train"),
    ("check_lora_injection", lambda m, r, alpha: _wrap_q_and_v(m, r, alpha, freeze="after"), "A and B are frozen"),
    ("check_lora_injection", lambda m, r, alpha: _wrap_q_and_v(m, r, alpha, targets=("q_proj", "k_proj", "v_proj")),
     "wrapped but not targeted"),
    ("check_lora_injection", lambda m, r, alpha: _wrap_q_and_v(m, r, alpha, targets=("q_proj",)), "not wrapped"),
    ("check_lora_injection", lambda m, r, alpha: _wrap_q_and_v(m, r, 2 * alpha), "you were given"),
    ("check_lora_injection", lambda m, r, alpha: _wrap_q_and_v(m, r, alpha) and None, "return model"),
    ("check_lora_merge", lambda w, a, b, alpha, r: w.add_((alpha / r) * (b @ a)), "in place"),
    ("check_lora_merge", lambda w, a, b, alpha, r: w - (alpha / r) * (b @ a), "unmerging"),
]

# answers a student might type by accident: each must get a ✗ with a hint, never an exception
GARBAGE = ["x", 3, -1.5, float("nan"), True, [1, 2], (1,), torch.zeros(3), object(),
           lambda *args: 1 / 0, lambda *args: "text", lambda *args: torch.zeros(2, 2)]


def test_every_check_carries_its_right_answer():
    assert set(CHECKS) == set(RIGHT)


def test_the_package_exports_the_checks_and_the_building_blocks_only():
    """What learners import: no private helper, no module-level name of the exercise modules."""
    public = {name for name, value in vars(ex).items() if not name.startswith("_") and not inspect.ismodule(value)}
    assert public == set(CHECKS) | BUILDING_BLOCKS
    assert not [name for name in vars(ex) if name.startswith("_") and not name.startswith("__")]


@pytest.mark.parametrize("name", CHECKS)
def test_the_right_answer_passes_with_a_tick(name, capsys):
    assert getattr(ex, name)(RIGHT[name]) is True
    out = capsys.readouterr().out
    assert out.startswith("✓ ") and "✗" not in out


@pytest.mark.parametrize("name", CHECKS)
def test_an_unanswered_exercise_waits_without_a_tick_a_cross_or_a_hint(name, capsys):
    """The learner's edition opens with every answer None: the check says what to replace, nothing more."""
    assert getattr(ex, name)(None) is False
    out = capsys.readouterr().out
    assert out.startswith("… ") and "not answered yet" in out and out.count("\n") == 1
    assert "✓" not in out and "✗" not in out and "Hint" not in out


@pytest.mark.parametrize("name", CHECKS)
def test_a_function_returning_none_waits_or_fails_never_raises(name, capsys):
    """The stub `return None` of a function exercise waits; where a function is not the answer it is a ✗."""
    assert getattr(ex, name)(lambda *args: None) is False
    out = capsys.readouterr().out
    assert out.startswith(("… ", "✗ ")) and "✓" not in out and "Traceback" not in out
    assert ("not written yet" in out) == out.startswith("… ")


@pytest.mark.parametrize("name", CHECKS)
@pytest.mark.parametrize("answer", GARBAGE, ids=lambda a: type(a).__name__)
def test_a_wrong_answer_never_raises(name, answer, capsys):
    assert getattr(ex, name)(answer) is False
    out = capsys.readouterr().out
    assert out.startswith("✗ ") and "\n  Hint: " in out and "Traceback" not in out


def test_a_stub_function_gets_the_replace_return_none_message(capsys):
    def block_parameters(d):
        return None

    assert ex.check_block_parameters(block_parameters) is False
    out = capsys.readouterr().out
    assert out.startswith("… `block_parameters` is not written yet") and "replace its `return None`" in out


def test_a_function_that_returns_none_only_later_is_a_cross(capsys):
    def block_parameters(d):
        return 12 * d * d + 13 * d if d == 8 else None

    assert ex.check_block_parameters(block_parameters) is False
    out = capsys.readouterr().out
    assert out.startswith("✗ ") and "every path of your function must return" in out


def test_the_forward_exercise_also_takes_a_lora_linear_subclass(capsys):
    assert ex.check_lora_linear_forward(_lora_linear(RIGHT["check_lora_linear_forward"])) is True
    assert capsys.readouterr().out.startswith("✓ ")


def test_the_injection_answer_wraps_what_apply_lora_wraps():
    """The solution and the check's reference, the package's apply_lora: LoRA on q and v of every block, only A and
    B trainable."""
    from lora_teach.exercises.nb08_lora_from_scratch import INJECTION_CASES
    from lora_teach.lora import LoRAConfig, LoRALinear, apply_lora

    def package(model, r, alpha):
        return apply_lora(model, LoRAConfig(r=r, alpha=alpha, target_modules=("q_proj", "v_proj")))

    for n_layer, d, n_head, r, alpha in INJECTION_CASES:
        for wrap in (RIGHT["check_lora_injection"], package):
            model = wrap(GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=d, block_size=16)), r, alpha)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 2 * n_layer
            assert trainable == 2 * n_layer * 2 * d * r


def test_an_error_in_the_students_code_is_reported_not_raised(capsys):
    def forward(self, x):
        raise KeyError("oops")

    assert ex.check_lora_linear_forward(_lora_linear(forward)) is False
    out = capsys.readouterr().out
    assert "raised KeyError" in out and "oops" in out


def test_a_function_that_changes_requires_grad_fails(capsys):
    def sneaky(model):
        model.requires_grad_(True)
        return training_memory(model)["total"]

    assert ex.check_training_bytes(sneaky) is False
    assert "require" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the checks match the package
def test_the_base_models_answers_follow_the_shipped_model():
    model = GPT(GPTConfig())
    total = sum(p.numel() for p in model.parameters())
    mlp = sum(p.numel() for name, p in model.named_parameters() if ".up_proj." in name or ".down_proj." in name)
    assert RIGHT["check_weights_megabytes"] == 4 * total / 1e6
    assert math.isclose(RIGHT["check_frozen_mlp_share"], (total - mlp) / total)


def test_the_block_count_is_twelve_d_squared_plus_thirteen_d():
    for d in (4, 8, 128):
        assert RIGHT["check_block_parameters"](d) == 12 * d * d + 13 * d


def test_prefix_attention_answer_is_the_models_prefix_attention():
    """One head, identity projections: the model's attention with a prefix equals the solution."""
    d, P = 8, 3
    attn = CausalSelfAttention(GPTConfig(n_embd=d, n_head=1)).double()
    with torch.no_grad():
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj):
            proj.weight.copy_(torch.eye(d))
            proj.bias.zero_()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, d, generator=g, dtype=torch.float64)
    pk, pv = torch.randn(P, d, generator=g, dtype=torch.float64), torch.randn(P, d, generator=g, dtype=torch.float64)
    expected = attn(x, prefix=(pk, pv))
    torch.testing.assert_close(RIGHT["check_prefix_attention"](x, x, x, pk, pv), expected)
    torch.testing.assert_close(_prefix_attention(x, x, x, pk, pv), expected)


def test_lora_answers_match_the_packages_lora_layer():
    lora = pytest.importorskip("lora_teach.lora")
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 4).double()
    layer = lora.LoRALinear(base, r=2, alpha=4.0)
    A, B = layer.lora_A["default"], layer.lora_B["default"]
    with torch.no_grad():
        B.normal_()
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(RIGHT["check_lora_linear_forward"](layer, x), layer(x))
    merged = RIGHT["check_lora_merge"](base.weight, A, B, 4.0, 2)
    torch.testing.assert_close(merged, base.weight + layer.get_delta_weight())
    assert RIGHT["check_lora_parameter_count"](6, 4, 2) == A.numel() + B.numel()


# ------------------------------------------------------------------- the notebooks fold the modules' solutions
NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _solved(source: str, solutions: list[str]) -> str:
    """An exercise cell with each stub replaced by its folded solution, as a learner would write it."""
    editions.check_pairing(source, solutions)
    lines = source.split("\n")
    for (start, end, indent), solution in reversed(list(zip(editions.stub_regions(source), solutions, strict=True))):
        lines[start:end] = [f"{indent}{line}" if line.strip() else "" for line in solution.strip("\n").split("\n")]
    return "\n".join(lines)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_function_exercises_folded_solution_is_its_checks_right_answer(path):
    """The code a notebook folds under a function exercise is, character for character, the solution its check
    carries (and the tests use): the function the exercise cell defines, with the solution in place of the stub."""
    nb = nbformat.read(path, as_version=4)
    for code, folded in editions.exercises(nb):
        source, solutions = nb.cells[code].source, editions.solutions_of(nb.cells[folded].source)
        trees = [editions.parse_solution(solution) for solution in solutions]
        if not any(isinstance(tree, ast.FunctionDef) or editions._returns(tree) for tree in trees):
            continue  # a value exercise: tests/test_editions.py runs its folded solution through its check
        check = re.search(r"^_ = (check_\w+)\(", source, re.M)[1]
        solution = RIGHT.get(check)
        assert inspect.isfunction(solution), f"{path.name}: {check}.right_answer() should be the solution function"
        lines = _solved(source, solutions).split("\n")
        (node,) = [n for n in ast.parse("\n".join(lines)).body
                   if isinstance(n, ast.FunctionDef) and n.name == solution.__name__]
        folded_function = "\n".join(lines[node.lineno - 1:node.end_lineno])
        assert folded_function == textwrap.dedent(inspect.getsource(solution)).rstrip("\n"), (
            f"{path.name}: the folded solution of {check} differs from {solution.__module__}.{solution.__name__}")


# ------------------------------------------------------------------------------ hidden tests: fresh inputs
FRESH = [name for name in CHECKS if getattr(getattr(ex, name), "fresh_inputs", False)]


def test_a_few_function_checks_take_fresh_inputs():
    assert len(FRESH) >= 5 and "check_linear_by_hand" in FRESH and "check_low_rank_factors" in FRESH
    assert all(inspect.isfunction(RIGHT[name]) for name in FRESH)  # function exercises only


@pytest.mark.parametrize("name", FRESH)
def test_the_right_answer_passes_on_fresh_inputs_that_differ_from_the_shown_ones(name, capsys):
    from lora_teach.exercises import core

    seen = {}

    def recording(*args):
        seen.setdefault(core._FRESH["seed"], []).append([a.clone() if isinstance(a, torch.Tensor) else a
                                                         for a in args])
        return RIGHT[name](*args)

    recording.__name__ = RIGHT[name].__name__
    state = torch.random.get_rng_state()
    assert getattr(ex, name)(recording) is True
    for seed in (1, 2):
        before = core._FRESH["drawn"]
        with core.fresh_inputs(seed):
            assert getattr(ex, name)(recording) is True, capsys.readouterr().out
        assert core._FRESH["drawn"] > before  # something was drawn afresh
    assert core._FRESH["seed"] is None and torch.equal(torch.random.get_rng_state(), state)
    shown, fresh = seen[None], seen[1]
    assert len(shown) == len(fresh)
    assert any(isinstance(a, torch.Tensor) and not torch.equal(a, b) for s, f in zip(shown, fresh, strict=True)
               for a, b in zip(s, f, strict=True)) or name == "check_mixed_from_single"


def test_a_function_that_only_fits_the_shown_cases_fails_on_fresh_inputs(capsys):
    """What the hidden tests catch: answers learnt by heart for the cases the check shows."""
    from lora_teach.exercises.core import fresh_inputs

    shown = {}

    def record(x, weight, bias):
        shown[x.shape] = RIGHT["check_linear_by_hand"](x, weight, bias)
        return shown[x.shape]

    assert ex.check_linear_by_hand(record) is True

    def by_heart(x, weight, bias):
        return shown[x.shape]

    assert ex.check_linear_by_hand(by_heart) is True
    with fresh_inputs(1):
        assert ex.check_linear_by_hand(by_heart) is False
    assert "wrong values" in capsys.readouterr().out


@pytest.mark.parametrize("seed", [0, -1, 1.5, True, "1"])
def test_fresh_inputs_refuses_a_bad_seed(seed):
    from lora_teach.exercises.core import _FRESH, fresh_inputs

    with pytest.raises(ValueError, match="seed must be a whole number >= 1"), fresh_inputs(seed):
        pass
    assert _FRESH["seed"] is None


# ------------------------------------------------------------------------------------------ building blocks
def test_check_number_says_too_large_or_too_small(capsys):
    kwargs = dict(name="n", hint="h", explanation="e")
    assert ex.check_number(11, 10, **kwargs) is False
    assert "too large" in capsys.readouterr().out
    assert ex.check_number(torch.tensor(9.0), 10, **kwargs) is False
    assert "too small" in capsys.readouterr().out
    assert ex.check_number(10.05, 10, **kwargs) is True
    assert ex.check_number(math.inf, 10, **kwargs) is False


def test_check_choice_accepts_any_case_and_brackets(capsys):
    kwargs = dict(name="choice", explanation="because", wrong={"a": "no", "b": "no"})
    assert ex.check_choice(" (C) ", "c", **kwargs) is True
    assert ex.check_choice("e", "c", **kwargs) is False
    assert "not one of the options 'a', 'b', 'c'" in capsys.readouterr().out


def test_check_function_ignores_a_failing_diagnosis(capsys):
    def diagnose(case, got):
        raise RuntimeError("bug in the diagnosis")

    ok = ex.check_function(lambda x: x + 1, name="f", cases=[(1,)], reference=lambda x: x, hint="the hint",
                           explanation="e", diagnose=diagnose)
    assert ok is False and "Hint: the hint" in capsys.readouterr().out


def test_check_function_compares_tuples_of_tensors(capsys):
    t = torch.ones(2)
    kwargs = dict(name="f", cases=[(t,)], reference=lambda x: (x, 2 * x), hint="h", explanation="e")
    assert ex.check_function(lambda x: (x, 2 * x), **kwargs) is True
    assert ex.check_function(lambda x: (x,), **kwargs) is False
    assert ex.check_function(lambda x: (x, 3 * x), **kwargs) is False
    assert "item 1" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["check_block_parameters", "check_training_bytes"])
def test_a_check_leaves_the_random_stream_alone(name):
    torch.manual_seed(0)
    getattr(ex, name)(RIGHT[name])
    after = torch.rand(3)
    torch.manual_seed(0)
    torch.testing.assert_close(after, torch.rand(3))


# ------------------------------------------------------------------------ notebooks 05 and 06 (prompt, P-tuning)
MISTAKES_05_06 = [
    ("check_t5_prompt_numbers", 100, "vector of d numbers"),
    ("check_t5_prompt_numbers", 2 * 24 * 100 * 4096, "prefix tuning"),
    ("check_prompt_activation_ratio", 2, "trainable numbers grow"),
    ("check_prompt_activation_ratio", 1, "every position"),
    ("check_spliced_logit_position", 12 + 63, "one position before it"),
    ("check_spliced_logit_position", 15 + 62, "section 4's template"),
    ("check_spliced_logit_position", 62, "before splicing"),
    ("check_spliced_logit_position", 83, "first character of ` => `"),
    ("check_p_tuning_kept_numbers", 20 * 128, "our model's count"),
    ("check_p_tuning_kept_numbers", 30, "vector of d numbers"),
    ("check_p_tuning_kept_numbers", 2 * 12 * 30 * 768, "prefix tuning"),
    ("check_forward_lstm_moved", 20, "bidirectional"),
    ("check_forward_lstm_moved", 12, "token 7 itself"),
    ("check_forward_lstm_moved", 8, "carries information forward"),
]


def test_the_activation_ratio_answer_is_what_activation_memory_measures():
    from lora_teach import activation_memory, author_task, load_base_model
    from lora_teach.prompt_tuning import PromptTuning

    base, task = load_base_model(torch.device("cpu")), author_task()
    batch = task.train_batch(16, torch.Generator().manual_seed(0))
    assert batch[0].shape[1] == 78  # the length the exercise gives: passage, " => " and the longest label word
    short, long = (activation_memory(PromptTuning(base, num_virtual_tokens=n), batch) for n in (20, 40))
    ratio = long / short
    assert math.isclose(ratio, RIGHT["check_prompt_activation_ratio"], rel_tol=0.03)


def test_a_forward_only_prompt_encoder_moves_the_tokens_from_the_nudged_one_on():
    torch.manual_seed(0)
    u = torch.nn.Parameter(torch.randn(20, 16))
    lstm = torch.nn.LSTM(16, 16, num_layers=2, batch_first=True)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    with torch.no_grad():
        before = mlp(lstm(u[None])[0])[0]
        u[7] += 0.1
        moved = (mlp(lstm(u[None])[0])[0] - before).abs().amax(dim=1) > 0
    assert int(moved.sum()) == RIGHT["check_forward_lstm_moved"] and moved[7:].all()


# ------------------------------------------------------------------------------------------------ notebook 03
MISTAKES_03 = [
    ("check_bottleneck_adapter", lambda x, wd, bd, wu, bu: F.gelu(x @ wd.T + bd) @ wu.T + bu, "skip connection"),
    ("check_bottleneck_adapter", lambda x, wd, bd, wu, bu: x + torch.relu(x @ wd.T + bd) @ wu.T + bu, "GELU"),
    ("check_bottleneck_adapter", lambda x, wd, bd, wu, bu: x + (x @ wd.T + bd) @ wu.T + bu, "non-linearity"),
    ("check_bottleneck_adapter", lambda x, wd, bd, wu, bu: x + F.gelu(x @ wd.T) @ wu.T, "biases are missing"),
    ("check_bottleneck_adapter", lambda x, wd, bd, wu, bu: x + F.gelu(x @ wd.T + bd) @ wu.T, "b_up"),
    ("check_bottleneck_adapter", lambda x, wd, bd, wu, bu: x + F.gelu(x @ wd + bd) @ wu + bu, "W_down (m, d)"),
    ("check_bottleneck_adapter", lambda x, wd, bd, wu, bu: x.add_(F.gelu(x @ wd.T + bd) @ wu.T + bu), "in place"),
    ("check_pfeiffer_parameter_count", 2 * 4 * (2 * 32 * 128 + 128 + 32), "Houlsby"),
    ("check_pfeiffer_parameter_count", 4 * (2 * 32 * 128 + 128 + 32) + 2 * 128 * 9, "layer norms"),
    ("check_pfeiffer_parameter_count", 2 * 32 * 128 + 128 + 32, "one adapter"),
    ("check_pfeiffer_parameter_count", 4 * 2 * 32 * 128, "biases"),
    ("check_pfeiffer_parameter_count", 4 * (2 * 32 * 128 + 2 * 128), "m numbers"),
    ("check_adapter_without_skip", "a", "deleted"),
    ("check_adapter_without_skip", "c", "residual stream"),
    ("check_adapter_without_skip", "d", "Pfeiffer"),
    ("check_largest_bottleneck", lambda d, n, k, b: b // (n * k * 2 * d), "biases too"),
    ("check_largest_bottleneck", lambda d, n, k, b: round((b / (n * k) - d) / (2 * d + 1)), "round down"),
    ("check_largest_bottleneck", lambda d, n, k, b: max(0, (b // n - d) // (2 * d + 1)), "adapters in each"),
    ("check_largest_bottleneck", lambda d, n, k, b: max(0, -(-(b // (n * k) - d) // (2 * d + 1)) - 1), "≤, not <"),
    ("check_largest_bottleneck", lambda d, n, k, b: (b / (n * k) - d) / (2 * d + 1), "whole number"),
    ("check_largest_bottleneck", lambda d, n, k, b: (b // (n * k) - d) // (2 * d + 1), "return 0"),
    ("check_largest_bottleneck", lambda d, n, k, b: 8 * (2 * 3 * 128 + 128 + 3), "number of parameters"),
    ("check_mergeable_adapter", "a", "ReLU is non-linear"),
    ("check_mergeable_adapter", "b", "still between"),
    ("check_mergeable_adapter", "d", "square or not"),
]


def test_the_bottleneck_answer_is_the_packages_adapter():
    from lora_teach.adapters import Adapter

    torch.manual_seed(0)
    adapter = Adapter(8, 3, zero_up=False, init_std=0.5).double()
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    weights = (adapter.down.weight, adapter.down.bias, adapter.up.weight, adapter.up.bias)
    with torch.no_grad():
        torch.testing.assert_close(RIGHT["check_bottleneck_adapter"](x, *weights), adapter(x))


def test_the_largest_bottleneck_answers_are_the_largest_sizes_add_adapters_fits():
    from lora_teach.adapters import add_adapters
    from lora_teach.exercises.nb03_adapters import LARGEST_BOTTLENECK_CASES

    for d, n_layer, per_block, budget in LARGEST_BOTTLENECK_CASES:
        if d > 128:  # a BERT-base-sized model: too large to build here
            continue
        placement = "houlsby" if per_block == 2 else "pfeiffer"
        m = RIGHT["check_largest_bottleneck"](d, n_layer, per_block, budget)
        sizes = [sum(p.numel() for p in add_adapters(GPT(GPTConfig(n_embd=d, n_layer=n_layer)), size, placement,
                                                     train_layer_norms=False).parameters() if p.requires_grad)
                 for size in (m, m + 1) if size > 0]
        assert (m == 0 or sizes[0] <= budget) and budget < sizes[-1]


def test_pfeiffer_answer_is_what_add_adapters_trains():
    from lora_teach.adapters import add_adapters
    from lora_teach.exercises.nb03_adapters import PFEIFFER_CASE as case

    model = GPT(GPTConfig(n_embd=case["d"], n_layer=case["n_layer"]))
    base = sum(p.numel() for p in model.parameters())
    adapted = add_adapters(model, case["m"], "pfeiffer", train_layer_norms=False)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert trainable == RIGHT["check_pfeiffer_parameter_count"]
    assert sum(p.numel() for p in adapted.parameters()) == base + trainable


# ------------------------------------------------------------------------------------------------ notebook 04
MISTAKES_04 = [
    ("check_prefix_training_parameters", 297_472, "P = 10"),
    ("check_prefix_training_parameters", 2 * 297_472, "does not depend on P"),
    ("check_prefix_training_parameters", 2 * 4 * 20 * 128, "kept after freeze_prefix()"),
    ("check_prefix_training_parameters", 20 * 128, "MLP is trained too"),
    ("check_prefix_kept_numbers", lambda n_layer, p, d, h, k: p * d, "prompt tuning"),
    ("check_prefix_kept_numbers", lambda n_layer, p, d, h, k: n_layer * p * k * (d // h), "key AND a value"),
    ("check_prefix_kept_numbers", lambda n_layer, p, d, h, k: 2 * n_layer * p * d, "key/value space"),
    ("check_prefix_kept_numbers", lambda n_layer, p, d, h, k: 2 * n_layer * p * k * d, "d_h = d / n_head"),
    ("check_prefix_kept_numbers", lambda n_layer, p, d, h, k: 2 * n_layer * p * d * h // k, "smaller than d"),
    ("check_prefix_exact_start", "a", "zero key still scores"),
    ("check_prefix_exact_start", "b", "one slot"),
    ("check_prefix_exact_start", "c", "very positive"),
]


def test_the_prefix_kept_answer_is_the_shape_of_the_models_keys_and_values():
    """With n_kv_head = n_head (our model) the count is what freeze_prefix() keeps."""
    from lora_teach.exercises.nb04_prefix_tuning import PREFIX_KEPT_CASES
    from lora_teach.prefix import PrefixTuning

    n_layer, prefix_len, d, n_head, n_kv_head = PREFIX_KEPT_CASES[0]
    assert n_head == n_kv_head
    model = GPT(GPTConfig(n_embd=d, n_layer=n_layer, n_head=n_head))
    kept = PrefixTuning(model, prefix_len).freeze_prefix().prefix.numel()
    assert kept == RIGHT["check_prefix_kept_numbers"](*PREFIX_KEPT_CASES[0]) == 2 * n_layer * prefix_len * d


def test_prefix_training_answer_is_what_prefix_tuning_trains():
    from lora_teach.exercises.nb04_prefix_tuning import PREFIX_TRAINING_CASE as case
    from lora_teach.prefix import PrefixTuning

    model = GPT(GPTConfig(n_embd=case["d"], n_layer=case["n_layer"]))
    pt = PrefixTuning(model, case["prefix_len"], hidden=case["hidden"])
    trainable = sum(p.numel() for p in pt.parameters() if p.requires_grad)
    assert trainable == RIGHT["check_prefix_training_parameters"]


# ------------------------------------------------------------------------------------------------ notebook 07
def _factors_split(M, r):
    U, S, Vh = torch.linalg.svd(M.float(), full_matrices=False)
    root = S[:r].sqrt()
    return U[:, :r] * root, root[:, None] * Vh[:r]  # the square root of S in both, in float32


def _factors_old_svd(M, r):
    U, S, V = torch.svd(M)  # the older API returns V, not Vh
    return U[:, :r], S[:r, None] * V[:, :r].T


def _rank_8_error_of_block_0_q_proj():
    """||W0 - (W0)_8||_F / ||W0||_F by building the rank-8 copy, not from the energy formula the check uses."""
    from lora_teach import load_base_model

    W = load_base_model("cpu").blocks[0].attn.q_proj.weight.detach().double()
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return ((W - U[:, :8] @ torch.diag(S[:8]) @ Vh[:8]).norm() / W.norm()).item()


def _factors_then_zero(M, r):
    B, A = RIGHT["check_low_rank_factors"](M, r)
    M.zero_()
    return B, A


def _svd_variant(build):
    """A wrong low_rank_factors built from (U, S, Vh, r), for the list of mistakes."""
    def fn(M, r):
        U, S, Vh = torch.linalg.svd(M, full_matrices=False)
        return build(U, S, Vh, r)
    return fn


MISTAKES_07 = [
    ("check_break_even_rank", 103, "65,920"),
    ("check_break_even_rank", 64, "square 128 × 128"),
    ("check_break_even_rank", 102.4, "whole number"),
    ("check_low_rank_factors", _svd_variant(lambda U, S, Vh, r: (U[:, :r], Vh[:r])), "singular values are missing"),
    ("check_low_rank_factors", _svd_variant(lambda U, S, Vh, r: (U[:, :r] * S[:r], S[:r, None] * Vh[:r])),
     "in twice"),
    ("check_low_rank_factors", _svd_variant(lambda U, S, Vh, r: (U[:, -r:] * S[-r:], Vh[-r:])), "smallest"),
    ("check_low_rank_factors", _svd_variant(lambda U, S, Vh, r: (U[:, :r] * S[:r], Vh[:, :r].T)), "ROWS"),
    ("check_low_rank_factors", _svd_variant(lambda U, S, Vh, r: (U[:, :r] * S[:r], Vh)), "expected B (6, 2)"),
    ("check_low_rank_factors", _svd_variant(lambda U, S, Vh, r: U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]),
     "not their product"),
    ("check_low_rank_factors", _factors_then_zero, "in place"),
    ("check_rank_one_error", 4.1996, "absolute error"),
    ("check_rank_one_error", 4.1996 / 5.6478, "spectral"),
    ("check_rank_one_error", 4.1996**2 / (5.6478**2 + 4.1996**2), "square root"),
    ("check_rank_one_error", 59.67, "percentage"),
    ("check_rank_8_weight_error", 1 - 0.590, "square root"),
    ("check_rank_8_weight_error", 0.590, "energy kept"),
    ("check_rank_8_weight_error", 0.590**0.5, "size of what is kept"),
    ("check_rank_8_weight_error", 64.0, "percentage"),
    ("check_alpha_for_rank_32", 8, "halving"),
    ("check_alpha_for_rank_32", 32, "double"),
    ("check_alpha_for_rank_32", 64, "four times"),
]


@pytest.mark.parametrize("fn", [_factors_split, _factors_old_svd])
def test_any_split_of_the_singular_values_between_b_and_a_passes(fn, capsys):
    assert ex.check_low_rank_factors(fn) is True
    assert capsys.readouterr().out.startswith("✓ ")


def test_the_low_rank_factors_answer_has_the_eckart_young_error():
    M = torch.randn(9, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    S = torch.linalg.svdvals(M)
    for r in range(7):
        B, A = RIGHT["check_low_rank_factors"](M, r)
        err = torch.linalg.norm(M - B @ A)
        torch.testing.assert_close(err, S[r:].pow(2).sum().sqrt())
        assert torch.linalg.matrix_rank(B @ A).item() == r


def test_the_break_even_rank_is_the_largest_whose_factors_are_smaller():
    r = RIGHT["check_break_even_rank"]
    assert r * (512 + 128) < 512 * 128 <= (r + 1) * (512 + 128)


def test_the_rank_8_answer_is_the_error_of_a_rank_8_copy():
    assert math.isclose(RIGHT["check_rank_8_weight_error"], _rank_8_error_of_block_0_q_proj(), rel_tol=1e-6)


def test_the_factor_check_leaves_the_random_stream_alone(capsys):
    torch.manual_seed(0)
    ex.check_low_rank_factors(RIGHT["check_low_rank_factors"])
    after = torch.rand(3)
    torch.manual_seed(0)
    torch.testing.assert_close(after, torch.rand(3))


# ------------------------------------------------------------------------------------------------ notebook 09
MISTAKES_09 = [
    ("check_rslora_scaling", 0.25, "α / r, the paper's scaling"),
    ("check_rslora_scaling", 2, "α = 2r rule"),
    ("check_rslora_scaling", 8, "α alone"),
    ("check_rslora_scaling", math.sqrt(32) / 8, "upside down"),
    ("check_adapter_file_bytes", lambda shapes, r, n, b: n * sum(r * (i + o) for i, o in shapes), "counts numbers"),
    ("check_adapter_file_bytes", lambda shapes, r, n, b: sum(r * (i + o) for i, o in shapes) * b, "one block"),
    ("check_adapter_file_bytes", lambda shapes, r, n, b: n * sum(2 * r * i for i, _ in shapes) * b, "square"),
    ("check_adapter_file_bytes", lambda shapes, r, n, b: n * sum(i * o for i, o in shapes) * b, "whole targeted"),
    ("check_adapter_file_bytes", lambda shapes, r, n, b: n * sum(r * i for i, _ in shapes) * b, "counts A only"),
    ("check_adapter_file_bytes", lambda shapes, r, n, b: n * sum(r * (i + o) + o for i, o in shapes) * b,
     "no bias"),
    ("check_adapter_file_bytes", lambda shapes, r, n, b: 8 * n * sum(r * (i + o) for i, o in shapes) * b, "bits"),
    ("check_separated_pairs", 3, "the MLP"),
    ("check_separated_pairs", 10, "overlap"),
    ("check_separated_pairs", 0, "every run on W_q alone"),
    ("check_separated_pairs", 4, "two of the MLP's"),
]


def test_the_separated_pairs_are_read_from_the_shipped_sweep():
    """The check counts the pairs of target sets whose three runs do not overlap, from the committed CSV."""
    from lora_teach.exercises import nb09_lora_in_practice as nb09

    runs = nb09.budget_runs()
    assert len(runs) == 5 and all(len(accs) == 3 for accs in runs.values())
    pairs = nb09.separated(runs)
    assert len(pairs) == RIGHT["check_separated_pairs"] == 6  # the six pairs the check's explanation describes
    assert ("q_proj", "v_proj") in pairs and ("v_proj", "q_proj,v_proj") not in pairs


def test_adapter_file_bytes_answer_is_the_size_of_a_saved_adapter(tmp_path):
    """The solution counts the bytes of A and B that save_adapter writes (plus a small header)."""
    lora = pytest.importorskip("lora_teach.lora")
    from lora_teach.measure import checkpoint_size

    torch.manual_seed(0)
    model = lora.apply_lora(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=32)),
                            lora.LoRAConfig(r=3, alpha=6, target_modules=("v_proj", "up_proj")))
    expected = RIGHT["check_adapter_file_bytes"]([(16, 16), (16, 64)], 3, 2, 4)
    tensors = lora.lora_state_dict(model)
    assert sum(t.numel() * t.element_size() for t in tensors.values()) == expected
    assert expected <= checkpoint_size(tensors) < expected + 128 * len(tensors)


@pytest.mark.parametrize("name", CHECKS)
def test_no_check_moves_the_global_random_stream(name, capsys):
    """Every check, right or wrong answer: a check cell must not change the seeded results after it."""
    for answer in (RIGHT[name], None, "x", lambda *args: torch.zeros(2, 2)):
        torch.manual_seed(0)
        before = torch.random.get_rng_state()
        getattr(ex, name)(answer)
        assert torch.equal(torch.random.get_rng_state(), before), f"{name}({answer!r}) drew random numbers"


# ------------------------------------------------------------------------------------------------ notebook 10
MISTAKES_10 = [
    ("check_lora_memory_fraction", 0.0193, "trainable parameters"),
    ("check_lora_memory_fraction", 3.43 / 12.73, "state column only"),
    ("check_lora_memory_fraction", 1 - 37.53 / 63.03, "saves"),
    ("check_lora_memory_fraction", 59.5, "percentage"),
    ("check_method_for_serving", "b", "cannot be merged"),
    ("check_method_for_serving", "c", "chance"),
    ("check_method_for_serving", "a", "whole model"),
    ("check_small_data_reading", "a", "0.001"),
    ("check_small_data_reading", "b", "did not learn less"),
    ("check_small_data_reading", "d", "overfitting"),
]


def test_the_memory_numbers_of_notebook_10_match_the_shipped_results():
    """The check quotes the table notebook 10 prints; if the comparison is re-run, update both."""
    import csv
    from importlib import resources

    from lora_teach.exercises.nb10_choosing_a_method import FULL_ACT_MIB, FULL_STATE_MIB, LORA_ACT_MIB, LORA_STATE_MIB

    with (resources.files("lora_teach") / "results" / "comparison_runs.csv").open() as f:
        rows = list(csv.DictReader(f))
    first = {r["method"]: r for r in rows if r["seed"] == rows[0]["seed"] and r["task"] == "shakespeare"}

    def mib(method):
        r = first[method]
        state = sum(float(r[k]) for k in ("weights_bytes", "gradient_bytes", "optimizer_bytes")) / 2**20
        return state, float(r["activation_bytes"]) / 2**20

    for (state, act), (quoted_state, quoted_act) in [(mib("full"), (FULL_STATE_MIB, FULL_ACT_MIB)),
                                                     (mib("lora"), (LORA_STATE_MIB, LORA_ACT_MIB))]:
        assert round(state, 2) == quoted_state and round(act, 1) == quoted_act


# ----------------------------------------------------------------------------------- notebook 12: QLoRA
def _dequantize_block(packed, absmax, order, scale=True):
    from lora_teach.quantize import NF4_CODEBOOK

    pair = [packed >> 4, packed & 0xF] if order == "high first" else [packed & 0xF, packed >> 4]
    levels = NF4_CODEBOOK[torch.stack(pair, dim=1).reshape(-1).long()]
    return levels * absmax if scale else levels


MISTAKES_12 = [
    ("check_nf4_70b_gb", 68_976_648_192 * 4 / 8 / 1e9, "codes only"),
    ("check_nf4_70b_gb", 68_976_648_192 * 4.5 / 8 / 1e9, "without double quantisation"),
    ("check_nf4_70b_gb", 68_976_648_192 * 4.127 / 8 / 2**30, "GiB"),
    ("check_dequantize_block", lambda p, a: _dequantize_block(p, a, order="low first"), "swapped"),
    ("check_dequantize_block", lambda p, a: _dequantize_block(p, a, order="high first", scale=False), "absmax"),
    ("check_zero_level", "a", "16 levels"),
    ("check_zero_level", "d", "looked up"),
]


def test_the_dequantize_answer_is_the_packages_nf4_dequantize():
    from lora_teach.quantize import nf4_dequantize, nf4_quantize

    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    packed, absmax = nf4_quantize(w)
    dequantize_block = RIGHT["check_dequantize_block"]
    by_block = torch.cat([dequantize_block(packed[32 * i:32 * (i + 1)], absmax[i]) for i in range(4)])
    assert torch.equal(by_block.view(4, 64), nf4_dequantize(packed, absmax, w.shape))


# ------------------------------------------------------------------------------------------------ notebook 11
def _lora_config(**kwargs):
    import peft

    return peft.LoraConfig(r=8, lora_alpha=16, **kwargs)


MISTAKES_11 = [
    ("check_llama_all_linear", [*RIGHT["check_llama_all_linear"], "lm_head"], "output head"),
    ("check_llama_all_linear", [n for n in RIGHT["check_llama_all_linear"] if n != "gate_proj"], "SiLU"),
    ("check_llama_all_linear", ["q_proj", "k_proj", "v_proj", "o_proj"], "MLP"),
    ("check_llama_all_linear", ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"], "OPT"),
    ("check_llama_all_linear", "all-linear", "list of module names"),
    ("check_opt_attention_config", _lora_config(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
     "does not warn"),
    ("check_opt_attention_config", _lora_config(target_modules="all-linear"), "fc1"),
    ("check_opt_attention_config", _lora_config(target_modules=["q_proj", "v_proj"]), "expected q_proj"),
    ("check_opt_attention_config", _lora_config(target_modules=["q", "k"]), "PEFT refused"),
    ("check_opt_attention_config", _lora_config(target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
                                                fan_in_fan_out=True), "Conv1D"),
    ("check_fused_qkv_params", 8 * (768 + 3 * 768), "share its A"),
    ("check_fused_qkv_params", 3 * 8 * (768 + 768), "three separate"),
    ("check_fused_qkv_params", 16 * (768 + 3 * 768), "need three"),
]


# ------------------------------------------------------------------------------------------------ notebook 13
MISTAKES_13 = [
    ("check_dora_trainable", lambda i, o, r: r * (i + o), "magnitude vector m"),
    ("check_dora_trainable", lambda i, o, r: r * (i + o) + i, "one per output feature"),
    ("check_dora_trainable", lambda i, o, r: r * (i + o) + i * o, "one number per output feature"),
    ("check_dora_trainable", lambda i, o, r: 2 * r * i + o, "square"),
    ("check_optimizer_only_variant", "a", "α / √r"),
    ("check_optimizer_only_variant", "b", "magnitude vector"),
    ("check_optimizer_only_variant", "c", "initialisation"),
    ("check_mixed_from_single", lambda outputs, names: outputs[names[0]], "first row's adapter"),
    ("check_mixed_from_single", lambda outputs, names: torch.stack([outputs[n][0] for n in names]), "row 0"),
    ("check_mixed_from_single", lambda outputs, names: sum(outputs.values()) / len(outputs), "averaging"),
]

MISTAKES_14 = [
    ("check_loss_tokens", 8, "must carry loss"),
    ("check_loss_tokens", 10, "belongs to the prompt"),
    ("check_loss_tokens", 11, "only what is inside"),
    ("check_bnb_defaults", "a", "none of it is the default"),
    ("check_bnb_defaults", "c", "'fp4'"),
    ("check_bnb_defaults", "d", "load_in_8bit"),
    ("check_reference_copy_gb", 7_615_616_512 * 2 / 1e9, "in bf16"),
    ("check_reference_copy_gb", 7_615_616_512 * 4 / 8 / 1e9, "4.127 bits in all"),
    ("check_reference_copy_gb", 7_615_616_512 * 4.5 / 8 / 1e9, "fp32 block constants"),
    ("check_reference_copy_gb", 7_615_616_512 * 4.127 / 8 / 2**30, "2^30"),
]


def test_the_dora_answer_counts_what_lora_teach_trains():
    from lora_teach.lora import LoRALinear

    for i, o, r in [(6, 10, 2), (128, 512, 8)]:
        layer = LoRALinear(torch.nn.Linear(i, o), r=r, alpha=r, use_dora=True)
        trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
        assert trainable == RIGHT["check_dora_trainable"](i, o, r)


def test_the_mixed_batch_answer_is_what_forward_with_adapters_computes():
    from lora_teach.lora import LoRAConfig, apply_lora, disable_adapter, lora_layers
    from lora_teach.model import GPT, GPTConfig
    from lora_teach.serving import add_adapter, forward_with_adapters, set_adapter

    torch.manual_seed(0)
    model = apply_lora(GPT(GPTConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval(),
                       LoRAConfig(r=2, alpha=4))
    add_adapter(model, "author", LoRAConfig(r=2, alpha=4))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for name in ("default", "author"):
                layer.lora_B[name].normal_(0, 0.5)
    x = torch.randint(0, 97, (4, 8), generator=torch.Generator().manual_seed(1))
    names = ["author", "__base__", "default", "author"]
    outputs = {}
    for name in ("default", "author"):
        set_adapter(model, name)
        outputs[name] = model(x)[0]
    with disable_adapter(model):
        outputs["__base__"] = model(x)[0]
    set_adapter(model, "default")
    mixed = RIGHT["check_mixed_from_single"](outputs, names)
    torch.testing.assert_close(forward_with_adapters(model, x, names)[0], mixed, rtol=0, atol=1e-5)


# every notebook's common mistakes, each with the words its own message must contain
ALL_MISTAKES = (MISTAKES + MISTAKES_03 + MISTAKES_04 + MISTAKES_05_06 + MISTAKES_07 + MISTAKES_09 + MISTAKES_10
                + MISTAKES_11 + MISTAKES_12 + MISTAKES_13 + MISTAKES_14)


@pytest.mark.parametrize("name,answer,words", ALL_MISTAKES, ids=[f"{m[0]}-{i}" for i, m in enumerate(ALL_MISTAKES)])
def test_a_common_mistake_gets_its_own_message(name, answer, words, capsys):
    assert getattr(ex, name)(answer) is False
    out = capsys.readouterr().out
    assert out.startswith("✗ ") and words in out
