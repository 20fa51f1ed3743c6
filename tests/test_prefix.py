import copy

import pytest
import torch
import torch.nn.functional as F
from small_models import TinyLM, assert_same_state, state_copy

from lora_teach.measure import count_parameters
from lora_teach.model import GPT, GPTConfig
from lora_teach.prefix import PrefixTuning
from lora_teach.training import train


def own_parameters(wrapper: PrefixTuning) -> int:
    """Parameters the wrapper adds on top of the base model."""
    base = {id(p) for p in wrapper.base_model.parameters()}
    return sum(p.numel() for p in wrapper.parameters() if id(p) not in base)


def test_parameter_counts_during_training_and_after(tiny_model, tiny_config):
    L, d, P, h = tiny_config.n_layer, tiny_config.n_embd, 6, 24
    _, base_total = count_parameters(tiny_model)
    pt = PrefixTuning(tiny_model, P, hidden=h)
    mlp = P * d + (d * h + h) + (h * 2 * L * d + 2 * L * d)  # embedding, Linear, Linear
    assert count_parameters(pt) == (mlp, base_total + mlp)
    pt.freeze_prefix()
    assert own_parameters(pt) == 2 * L * P * d
    assert count_parameters(pt) == (0, base_total + 2 * L * P * d)
    assert pt.mlp is None and pt.embedding is None and not pt.reparam


def test_direct_prefix_count_and_start(tiny_config):
    L, d, P = tiny_config.n_layer, tiny_config.n_embd, 4
    torch.manual_seed(0)
    via_mlp = PrefixTuning(GPT(tiny_config), P)
    torch.manual_seed(0)
    direct = PrefixTuning(GPT(tiny_config), P, reparam=False)
    assert count_parameters(direct)[0] == 2 * L * P * d
    assert not direct.reparam and direct.prefix.requires_grad
    assert torch.equal(direct.prefix_tensors(), via_mlp.prefix_tensors())  # same start, other parameterisation


def test_base_model_frozen_and_unchanged_by_training(tiny_model):
    before = state_copy(tiny_model)
    pt = PrefixTuning(tiny_model, 4, hidden=16)
    assert not any(p.requires_grad for p in tiny_model.parameters())
    hist = train(pt, TinyLM(block_size=16), steps=25, lr=3e-3, batch_size=8, progress=False)
    assert hist.loss[-1] < hist.loss[0]
    assert_same_state(tiny_model, before)


def test_logits_are_aligned_with_the_input(tiny_model):
    pt = PrefixTuning(tiny_model, 5, hidden=16)
    x = torch.randint(97, (3, 11))
    y = torch.randint(97, (3, 11))
    mask = torch.rand(3, 11) > 0.5
    logits, loss = pt(x, y, loss_mask=mask)
    assert logits.shape == (3, 11, 97)
    expected = F.cross_entropy(logits[mask], y[mask])
    torch.testing.assert_close(loss, expected)
    assert pt(x)[1] is None


def test_freeze_prefix_keeps_the_outputs(tiny_model):
    torch.manual_seed(3)
    pt = PrefixTuning(tiny_model, 5, hidden=16)
    with torch.no_grad():  # move away from the near-zero start so the prefix matters
        pt.mlp[-1].weight.normal_(std=0.5)
    x = torch.randint(97, (2, 12))
    before = pt(x)[0]
    assert not torch.allclose(before, tiny_model(x)[0])
    exported = pt.get_prompt_embedding_to_save()
    pt.freeze_prefix()
    torch.testing.assert_close(pt(x)[0], before, rtol=0, atol=1e-6)
    torch.testing.assert_close(pt.prefix[:, 0], exported["prefix_keys"])
    torch.testing.assert_close(pt.prefix[:, 1], exported["prefix_values"])
    pt.freeze_prefix()  # a second call changes nothing
    torch.testing.assert_close(pt(x)[0], before, rtol=0, atol=1e-6)


def test_the_saved_prefix_shapes(tiny_model, tiny_config):
    pt = PrefixTuning(tiny_model, 7, hidden=16)
    ex = pt.get_prompt_embedding_to_save()
    L, d = tiny_config.n_layer, tiny_config.n_embd
    assert set(ex) == {"prefix_keys", "prefix_values"}
    assert ex["prefix_keys"].shape == ex["prefix_values"].shape == (L, 7, d)
    assert not ex["prefix_keys"].requires_grad


def test_every_layer_has_its_own_prefix(tiny_model, tiny_config):
    pt = PrefixTuning(tiny_model, 3, hidden=16, reparam=False)
    x = torch.randint(97, (2, 8))
    reference = pt(x)[0]
    for layer in range(tiny_config.n_layer):
        for kv in (0, 1):
            changed = copy.deepcopy(pt)
            with torch.no_grad():
                changed.prefix[layer, kv] += 1.0
            assert not torch.allclose(changed(x)[0], reference), (layer, kv)


def test_prefix_is_a_cached_context_at_every_layer(tiny_config):
    """With positions switched off, a prefix made of a real context's keys and values at every layer
    gives the same outputs as running the model on context + input: the prefix lives in the layers'
    key/value space, not in the input-token space."""
    torch.manual_seed(4)
    model = GPT(tiny_config).eval()
    with torch.no_grad():
        model.wpe.weight.zero_()
    context, x = torch.randint(97, (1, 5)), torch.randint(97, (1, 9))
    captured = {}
    hooks = [getattr(block.attn, name).register_forward_hook(
        lambda mod, inp, out, key=(i, name): captured.__setitem__(key, out[0]))
        for i, block in enumerate(model.blocks) for name in ("k_proj", "v_proj")]
    model(context)
    for h in hooks:
        h.remove()
    pt = PrefixTuning(model, 5, reparam=False)
    with torch.no_grad():
        for i in range(tiny_config.n_layer):
            pt.prefix[i, 0] = captured[(i, "k_proj")]  # (P, d)
            pt.prefix[i, 1] = captured[(i, "v_proj")]
    full = model(torch.cat([context, x], dim=1))[0][:, 5:]
    torch.testing.assert_close(pt(x)[0], full, rtol=1e-5, atol=1e-5)


def test_start_is_close_to_but_not_exactly_the_base(tiny_model):
    torch.manual_seed(5)
    x = torch.randint(97, (4, 16))
    base = tiny_model(x)[0]
    pt = PrefixTuning(tiny_model, 4, hidden=16)
    assert pt.prefix_tensors().abs().max() < 0.05  # near-zero last layer
    diff = (pt(x)[0] - base).abs().max()
    assert 0 < diff < 1.0


def test_sequence_must_fit_with_the_prefix():
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=16)
    pt = PrefixTuning(GPT(cfg), 6, hidden=8)
    assert pt(torch.randint(97, (1, 10)))[0].shape == (1, 10, 97)  # 6 + 10 = 16 fits
    with pytest.raises(ValueError, match=r"block_size \(16\).*at most 10 tokens"):
        pt(torch.randint(97, (1, 11)))


@pytest.mark.parametrize("kwargs, error, word", [
    ({"num_virtual_tokens": 0}, ValueError, "num_virtual_tokens"),
    ({"num_virtual_tokens": -2}, ValueError, "num_virtual_tokens"),
    ({"num_virtual_tokens": 2.0}, ValueError, "num_virtual_tokens"),
    ({"num_virtual_tokens": True}, ValueError, "num_virtual_tokens"),
    ({"num_virtual_tokens": "block_size"}, ValueError, "block_size"),  # replaced by the config's block_size
    ({"num_virtual_tokens": 4, "hidden": 0}, ValueError, "hidden"),
    ({"num_virtual_tokens": 4, "reparam": "yes"}, TypeError, "reparam"),
])
def test_bad_input_is_refused_before_any_change(tiny_model, tiny_config, kwargs, error, word):
    if kwargs["num_virtual_tokens"] == "block_size":
        kwargs = {"num_virtual_tokens": tiny_config.block_size}
    before = state_copy(tiny_model)
    with pytest.raises(error, match=word):
        PrefixTuning(tiny_model, **kwargs)
    assert_same_state(tiny_model, before)
    assert all(p.requires_grad for p in tiny_model.parameters())


def test_input_must_be_a_tensor(tiny_model):
    pt = PrefixTuning(tiny_model, 2, hidden=8)
    with pytest.raises(TypeError, match="idx must be a tensor"):
        pt([[1, 2, 3]])


def test_not_a_gpt_is_refused():
    with pytest.raises(TypeError, match="GPT"):
        PrefixTuning(torch.nn.Linear(4, 4), 2)


def test_prefix_follows_the_model_dtype(tiny_model):
    pt = PrefixTuning(tiny_model.double(), 3, hidden=8)
    assert all(p.dtype == torch.float64 for p in pt.parameters())
    assert pt(torch.randint(97, (1, 5)))[0].dtype == torch.float64
