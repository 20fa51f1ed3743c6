"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2020), written to be read top to bottom.

An adapter is a small two-layer network with its own skip connection, `x + up(act(down(x)))`, inserted
into every transformer block of a frozen model. Houlsby et al. place one after the attention sublayer and
one after the feed-forward sublayer, each before that sublayer's residual add, and train the adapters plus
the layer norms. Pfeiffer et al. keep only the one after the feed-forward sublayer. Unlike LoRA, an adapter
sits in series with the frozen layers, so it cannot be folded into their weights: it costs time at inference.

Verbs: `Adapter` (the module), `add_adapters` (insert, freeze the rest), `adapter_state_dict` (what to save).

Names: PEFT has no bottleneck adapters, so there is no PEFT name to keep. The size is `bottleneck`, the adapter's
hidden width m; what a task stores is `adapter_state_dict(model)`, named like LoRA's `lora_state_dict`. There is
nothing to do before serving: an adapter cannot be merged into the frozen weights.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

PLACEMENTS = {"houlsby": ("attn", "mlp"), "pfeiffer": ("mlp",)}  # which sublayers of a block get an adapter


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_init(init_std, zero_up) -> None:
    """Raise if `init_std` is not a positive number or `zero_up` not a bool."""
    if isinstance(init_std, bool) or not isinstance(init_std, (int, float)) or not init_std > 0:
        raise ValueError(f"init_std must be a positive number, got {init_std!r}")
    if not isinstance(zero_up, bool):
        raise TypeError(f"zero_up must be True or False, got {zero_up!r}")


class Adapter(nn.Module):
    """Bottleneck with a skip connection: x + up(gelu(down(x))); 2*d*m + d + m parameters.

    Weights of `down` are drawn from a normal with std `init_std` truncated at two std (the paper's
    near-identity init); `up` starts at zero when `zero_up` (then the adapter is exactly the identity),
    otherwise it is drawn like `down`. Both biases start at zero."""

    def __init__(self, d: int, m: int, *, init_std: float = 1e-2, zero_up: bool = True):
        super().__init__()
        if not _is_positive_int(d) or not _is_positive_int(m):
            raise ValueError(f"d and m must be positive ints, got d={d!r}, m={m!r}")
        _check_init(init_std, zero_up)
        self.down = nn.Linear(d, m)  # weight (m, d): d -> m
        self.up = nn.Linear(m, d)  # weight (d, m): m -> d
        for layer in (self.down, self.up):
            nn.init.trunc_normal_(layer.weight, std=init_std, a=-2 * init_std, b=2 * init_std)
            nn.init.zeros_(layer.bias)
        if zero_up:
            nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(x)))  # (B, T, d) -> (B, T, m) -> (B, T, d), plus the skip


class WithAdapter(nn.Module):
    """A frozen sublayer followed by an adapter: adapter(base_layer(x, ...)). Keyword arguments
    (the attention's `prefix=`) are passed through to the base layer."""

    def __init__(self, base_layer: nn.Module, adapter: Adapter):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.adapter(self.base_layer(x, **kwargs))  # (B, T, C)


def add_adapters(model: nn.Module, bottleneck: int = 16, placement: str = "houlsby", *,
                 train_layer_norms: bool = True, init_std: float = 1e-2, zero_up: bool = True) -> nn.Module:
    """Insert adapters into every block of `model` in place, freeze everything else, return `model`.

    placement "houlsby": after attention and after the MLP (2 per block); "pfeiffer": after the MLP only.
    `train_layer_norms` (default True, as in Houlsby et al.) leaves every LayerNorm trainable too.
    Input is checked before anything changes; calling it twice on one model is refused."""
    if not _is_positive_int(bottleneck):
        raise ValueError(f"bottleneck must be a positive int (the adapter size m), got {bottleneck!r}")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {sorted(PLACEMENTS)}, got {placement!r}")
    if not isinstance(train_layer_norms, bool):
        raise TypeError(f"train_layer_norms must be True or False, got {train_layer_norms!r}")
    if not isinstance(getattr(model, "blocks", None), nn.ModuleList):
        raise TypeError(f"expected a lora_teach GPT (a model with .blocks), got {type(model).__name__}")
    if any(isinstance(m, WithAdapter) for m in model.modules()):
        raise ValueError("this model already has adapters; add_adapters would add a second set")
    _check_init(init_std, zero_up)
    d = model.config.n_embd
    model.requires_grad_(False)
    like = next(model.parameters())  # adapters follow the model's device and dtype
    for block in model.blocks:
        for name in PLACEMENTS[placement]:
            adapter = Adapter(d, bottleneck, init_std=init_std, zero_up=zero_up).to(like.device, like.dtype)
            setattr(block, name, WithAdapter(getattr(block, name), adapter))
    if train_layer_norms:
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.requires_grad_(True)
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a task adds on top of the shared base: every trainable parameter (adapters, and the
    layer norms when they were trained), detached, keyed by their name in `model`."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
