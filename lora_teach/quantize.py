"""QLoRA's 4-bit NormalFloat (NF4) from its definition (Dettmers et al., 2023, arXiv 2305.14314).

A frozen weight is cut into blocks of 64 numbers. Each block is divided by its absolute maximum (one fp32
constant per block) and every number is replaced by the index of the nearest of 16 levels, the NF4 codebook:
quantiles of N(0, 1), scaled to [-1, 1], with an exact zero. Two 4-bit indices share a byte. Double quantisation
stores the block constants themselves in 8 bits (blocks of 256, mean subtracted): about 4.127 bits per weight.
The arithmetic follows bitsandbytes 0.50's CPU path step for step. Without double quantisation the packed codes,
the fp32 block constants and the dequantised weights equal bitsandbytes' bit for bit. With it, the 4-bit codes,
the mean subtracted from the constants and the second-level constants are still equal, and so are the 8-bit codes
of the constants except a few that lie almost exactly halfway between two 8-bit levels: we take the nearest level,
as bitsandbytes' PyTorch reference does, while its compiled CPU kernel can pick the neighbour, one step away
(20 of the shipped model's 12,482 constants, as notebook 12 prints; tests/test_quantize.py checks each statement).

Levels:  `normal_float_levels`, `NF4_CODEBOOK`, `dynamic_8bit_levels` (the 8-bit code of the block constants).
Tensors: `nf4_quantize` / `nf4_dequantize`, `double_quantize` / `double_dequantize`, `bits_per_weight`.
Layers:  `NF4Linear` (frozen, 4-bit, dequantised in forward), `quantize_model`, `quantized_bytes`,
         `merge_and_requantize` (LoRA merged into a 4-bit base: lossy, unlike LoRALinear.merge).
"""

from __future__ import annotations

import torch
import torch.nn as nn

BLOCKSIZE = 64  # weights per absmax constant (QLoRA, bitsandbytes' default for 4 bit)
DQ_BLOCKSIZE = 256  # block constants per second-level constant (double quantisation)


# --------------------------------------------------------------------------------------------------- the levels
def nf4_offset() -> float:
    """The outermost probability bitsandbytes takes a quantile at when it builds the NF4 table: 0.9677083.

    This is bitsandbytes' construction (`create_normal_map`), not the paper's formula: the paper defines each level
    as the mean of two adjacent quantiles of N(0, 1), q_i = (Q(i / 17) + Q((i + 1) / 17)) / 2 for 4 bits, built
    for the two halves separately so that zero is exact. bitsandbytes instead takes quantiles at evenly spaced
    probabilities from this offset to 0.5. The value equals 1 - (1/(2*15) + 1/(2*16)) / 2 (the mean of the
    half-steps of the 15 and 16 intervals of the two sides) to the 7 decimals bitsandbytes writes; its documentation
    calls it chosen empirically. Rounding the same way gives its levels bit for bit (unrounded: within 3e-7)."""
    return round(1 - (1 / (2 * 15) + 1 / (2 * 16)) / 2, 7)


def normal_float_levels(bits: int = 4) -> torch.Tensor:
    """The 2^bits NormalFloat levels in [-1, 1], sorted: quantiles of N(0, 1), an exact 0, one more positive level."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int from 2 to 8 (NF4: 4), got {bits!r}")
    half = 2 ** (bits - 1)  # 8 for NF4
    p_pos = torch.linspace(nf4_offset(), 0.5, half + 1)[:-1]  # float32 probabilities, as bitsandbytes builds them
    p_neg = torch.linspace(nf4_offset(), 0.5, half)[:-1]
    positive = torch.special.ndtri(p_pos.double()).float()  # ndtri: the inverse CDF of N(0, 1)
    negative = -torch.special.ndtri(p_neg.double()).float()
    levels = torch.cat([negative, torch.zeros(1), positive]).sort().values  # half - 1 negative, 0, half positive
    return levels / levels.max()  # scale so that the largest level is exactly 1.0


NF4_CODEBOOK = normal_float_levels(4)  # (16,) float32: -1.0, -0.696..., ..., 0.0, ..., 0.723..., 1.0


def dynamic_8bit_levels() -> torch.Tensor:
    """The 256 levels of bitsandbytes' signed 8-bit dynamic type (Dettmers, 2016): a sign, a run of zeros that
    sets a power of ten from 1e-6 to 1, and a linear fraction in the remaining bits; used for the block constants."""
    values = []
    for i in range(7):  # exponent 10^(i - 6); 2^i fraction steps in [0.1, 1]
        edges = torch.linspace(0.1, 1, 2 ** i + 1, dtype=torch.float32)
        mids = (edges[:-1] + edges[1:]) / 2.0
        values += (10 ** (i - 6) * mids).tolist()
        values += (-(10 ** (i - 6)) * mids).tolist()
    values += [0.0, 1.0]
    return torch.tensor(sorted(values), dtype=torch.float32)  # (256,)


DYNAMIC_8BIT = dynamic_8bit_levels()


# ------------------------------------------------------------------------------------------- checks on the input
def _check_blocksize(blocksize, numel: int, what: str = "weight") -> None:
    if not isinstance(blocksize, int) or isinstance(blocksize, bool) or blocksize < 2 or blocksize & (blocksize - 1):
        raise ValueError(f"blocksize must be a power of two such as 32, 64 (QLoRA) or 128; got {blocksize!r}")
    if numel % blocksize:
        raise ValueError(f"blocksize {blocksize} does not divide the {what}'s {numel} numbers; choose a power of "
                         f"two that divides {numel}, e.g. {_largest_power_of_two_divisor(numel, 64)}")


def _largest_power_of_two_divisor(n: int, cap: int) -> int:
    b = 1
    while b * 2 <= cap and n % (b * 2) == 0:
        b *= 2
    return b


def _check_float(weight) -> None:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"weight must be a float tensor (float32, float16, bfloat16 or float64) to quantise, "
                        f"got {weight.dtype}")


# ------------------------------------------------------------------------------------------- NF4 on a tensor
def _nearest(scaled: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest level for each number, by the midpoints between neighbours (a tie goes down)."""
    midpoints = (levels[:-1] + levels[1:]) / 2  # (L - 1,)
    return torch.bucketize(scaled, midpoints.to(scaled.device))


def nf4_quantize(weight: torch.Tensor, blocksize: int = BLOCKSIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed, absmax): two 4-bit NF4 codes per uint8 byte (the first in the high half), one fp32 absmax per block."""
    _check_float(weight)
    _check_blocksize(blocksize, weight.numel())
    blocks = weight.detach().reshape(-1, blocksize).float()  # (n_blocks, blocksize)
    absmax = blocks.abs().max(dim=1).values  # (n_blocks,)
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38))[:, None], -1, 1)  # in [-1, 1]
    codes = _nearest(scaled.reshape(-1), NF4_CODEBOOK).to(torch.uint8)  # (n,) values 0..15
    packed = (codes[0::2] << 4) | codes[1::2]  # (n / 2,)
    return packed, absmax


def nf4_unpack(packed: torch.Tensor) -> torch.Tensor:
    """The 4-bit codes (0..15) of a packed uint8 tensor, two per byte, high half first: (n / 2,) -> (n,)."""
    codes = torch.empty(packed.numel() * 2, dtype=torch.long, device=packed.device)
    codes[0::2] = (packed >> 4).long()
    codes[1::2] = (packed & 0xF).long()
    return codes


def nf4_dequantize(packed: torch.Tensor, absmax: torch.Tensor, shape, blocksize: int = BLOCKSIZE,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight back from its codes: level[code] * absmax of its block, in float32, then cast to `dtype`."""
    shape = torch.Size(shape)
    _check_blocksize(blocksize, shape.numel())
    if packed.dtype != torch.uint8 or packed.numel() * 2 != shape.numel():
        raise ValueError(f"packed must be a uint8 tensor of {shape.numel() // 2} bytes for shape {tuple(shape)}, "
                         f"got {packed.dtype} with {packed.numel()} elements")
    if absmax.numel() != shape.numel() // blocksize:
        raise ValueError(f"absmax must hold {shape.numel() // blocksize} constants (one per block of {blocksize}), "
                         f"got {absmax.numel()}")
    values = NF4_CODEBOOK.to(packed.device)[nf4_unpack(packed)]  # (n,) in [-1, 1]
    return (values.view(-1, blocksize) * absmax.float().view(-1, 1)).reshape(shape).to(dtype)


# ------------------------------------------------------------------------------------ double quantisation
def _blockwise_8bit(x: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8, absmax fp32 per block) of x in the 8-bit dynamic type; a last, shorter block is allowed."""
    n = x.numel()
    full = n - n % blocksize
    parts = list(x[:full].view(-1, blocksize)) if full else []
    if n % blocksize:
        parts.append(x[full:])
    absmax = torch.stack([p.abs().max() for p in parts])  # (n_blocks,)
    scaled = torch.cat([torch.clamp(p * (1.0 / a.clamp(min=1e-38)), -1, 1) for p, a in zip(parts, absmax,
                                                                                          strict=True)])
    return _nearest(scaled, DYNAMIC_8BIT).to(torch.uint8), absmax


def double_quantize(absmax: torch.Tensor, blocksize: int = DQ_BLOCKSIZE):
    """Quantise the block constants: (codes uint8, absmax2 fp32 per block of `blocksize`, offset = their mean).

    The constants are all positive, so their mean is subtracted first and the signed 8-bit type is used fully."""
    if not isinstance(absmax, torch.Tensor) or absmax.dtype != torch.float32 or absmax.dim() != 1:
        raise TypeError("absmax must be the 1-D float32 tensor of block constants that nf4_quantize returns")
    _check_blocksize(blocksize, blocksize)  # only the power of two: a last, shorter block is allowed
    offset = absmax.mean()
    codes, absmax2 = _blockwise_8bit(absmax - offset, blocksize)
    return codes, absmax2, offset


def double_dequantize(codes: torch.Tensor, absmax2: torch.Tensor, offset: torch.Tensor,
                      blocksize: int = DQ_BLOCKSIZE) -> torch.Tensor:
    """The block constants back: level[code] * absmax2 of its block + offset (float32)."""
    values = DYNAMIC_8BIT.to(codes.device)[codes.long()]
    n = values.numel()
    full = n - n % blocksize
    out = torch.empty(n, dtype=torch.float32, device=codes.device)
    out[:full] = (values[:full].view(-1, blocksize) * absmax2[: full // blocksize].view(-1, 1)).reshape(-1)
    if n % blocksize:
        out[full:] = values[full:] * absmax2[-1]
    return out + offset


def bits_per_weight(blocksize: int = BLOCKSIZE, double_quant: bool = True, dq_blocksize: int = DQ_BLOCKSIZE) -> float:
    """Average bits a weight costs: 4 for its code plus its share of the constants (32 / blocksize in fp32; with
    double quantisation 8 / blocksize + 32 / (blocksize * dq_blocksize)). QLoRA: 4.5 without, about 4.127 with."""
    _check_blocksize(blocksize, blocksize)
    if not double_quant:
        return 4 + 32 / blocksize
    _check_blocksize(dq_blocksize, dq_blocksize)
    return 4 + 8 / blocksize + 32 / (blocksize * dq_blocksize)


# ----------------------------------------------------------------------------------------------- the layer
class _DequantizingMatmul(torch.autograd.Function):
    """x W^T with W dequantised in forward and again in backward, so autograd keeps no float copy of W (nor x:
    the frozen W needs no gradient). This is how bitsandbytes' 4-bit matmul saves memory."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: NF4Linear) -> torch.Tensor:
        ctx.layer = layer
        return x @ layer.weight.to(x.dtype).T  # (..., in) @ (in, out) -> (..., out)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_x = grad_out @ ctx.layer.weight.to(grad_out.dtype) if ctx.needs_input_grad[0] else None  # (..., in)
        return grad_x, None


class NF4Linear(nn.Linear):
    """A frozen linear layer stored as NF4 codes and constants; forward dequantises W, then computes x W^T + b.

    Like bitsandbytes' Linear4bit it is an nn.Linear to code that looks for linear layers (so `apply_lora` finds
    it), but holds no weight parameter: `weight` is the dequantised tensor, rebuilt on every access."""

    is_quantized = True

    def __init__(self, linear: nn.Linear, blocksize: int = BLOCKSIZE, double_quant: bool = True):
        if type(linear) is not nn.Linear:
            raise TypeError(f"NF4Linear quantises a plain nn.Linear, got {type(linear).__name__}")
        _check_float(linear.weight)
        _check_blocksize(blocksize, linear.weight.numel(), "layer's weight")
        nn.Module.__init__(self)  # not nn.Linear.__init__: there is no float weight to allocate
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.blocksize, self.double_quant = blocksize, double_quant
        self.compute_dtype = linear.weight.dtype
        packed, absmax = nf4_quantize(linear.weight, blocksize)
        self.register_buffer("packed", packed)  # (out * in / 2,) uint8
        if double_quant:
            codes, absmax2, offset = double_quantize(absmax)
            self.register_buffer("absmax_codes", codes)  # (n_blocks,) uint8
            self.register_buffer("absmax2", absmax2)  # (ceil(n_blocks / 256),) float32
            self.register_buffer("absmax_offset", offset)  # () float32
        else:
            self.register_buffer("absmax", absmax)  # (n_blocks,) float32
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def block_constants(self) -> torch.Tensor:
        """The fp32 absmax of every block (rebuilt from 8 bits when double-quantised)."""
        if self.double_quant:
            return double_dequantize(self.absmax_codes, self.absmax2, self.absmax_offset)
        return self.absmax

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight (out, in) in the layer's compute dtype; frozen."""
        shape = (self.out_features, self.in_features)
        return nf4_dequantize(self.packed, self.block_constants(), shape, self.blocksize, self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _DequantizingMatmul.apply(x, self) + (0 if self.bias is None else self.bias)  # (..., out)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, nf4, blocksize={self.blocksize}, "
                f"double_quant={self.double_quant}")


def quantize_model(model: nn.Module, blocksize: int = BLOCKSIZE, double_quant: bool = True,
                   skip: tuple[str, ...] = ()) -> nn.Module:
    """Replace every plain nn.Linear (except names ending in `skip`) by an NF4Linear, in place; return model.

    Quantise the base first, then apply LoRA on top: that is QLoRA."""
    if any(getattr(m, "is_quantized", False) for m in model.modules()):
        raise ValueError("the model is already quantised; quantising twice would round the rounded weights "
                         "again. Start from a fresh copy of the base model")
    if any(hasattr(m, "lora_A") for m in model.modules()):
        raise ValueError("the model already has LoRA layers; quantise the base first, then apply_lora (QLoRA)")
    if isinstance(skip, str) or not all(isinstance(s, str) for s in skip):
        raise ValueError(f"skip must be a tuple of module names such as ('lm_head',), got {skip!r}")
    names = [name for name, m in model.named_modules()
             if type(m) is nn.Linear and not any(name.rsplit(".", 1)[-1] == s for s in skip)]
    if not names:
        raise ValueError("the model has no nn.Linear layer to quantise")
    for name in names:  # every check above and in NF4Linear's own checks happens before the first replacement
        _check_blocksize(blocksize, model.get_submodule(name).weight.numel(), f"layer {name}'s weight")
        _check_float(model.get_submodule(name).weight)
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, NF4Linear(getattr(owner, child), blocksize, double_quant))
    return model


def quantized_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the NF4 layers' storage: 'codes' (packed), 'constants' (absmax, or its 8-bit codes, second-level
    constants and offset), 'weights_fp32' (what the same weights take in fp32), and 'other' (every other
    parameter and buffer of the model: embeddings, norms, biases, unquantised layers)."""
    out = {"codes": 0, "constants": 0, "weights_fp32": 0, "other": 0}
    counted = set()
    for m in model.modules():
        if isinstance(m, NF4Linear):
            out["codes"] += m.packed.numel()
            consts = (m.absmax_codes, m.absmax2, m.absmax_offset) if m.double_quant else (m.absmax,)
            out["constants"] += sum(t.numel() * t.element_size() for t in consts)
            out["weights_fp32"] += 4 * m.in_features * m.out_features
            counted.update(id(t) for t in (m.packed, *consts))
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in counted:
            out["other"] += t.numel() * t.element_size()
    return out


@torch.no_grad()
def merge_and_requantize(model: nn.Module) -> nn.Module:
    """Merge LoRA into a 4-bit base the only way possible: W = dequant(W0) + scaling B A, quantised again to NF4.

    Lossy: the merged model differs from the unmerged one (measure it). Replaces each LoRA layer over an
    NF4Linear by a new NF4Linear, in place; returns model."""
    layers = {name: m for name, m in model.named_modules()
              if hasattr(m, "lora_A") and isinstance(getattr(m, "base_layer", None), NF4Linear)}
    if not layers:
        raise ValueError("the model has no LoRA layer over an NF4Linear base; quantize_model, then apply_lora first")
    for name, layer in layers.items():
        base = layer.base_layer
        merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.packed.device, dtype=base.compute_dtype)
        merged.weight.copy_(base.weight + layer.get_delta_weight())
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                NF4Linear(merged, base.blocksize, base.double_quant))
    return model
