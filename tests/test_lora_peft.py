"""Parity of lora_teach.lora with Hugging Face PEFT's LoRA on the course's GPT (skipped without peft).

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
            layer.lora_A.copy_(module.lora_A["default"].weight)
            layer.lora_B.copy_(module.lora_B["default"].weight)
    return theirs, ours


def lora_params(theirs, ours):
    """Matching [(name, peft A or B, our A or B)] in one order."""
    pairs = []
    for name, layer in lora_layers(ours).items():
        module = theirs.get_submodule(name)
        pairs.append((f"{name}.lora_A", module.lora_A["default"].weight, layer.lora_A))
        pairs.append((f"{name}.lora_B", module.lora_B["default"].weight, layer.lora_B))
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
    scaling = lora_layers(ours)[next(iter(lora_layers(ours)))].scaling
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
    names_t = {n.replace(".default", "").replace(".weight", "") for n, p in theirs.named_parameters()
               if p.requires_grad}
    names_o = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert names_t == names_o
