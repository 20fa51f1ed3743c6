"""Parity of lora_teach.lora, lora_variants and serving with PEFT's LoRA on the course's GPT (skipped without peft).

Two deep copies of one small GPT: PEFT injects its LoRA layers into one (`init_lora_weights=False` keeps B
non-zero), ours goes into the other, PEFT's A and B are copied into ours (seeds alone would not give equal
weights), then forward outputs, gradients, one AdamW step and merged weights are compared.
PEFT computes base(x) + (x A^T B^T) * scaling, ours base(x) + scaling * (x A^T B^T) in one fused operation
(`torch.add(..., alpha=scaling)`). When the scaling is a power of two (alpha = 8, r = 4: 2; rsLoRA: 4) the
multiplication is exact and float64 agrees bit for bit; otherwise (alpha = 6: 1.5) the fused operation rounds
once instead of twice and float64 agrees to 1e-12. float32 is allowed 1e-5, the tolerance the reference notes
give.
"""

import copy
import math

import pytest
import torch

peft = pytest.importorskip("peft")

from lora_teach.lora import LoRAConfig, apply_lora, lora_layers, merge_lora  # noqa: E402
from lora_teach.model import GPT, GPTConfig  # noqa: E402

TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]  # square and non-square layers
EXACT = dict(rtol=0, atol=0)
FP64 = dict(rtol=0, atol=1e-12)
FP32 = dict(rtol=0, atol=1e-5)


def twin_models(dtype, r=4, alpha=8, use_rslora=False):
    """(peft_model, our_model) from one random GPT, with PEFT's random A and B copied into ours."""
    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=16)).to(dtype)
    peft_config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, lora_dropout=0.0,
                                  use_rslora=use_rslora, init_lora_weights=False)
    theirs = peft.inject_adapter_in_model(peft_config, copy.deepcopy(base))
    ours = apply_lora(copy.deepcopy(base), LoRAConfig(r=r, alpha=alpha, target_modules=tuple(TARGETS),
                                                      use_rslora=use_rslora))
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            module = theirs.get_submodule(name)
            layer.lora_A["default"].copy_(module.lora_A["default"].weight)
            layer.lora_B["default"].copy_(module.lora_B["default"].weight)
    return theirs, ours


def lora_params(theirs, ours):
    """Matching [(name, peft A or B, our A or B)] in one order."""
    pairs = []
    for name, layer in lora_layers(ours).items():
        module = theirs.get_submodule(name)
        pairs.append((f"{name}.lora_A", module.lora_A["default"].weight, layer.lora_A["default"]))
        pairs.append((f"{name}.lora_B", module.lora_B["default"].weight, layer.lora_B["default"]))
    return pairs


def batch():
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 97, (4, 12), generator=gen)
    y = torch.randint(0, 97, (4, 12), generator=gen)
    return x, y


@pytest.mark.parametrize("alpha, use_rslora", [(8, False), (8, True), (6, False)])  # scaling 2, 4, 1.5
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_parity_with_peft(dtype, alpha, use_rslora):
    theirs, ours = twin_models(dtype, alpha=alpha, use_rslora=use_rslora)
    scaling = next(iter(lora_layers(ours).values())).scaling["default"]
    power_of_two = math.frexp(scaling)[0] == 0.5
    tol = FP32 if dtype == torch.float32 else EXACT if power_of_two else FP64
    pairs = lora_params(theirs, ours)
    assert len(pairs) == 2 * 2 * len(TARGETS)
    # same trainable parameters
    peft_trainable = sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    assert peft_trainable == sum(p.numel() for p in ours.parameters() if p.requires_grad)
    for name, a, b in pairs:
        assert torch.equal(a, b), name
        assert torch.count_nonzero(b) > 0  # B is random, so the branch really contributes

    # forward
    x, y = batch()
    theirs.train()
    ours.train()
    logits_t, loss_t = theirs(x, y)
    logits_o, loss_o = ours(x, y)
    torch.testing.assert_close(logits_o, logits_t, **tol)

    # gradients
    loss_t.backward()
    loss_o.backward()
    for name, a, b in pairs:
        torch.testing.assert_close(b.grad, a.grad, **tol, msg=f"gradient of {name}")

    # one AdamW step
    opt_t = torch.optim.AdamW([a for _, a, _ in pairs], lr=1e-2, weight_decay=0.01)
    opt_o = torch.optim.AdamW([b for _, _, b in pairs], lr=1e-2, weight_decay=0.01)
    opt_t.step()
    opt_o.step()
    for name, a, b in pairs:
        torch.testing.assert_close(b, a, **tol, msg=f"{name} after one AdamW step")

    # merged weights, and the merged forward
    theirs.eval()
    ours.eval()
    for name in lora_layers(ours):
        theirs.get_submodule(name).merge()
    merge_lora(ours)
    for name, layer in lora_layers(ours).items():
        torch.testing.assert_close(layer.base_layer.weight, theirs.get_submodule(name).base_layer.weight, **tol)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], **tol)


def test_peft_and_ours_freeze_the_same_parameters():
    theirs, ours = twin_models(torch.float32)
    names_t = {n.replace(".weight", "") for n, p in theirs.named_parameters() if p.requires_grad}
    names_o = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert names_t == names_o


# --------------------------------------------------------------------------------- the LoRA family (issue 16)
from lora_teach.lora import unmerge_lora  # noqa: E402
from lora_teach.lora_variants import loraplus_param_groups  # noqa: E402
from lora_teach.serving import add_adapter, forward_with_adapters, set_adapter  # noqa: E402

FP64_FAMILY = dict(rtol=0, atol=1e-10)  # the tolerance the family's parity is held to in float64


def small_base(dtype):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=16)).to(dtype)


def dora_twins(dtype=torch.float64, alpha=8, dropout=0.0):
    """(peft_model, our_model) with DoRA on TARGETS; PEFT's random A, B and magnitude copied into ours."""
    base = small_base(dtype)
    config = peft.LoraConfig(r=4, lora_alpha=alpha, target_modules=TARGETS, lora_dropout=dropout, use_dora=True,
                             init_lora_weights=False)
    theirs = peft.inject_adapter_in_model(config, copy.deepcopy(base))
    ours = apply_lora(copy.deepcopy(base), LoRAConfig(r=4, alpha=alpha, target_modules=tuple(TARGETS),
                                                      dropout=dropout, use_dora=True))
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            module = theirs.get_submodule(name)
            layer.lora_A["default"].copy_(module.lora_A["default"].weight)
            layer.lora_B["default"].copy_(module.lora_B["default"].weight)
            layer.lora_magnitude["default"].copy_(module.lora_magnitude_vector["default"].weight)
    return theirs, ours


def dora_params(theirs, ours):
    pairs = []
    for name, layer in lora_layers(ours).items():
        module = theirs.get_submodule(name)
        pairs += [(f"{name}.lora_A", module.lora_A["default"].weight, layer.lora_A["default"]),
                  (f"{name}.lora_B", module.lora_B["default"].weight, layer.lora_B["default"]),
                  (f"{name}.lora_magnitude", module.lora_magnitude_vector["default"].weight,
                   layer.lora_magnitude["default"])]
    return pairs


@pytest.mark.parametrize("alpha", [8, 6])  # scaling 2 and 1.5
def test_dora_parity_with_peft_float64(alpha):
    theirs, ours = dora_twins(alpha=alpha)
    pairs = dora_params(theirs, ours)
    assert len(pairs) == 2 * 3 * len(TARGETS)
    assert sum(p.numel() for p in theirs.parameters() if p.requires_grad) == \
        sum(p.numel() for p in ours.parameters() if p.requires_grad)
    x, y = batch()
    theirs.train()
    ours.train()
    logits_t, loss_t = theirs(x, y)
    logits_o, loss_o = ours(x, y)
    torch.testing.assert_close(logits_o, logits_t, **FP64_FAMILY)
    loss_t.backward()
    loss_o.backward()
    for name, a, b in pairs:
        assert a.grad is not None and torch.count_nonzero(a.grad) > 0, name
        torch.testing.assert_close(b.grad, a.grad, **FP64_FAMILY, msg=f"gradient of {name}")
    opt_t = torch.optim.AdamW([a for _, a, _ in pairs], lr=1e-2, weight_decay=0.01)
    opt_o = torch.optim.AdamW([b for _, _, b in pairs], lr=1e-2, weight_decay=0.01)
    opt_t.step()
    opt_o.step()
    for name, a, b in pairs:
        torch.testing.assert_close(b, a, **FP64_FAMILY, msg=f"{name} after one AdamW step")
    theirs.eval()
    ours.eval()
    unmerged = ours(x)[0]
    for name in lora_layers(ours):
        theirs.get_submodule(name).merge()
    merge_lora(ours)
    for name, layer in lora_layers(ours).items():
        torch.testing.assert_close(layer.base_layer.weight, theirs.get_submodule(name).base_layer.weight,
                                   **FP64_FAMILY)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], **FP64_FAMILY)
    torch.testing.assert_close(ours(x)[0], unmerged, **FP64_FAMILY)  # merging is exact in eval mode


def test_dora_magnitude_starts_at_the_row_norms_of_w0_as_in_peft():
    base = small_base(torch.float64)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, use_dora=True)  # B = 0
    theirs = peft.inject_adapter_in_model(config, copy.deepcopy(base))
    ours = apply_lora(copy.deepcopy(base), LoRAConfig(r=4, alpha=8, target_modules=tuple(TARGETS), use_dora=True))
    for name, layer in lora_layers(ours).items():
        peft_m = theirs.get_submodule(name).lora_magnitude_vector["default"].weight
        magnitude = layer.lora_magnitude["default"]
        torch.testing.assert_close(magnitude, peft_m, rtol=0, atol=0)
        torch.testing.assert_close(magnitude, base.get_submodule(name).weight.norm(dim=1), rtol=0, atol=0)


@pytest.mark.parametrize("alpha", [4, 8, 6])  # scaling 1, 2, 1.5: PEFT divides S_r by the scaling
def test_pissa_parity_with_peft(alpha):
    """PEFT refuses PiSSA on float64 weights and runs its SVD in float32; so both inits run on the same float32
    base (they agree bit for bit there), then both models go to float64 and are compared to 1e-10."""
    base = small_base(torch.float32)
    config = peft.LoraConfig(r=4, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights="pissa")
    theirs = peft.inject_adapter_in_model(config, copy.deepcopy(base))
    ours = apply_lora(copy.deepcopy(base), LoRAConfig(r=4, alpha=alpha, target_modules=tuple(TARGETS),
                                                      init_lora_weights="pissa"))
    theirs, ours = theirs.double(), ours.double()
    for name, layer in lora_layers(ours).items():
        module = theirs.get_submodule(name)
        torch.testing.assert_close(layer.lora_A["default"], module.lora_A["default"].weight, **FP64_FAMILY)
        torch.testing.assert_close(layer.lora_B["default"], module.lora_B["default"].weight, **FP64_FAMILY)
        torch.testing.assert_close(layer.base_layer.weight, module.base_layer.weight, **FP64_FAMILY)
        assert not torch.allclose(layer.base_layer.weight, base.get_submodule(name).weight.double(), atol=1e-3)
    x, _ = batch()
    theirs.eval()
    ours.eval()
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], **FP64_FAMILY)


def test_peft_refuses_pissa_in_float64_so_the_parity_runs_from_float32():
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights="pissa")
    with pytest.raises(TypeError, match="float32"):
        peft.inject_adapter_in_model(config, small_base(torch.float64))


def _peft_mixed_forward(model, x, names):
    """PEFT's `adapter_names` at inference, on a model without a PeftModel around it: the same pre-forward hook
    PEFT registers on every LoRA layer."""
    handles = [m.register_forward_pre_hook(lambda mod, args, kwargs: (args, {**kwargs, "adapter_names": names}),
                                           with_kwargs=True)
               for m in model.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    try:
        return model(x)[0]
    finally:
        for h in handles:
            h.remove()


def test_mixed_batch_parity_with_peft_float64():
    """PEFT 0.21 refuses DoRA adapters in a mixed batch, so the parity uses plain ones (DoRA rows are checked
    against their merged adapter in test_serving.py)."""
    base = small_base(torch.float64)
    cfgs = {"default": dict(r=4, lora_alpha=8), "author": dict(r=2, lora_alpha=6), "rs": dict(r=4, lora_alpha=8,
                                                                                            use_rslora=True)}
    theirs = copy.deepcopy(base)
    for name, c in cfgs.items():
        theirs = peft.inject_adapter_in_model(peft.LoraConfig(target_modules=TARGETS, init_lora_weights=False, **c),
                                              theirs, adapter_name=name)
    ours = apply_lora(copy.deepcopy(base), LoRAConfig(r=4, alpha=8, target_modules=tuple(TARGETS)))
    add_adapter(ours, "author", LoRAConfig(r=2, alpha=6, target_modules=tuple(TARGETS)))
    add_adapter(ours, "rs", LoRAConfig(r=4, alpha=8, target_modules=tuple(TARGETS), use_rslora=True))
    with torch.no_grad():
        for lname, layer in lora_layers(ours).items():
            module = theirs.get_submodule(lname)
            for name in cfgs:
                layer.lora_A[name].copy_(module.lora_A[name].weight)
                layer.lora_B[name].copy_(module.lora_B[name].weight)
    theirs.eval()
    ours.eval()
    x = torch.randint(0, 97, (6, 12), generator=torch.Generator().manual_seed(5))
    names = ["author", "__base__", "default", "rs", "author", "default"]
    mixed_t = _peft_mixed_forward(theirs, x, names)
    mixed_o = forward_with_adapters(ours, x, names)[0]
    assert not torch.allclose(mixed_o[0], mixed_o[2])  # the adapters really differ
    torch.testing.assert_close(mixed_o, mixed_t, **FP64_FAMILY)
    # each row equals its adapter merged, run alone
    for i, name in enumerate(names):
        if name == "__base__":
            alone = base.eval()(x[i:i + 1])[0]
        else:
            set_adapter(ours, name)
            merge_lora(ours)
            alone = ours(x[i:i + 1])[0]
            unmerge_lora(ours)
        torch.testing.assert_close(mixed_o[i:i + 1], alone, **FP64_FAMILY, msg=f"row {i} ({name})")


def _peft_group_names(model, optimizer):
    def ours_name(n):
        return n.replace(".default.weight", ".default").replace("lora_magnitude_vector", "lora_magnitude")
    names = {id(p): ours_name(n) for n, p in model.named_parameters()}
    return [({names[id(p)] for p in g["params"]}, g["lr"], g["weight_decay"])
            for g in optimizer.param_groups if g["params"]]


@pytest.mark.parametrize("use_dora, weight_decay", [(False, 0.0), (True, 0.1)])
def test_loraplus_groups_match_peft(use_dora, weight_decay):
    from peft.optimizers import create_loraplus_optimizer

    base = small_base(torch.float32)
    theirs = peft.inject_adapter_in_model(peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                          use_dora=use_dora), copy.deepcopy(base))
    for n, p in theirs.named_parameters():
        p.requires_grad_("lora_" in n or n.endswith("ln_f.bias"))  # one bias, to fill the no-decay group
    ours = apply_lora(copy.deepcopy(base), LoRAConfig(r=4, alpha=8, target_modules=tuple(TARGETS),
                                                      use_dora=use_dora))
    ours.ln_f.bias.requires_grad_(True)
    opt = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16,
                                    loraplus_weight_decay=weight_decay)
    expected = _peft_group_names(theirs, opt)
    names = {id(p): n for n, p in ours.named_parameters()}
    groups = loraplus_param_groups(ours, lr=1e-3, loraplus_lr_ratio=16, loraplus_weight_decay=weight_decay)
    found = [({names[id(p)] for p in g["params"]}, g["lr"], g["weight_decay"]) for g in groups]
    assert found == expected
    assert [g["lr"] for g in groups] == [1e-3, 1.6e-2, 1.6e-2]
