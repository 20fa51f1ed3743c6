"""Several LoRA adapters on one frozen base, and a batch in which each row uses its own adapter.

Named adapters live beside 'default' in each LoRALinear's dictionaries (`layer.lora_A["author"]`, ...), as in
PEFT. The verbs and their PEFT names: `add_adapter` (PEFT: `add_adapter` / `inject_adapter_in_model(...,
adapter_name=)`), `set_adapter`, `delete_adapter`, `adapter_names` (PEFT: `peft_config.keys()`), `active_adapter`.
`disable_adapter_by_name` / `enable_adapter_by_name` / `disabled_adapters` switch one adapter off and on (PEFT
switches all at once: `disable_adapter()`, in `lora_teach.lora` too). `forward_with_adapters(model, idx, names)` is
PEFT's `model(idx, adapter_names=names)` at inference, S-LoRA's mixed batch in miniature.
"""

from __future__ import annotations

import threading

import torch
import torch.nn as nn

from .lora import (
    DEFAULT,
    RUNNING_BASE,
    LoRAConfig,
    check_known,
    known_adapters,
    mark_only_lora_as_trainable,
    require_lora,
)
from .lora_variants import INIT_LORA_WEIGHTS

BASE_ROW = "__base__"  # in adapter_names: this row runs the base model alone (PEFT's name)


def adapter_names(model: nn.Module) -> list[str]:
    """Every adapter of the model: 'default' first, then the named ones in the order they were added."""
    return known_adapters(require_lora(model))


def active_adapter(model: nn.Module) -> str:
    """The name of the adapter the model runs."""
    return next(iter(require_lora(model).values())).active_adapter


def disabled_adapters(model: nn.Module) -> list[str]:
    """The adapters switched off by disable_adapter_by_name, in the order of adapter_names(model)."""
    layers = require_lora(model)
    off = set().union(*(layer.disabled_adapters for layer in layers.values()))
    return [name for name in known_adapters(layers) if name in off]


def _check_unmerged(layers: dict, action: str) -> None:
    merged = [name for name, layer in layers.items() if layer.merged]
    if merged:
        raise ValueError(f"LoRA layers {merged} are merged; call unmerge_lora(model) before {action}")


def add_adapter(model: nn.Module, adapter_name: str, config: LoRAConfig) -> nn.Module:
    """Add a named adapter beside the default one on the LoRA layers `config.target_modules` names (frozen
    until set_adapter makes it active); PiSSA is refused, since it would rewrite the base weight all adapters
    share. Return model."""
    layers = require_lora(model)
    if (not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name
            or adapter_name in (DEFAULT, BASE_ROW)):
        raise ValueError(f"adapter_name must be a non-empty string without '.' other than {DEFAULT!r} and "
                         f"{BASE_ROW!r}; got {adapter_name!r}")
    if adapter_name in known_adapters(layers):
        raise ValueError(f"an adapter named {adapter_name!r} exists already; this model's adapters are "
                         f"{known_adapters(layers)}. delete_adapter(model, {adapter_name!r}) first, or choose a "
                         "new name")
    if not isinstance(config, LoRAConfig):
        raise TypeError(f"config must be a LoRAConfig, got {type(config).__name__}")
    if config.init_lora_weights == "pissa":
        raise ValueError("init_lora_weights='pissa' is supported for the default adapter only (apply_lora): it "
                         "moves the principal part out of the base weight, which every adapter shares; choose "
                         f"one of {[v for v in INIT_LORA_WEIGHTS if v != 'pissa']}")
    _check_unmerged(layers, "adding an adapter")
    last = {name: name.rsplit(".", 1)[-1] for name in layers}
    unmatched = [t for t in config.target_modules if t not in last.values()]
    if unmatched:
        raise ValueError(f"target_modules {unmatched} match no LoRA layer; a named adapter goes on the layers "
                         f"apply_lora wrapped: {sorted(set(last.values()))}")
    for name, layer in layers.items():
        if last[name] in config.target_modules:
            layer.update_layer(adapter_name, *config.layer_args())
            for p in layer.adapter_parameters(adapter_name):
                p.requires_grad_(False)  # trainable once set_adapter makes it active
    return model


def set_adapter(model: nn.Module, adapter_name: str) -> nn.Module:
    """Make `adapter_name` the one every LoRA layer runs (and the only trainable one, as in PEFT); return model."""
    layers = require_lora(model)
    check_known(layers, adapter_name)
    _check_unmerged(layers, "switching adapters")
    for layer in layers.values():
        layer.active_adapter = adapter_name
    return mark_only_lora_as_trainable(model)


def delete_adapter(model: nn.Module, adapter_name: str) -> nn.Module:
    """Remove a named adapter (not 'default', not the active one); return model."""
    layers = require_lora(model)
    if adapter_name == DEFAULT:
        raise ValueError("the default adapter is the one apply_lora made and cannot be deleted; "
                         "merge_and_unload(model) removes LoRA altogether")
    check_known(layers, adapter_name)
    if adapter_name == active_adapter(model):
        raise ValueError(f"{adapter_name!r} is the active adapter; set_adapter(model, another) before deleting it "
                         f"(this model's adapters are {known_adapters(layers)})")
    for layer in layers.values():
        layer.delete_adapter(adapter_name)
    return model


def _check_switchable(model: nn.Module, layers: dict, adapter_name, verb: str) -> None:
    """Raise unless adapter `adapter_name` may be switched now: known, unmerged, outside disable_adapter()."""
    check_known(layers, adapter_name)
    _check_unmerged(layers, f"{verb[:-1]}ing an adapter")
    if model in RUNNING_BASE:
        raise ValueError(f"inside a disable_adapter(model) block every adapter is off already, and the block "
                         f"restores the switches on exit; call {verb}_adapter_by_name after the block")


def disable_adapter_by_name(model: nn.Module, adapter_name: str) -> nn.Module:
    """Switch adapter `adapter_name` off, whether active or not, until enable_adapter_by_name: it adds nothing to
    any forward pass and its tensors are frozen (as PEFT freezes the adapters it disables). Return model.

    - As the active adapter, the model runs the base; set_adapter may still make it active, and it stays off.
    - In forward_with_adapters, the rows that name it run the base, as '__base__' rows do (and as every row does
      inside disable_adapter()): switching an adapter off never needs the request list rewritten.
    - merge_lora and merge_and_unload refuse while the active adapter is disabled, save_adapter while 'default'
      is; delete_adapter forgets the switch with the adapter.
    Refused while merged (unmerge_lora first) and inside a disable_adapter() block (which restores the switches on
    exit). Disabling a disabled adapter does nothing. PEFT switches all adapters at once (disable_adapter(),
    disable_adapter_layers()); switching one by name is this course's."""
    layers = require_lora(model)
    _check_switchable(model, layers, adapter_name, "disable")
    for layer in layers.values():
        if adapter_name in layer.lora_A:
            layer.disabled_adapters.add(adapter_name)
            for p in layer.adapter_parameters(adapter_name):
                p.requires_grad_(False)
    return model


def enable_adapter_by_name(model: nn.Module, adapter_name: str) -> nn.Module:
    """Switch a disabled adapter back on, exactly as it was (the tensors never changed); the active adapter is
    trainable again, as set_adapter makes it. Refused while merged and inside a disable_adapter() block; enabling
    an enabled adapter does nothing. Return model."""
    layers = require_lora(model)
    _check_switchable(model, layers, adapter_name, "enable")
    for layer in layers.values():
        if adapter_name in layer.disabled_adapters:
            layer.disabled_adapters.discard(adapter_name)
            if layer.active_adapter == adapter_name:
                for p in layer.adapter_parameters(adapter_name):
                    p.requires_grad_(True)
    return model


def forward_with_adapters(model: nn.Module, idx: torch.Tensor, adapter_names: list[str]):
    """model(idx) in which row i of the batch runs adapter adapter_names[i] ('__base__': no adapter), as PEFT's
    `model(..., adapter_names=[...])` does at inference. The model must be in eval mode and unmerged. DoRA
    adapters are allowed here (PEFT 0.21 refuses them in a mixed batch); each row equals its adapter merged.
    A row naming a disabled adapter (disable_adapter_by_name) runs the base model, as a '__base__' row does.

    The model's forward does not take adapter names, so, as PEFT does, a forward pre-hook on every LoRA layer
    passes them to `LoRALinear.forward(x, adapter_names)` for this one call; the hooks act in the calling thread
    only, so the same model serving other calls meanwhile is unaffected."""
    layers = require_lora(model)
    allowed = known_adapters(layers) + [BASE_ROW]
    if not isinstance(adapter_names, (list, tuple)):
        raise TypeError(f"adapter_names must be a list of adapter names, one per row; "
                        f"got {type(adapter_names).__name__}")
    unknown = sorted({repr(n) for n in adapter_names if not isinstance(n, str) or n not in allowed})
    if unknown:
        raise ValueError(f"unknown adapter names {unknown}; allowed: {allowed}")
    if not isinstance(idx, torch.Tensor) or idx.dim() < 1 or len(adapter_names) != idx.shape[0]:
        rows = idx.shape[0] if isinstance(idx, torch.Tensor) and idx.dim() >= 1 else "?"
        raise ValueError(f"adapter_names has {len(adapter_names)} entries for a batch of {rows} rows; "
                         "give one name per row")
    if model.training:
        raise ValueError("forward_with_adapters is for inference: call model.eval() first (as PEFT refuses "
                         "adapter_names in training mode)")
    _check_unmerged(layers, "a mixed-adapter batch")
    names, caller = list(adapter_names), threading.get_ident()

    def pass_names(layer, args, kwargs):  # a forward pre-hook: (args, kwargs) of the layer's forward, or None
        return (args, {**kwargs, "adapter_names": names}) if threading.get_ident() == caller else None

    hooks = [layer.register_forward_pre_hook(pass_names, with_kwargs=True) for layer in layers.values()]
    try:
        return model(idx)
    finally:
        for hook in hooks:
            hook.remove()
