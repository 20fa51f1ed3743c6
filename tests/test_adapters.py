import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from small_models import TinyLM, assert_same_state, state_copy

from lora_teach.adapters import Adapter, WithAdapter, adapter_state_dict, add_adapters
from lora_teach.measure import count_parameters
from lora_teach.training import train


def randomise(adapter: Adapter, seed: int = 0) -> None:
    """Give an adapter clearly non-zero weights, so that tests can see what it does."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 64), m=st.integers(1, 32))
def test_adapter_parameter_count(d, m):
    assert sum(p.numel() for p in Adapter(d, m).parameters()) == 2 * m * d + d + m


def test_adapter_is_exactly_identity_with_zero_up_projection():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 12)
    a = Adapter(12, 4)
    assert torch.count_nonzero(a.down.weight) > 0  # down is random, so gradients can flow
    assert torch.equal(a(x), x)


def test_adapter_with_small_random_up_is_near_but_not_exactly_identity():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 12)
    a = Adapter(12, 4, zero_up=False, init_std=1e-2)
    assert not torch.equal(a(x), x)
    assert (a(x) - x).abs().max() < 1e-3
    assert a.down.weight.abs().max() <= 2e-2 + 1e-9  # truncated at two std


def test_adapter_forward_has_the_skip_connection():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 10)
    a = Adapter(10, 3)
    randomise(a)
    expected = x + F.linear(F.gelu(F.linear(x, a.down.weight, a.down.bias)), a.up.weight, a.up.bias)
    torch.testing.assert_close(a(x), expected)
    assert not torch.allclose(a(x), a.up(F.gelu(a.down(x))))  # the bottleneck alone is not the adapter


@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_adapted_model_equals_base_at_init(tiny_model, placement):
    x = torch.randint(97, (2, 20))
    base = copy.deepcopy(tiny_model)
    add_adapters(tiny_model, bottleneck=4, placement=placement)
    assert torch.equal(tiny_model(x)[0], base(x)[0])


def test_prefix_is_passed_through_to_attention(tiny_model, tiny_config):
    torch.manual_seed(1)
    x = torch.randint(97, (2, 10))
    prefix = [(torch.randn(3, tiny_config.n_embd), torch.randn(3, tiny_config.n_embd))
              for _ in range(tiny_config.n_layer)]
    base = copy.deepcopy(tiny_model)
    add_adapters(tiny_model, bottleneck=4)
    assert torch.equal(tiny_model(x, prefix=prefix)[0], base(x, prefix=prefix)[0])
    assert not torch.equal(tiny_model(x, prefix=prefix)[0], tiny_model(x)[0])


@pytest.mark.parametrize("placement, per_block", [("houlsby", 2), ("pfeiffer", 1)])
@pytest.mark.parametrize("train_layer_norms", [True, False])
def test_trainable_count(tiny_model, tiny_config, placement, per_block, train_layer_norms):
    d, m, L = tiny_config.n_embd, 5, tiny_config.n_layer
    _, total_before = count_parameters(tiny_model)
    add_adapters(tiny_model, bottleneck=m, placement=placement, train_layer_norms=train_layer_norms)
    layer_norms = (2 * L + 1) * 2 * d  # ln_1, ln_2 per block and ln_f; weight and bias each
    expected = L * per_block * (2 * m * d + d + m) + (layer_norms if train_layer_norms else 0)
    trainable, total = count_parameters(tiny_model)
    assert trainable == expected
    assert total == total_before + L * per_block * (2 * m * d + d + m)


@pytest.mark.parametrize("placement, wrapped", [("houlsby", {"attn", "mlp"}), ("pfeiffer", {"mlp"})])
def test_placement(tiny_model, placement, wrapped):
    add_adapters(tiny_model, bottleneck=4, placement=placement)
    for block in tiny_model.blocks:
        assert {n for n in ("attn", "mlp") if isinstance(getattr(block, n), WithAdapter)} == wrapped
        assert not isinstance(block.ln_1, WithAdapter) and not isinstance(block.ln_2, WithAdapter)


def test_adapter_sits_after_the_sublayer_and_before_the_residual_add(tiny_model):
    torch.manual_seed(2)
    block = tiny_model.blocks[0]
    attn, mlp = block.attn, block.mlp
    add_adapters(tiny_model, bottleneck=4)
    a1, a2 = block.attn.adapter, block.mlp.adapter
    randomise(a1, 1)
    randomise(a2, 2)
    x = torch.randn(2, 6, tiny_model.config.n_embd)
    h = x + a1(attn(block.ln_1(x)))
    expected = h + a2(mlp(block.ln_2(h)))
    torch.testing.assert_close(block(x), expected)


def test_only_adapters_and_layer_norms_are_trainable(tiny_model):
    add_adapters(tiny_model, bottleneck=4)
    for name, p in tiny_model.named_parameters():
        assert p.requires_grad == (".adapter." in name or "ln_" in name), name


def test_layer_norms_frozen_when_asked(tiny_model):
    add_adapters(tiny_model, bottleneck=4, train_layer_norms=False)
    for name, p in tiny_model.named_parameters():
        assert p.requires_grad == (".adapter." in name), name


def test_training_changes_adapters_only(tiny_model):
    base = state_copy(tiny_model)
    add_adapters(tiny_model, bottleneck=4, train_layer_norms=False)
    hist = train(tiny_model, TinyLM(block_size=16), steps=20, lr=1e-2, batch_size=8, progress=False)
    assert hist.loss[-1] < hist.loss[0]
    state = tiny_model.state_dict()
    for name, value in base.items():
        wrapped = name.replace(".attn.", ".attn.base_layer.").replace(".mlp.", ".mlp.base_layer.")
        assert torch.equal(state[wrapped], value), name
    assert all(torch.count_nonzero(b.mlp.adapter.up.weight) > 0 for b in tiny_model.blocks)


def test_adapter_state_dict_holds_only_the_task_tensors(tiny_model, tiny_config):
    add_adapters(tiny_model, bottleneck=3, train_layer_norms=False)
    sd = adapter_state_dict(tiny_model)
    assert all(".adapter." in k for k in sd)
    d, m = tiny_config.n_embd, 3
    assert sum(v.numel() for v in sd.values()) == tiny_config.n_layer * 2 * (2 * m * d + d + m)
    assert not any(v.requires_grad for v in sd.values())


@pytest.mark.parametrize("kwargs, error", [
    ({"bottleneck": 0}, ValueError),
    ({"bottleneck": -3}, ValueError),
    ({"bottleneck": 2.5}, ValueError),
    ({"bottleneck": True}, ValueError),
    ({"bottleneck": "16"}, ValueError),
    ({"placement": "parallel"}, ValueError),
    ({"placement": "Houlsby"}, ValueError),
    ({"train_layer_norms": "yes"}, TypeError),
    ({"init_std": 0.0}, ValueError),
    ({"zero_up": 1}, TypeError),
])
def test_bad_input_is_refused_before_any_change(tiny_model, kwargs, error):
    before = state_copy(tiny_model)
    grads = [p.requires_grad for p in tiny_model.parameters()]
    with pytest.raises(error) as info:
        add_adapters(tiny_model, **kwargs)
    name = next(iter(kwargs))
    assert name in str(info.value)
    assert_same_state(tiny_model, before)
    assert [p.requires_grad for p in tiny_model.parameters()] == grads
    assert not any(isinstance(m, WithAdapter) for m in tiny_model.modules())


def test_error_names_allowed_placements(tiny_model):
    with pytest.raises(ValueError, match="houlsby.*pfeiffer"):
        add_adapters(tiny_model, placement="serial")


def test_adding_twice_is_refused(tiny_model):
    add_adapters(tiny_model, bottleneck=4)
    before = state_copy(tiny_model)
    with pytest.raises(ValueError, match="already has adapters"):
        add_adapters(tiny_model, bottleneck=4, placement="pfeiffer")
    assert_same_state(tiny_model, before)


def test_not_a_gpt_is_refused():
    with pytest.raises(TypeError, match="GPT"):
        add_adapters(torch.nn.Linear(4, 4), bottleneck=2)


@pytest.mark.parametrize("d, m", [(0, 4), (8, 0), (8, 1.5)])
def test_adapter_refuses_bad_sizes(d, m):
    with pytest.raises(ValueError, match="positive int"):
        Adapter(d, m)


def test_adapters_follow_the_model_dtype(tiny_model):
    model = tiny_model.double()
    x = torch.randint(97, (2, 7))
    base = model(x)[0]
    add_adapters(model, bottleneck=3)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert torch.equal(model(x)[0], base)
