"""NF4 from its definition: the codebook, parity with bitsandbytes on the CPU (without double quantisation the packed
bytes, absmax and dequantised weights bit for bit; with it, exactly what is equal and what differs by one step), the
4-bit layer under LoRA (QLoRA), the lossy merge, bad input."""

import copy

import pytest
import torch
import torch.nn as nn

from lora_teach import quantize as Q
from lora_teach.lora import LoRAConfig, LoRALinear, apply_lora, lora_layers, merge_and_unload
from lora_teach.model import GPT, GPTConfig, load_base_model

BF = pytest.importorskip("bitsandbytes.functional")  # a test dependency (requirements-dev.txt)


def _random_weights():
    g = torch.Generator().manual_seed(0)
    return {"normal 128x512": 0.02 * torch.randn(128, 512, generator=g),
            "heavy-tailed 64x64": torch.distributions.StudentT(3.0).sample((64, 64)),
            "with a zero block 96x128": torch.cat([torch.zeros(1, 128), torch.randn(95, 128, generator=g)]),
            "bfloat16 32x64": torch.randn(32, 64, generator=g).bfloat16()}


@pytest.fixture(scope="module")
def base():
    return load_base_model("cpu")


def _shipped_weights(model):
    return {name: m.weight.detach() for name, m in model.named_modules() if isinstance(m, nn.Linear)}


# ------------------------------------------------------------------------------------------------ the levels
def test_nf4_codebook_is_built_from_normal_quantiles_and_equals_bitsandbytes_table():
    from bitsandbytes.backends.utils import _get_4bit_code

    assert torch.equal(Q.NF4_CODEBOOK, _get_4bit_code("nf4", torch.device("cpu")))  # bit for bit
    levels = Q.NF4_CODEBOOK
    assert levels.shape == (16,) and torch.all(levels[1:] > levels[:-1])
    assert (levels < 0).sum() == 7 and (levels == 0).sum() == 1 and (levels > 0).sum() == 8
    assert levels[0] == -1 and levels[-1] == 1
    # each positive level is a quantile of N(0, 1), scaled: ndtri(p) / ndtri(offset)
    p = torch.linspace(Q.nf4_offset(), 0.5, 9, dtype=torch.float64)[:-1]
    expected = torch.special.ndtri(p) / torch.special.ndtri(torch.tensor(Q.nf4_offset(), dtype=torch.float64))
    assert torch.allclose(levels[8:].double().flip(0), expected, atol=1e-6)


def test_the_8bit_levels_of_the_constants_equal_bitsandbytes_dynamic_map():
    assert torch.equal(Q.DYNAMIC_8BIT, BF.create_dynamic_map())


def test_bits_per_weight():
    assert Q.bits_per_weight(64, double_quant=False) == 4.5
    assert Q.bits_per_weight() == 4 + 8 / 64 + 32 / (64 * 256)
    assert round(Q.bits_per_weight(), 3) == 4.127
    assert Q.bits_per_weight(128) < Q.bits_per_weight(64) < Q.bits_per_weight(32)


# ------------------------------------------------------------------------------------------- bit-for-bit parity
def _all_weights(base):
    return {**_random_weights(), **{f"shipped {k}": v for k, v in _shipped_weights(base).items()}}


def test_nf4_matches_bitsandbytes_bit_for_bit(base):
    for name, w in _all_weights(base).items():
        packed, absmax = Q.nf4_quantize(w)
        bnb_packed, state = BF.quantize_4bit(w, blocksize=64, quant_type="nf4")
        assert packed.dtype == torch.uint8 and packed.numel() == w.numel() // 2, name
        assert torch.equal(packed, bnb_packed.reshape(-1)), name
        assert absmax.dtype == torch.float32 and torch.equal(absmax, state.absmax), name
        ours = Q.nf4_dequantize(packed, absmax, w.shape, dtype=w.dtype)
        assert torch.equal(ours, BF.dequantize_4bit(bnb_packed, state)), name


def test_nf4_matches_bitsandbytes_at_other_block_sizes():
    w = _random_weights()["normal 128x512"]
    for blocksize in (32, 128, 256):
        packed, absmax = Q.nf4_quantize(w, blocksize)
        bnb_packed, state = BF.quantize_4bit(w, blocksize=blocksize, quant_type="nf4")
        assert torch.equal(packed, bnb_packed.reshape(-1)) and torch.equal(absmax, state.absmax)
        assert torch.equal(Q.nf4_dequantize(packed, absmax, w.shape, blocksize), BF.dequantize_4bit(bnb_packed, state))


def _bnb_reference_blockwise(x, blocksize):
    """bitsandbytes' reference (pure torch) implementation of 8-bit blockwise quantisation, called explicitly:
    on the CPU its op dispatches to a native kernel instead."""
    op = torch.ops.bitsandbytes.quantize_blockwise.default
    return op.redispatch(torch._C.DispatchKeySet("CompositeExplicitAutograd"), x, BF.create_dynamic_map(), blocksize)


def test_double_quantisation_matches_bitsandbytes(base):
    """With double quantisation, what is equal and what is not: the 4-bit codes, the mean subtracted from the
    constants and the second-level constants equal bitsandbytes'; the 8-bit codes of the constants equal its
    PyTorch reference bit for bit, and its native CPU kernel except at a few constants that lie almost exactly
    halfway between two 8-bit levels, where the kernel picks the neighbour one step away."""
    levels = BF.create_dynamic_map()
    differ_shipped = total_shipped = 0
    for name, w in _all_weights(base).items():
        packed, absmax = Q.nf4_quantize(w)
        codes, absmax2, offset = Q.double_quantize(absmax)
        bnb_packed, state = BF.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
        assert torch.equal(packed, bnb_packed.reshape(-1)), name  # computed from the fp32 constants, before DQ
        assert torch.equal(offset, state.offset), name  # the mean of the constants
        assert torch.equal(absmax2, state.state2.absmax), name  # one fp32 per 256 constants
        ref_codes, ref_absmax2 = _bnb_reference_blockwise(absmax - offset, 256)
        assert torch.equal(codes, ref_codes) and torch.equal(absmax2, ref_absmax2), name  # bit for bit
        native = state.absmax.reshape(-1)
        differ = (codes != native).nonzero().flatten().tolist()
        assert len(differ) <= max(2, 0.02 * len(codes)), name  # a few: ties are rare
        for i in differ:
            assert abs(int(codes[i]) - int(native[i])) == 1, name  # one step of the 8-bit code
            scaled = ((absmax[i] - offset) / absmax2[i // 256]).item()
            low, high = sorted((levels[int(codes[i])].item(), levels[int(native[i])].item()))
            assert abs((scaled - low) / (high - low) - 0.5) < 0.1, name  # almost exactly halfway
        # and where the codes agree, the dequantised constants agree exactly
        agree = codes == native
        back = Q.double_dequantize(codes, absmax2, offset)
        bnb_back = BF.dequantize_blockwise(state.absmax, state.state2) + state.offset
        assert torch.equal(back[agree], bnb_back[agree]), name
        if name.startswith("shipped"):
            differ_shipped += len(differ)
            total_shipped += len(codes)
    assert total_shipped == 12_482 and differ_shipped <= 0.005 * total_shipped  # notebook 12 prints the count


def test_double_quantised_layer_dequantises_like_bitsandbytes(base):
    """compress_statistics=True: the weight our layer rebuilds equals bitsandbytes' wherever the 8-bit constants
    agree."""
    linear = next(m for m in base.modules() if isinstance(m, nn.Linear))  # the first block's q_proj
    ours = Q.NF4Linear(copy.deepcopy(linear))
    packed, state = BF.quantize_4bit(linear.weight.detach(), blocksize=64, quant_type="nf4", compress_statistics=True)
    agree = ours.absmax_codes == state.absmax.reshape(-1)
    bnb_weight = BF.dequantize_4bit(packed, state)
    rows = agree.repeat_interleave(64).view(linear.weight.shape)
    assert torch.equal(ours.weight[rows], bnb_weight[rows])


def test_bitsandbytes_linear4bit_forward_equals_ours():
    import bitsandbytes as bnb

    torch.manual_seed(0)
    linear = nn.Linear(128, 64)
    ref = bnb.nn.Linear4bit(128, 64, quant_type="nf4", compress_statistics=False, compute_dtype=torch.float32)
    ref.load_state_dict(linear.state_dict())
    ref = ref.to("cpu")  # quantises on the move to a device
    x = torch.randn(5, 128)
    ours = Q.NF4Linear(linear, double_quant=False)
    assert torch.allclose(ours(x), ref(x), atol=1e-6)


def test_transformers_bitsandbytes_config_defaults_are_not_qlora():
    """Notebook 12 tells readers to write every setting: the defaults are FP4, float32 compute, no double quant."""
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True)
    assert config.bnb_4bit_quant_type == "fp4" and config.bnb_4bit_compute_dtype == torch.float32
    assert config.bnb_4bit_use_double_quant is False


def test_peft_merges_lora_into_a_bitsandbytes_4bit_layer_with_a_warning():
    """PEFT does not refuse, as our merge_and_unload does: it dequantises, adds the update, quantises again, warns."""
    import warnings

    import bitsandbytes as bnb
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    linear = nn.Linear(128, 64)
    q = bnb.nn.Linear4bit(128, 64, quant_type="nf4", compress_statistics=True, compute_dtype=torch.float32)
    q.load_state_dict(linear.state_dict())
    model = nn.Sequential()
    model.add_module("proj", q.to("cpu"))  # quantised on the move to a device
    model.is_loaded_in_4bit = True  # what transformers sets on a model loaded in 4 bits; PEFT reads it
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["proj"], init_lora_weights=False), model)
    layer = model.proj
    before = BF.dequantize_4bit(layer.base_layer.weight.data, layer.base_layer.weight.quant_state)
    exact = before + layer.get_delta_weight("default")  # what an exact merge would hold
    x = torch.randn(3, 128)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        unmerged = model(x)
        layer.merge()
        merged = model(x)
    assert layer.merged and isinstance(layer.base_layer, bnb.nn.Linear4bit)  # still 4-bit: quantised again
    assert any("4-bit linear may get different generations due to rounding" in str(w.message) for w in caught)
    after = BF.dequantize_4bit(layer.base_layer.weight.data, layer.base_layer.weight.quant_state)
    error = (after - exact).abs()
    assert 0 < error.max() <= 0.2 * exact.abs().max()  # rounded to NF4 again: lossy, bounded
    assert not torch.equal(merged, unmerged)


# -------------------------------------------------------------------------------------------- the 4-bit layer
def test_nf4_linear_stores_codes_and_constants_only_and_dequantises_in_forward():
    torch.manual_seed(0)
    linear = nn.Linear(128, 64)
    layer = Q.NF4Linear(linear)
    assert layer.is_quantized and isinstance(layer, nn.Linear)
    assert [n for n, _ in layer.named_parameters()] == ["bias"] and not layer.bias.requires_grad
    assert {n for n, _ in layer.named_buffers()} == {"packed", "absmax_codes", "absmax2", "absmax_offset"}
    assert layer.packed.dtype == torch.uint8 and layer.packed.numel() == 128 * 64 // 2
    x = torch.randn(3, 7, 128)
    assert torch.allclose(layer(x), x @ layer.weight.T + layer.bias, atol=1e-6)
    error = (layer.weight - linear.weight).abs()
    assert 0 < error.max() <= linear.weight.abs().max() * 0.2  # lossy, but bounded by half a level step * absmax


def test_backward_through_the_4bit_layer_keeps_no_float_weight():
    torch.manual_seed(0)
    layer = Q.NF4Linear(nn.Linear(128, 256))
    x = torch.randn(4, 128, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        y = layer(x)
    y.sum().backward()
    assert not any(n == 128 * 256 for n in saved)  # no dequantised (256, 128) weight kept for the backward pass
    assert torch.allclose(x.grad, torch.ones(4, 256) @ layer.weight, atol=1e-5)


def test_qlora_lora_wraps_the_4bit_layer_and_only_a_and_b_train(base):
    model = Q.quantize_model(copy.deepcopy(base))
    apply_lora(model, LoRAConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj"), dropout=0.1))
    layers = lora_layers(model)
    assert layers and all(isinstance(m.base_layer, Q.NF4Linear) for m in layers.values())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A.default", "lora_B.default")) for n in trainable)
    x = torch.randint(0, 97, (2, 16))
    _, loss = model(x, x)
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n in trainable)
    with torch.no_grad():  # at step 0 (B = 0), QLoRA equals the quantised base
        model.eval()
        plain = Q.quantize_model(copy.deepcopy(base)).eval()
        assert torch.allclose(model(x)[0], plain(x)[0], atol=1e-5)


def test_an_exact_merge_into_the_4bit_base_is_refused_and_the_lossy_one_is_measured(base):
    torch.manual_seed(0)
    model = apply_lora(Q.quantize_model(copy.deepcopy(base)), LoRAConfig(r=4, alpha=8))
    for m in lora_layers(model).values():
        nn.init.normal_(m.lora_B["default"], std=0.05)
    with pytest.raises(ValueError, match="quantised"):
        merge_and_unload(model)
    x = torch.randint(0, 97, (2, 32))
    model.eval()
    merged = Q.merge_and_requantize(copy.deepcopy(model)).eval()
    assert not lora_layers(merged)
    for name, layer in lora_layers(model).items():
        new = merged.get_submodule(name)
        assert isinstance(new, Q.NF4Linear)
        exact = layer.base_layer.weight + layer.get_delta_weight()  # what an exact merge would hold
        error = (new.weight - exact).abs().view(-1, 64)
        step = (Q.NF4_CODEBOOK[1:] - Q.NF4_CODEBOOK[:-1]).max()  # the widest gap between two levels
        assert error.max() > 0  # lossy: rounded to NF4 again
        a_true = exact.abs().view(-1, 64).max(dim=1).values  # the block constants before double quantisation
        a_stored = new.block_constants()  # after it
        bound = step / 2 * a_true + (a_stored - a_true).abs()  # rounding to a level, plus the constant's rounding
        assert torch.all(error.max(dim=1).values <= bound * 1.0001)
    assert not torch.equal(merged(x)[0], model(x)[0])


def test_quantize_model_replaces_every_linear_and_counts_bytes(base):
    model = Q.quantize_model(copy.deepcopy(base))
    assert not any(type(m) is nn.Linear for m in model.modules())
    counts = Q.quantized_bytes(model)
    n = sum(w.numel() for w in _shipped_weights(base).values())
    assert counts["codes"] == n // 2 and counts["weights_fp32"] == 4 * n
    ratio = (counts["codes"] + counts["constants"]) / counts["weights_fp32"]
    assert ratio <= 0.14 and ratio == pytest.approx(Q.bits_per_weight() / 32, rel=0.01)
    skipped = Q.quantize_model(copy.deepcopy(base), skip=("lm_head",))
    assert type(skipped.lm_head) is nn.Linear


# ------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("blocksize, message", [(48, "power of two"), (0, "power of two"), (True, "power of two"),
                                                (4096, "does not divide")])
def test_bad_block_sizes_are_refused(blocksize, message):
    with pytest.raises(ValueError, match=message):
        Q.nf4_quantize(torch.randn(16, 64), blocksize)


def test_non_float_weights_are_refused():
    with pytest.raises(TypeError, match="float tensor"):
        Q.nf4_quantize(torch.ones(64, 64, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        Q.nf4_quantize([[0.5] * 64])


def test_quantising_twice_or_under_lora_is_refused_before_anything_changes(base):
    once = Q.quantize_model(copy.deepcopy(base))
    before = {k: v.clone() for k, v in once.state_dict().items()}
    with pytest.raises(ValueError, match="already quantised"):
        Q.quantize_model(once)
    assert all(torch.equal(before[k], v) for k, v in once.state_dict().items())
    with pytest.raises(ValueError, match="LoRA layers"):
        Q.quantize_model(apply_lora(GPT(GPTConfig()), LoRAConfig()))


def test_a_block_size_that_fits_no_layer_is_refused_before_any_layer_changes():
    model = GPT(GPTConfig())
    with pytest.raises(ValueError, match="does not divide"):
        Q.quantize_model(model, blocksize=1024)  # divides the 128 x 512 layers but not lm_head's 97 x 128
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))


def test_bad_dequantise_input_is_refused():
    packed, absmax = Q.nf4_quantize(torch.randn(8, 64))
    with pytest.raises(ValueError, match="packed must be"):
        Q.nf4_dequantize(packed, absmax, (8, 128))
    with pytest.raises(ValueError, match="absmax must hold"):
        Q.nf4_dequantize(packed, absmax[:-1], (8, 64))
    with pytest.raises(TypeError, match="NF4Linear quantises a plain nn.Linear"):
        Q.NF4Linear(LoRALinear(nn.Linear(64, 64), r=2, alpha=2))
    with pytest.raises(ValueError, match="no LoRA layer"):
        Q.merge_and_requantize(GPT(GPTConfig()))
