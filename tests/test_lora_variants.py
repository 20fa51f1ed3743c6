"""The LoRA variants of lora_teach.lora_variants (issue 16): rsLoRA's scaling, DoRA, PiSSA and LoRA+.

Invariants on small random GPTs, in float64 where an identity is exact up to rounding; bad input refused before
anything changes. Parity with PEFT itself is in test_lora_peft.py.
"""

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from small_models import (
    LORA_TARGETS,
    assert_unchanged,
    ids,
    lora_base,
    lora_gpt,
    randomize_all_adapters,
    snapshot,
)

from lora_teach.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    load_adapter,
    lora_layers,
    lora_state_dict,
    merge_and_unload,
    merge_lora,
    save_adapter,
    unmerge_lora,
)
from lora_teach.lora_variants import (
    INIT_LORA_WEIGHTS,
    create_loraplus_optimizer,
    dora_norm,
    lora_scaling,
    loraplus_param_groups,
)

D = "default"  # the adapter apply_lora makes
TARGETS = LORA_TARGETS
TIGHT = dict(rtol=0, atol=1e-12)
gpt, lora = lora_base, lora_gpt  # the tiny base, and the same base with LoRA on TARGETS


# ----------------------------------------------------------------------------------------------- plain path
def test_plain_lora_has_no_family_tensors_or_modules():
    model = lora(torch.float32)
    names = [n for n, _ in model.named_parameters() if "lora" in n]
    assert all(n.endswith((".lora_A.default", ".lora_B.default")) for n in names) and len(names) == 2 * 2 * len(TARGETS)
    assert all(not layer.lora_magnitude for layer in lora_layers(model).values())
    assert list(lora_state_dict(model)) == [f"{n}.{ab}" for n in lora_layers(model) for ab in ("lora_A", "lora_B")]


# ---------------------------------------------------------------------------------------------------- rsLoRA
def test_rslora_scaling_is_alpha_over_sqrt_r():
    assert lora_scaling(16, 8) == 0.5 and lora_scaling(16, 8, use_rslora=True) == 2.0
    assert LoRAConfig(r=16, alpha=8, use_rslora=True).scaling == 2.0


# ------------------------------------------------------------------------------------------------------ DoRA
def test_dora_equals_the_base_at_init_and_adds_one_magnitude_per_output_row():
    base = gpt()
    model = lora(use_dora=True)
    x = ids(3, 12)
    torch.testing.assert_close(model(x)[0], base(x)[0], **TIGHT)
    for name, layer in lora_layers(model).items():
        assert layer.lora_magnitude[D].shape == (layer.out_features,)
        torch.testing.assert_close(layer.lora_magnitude[D], base.get_submodule(name).weight.norm(dim=1), **TIGHT)
        torch.testing.assert_close(layer.lora_magnitude[D], dora_norm(layer.base_layer.weight, layer.lora_A[D],
                                                                      layer.lora_B[D], layer.scaling[D]), **TIGHT)
    plain = sum(p.numel() for p in lora().parameters() if p.requires_grad)
    dora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert dora - plain == sum(layer.out_features for layer in lora_layers(model).values())


def test_dora_forward_is_magnitude_times_normalised_direction():
    model = lora(use_dora=True)
    randomize_all_adapters(model)
    layer = lora_layers(model)["blocks.0.mlp.up_proj"]
    x = torch.randn(5, layer.in_features, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w = layer.base_layer.weight + layer.scaling[D] * layer.lora_B[D] @ layer.lora_A[D]  # (out, in)
    w_dora = layer.lora_magnitude[D][:, None] * w / w.norm(dim=1, keepdim=True)
    torch.testing.assert_close(layer(x), F.linear(x, w_dora, layer.base_layer.bias), **TIGHT)


def test_dora_detaches_the_norm_in_the_backward_pass():
    model = lora(use_dora=True)
    randomize_all_adapters(model)
    layer = lora_layers(model)["blocks.0.attn.q_proj"]
    x = torch.randn(5, layer.in_features, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    layer(x).square().sum().backward()

    def grads(detach):
        A, B, m = (t.detach().clone().requires_grad_(True) for t in layer.adapter_parameters(D))
        w = layer.base_layer.weight + layer.scaling[D] * B @ A
        norm = w.norm(dim=1, keepdim=True)
        out = F.linear(x, m[:, None] * w / (norm.detach() if detach else norm), layer.base_layer.bias)
        out.square().sum().backward()
        return A.grad, B.grad

    detached, through = grads(True), grads(False)
    torch.testing.assert_close(layer.lora_A[D].grad, detached[0], **TIGHT)
    torch.testing.assert_close(layer.lora_B[D].grad, detached[1], **TIGHT)
    assert not torch.allclose(layer.lora_A[D].grad, through[0], atol=1e-6)  # the detaching really matters


def test_dora_merge_and_unmerge_are_exact_in_eval_mode():
    model = lora(use_dora=True)
    randomize_all_adapters(model)
    before = {n: layer.base_layer.weight.clone() for n, layer in lora_layers(model).items()}
    x = ids(3, 12)
    unmerged = model(x)[0]
    merge_lora(model)
    merge_lora(model)  # idempotent
    torch.testing.assert_close(model(x)[0], unmerged, **TIGHT)
    unmerge_lora(model)
    for n, layer in lora_layers(model).items():
        torch.testing.assert_close(layer.base_layer.weight, before[n], **TIGHT)
    merged_model = merge_and_unload(copy.deepcopy(model))
    assert not lora_layers(merged_model)
    torch.testing.assert_close(merged_model(x)[0], unmerged, **TIGHT)


def test_dora_adapter_saves_and_loads_with_its_magnitudes(tmp_path):
    model = lora(use_dora=True)
    randomize_all_adapters(model)
    save_adapter(model, tmp_path)
    loaded = load_adapter(gpt(), tmp_path)
    x = ids(2, 10)
    torch.testing.assert_close(loaded(x)[0], model(x)[0], rtol=0, atol=0)
    assert all(D in layer.lora_magnitude for layer in lora_layers(loaded).values())
    with pytest.raises(ValueError, match="use_dora=True but the model's LoRA layers have use_dora"):
        load_adapter(lora(), tmp_path)


# ----------------------------------------------------------------------------------------------------- PiSSA
@pytest.mark.parametrize("alpha, use_rslora", [(4, False), (8, False), (6, True)])
def test_pissa_splits_the_principal_part_and_keeps_the_output(alpha, use_rslora):
    base = gpt()
    model = lora(alpha=alpha, use_rslora=use_rslora, init_lora_weights="pissa")
    x = ids(3, 12)
    torch.testing.assert_close(model(x)[0], base(x)[0], **TIGHT)
    for name, layer in lora_layers(model).items():
        w0 = base.get_submodule(name).weight
        U, S, Vh = torch.linalg.svd(w0, full_matrices=False)
        principal = U[:, :4] @ torch.diag(S[:4]) @ Vh[:4]
        torch.testing.assert_close(layer.get_delta_weight(), principal, **TIGHT)  # s B A whatever alpha is
        torch.testing.assert_close(torch.linalg.svdvals(layer.base_layer.weight)[: len(S) - 4], S[4:], **TIGHT)
        # A and B share sqrt(S_r / s): the same row norms of A as column norms of B
        torch.testing.assert_close(layer.lora_A[D].norm(dim=1), layer.lora_B[D].norm(dim=0), **TIGHT)


def test_pissa_in_float32_matches_the_base_within_rounding():
    base = gpt(torch.float32)
    model = lora(torch.float32, init_lora_weights="pissa")
    x = ids(3, 12)
    torch.testing.assert_close(model(x)[0], base(x)[0], rtol=0, atol=1e-5)


def test_pissa_trains_the_principal_directions_from_step_0():
    model = lora(init_lora_weights="pissa")
    x, y = ids(4, 12, seed=1), ids(4, 12, seed=2)
    model.train()
    model(x, y)[1].backward()
    for layer in lora_layers(model).values():
        assert torch.count_nonzero(layer.lora_A[D].grad) > 0 and torch.count_nonzero(layer.lora_B[D].grad) > 0


def test_a_trained_pissa_adapter_is_a_rank_2r_lora_on_the_original_base():
    """What PEFT's path_initial_model_for_weight_conversion saves: (residual + s B' A') - W0 = s (B' A' - B0 A0)."""
    base = gpt()
    model = lora(init_lora_weights="pissa")
    start = {n: (m.lora_A[D].detach().clone(), m.lora_B[D].detach().clone()) for n, m in lora_layers(model).items()}
    randomize_all_adapters(model)  # as if trained
    for name, layer in lora_layers(model).items():
        delta = layer.base_layer.weight + layer.get_delta_weight() - base.get_submodule(name).weight
        A0, B0 = start[name]
        B2 = torch.cat([layer.lora_B[D], -B0], dim=1)  # (out, 2r)
        A2 = torch.cat([layer.lora_A[D], A0], dim=0)  # (2r, in)
        torch.testing.assert_close(delta, layer.scaling[D] * B2 @ A2, rtol=0, atol=1e-10)
        assert torch.linalg.matrix_rank(delta).item() == 2 * 4


def test_gaussian_init_keeps_b_zero_and_draws_a_with_std_one_over_r():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(256, 256), r=4, alpha=4, init_lora_weights="gaussian")
    assert torch.count_nonzero(layer.lora_B[D]) == 0
    assert abs(layer.lora_A[D].std().item() - 1 / 4) < 0.01


# ----------------------------------------------------------------------------------------------------- LoRA+
def test_loraplus_gives_b_and_the_magnitudes_ratio_times_the_rate_of_a():
    model = lora(use_dora=True)
    groups = {g["name"]: g for g in loraplus_param_groups(model, lr=2e-3, loraplus_lr_ratio=16)}
    layers = lora_layers(model).values()
    assert {id(p) for p in groups["A"]["params"]} == {id(layer.lora_A[D]) for layer in layers}
    assert {id(p) for p in groups["B"]["params"]} == {id(p) for layer in layers
                                                      for p in (layer.lora_B[D], layer.lora_magnitude[D])}
    assert groups["A"]["lr"] == 2e-3 and math.isclose(groups["B"]["lr"], 3.2e-2)
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=2e-3, loraplus_lr_ratio=16)
    assert [g["lr"] for g in opt.param_groups] == [groups["A"]["lr"], groups["B"]["lr"]]


def test_loraplus_with_ratio_1_is_plain_adamw():
    a, b = lora(), lora()
    randomize_all_adapters(a)
    randomize_all_adapters(b)
    opt_a = create_loraplus_optimizer(a, torch.optim.AdamW, lr=1e-2, loraplus_lr_ratio=1)
    opt_b = torch.optim.AdamW([p for p in b.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    x, y = ids(4, 12, seed=1), ids(4, 12, seed=2)
    for model, opt in ((a, opt_a), (b, opt_b)):
        model.train()
        model(x, y)[1].backward()
        opt.step()
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_loraplus_ratio_has_no_default_as_in_peft():
    import inspect

    from peft.optimizers import create_loraplus_optimizer as peft_create_loraplus_optimizer

    assert inspect.signature(peft_create_loraplus_optimizer).parameters["loraplus_lr_ratio"].default \
        is inspect.Parameter.empty
    model = lora()
    with pytest.raises(TypeError, match="loraplus_lr_ratio"):
        loraplus_param_groups(model, lr=1e-3)
    with pytest.raises(TypeError, match="loraplus_lr_ratio"):
        create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3)
    with pytest.raises(ValueError, match=r"loraplus_lr_ratio must be a finite number > 0 \(B's rate over A's; it has "
                                         r"no default"):
        loraplus_param_groups(model, lr=1e-3, loraplus_lr_ratio=-16)


# ---------------------------------------------------------------------------------------------- bad input
def test_config_refuses_unsupported_values_naming_the_allowed_ones():
    with pytest.raises(ValueError, match=r"init_lora_weights must be one of \[True, False, 'gaussian', 'pissa'\]"):
        LoRAConfig(init_lora_weights="olora")
    with pytest.raises(ValueError, match="one of"):
        LoRAConfig(init_lora_weights="pissa_niter_4")
    with pytest.raises(TypeError, match="use_dora must be True or False"):
        LoRAConfig(use_dora="yes")
    with pytest.raises(ValueError, match="use_dora=True with init_lora_weights='pissa' is not supported"):
        LoRAConfig(use_dora=True, init_lora_weights="pissa")
    assert INIT_LORA_WEIGHTS == (True, False, "gaussian", "pissa")


class FakeQuantised(nn.Module):
    """A stand-in for a frozen 4-bit layer: LoRALinear accepts anything with is_quantized=True."""

    is_quantized = True

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.in_features = self.out_features = 4
        self.weight = self.inner.weight

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("kwargs, message", [
    (dict(use_dora=True), "need the base weight in full precision"),
    (dict(init_lora_weights="pissa"), "need the base weight in full precision"),
    (dict(r=5, init_lora_weights="pissa"), r"r must be <= min\(in, out\) = 4"),
])
def test_layer_refuses_family_options_it_cannot_honour_before_changing_the_base(kwargs, message):
    base = FakeQuantised() if "r" not in kwargs else nn.Linear(4, 6)
    weight = base.weight.clone()
    with pytest.raises(ValueError, match=message):
        LoRALinear(base, **{"r": 2, "alpha": 2, **kwargs})
    assert torch.equal(base.weight, weight) and base.weight.requires_grad


def test_apply_lora_refuses_pissa_with_a_rank_too_high_before_any_change():
    model = gpt()
    before = snapshot(model)
    with pytest.raises(ValueError, match="r must be <= min"):
        apply_lora(model, LoRAConfig(r=32, target_modules=("q_proj",), init_lora_weights="pissa"))
    assert_unchanged(model, before)


def test_a_pissa_adapter_is_not_saved_alone(tmp_path):
    model = lora(init_lora_weights="pissa")
    with pytest.raises(ValueError, match="residual base"):
        save_adapter(model, tmp_path)
    assert not any(tmp_path.iterdir())
