"""The LoRA family in lora_teach.lora (issue 16): DoRA, PiSSA, LoRA+, named adapters and the mixed-adapter batch.

Invariants on small random GPTs, in float64 where an identity is exact up to rounding; bad input refused before
anything changes. Parity with PEFT itself is in test_lora_peft.py.
"""

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from small_models import assert_unchanged, ids, snapshot

from lora_teach.lora import (
    BASE_ROW,
    INIT_LORA_WEIGHTS,
    LoRAConfig,
    LoRALinear,
    active_adapter,
    adapter_names,
    add_adapter,
    apply_lora,
    create_loraplus_optimizer,
    delete_adapter,
    disable_adapter,
    disable_adapter_by_name,
    disabled_adapters,
    enable_adapter_by_name,
    forward_with_adapters,
    load_adapter,
    lora_layers,
    lora_state_dict,
    loraplus_param_groups,
    merge_and_unload,
    merge_lora,
    save_adapter,
    set_adapter,
    unmerge_lora,
)
from lora_teach.model import GPT, GPTConfig

SMALL = dict(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=16)
TARGETS = ("q_proj", "v_proj", "up_proj", "down_proj")  # square and non-square
TIGHT = dict(rtol=0, atol=1e-12)


def gpt(dtype=torch.float64, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**SMALL)).to(dtype).eval()


def lora(dtype=torch.float64, **kwargs) -> GPT:
    return apply_lora(gpt(dtype), LoRAConfig(**{"r": 4, "alpha": 8, "target_modules": TARGETS, **kwargs}))


def randomize_all_adapters(model, seed=2, std=0.3) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)


# ----------------------------------------------------------------------------------------------- plain path
def test_plain_lora_has_no_family_tensors_or_modules():
    model = lora(torch.float32)
    names = [n for n, _ in model.named_parameters() if "lora" in n]
    assert all(n.endswith((".lora_A", ".lora_B")) for n in names) and len(names) == 2 * 2 * len(TARGETS)
    assert not any("by_name" in n for n, _ in model.named_modules())
    assert list(lora_state_dict(model)) == [f"{n}.{ab}" for n in lora_layers(model) for ab in ("lora_A", "lora_B")]


# ------------------------------------------------------------------------------------------------------ DoRA
def test_dora_equals_the_base_at_init_and_adds_one_magnitude_per_output_row():
    base = gpt()
    model = lora(use_dora=True)
    x = ids(3, 12)
    torch.testing.assert_close(model(x)[0], base(x)[0], **TIGHT)
    for name, layer in lora_layers(model).items():
        assert layer.lora_magnitude.shape == (layer.out_features,)
        torch.testing.assert_close(layer.lora_magnitude, base.get_submodule(name).weight.norm(dim=1), **TIGHT)
    plain = sum(p.numel() for p in lora().parameters() if p.requires_grad)
    dora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert dora - plain == sum(layer.out_features for layer in lora_layers(model).values())


def test_dora_forward_is_magnitude_times_normalised_direction():
    model = lora(use_dora=True)
    randomize_all_adapters(model)
    layer = lora_layers(model)["blocks.0.mlp.up_proj"]
    x = torch.randn(5, layer.in_features, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w = layer.base_layer.weight + layer.scaling * layer.lora_B @ layer.lora_A  # (out, in)
    w_dora = layer.lora_magnitude[:, None] * w / w.norm(dim=1, keepdim=True)
    torch.testing.assert_close(layer(x), F.linear(x, w_dora, layer.base_layer.bias), **TIGHT)


def test_dora_detaches_the_norm_in_the_backward_pass():
    model = lora(use_dora=True)
    randomize_all_adapters(model)
    layer = lora_layers(model)["blocks.0.attn.q_proj"]
    x = torch.randn(5, layer.in_features, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    layer(x).square().sum().backward()

    def grads(detach):
        A, B, m = (t.detach().clone().requires_grad_(True) for t in (layer.lora_A, layer.lora_B, layer.lora_magnitude))
        w = layer.base_layer.weight + layer.scaling * B @ A
        norm = w.norm(dim=1, keepdim=True)
        out = F.linear(x, m[:, None] * w / (norm.detach() if detach else norm), layer.base_layer.bias)
        out.square().sum().backward()
        return A.grad, B.grad

    detached, through = grads(True), grads(False)
    torch.testing.assert_close(layer.lora_A.grad, detached[0], **TIGHT)
    torch.testing.assert_close(layer.lora_B.grad, detached[1], **TIGHT)
    assert not torch.allclose(layer.lora_A.grad, through[0], atol=1e-6)  # the detaching really matters


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
    assert all(layer.use_dora for layer in lora_layers(loaded).values())
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
        torch.testing.assert_close(layer.lora_A.norm(dim=1), layer.lora_B.norm(dim=0), **TIGHT)


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
        assert torch.count_nonzero(layer.lora_A.grad) > 0 and torch.count_nonzero(layer.lora_B.grad) > 0


def test_gaussian_init_keeps_b_zero_and_draws_a_with_std_one_over_r():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(256, 256), r=4, alpha=4, init_lora_weights="gaussian")
    assert torch.count_nonzero(layer.lora_B) == 0
    assert abs(layer.lora_A.std().item() - 1 / 4) < 0.01


# ----------------------------------------------------------------------------------------------------- LoRA+
def test_loraplus_gives_b_and_the_magnitudes_ratio_times_the_rate_of_a():
    model = lora(use_dora=True)
    groups = {g["name"]: g for g in loraplus_param_groups(model, lr=2e-3, loraplus_lr_ratio=16)}
    layers = lora_layers(model).values()
    assert {id(p) for p in groups["A"]["params"]} == {id(layer.lora_A) for layer in layers}
    assert {id(p) for p in groups["B"]["params"]} == {id(p) for layer in layers
                                                      for p in (layer.lora_B, layer.lora_magnitude)}
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


# ------------------------------------------------------------------------------------------- named adapters
def three_adapters():
    model = lora()
    add_adapter(model, "author", LoRAConfig(r=2, alpha=4, target_modules=("q_proj", "v_proj")))
    add_adapter(model, "sentence", LoRAConfig(r=4, alpha=8, target_modules=TARGETS, use_dora=True))
    randomize_all_adapters(model)
    return model


def test_add_set_delete_and_trainable_flags():
    model = three_adapters()
    assert adapter_names(model) == ["default", "author", "sentence"]
    assert active_adapter(model) == "default"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    set_adapter(model, "author")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{ab}_by_name.author" for n in lora_layers(model)
                         if n.endswith(("q_proj", "v_proj")) for ab in "AB"}
    assert set(lora_state_dict(model, "author")) == {n.replace("_by_name.author", "") for n in trainable}
    set_adapter(model, "default")
    delete_adapter(model, "author")
    assert adapter_names(model) == ["default", "sentence"]
    assert not any(".author" in n for n, _ in model.named_parameters())


def test_each_adapter_changes_the_output_and_disable_gives_the_base():
    model, base = three_adapters(), gpt()
    x = ids(2, 10)
    outs = {}
    for name in adapter_names(model):
        set_adapter(model, name)
        outs[name] = model(x)[0]
        with disable_adapter(model):
            torch.testing.assert_close(model(x)[0], base(x)[0], rtol=0, atol=0)
    assert not torch.allclose(outs["default"], outs["author"]) and not torch.allclose(outs["author"], outs["sentence"])


def test_mixed_batch_rows_equal_their_adapter_merged_alone():
    model, base = three_adapters(), gpt()
    x = ids(5, 12, seed=4)
    names = ["sentence", "author", BASE_ROW, "default", "sentence"]
    mixed = forward_with_adapters(model, x, names)[0]
    for i, name in enumerate(names):
        if name == BASE_ROW:
            alone = base(x[i:i + 1])[0]
        else:
            set_adapter(model, name)
            merge_lora(model)
            alone = model(x[i:i + 1])[0]
            unmerge_lora(model)
        torch.testing.assert_close(mixed[i:i + 1], alone, **TIGHT, msg=f"row {i} ({name})")
    set_adapter(model, "default")
    assert all(layer._row_adapters is None for layer in lora_layers(model).values())


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_disabling_the_active_adapter_by_name_gives_the_base_and_enabling_restores_it_exactly():
    model, base = three_adapters(), gpt()
    x = ids(2, 10)
    for name in adapter_names(model):
        set_adapter(model, name)
        on, flags = model(x)[0], trainable(model)
        disable_adapter_by_name(model, name)
        assert disabled_adapters(model) == [name] and active_adapter(model) == name
        torch.testing.assert_close(model(x)[0], base(x)[0], rtol=0, atol=0)
        assert trainable(model) == set(), "a disabled adapter is frozen, as PEFT freezes the adapters it disables"
        set_adapter(model, "default" if name != "default" else "author")
        set_adapter(model, name)  # making it active again does not switch it on
        torch.testing.assert_close(model(x)[0], base(x)[0], rtol=0, atol=0)
        enable_adapter_by_name(model, name)
        assert disabled_adapters(model) == []
        torch.testing.assert_close(model(x)[0], on, rtol=0, atol=0)
        assert trainable(model) == flags


def test_disabling_another_adapter_by_name_leaves_the_active_one_and_its_rows_run_the_base():
    model = three_adapters()
    x = ids(5, 12, seed=4)
    names = ["sentence", "author", BASE_ROW, "default", "author"]
    active, mixed, flags = model(x)[0], forward_with_adapters(model, x, names)[0], trainable(model)
    without = copy.deepcopy(model)  # the model with only the other adapters
    delete_adapter(without, "author")
    as_base = [BASE_ROW if n == "author" else n for n in names]
    disable_adapter_by_name(model, "author")
    disable_adapter_by_name(model, "author")  # a second call does nothing
    assert disabled_adapters(model) == ["author"] and trainable(model) == flags
    torch.testing.assert_close(model(x)[0], active, rtol=0, atol=0)
    off = forward_with_adapters(model, x, names)[0]
    torch.testing.assert_close(off, forward_with_adapters(without, x, as_base)[0], rtol=0, atol=0)
    torch.testing.assert_close(off, forward_with_adapters(model, x, as_base)[0], rtol=0, atol=0)
    for i in (0, 2, 3):
        torch.testing.assert_close(off[i], mixed[i], rtol=0, atol=0)
    assert "disabled_adapters=['author']" in str(model)
    enable_adapter_by_name(model, "author")
    enable_adapter_by_name(model, "author")  # a second call does nothing
    assert disabled_adapters(model) == [] and trainable(model) == flags
    torch.testing.assert_close(forward_with_adapters(model, x, names)[0], mixed, rtol=0, atol=0)
    disable_adapter_by_name(model, "author")
    delete_adapter(model, "author")  # the switch goes with the adapter
    add_adapter(model, "author", LoRAConfig(r=2, alpha=4, target_modules=("q_proj",)))
    assert disabled_adapters(model) == []


def test_the_switch_by_name_is_refused_while_merged_and_blocks_merging_and_saving(tmp_path):
    model = three_adapters()
    set_adapter(model, "author")
    merge_lora(model)
    before, structure = snapshot(model), str(model)
    for switch in (disable_adapter_by_name, enable_adapter_by_name):
        with pytest.raises(ValueError, match=r"merged; call unmerge_lora\(model\) before (dis|en)abling an adapter"):
            switch(model, "author")
    assert_unchanged(model, before)
    assert str(model) == structure and disabled_adapters(model) == []
    unmerge_lora(model)
    with disable_adapter(model):
        with pytest.raises(ValueError, match="inside a disable_adapter"):
            disable_adapter_by_name(model, "sentence")
    assert disabled_adapters(model) == []

    disable_adapter_by_name(model, "author")
    disable_adapter_by_name(model, "default")
    before, structure = snapshot(model), str(model)
    for merge in (merge_lora, merge_and_unload):
        with pytest.raises(ValueError, match=r"the active adapter 'author' is disabled; "
                                             r"enable_adapter_by_name\(model, 'author'\)"):
            merge(model)
    with pytest.raises(ValueError, match=r"'default' adapter is disabled.*enable_adapter_by_name\(model, 'default'\)"):
        save_adapter(model, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
    for switch in (disable_adapter_by_name, enable_adapter_by_name):
        with pytest.raises(ValueError, match=r"unknown adapter 'nobody'; this model's adapters are \['default'"):
            switch(model, "nobody")
    assert disabled_adapters(model) == ["default", "author"]
    assert_unchanged(model, before)
    assert str(model) == structure and not any(layer.merged for layer in lora_layers(model).values())
    layer = next(m for m in lora_layers(model).values() if "author" in m.adapter_names())
    with pytest.raises(ValueError, match="'author' is disabled"):
        layer.merge()
    assert not layer.merged


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


@pytest.mark.parametrize("call, message", [
    (lambda m: add_adapter(m, "author", LoRAConfig()), "exists already; this model's adapters are"),
    (lambda m: add_adapter(m, "default", LoRAConfig()), "other than 'default'"),
    (lambda m: add_adapter(m, "x", LoRAConfig(target_modules=("k_proj",))), r"match no LoRA layer.*'q_proj'"),
    (lambda m: add_adapter(m, "x", LoRAConfig(init_lora_weights="pissa")), "default adapter only"),
    (lambda m: set_adapter(m, "nobody"), r"unknown adapter 'nobody'; this model's adapters are \['default'"),
    (lambda m: delete_adapter(m, "nobody"), "unknown adapter 'nobody'"),
    (lambda m: delete_adapter(m, "default"), "cannot be deleted"),
    (lambda m: lora_state_dict(m, "nobody"), "unknown adapter"),
    (lambda m: disable_adapter_by_name(m, "nobody"),
     r"unknown adapter 'nobody'; this model's adapters are \['default', 'author', 'sentence'\]"),
    (lambda m: enable_adapter_by_name(m, "nobody"), "unknown adapter 'nobody'; this model's adapters are"),
    (lambda m: disable_adapter_by_name(m, None), "unknown adapter None"),
    (lambda m: forward_with_adapters(m, ids(3, 8), ["author", "default"]), "2 entries for a batch of 3 rows"),
    (lambda m: forward_with_adapters(m, ids(2, 8), ["author", "nobody"]),
     r"unknown adapter names \[\"'nobody'\"\]; allowed: \['default', 'author', 'sentence', '__base__'\]"),
    (lambda m: forward_with_adapters(m, ids(2, 8), "author"), "must be a list"),
    (lambda m: forward_with_adapters(m.train(), ids(2, 8), ["author", "default"]), "call model.eval"),
    (lambda m: loraplus_param_groups(m, lr=1e-3, loraplus_lr_ratio=0), "loraplus_lr_ratio must be a finite number"),
])
def test_named_adapter_calls_refuse_bad_input_before_any_change(call, message):
    model = three_adapters()
    before = snapshot(model)
    structure = str(model)
    with pytest.raises((ValueError, TypeError), match=message):
        call(model)
    model.eval()
    assert_unchanged(model, before)
    assert str(model) == structure and adapter_names(model) == ["default", "author", "sentence"]
    assert disabled_adapters(model) == []


def test_refusals_about_merged_and_active_adapters():
    model = three_adapters()
    set_adapter(model, "author")
    with pytest.raises(ValueError, match="'author' is the active adapter"):
        delete_adapter(model, "author")
    merge_lora(model)
    before = snapshot(model)
    with pytest.raises(ValueError, match="merged; call unmerge_lora"):
        forward_with_adapters(model, ids(2, 8), ["author", "default"])
    with pytest.raises(ValueError, match="merged; call unmerge_lora"):
        set_adapter(model, "default")
    assert_unchanged(model, before)


def test_a_pissa_adapter_is_not_saved_alone(tmp_path):
    model = lora(init_lora_weights="pissa")
    with pytest.raises(ValueError, match="residual base"):
        save_adapter(model, tmp_path)
    assert not any(tmp_path.iterdir())
