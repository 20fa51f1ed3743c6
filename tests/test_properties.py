"""Property-based tests (hypothesis) of the LoRA invariants over random shapes, ranks, alphas and targets.

Layer: A (r, in) kaiming-uniform, B (out, r) zeros; output equals the base layer at init (bit for bit); the
forward is base + scaling * x A^T B^T with scaling alpha/r (alpha/sqrt(r) with rsLoRA); merged equals unmerged
in eval mode; merge and unmerge are idempotent and unmerge restores W; r * (in + out) trainable parameters;
the update has rank at most r; at init only B gets a gradient.
Model: any target set leaves the logits unchanged at init; the trainable count is the sum over wrapped layers;
disable_adapter gives the base; merge_and_unload gives back the original structure with the merged function;
save/load of the adapter reproduces the outputs.

Examples are few (deadline off, derandomized, no example database) so the file runs in seconds and every run
checks the same cases.
"""

from __future__ import annotations

import math
import tempfile

import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_teach.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    disable_adapter,
    load_adapter,
    lora_layers,
    merge_and_unload,
    save_adapter,
)
from lora_teach.measure import count_parameters
from lora_teach.model import GPT, GPTConfig

SETTINGS = dict(deadline=None, derandomize=True, database=None)
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "lm_head")

dims = st.integers(1, 24)
ranks = st.integers(1, 8)
alphas = st.floats(0.25, 64, allow_nan=False, allow_infinity=False)
seeds = st.integers(0, 2**16)


def layer_for(d_in: int, d_out: int, r: int, alpha: float, use_rslora: bool = False, bias: bool = True,
              seed: int = 0, dtype=torch.float64) -> LoRALinear:
    torch.manual_seed(seed)
    return LoRALinear(nn.Linear(d_in, d_out, bias=bias).to(dtype), r=r, alpha=alpha, use_rslora=use_rslora).eval()


def randomize_b(layers, seed: int) -> None:
    """A random B, as after training: the LoRA branch is no longer zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            B = layer.lora_B["default"]
            B.copy_(torch.randn(B.shape, generator=gen, dtype=B.dtype))


def inputs(d_in: int, seed: int, dtype=torch.float64, shape=(3, 2)) -> torch.Tensor:
    return torch.randn(*shape, d_in, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------------------------- the layer
@settings(max_examples=40, **SETTINGS)
@given(dims, dims, ranks, alphas, st.booleans(), st.booleans(), seeds)
def test_init_shapes_and_output_equals_base(d_in, d_out, r, alpha, use_rslora, bias, seed):
    layer = layer_for(d_in, d_out, r, alpha, use_rslora, bias, seed, dtype=torch.float32)
    A, B = layer.lora_A["default"], layer.lora_B["default"]
    assert A.shape == (r, d_in) and B.shape == (d_out, r)
    assert torch.count_nonzero(B) == 0
    bound = 1 / math.sqrt(d_in)  # kaiming_uniform_ with a = sqrt(5), as nn.Linear, loralib and PEFT
    assert A.abs().max() <= bound + 1e-7 and torch.count_nonzero(A) > 0
    x = inputs(d_in, seed, torch.float32)
    assert torch.equal(layer(x), layer.base_layer(x))


@settings(max_examples=40, **SETTINGS)
@given(dims, dims, ranks, alphas, st.booleans(), st.booleans())
def test_parameter_count_is_r_times_in_plus_out_and_only_a_b_train(d_in, d_out, r, alpha, use_rslora, bias):
    layer = layer_for(d_in, d_out, r, alpha, use_rslora, bias)
    trainable, total = count_parameters(layer)
    assert trainable == r * (d_in + d_out)
    assert total == d_in * d_out + (d_out if bias else 0) + r * (d_in + d_out)
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {"lora_A.default", "lora_B.default"}


@settings(max_examples=40, **SETTINGS)
@given(dims, dims, ranks, alphas, st.booleans(), seeds)
def test_forward_is_base_plus_scaled_low_rank_update(d_in, d_out, r, alpha, use_rslora, seed):
    layer = layer_for(d_in, d_out, r, alpha, use_rslora, seed=seed)
    randomize_b([layer], seed)
    expected_scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
    assert math.isclose(layer.scaling["default"], expected_scaling, rel_tol=1e-12)
    x = inputs(d_in, seed)
    expected = layer.base_layer(x) + expected_scaling * (x @ layer.lora_A["default"].T @ layer.lora_B["default"].T)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
    delta = layer.get_delta_weight()
    assert delta.shape == (d_out, d_in)
    assert torch.linalg.matrix_rank(delta).item() <= min(r, d_in, d_out)


@settings(max_examples=40, **SETTINGS)
@given(dims, dims, ranks, alphas, st.booleans(), seeds)
def test_merged_equals_unmerged_and_unmerge_restores_w(d_in, d_out, r, alpha, use_rslora, seed):
    layer = layer_for(d_in, d_out, r, alpha, use_rslora, seed=seed)
    randomize_b([layer], seed)
    x = inputs(d_in, seed)
    unmerged = layer(x)
    w0 = layer.base_layer.weight.detach().clone()
    layer.merge()
    layer.merge()  # idempotent: the update is added once
    assert layer.merged
    torch.testing.assert_close(layer.base_layer.weight, w0 + layer.get_delta_weight(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-10, atol=1e-10)
    layer.unmerge()
    layer.unmerge()  # idempotent: the update is taken out once
    assert not layer.merged
    torch.testing.assert_close(layer.base_layer.weight, w0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-12, atol=1e-12)


@settings(max_examples=25, **SETTINGS)
@given(dims, dims, ranks, alphas, seeds)
def test_at_init_only_b_gets_a_gradient(d_in, d_out, r, alpha, seed):
    layer = layer_for(d_in, d_out, r, alpha, seed=seed)
    layer(inputs(d_in, seed)).pow(2).sum().backward()
    assert torch.count_nonzero(layer.lora_A["default"].grad) == 0  # dL/dA = scaling * B^T (...) and B = 0
    assert layer.base_layer.weight.grad is None
    assert layer.lora_B["default"].grad is not None


# --------------------------------------------------------------------------------------------- the model
targets = st.lists(st.sampled_from(LINEAR_NAMES), min_size=1, max_size=4, unique=True)
widths = st.sampled_from([8, 16])


def tiny_gpt(n_embd: int, n_layer: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=97, block_size=16, n_layer=n_layer, n_head=2, n_embd=n_embd)).eval()


def token_ids(seed: int) -> torch.Tensor:
    return torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(seed))


@settings(max_examples=20, **SETTINGS)
@given(widths, st.integers(1, 2), targets, ranks, alphas, st.booleans(), seeds)
def test_any_targets_keep_the_logits_at_init_and_count_r_times_in_plus_out(n_embd, n_layer, names, r, alpha,
                                                                            use_rslora, seed):
    model = tiny_gpt(n_embd, n_layer, seed)
    x = token_ids(seed)
    base_logits = model(x)[0]
    base_modules = {name: (m.in_features, m.out_features) for name, m in model.named_modules()
                    if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in names}
    apply_lora(model, LoRAConfig(r=r, alpha=alpha, target_modules=tuple(names), use_rslora=use_rslora))
    assert set(lora_layers(model)) == set(base_modules)
    assert torch.equal(model(x)[0], base_logits)
    trainable, _ = count_parameters(model)
    assert trainable == sum(r * (d_in + d_out) for d_in, d_out in base_modules.values())


@settings(max_examples=15, **SETTINGS)
@given(widths, targets, ranks, alphas, seeds)
def test_disable_adapter_is_the_base_and_merge_and_unload_restores_the_structure(n_embd, names, r, alpha, seed):
    original = tiny_gpt(n_embd, 2, seed).double()
    structure, module_names = str(original), [n for n, _ in original.named_modules()]
    model = tiny_gpt(n_embd, 2, seed).double()
    x = token_ids(seed)
    base_logits = model(x)[0]
    apply_lora(model, LoRAConfig(r=r, alpha=alpha, target_modules=tuple(names)))
    randomize_b(lora_layers(model).values(), seed)
    adapted = model(x)[0]
    with disable_adapter(model):
        assert torch.equal(model(x)[0], base_logits)
    torch.testing.assert_close(model(x)[0], adapted, rtol=0, atol=0)
    merge_and_unload(model)
    assert str(model) == structure and [n for n, _ in model.named_modules()] == module_names
    torch.testing.assert_close(model(x)[0], adapted, rtol=1e-9, atol=1e-9)


@settings(max_examples=10, **SETTINGS)
@given(widths, targets, ranks, alphas, st.booleans(), seeds)
def test_saved_adapter_reproduces_the_outputs_on_a_fresh_base(n_embd, names, r, alpha, use_rslora, seed):
    model = apply_lora(tiny_gpt(n_embd, 2, seed),
                       LoRAConfig(r=r, alpha=alpha, target_modules=tuple(names), use_rslora=use_rslora))
    randomize_b(lora_layers(model).values(), seed)
    x = token_ids(seed)
    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(model, tmp)
        fresh = load_adapter(tiny_gpt(n_embd, 2, seed), tmp)
    assert torch.equal(fresh(x)[0], model(x)[0])
