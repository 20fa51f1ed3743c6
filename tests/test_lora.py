"""Tests for lora_teach.lora: the invariants of LoRA (METHODS_REFERENCE.md) on small random GPTs.

A layer keys its adapters by name, as PEFT does; `apply_lora` and `LoRALinear(...)` make the one named 'default'.
"""

import copy
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_teach.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoRAConfig,
    LoRALinear,
    apply_lora,
    disable_adapter,
    find_targets,
    load_adapter,
    lora_layers,
    lora_state_dict,
    mark_only_lora_as_trainable,
    merge_and_unload,
    merge_lora,
    save_adapter,
    unmerge_lora,
)
from lora_teach.measure import count_parameters
from lora_teach.model import GPT, GPTConfig
from lora_teach.training import train

D = "default"  # the adapter apply_lora makes
SMALL = dict(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=16)
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")


def small_gpt(seed=0, dtype=torch.float32, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**SMALL, **overrides})).to(dtype).eval()


def tokens(seed=1, batch=3, T=12) -> torch.Tensor:
    return torch.randint(0, SMALL["vocab_size"], (batch, T), generator=torch.Generator().manual_seed(seed))


def randomize_b(model: nn.Module, seed=2, std=0.5) -> None:
    """Give every B a random value, so that the LoRA branch is not zero (as after some training)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            B = layer.lora_B[D]
            B.copy_(torch.randn(B.shape, generator=gen, dtype=B.dtype) * std)


def snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k


class CopyTask:
    """A tiny synthetic language-modelling task: predict the next token of a repeating pattern."""

    name = "copy"

    def train_batch(self, batch_size, generator=None):
        start = torch.randint(0, 10, (batch_size, 1), generator=generator)
        seq = (start + torch.arange(13)) % 10 + 20  # (B, 13)
        x, y = seq[:, :-1], seq[:, 1:]
        return x, y, torch.ones_like(x, dtype=torch.bool)


# ------------------------------------------------------------------------------------------------- the layer
def test_layer_shapes_init_and_frozen_base():
    base = nn.Linear(16, 64)
    layer = LoRALinear(base, r=4, alpha=8)
    assert layer.base_layer is base
    A, B = layer.lora_A[D], layer.lora_B[D]
    assert A.shape == (4, 16) and B.shape == (64, 4)  # A (r, in), B (out, r)
    assert torch.count_nonzero(B) == 0 and torch.count_nonzero(A) > 0
    bound = 1 / math.sqrt(16)  # kaiming-uniform with a=sqrt(5) is U(-1/sqrt(in), 1/sqrt(in))
    assert A.abs().max() <= bound
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert A.requires_grad and B.requires_grad
    assert list(layer.lora_A) == list(layer.lora_B) == [D] and not layer.lora_magnitude


def test_layer_follows_dtype_of_base():
    layer = LoRALinear(nn.Linear(8, 8).double(), r=2, alpha=2)
    assert layer.lora_A[D].dtype == layer.lora_B[D].dtype == torch.float64
    assert layer.lora_A[D].device == layer.base_layer.weight.device


@pytest.mark.parametrize("use_rslora, expected", [(False, 16 / 4), (True, 16 / 2)])
def test_scaling_is_applied(use_rslora, expected):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(12, 20).double(), r=4, alpha=16, use_rslora=use_rslora)
    assert layer.scaling[D] == expected
    with torch.no_grad():
        layer.lora_B[D].normal_()
    x = torch.randn(5, 12, dtype=torch.float64)
    update = layer(x) - layer.base_layer(x)
    manual = expected * (x @ layer.lora_A[D].T @ layer.lora_B[D].T)
    torch.testing.assert_close(update, manual, rtol=1e-12, atol=1e-12)


def test_dropout_acts_on_the_branch_input_only():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(10, 6).double(), r=3, alpha=3, dropout=0.5).train()
    A, B, scaling = layer.lora_A[D], layer.lora_B[D], layer.scaling[D]
    with torch.no_grad():
        B.normal_()
    x = torch.randn(4, 10, dtype=torch.float64)
    torch.manual_seed(7)
    out = layer(x)
    torch.manual_seed(7)
    dropped = F.dropout(x, 0.5, training=True)
    expected = layer.base_layer(x) + (dropped @ A.T @ B.T) * scaling
    assert torch.equal(out, expected)
    layer.eval()  # no dropout in eval mode
    assert torch.equal(layer(x), layer.base_layer(x) + (x @ A.T @ B.T) * scaling)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 24), st.integers(1, 24), st.integers(1, 8), st.floats(0.5, 64))
def test_merge_equals_unmerged_any_shape(d_in, d_out, r, alpha):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(d_in, d_out).double(), r=r, alpha=alpha).eval()
    with torch.no_grad():
        layer.lora_B[D].normal_()
    x = torch.randn(3, 2, d_in, dtype=torch.float64)
    unmerged = layer(x)
    w0 = layer.base_layer.weight.detach().clone()
    layer.merge()
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-12, atol=1e-12)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, w0, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------ the model
def test_output_equals_base_at_init():
    model = small_gpt()
    x = tokens()
    base_logits, _ = model(x)
    apply_lora(model, LoRAConfig(r=4, alpha=8, target_modules=ALL_LINEAR))
    logits, _ = model(x)
    assert torch.equal(logits, base_logits)


def test_apply_lora_wraps_targets_in_place_and_freezes_the_rest():
    model = small_gpt()
    q0 = model.blocks[0].attn.q_proj
    out = apply_lora(model, LoRAConfig())
    assert out is model
    assert set(lora_layers(model)) == {f"blocks.{i}.attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")}
    assert model.blocks[0].attn.q_proj.base_layer is q0
    assert isinstance(model.blocks[0].attn.k_proj, nn.Linear)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{m}.{D}" for n in lora_layers(model) for m in "AB"}


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ALL_LINEAR, ("up_proj", "down_proj", "lm_head")])
@pytest.mark.parametrize("r", [1, 4])
def test_trainable_count_is_sum_of_r_times_in_plus_out(targets, r):
    model = small_gpt()
    apply_lora(model, LoRAConfig(r=r, alpha=r, target_modules=targets))
    expected = sum(r * (m.in_features + m.out_features) for m in lora_layers(model).values())
    assert count_parameters(model)[0] == expected
    if targets == ("q_proj", "v_proj"):
        d, L = SMALL["n_embd"], SMALL["n_layer"]
        assert expected == 2 * L * 2 * d * r  # the paper's count for W_q and W_v


def test_non_square_layers():
    model = small_gpt()
    apply_lora(model, LoRAConfig(r=3, alpha=6, target_modules=("up_proj", "down_proj")))
    up, down = model.blocks[0].mlp.up_proj, model.blocks[0].mlp.down_proj
    d = SMALL["n_embd"]
    assert up.lora_A[D].shape == (3, d) and up.lora_B[D].shape == (4 * d, 3)  # d -> 4d
    assert down.lora_A[D].shape == (3, 4 * d) and down.lora_B[D].shape == (d, 3)  # 4d -> d
    randomize_b(model)
    for layer in (up, down):
        assert layer.get_delta_weight().shape == layer.base_layer.weight.shape
        x = torch.randn(2, 5, layer.in_features)
        expected = F.linear(x, layer.base_layer.weight + layer.get_delta_weight(), layer.base_layer.bias)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    logits, _ = model(tokens())
    assert logits.shape == (3, 12, SMALL["vocab_size"])


def test_step0_gradient_of_a_is_zero_and_of_b_is_not():
    model = apply_lora(small_gpt(), LoRAConfig(r=4, alpha=4, target_modules=ALL_LINEAR)).train()
    x, y, mask = CopyTask().train_batch(4, torch.Generator().manual_seed(0))
    _, loss = model(x, y, loss_mask=mask)
    loss.backward()
    for name, layer in lora_layers(model).items():
        assert torch.count_nonzero(layer.lora_A[D].grad) == 0, name  # dL/dA = s B^T (...) and B = 0
        assert torch.count_nonzero(layer.lora_B[D].grad) > 0, name


def test_only_a_and_b_train_and_frozen_weights_are_bit_identical():
    model = apply_lora(small_gpt(), LoRAConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj", "up_proj")))
    before = snapshot(model)
    history = train(model, CopyTask(), steps=30, lr=1e-2, batch_size=8, progress=False)
    after = model.state_dict()
    lora_keys = {f"{name}.{D}" for name in lora_state_dict(model)}  # the state dict's names end in the adapter's
    for k, v in before.items():
        if k in lora_keys:
            assert not torch.equal(after[k], v), f"{k} did not train"
        else:
            assert torch.equal(after[k], v), f"frozen {k} changed"
    assert history.loss[-1] < history.loss[0]


def test_merge_unmerge_and_idempotence():
    model = apply_lora(small_gpt(), LoRAConfig(r=4, alpha=8, target_modules=ALL_LINEAR))
    randomize_b(model)
    model.eval()
    x = tokens()
    unmerged, _ = model(x)
    w0 = {n: m.base_layer.weight.detach().clone() for n, m in lora_layers(model).items()}
    merge_lora(model)
    merged_w = {n: m.base_layer.weight.detach().clone() for n, m in lora_layers(model).items()}
    assert all(m.merged for m in lora_layers(model).values())
    merged, _ = model(x)
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)  # fp32: about 1e-6 apart
    merge_lora(model)  # second merge: no-op
    for n, m in lora_layers(model).items():
        assert torch.equal(m.base_layer.weight, merged_w[n])
    assert torch.equal(model(x)[0], merged)
    unmerge_lora(model)
    unmerge_lora(model)  # second unmerge: no-op
    for n, m in lora_layers(model).items():
        assert not m.merged
        torch.testing.assert_close(m.base_layer.weight, w0[n], rtol=0, atol=1e-6)


def test_forward_skips_the_branch_while_merged():
    layer = LoRALinear(nn.Linear(6, 6), r=2, alpha=2)
    with torch.no_grad():
        layer.lora_B[D].normal_()
    layer.merge()
    x = torch.randn(3, 6)
    assert torch.equal(layer(x), layer.base_layer(x))


def test_merged_equals_unmerged_only_in_eval_mode_with_dropout():
    model = apply_lora(small_gpt(dropout=0.0), LoRAConfig(r=4, alpha=8, dropout=0.5))
    randomize_b(model)
    x = tokens()
    model.eval()
    eval_unmerged = model(x)[0]
    model.train()
    train_unmerged = model(x)[0]
    assert not torch.allclose(train_unmerged, eval_unmerged)  # the branch input is dropped in training
    merge_lora(model)
    model.eval()
    torch.testing.assert_close(model(x)[0], eval_unmerged, rtol=0, atol=1e-5)


def test_merge_and_unload_gives_plain_linear_layers():
    model = apply_lora(small_gpt(), LoRAConfig(r=2, alpha=4, target_modules=ALL_LINEAR))
    randomize_b(model)
    x = tokens()
    expected = model(x)[0]
    merge_and_unload(model)
    assert not lora_layers(model)
    assert type(model.blocks[1].mlp.up_proj) is nn.Linear
    assert not any("lora" in k for k in model.state_dict())
    torch.testing.assert_close(model(x)[0], expected, rtol=0, atol=1e-5)
    assert set(model.state_dict()) == set(small_gpt().state_dict())


def test_disable_adapter_runs_the_base_model():
    base = small_gpt()
    x = tokens()
    base_logits = base(x)[0]
    model = apply_lora(copy.deepcopy(base), LoRAConfig(r=4, alpha=8, target_modules=ALL_LINEAR))
    randomize_b(model)
    adapted = model(x)[0]
    assert not torch.allclose(adapted, base_logits)
    with disable_adapter(model):
        assert torch.equal(model(x)[0], base_logits)
    assert torch.equal(model(x)[0], adapted)
    merge_lora(model)  # a merged model is unmerged inside the block and merged again after it
    with disable_adapter(model):
        torch.testing.assert_close(model(x)[0], base_logits, rtol=0, atol=1e-5)
    assert all(m.merged for m in lora_layers(model).values())
    torch.testing.assert_close(model(x)[0], adapted, rtol=0, atol=1e-5)


def test_lora_state_dict_holds_the_adapter_only():
    model = apply_lora(small_gpt(), LoRAConfig(r=2, alpha=2))
    state = lora_state_dict(model)
    assert set(state) == {f"blocks.{i}.attn.{p}.lora_{m}" for i in range(2) for p in ("q_proj", "v_proj")
                          for m in "AB"}
    assert state["blocks.0.attn.q_proj.lora_A"].shape == (2, 16)


def test_mark_only_lora_as_trainable_after_unfreezing():
    model = apply_lora(small_gpt(), LoRAConfig())
    model.requires_grad_(True)
    mark_only_lora_as_trainable(model)
    assert count_parameters(model)[0] == 4 * 8 * (16 + 16)  # 4 layers (q, v in 2 blocks), r = 8


# ------------------------------------------------------------------------------------------------ save/load
def test_save_and_load_adapter_into_a_fresh_model(tmp_path):
    config = LoRAConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj", "up_proj"), use_rslora=True)
    model = apply_lora(small_gpt(seed=0), config)
    randomize_b(model)
    x = tokens()
    expected = model(x)[0]
    save_adapter(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS])
    saved = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    assert saved["r"] == 4 and saved["alpha"] == 8 and saved["use_rslora"] is True
    assert saved["target_modules"] == ["q_proj", "v_proj", "up_proj"]
    assert saved["base_shapes"]["blocks.0.mlp.up_proj"] == [64, 16]
    fresh = load_adapter(small_gpt(seed=0), tmp_path)
    assert torch.equal(fresh(x)[0], expected)
    assert count_parameters(fresh)[0] == count_parameters(model)[0]


def test_adapter_file_is_much_smaller_than_the_model(tmp_path):
    model = apply_lora(small_gpt(), LoRAConfig(r=1, alpha=1))
    save_adapter(model, tmp_path)
    n_adapter = sum(v.numel() for v in lora_state_dict(model).values())
    assert (tmp_path / ADAPTER_WEIGHTS).stat().st_size < 4 * n_adapter + 2048  # fp32 values + a small header


def test_load_adapter_swaps_adapters_on_one_model(tmp_path):
    base = small_gpt()
    x = tokens()
    outputs = {}
    for seed in (1, 2):
        m = apply_lora(copy.deepcopy(base), LoRAConfig(r=2, alpha=4, target_modules=("q_proj", "v_proj")))
        randomize_b(m, seed=seed)
        save_adapter(m, tmp_path / f"task{seed}")
        outputs[seed] = m(x)[0]
    model = load_adapter(copy.deepcopy(base), tmp_path / "task1")
    assert torch.equal(model(x)[0], outputs[1])
    load_adapter(model, tmp_path / "task2")
    assert torch.equal(model(x)[0], outputs[2])
    load_adapter(model, tmp_path / "task1")
    assert torch.equal(model(x)[0], outputs[1])


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(r=0), "r .*positive int"), (dict(r=2.5), "r .*positive int"), (dict(r=True), "r .*positive int"),
    (dict(r=-3), "r .*positive int"), (dict(alpha=0), "alpha must be .*> 0"), (dict(alpha=-1.0), "alpha"),
    (dict(alpha=float("nan")), "alpha"), (dict(dropout=1.0), r"dropout must be .*\[0, 1\)"),
    (dict(dropout=-0.1), "dropout"), (dict(target_modules=()), "target_modules must be a non-empty"),
    (dict(target_modules=["q_proj", 3]), "target_modules"),
])
def test_config_refuses_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoRAConfig(**kwargs)


@pytest.mark.parametrize("kwargs, error", [
    (dict(r=0, alpha=1), ValueError), (dict(r=1.0, alpha=1), ValueError), (dict(r=4, alpha=0), ValueError),
    (dict(r=4, alpha=4, dropout=1.5), ValueError), (dict(r=4, alpha=4, use_rslora="yes"), TypeError),
])
def test_layer_refuses_bad_values_before_freezing_the_base(kwargs, error):
    base = nn.Linear(4, 4)
    with pytest.raises(error):
        LoRALinear(base, **kwargs)
    assert base.weight.requires_grad  # untouched


def test_layer_refuses_a_non_linear():
    with pytest.raises(TypeError, match="wraps an nn.Linear or a frozen quantised linear layer .QLoRA., got LayerNorm"):
        LoRALinear(nn.LayerNorm(4), r=1, alpha=1)


def test_config_accepts_a_single_name():
    assert LoRAConfig(target_modules="q_proj").target_modules == ("q_proj",)


def refuses_without_change(model, fn, error, match):
    """Call fn(); it must raise `error` matching `match`, leaving the state dict and module types unchanged."""
    before = snapshot(model)
    types = [type(m) for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    with pytest.raises(error, match=match) as info:
        fn()
    assert_same_state(model, before)
    assert [type(m) for m in model.modules()] == types
    assert [p.requires_grad for p in model.parameters()] == grads
    return str(info.value)


def test_unmatched_target_is_named_with_the_available_names():
    model = small_gpt()
    msg = refuses_without_change(model, lambda: apply_lora(model, LoRAConfig(target_modules=("q_proj", "query"))),
                                 ValueError, "match no module")
    assert "['query']" in msg
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "lm_head"):
        assert name in msg


@pytest.mark.parametrize("target, kind", [("ln_1", "LayerNorm"), ("attn", "CausalSelfAttention"),
                                          ("wte", "Embedding")])
def test_target_that_is_not_linear_is_refused(target, kind):
    model = small_gpt()
    msg = refuses_without_change(model, lambda: apply_lora(model, LoRAConfig(target_modules=("q_proj", target))),
                                 TypeError, "nn.Linear only")
    assert kind in msg and "q_proj" in msg


def test_applying_lora_twice_is_refused():
    model = apply_lora(small_gpt(), LoRAConfig())
    refuses_without_change(model, lambda: apply_lora(model, LoRAConfig(target_modules=("k_proj",))),
                           ValueError, "already has LoRA layers")


def test_apply_lora_refuses_a_non_config():
    model = small_gpt()
    refuses_without_change(model, lambda: apply_lora(model, {"r": 8}), TypeError, "LoRAConfig")


def test_model_level_verbs_refuse_a_model_without_lora():
    model = small_gpt()
    for fn in (merge_lora, unmerge_lora, merge_and_unload, lora_state_dict, mark_only_lora_as_trainable):
        refuses_without_change(model, lambda fn=fn: fn(model), ValueError, "no LoRA layers")


@pytest.fixture
def saved_adapter(tmp_path):
    model = apply_lora(small_gpt(), LoRAConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj")))
    randomize_b(model)
    save_adapter(model, tmp_path)
    return tmp_path


def test_load_refuses_other_rank(saved_adapter):
    model = apply_lora(small_gpt(), LoRAConfig(r=8, alpha=8, target_modules=("q_proj", "v_proj")))
    msg = refuses_without_change(model, lambda: load_adapter(model, saved_adapter), ValueError, "r=4")
    assert "r=" in msg and "8" in msg


def test_load_refuses_other_layer_names(saved_adapter):
    model = apply_lora(small_gpt(), LoRAConfig(r=4, alpha=8, target_modules=("q_proj", "k_proj")))
    msg = refuses_without_change(model, lambda: load_adapter(model, saved_adapter), ValueError, "layers differ")
    assert "v_proj" in msg and "k_proj" in msg
    deeper = small_gpt(n_layer=3)  # a plain model with a third block
    refuses_without_change(deeper, lambda: load_adapter(deeper, saved_adapter), ValueError, "blocks.2.attn")


def test_load_refuses_other_shapes(saved_adapter):
    wider = small_gpt(n_embd=32)
    msg = refuses_without_change(wider, lambda: load_adapter(wider, saved_adapter), ValueError, "other shapes")
    assert "(16, 16)" in msg and "(32, 32)" in msg
    wider_lora = apply_lora(small_gpt(n_embd=32), LoRAConfig(r=4, alpha=8))
    refuses_without_change(wider_lora, lambda: load_adapter(wider_lora, saved_adapter), ValueError, "other shapes")


def test_load_refuses_a_merged_model_and_a_missing_file(saved_adapter, tmp_path):
    model = merge_lora(apply_lora(small_gpt(), LoRAConfig(r=4, alpha=8)))
    refuses_without_change(model, lambda: load_adapter(model, saved_adapter), ValueError, "unmerge_lora")
    fresh = small_gpt()
    refuses_without_change(fresh, lambda: load_adapter(fresh, tmp_path / "nothing"), FileNotFoundError,
                           ADAPTER_CONFIG)


def test_find_targets_lists_qualified_names_in_module_order():
    names = find_targets(small_gpt(), LoRAConfig(target_modules=("v_proj", "q_proj")))
    assert names == ["blocks.0.attn.q_proj", "blocks.0.attn.v_proj", "blocks.1.attn.q_proj", "blocks.1.attn.v_proj"]


def test_diagrams_draw_and_refuse_unknown_targets():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lora_teach.diagrams import draw_lora_in_attention, draw_lora_layer

    for fig in (draw_lora_layer(r=8), draw_lora_in_attention(targets=("q_proj", "v_proj", "o_proj"))):
        assert fig.axes[0].patches  # something was drawn
        plt.close(fig)
    with pytest.raises(ValueError, match="not attention projections.*q_proj"):
        draw_lora_in_attention(targets=("q_proj", "up_proj"))
