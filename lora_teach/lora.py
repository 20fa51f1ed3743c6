"""LoRA (Hu et al., 2021) from scratch, in the vocabulary of Hugging Face PEFT.

A frozen linear layer W0 (out, in) gets a trainable low-rank update: h = W0 x + (alpha / r) * B A x, with
A (r, in) kaiming-uniform and B (out, r) zeros, so the adapted model equals the base model at step 0.
References: the LoRA paper, microsoft/LoRA `loralib`, PEFT's `tuners/lora`, minLoRA.

Layer:  `LoRALinear` wraps an nn.Linear kept as `base_layer` and keys its adapters by name, as PEFT's `LoraLayer`:
        `lora_A[name]` (r, in), `lora_B[name]` (out, r), `lora_dropout[name]`, `scaling[name]`, `r[name]`,
        `alpha[name]` (PEFT: `lora_alpha`), `use_rslora[name]`, and `lora_magnitude[name]` for DoRA (PEFT:
        `lora_magnitude_vector`). `apply_lora` makes the adapter "default". PEFT's lora_A is an nn.Linear
        (`lora_A["default"].weight`); ours is the matrix itself. Verbs as in PEFT: `update_layer` (adds an
        adapter), `merge()`, `unmerge()`, `get_delta_weight(name)`, `delete_adapter(name)`.
Model:  `LoRAConfig` (PEFT's `LoraConfig`; `alpha`, `dropout` for `lora_alpha`, `lora_dropout`), `apply_lora` (PEFT:
        `inject_adapter_in_model`), `mark_only_lora_as_trainable`, `lora_state_dict`, `merge_lora`, `unmerge_lora`,
        `merge_and_unload`, `disable_adapter`, `lora_layers`, `find_targets`, `save_adapter` / `load_adapter`.
Elsewhere: the variants (rsLoRA, DoRA, PiSSA, LoRA+) in `lora_teach.lora_variants`; several adapters on one base and
the mixed batch in `lora_teach.serving`; our adapter file format and its checks in `lora_teach.adapter_file`.
"""

from __future__ import annotations

import math
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import torch
import torch.nn as nn

from . import lora_variants as variants

# lora_teach's own adapter format; PEFT's format (adapter_model.safetensors + adapter_config.json) is written by
# lora_teach.hf.save_peft_adapter, so no file here looks like a PEFT adapter it is not.
ADAPTER_WEIGHTS = "lora_teach_adapter.safetensors"
ADAPTER_CONFIG = "lora_teach_adapter.json"
DEFAULT = "default"  # the name of the adapter apply_lora makes, as in PEFT


def _check_adapter_args(r, alpha, dropout, use_rslora=False, use_dora=False, init_lora_weights=True,
                        base: nn.Module | None = None) -> None:
    """Raise, naming the allowed values, unless these are valid settings of one adapter (on `base`, if given)."""
    if base is not None and not (isinstance(base, nn.Linear) or getattr(base, "is_quantized", False)):
        raise TypeError(f"LoRALinear wraps an nn.Linear or a frozen quantised linear layer (QLoRA), "
                        f"got {type(base).__name__}")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"r (the rank) must be a positive int such as 1, 2, 4, 8; got {r!r}")
    if not isinstance(alpha, Real) or isinstance(alpha, bool) or not alpha > 0 or math.isinf(alpha):
        raise ValueError(f"alpha must be a finite number > 0 (the paper uses alpha = the first r tried); "
                         f"got {alpha!r}")
    if not isinstance(dropout, Real) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), e.g. 0.0 or 0.05; got {dropout!r}")
    variants.check_variant_options(use_rslora, use_dora, init_lora_weights)
    if base is not None:
        variants.check_base_supports(base, r, use_dora, init_lora_weights)


# ---------------------------------------------------------------------------------------------------- layer
class LoRALinear(nn.Module):
    """A frozen nn.Linear plus low-rank adapters by name; adapter n adds scaling[n] dropout[n](x) A[n]^T B[n]^T."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False,
                 use_dora: bool = False, init_lora_weights: bool | str = True):
        super().__init__()
        _check_adapter_args(r, alpha, dropout, use_rslora, use_dora, init_lora_weights, base)
        self.base_layer = base.requires_grad_(False)  # W0 (out, in) and bias stay frozen
        self.in_features, self.out_features = base.in_features, base.out_features
        self.lora_A, self.lora_B = nn.ParameterDict(), nn.ParameterDict()  # name -> (r, in), name -> (out, r)
        self.lora_magnitude = nn.ParameterDict()  # name -> DoRA's magnitude m (out,), for DoRA adapters only
        self.lora_dropout = nn.ModuleDict()  # name -> nn.Dropout, or nn.Identity without dropout
        self.r, self.alpha, self.scaling, self.use_rslora, self.init_lora_weights = {}, {}, {}, {}, {}
        self.disabled_adapters: set[str] = set()  # adapters that add nothing to any forward pass
        self.active_adapter, self.merged = DEFAULT, False  # the one that runs; merged: folded into the base weight
        self.update_layer(DEFAULT, r, alpha, dropout, use_rslora, use_dora, init_lora_weights)

    def update_layer(self, name: str, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False,
                     use_dora: bool = False, init_lora_weights: bool | str = True) -> None:
        """Add adapter `name`, trainable (PEFT's name for this); the caller has checked the arguments."""
        w = self.base_layer.weight
        A = torch.empty(r, self.in_features, device=w.device, dtype=w.dtype)  # (r, in)
        B = torch.zeros(self.out_features, r, device=w.device, dtype=w.dtype)  # (out, r)
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # as nn.Linear, loralib and PEFT do
        self.r[name], self.alpha[name], self.use_rslora[name] = r, alpha, use_rslora
        self.scaling[name] = variants.lora_scaling(r, alpha, use_rslora)  # alpha / r, or alpha / sqrt(r) (rsLoRA)
        self.init_lora_weights[name] = init_lora_weights
        variants.init_lora_weights_(A, B, init_lora_weights, w, self.scaling[name])  # False, 'gaussian', 'pissa'
        self.lora_A[name], self.lora_B[name] = nn.Parameter(A), nn.Parameter(B)
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if use_dora:  # m starts at the row norms of W0 + s B A: the layer starts at the base
            self.lora_magnitude[name] = nn.Parameter(variants.dora_norm(w, A, B, self.scaling[name]))

    def delete_adapter(self, name: str) -> None:
        """Remove every tensor and setting of adapter `name`."""
        for store in (self.lora_A, self.lora_B, self.lora_magnitude, self.lora_dropout, self.r, self.alpha,
                      self.scaling, self.use_rslora, self.init_lora_weights):
            if name in store:
                del store[name]
        self.disabled_adapters.discard(name)

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        """The trainable tensors of adapter `name`: A, B (and DoRA's magnitude)."""
        magnitude = [self.lora_magnitude[name]] if name in self.lora_magnitude else []
        return [self.lora_A[name], self.lora_B[name], *magnitude]

    def enabled(self, name: str) -> bool:
        """True if this layer carries adapter `name` and it is not disabled."""
        return name in self.lora_A and name not in self.disabled_adapters

    def get_delta_weight(self, name: str = DEFAULT) -> torch.Tensor:
        """The low-rank update of adapter `name`: scaling * B A, shape (out, in)."""
        return (self.lora_B[name] @ self.lora_A[name]) * self.scaling[name]  # (out, r) @ (r, in) -> (out, in)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the active adapter into the base weight (W <- W + s B A; DoRA: W <- m (W + s B A) / ||.||); does
        nothing when merged already or when this layer does not carry the active adapter."""
        if getattr(self.base_layer, "is_quantized", False):
            raise ValueError("cannot merge into a quantised base exactly: the sum would have to be quantised again, "
                             "which loses precision; lora_teach.quantize shows that lossy merge")
        name = self.active_adapter
        if self.merged or name not in self.lora_A:
            return
        if name in self.disabled_adapters:
            raise ValueError(f"adapter {name!r} is disabled, so merging it would switch it back on; "
                             f"enable_adapter_by_name(model, {name!r}) first, or set_adapter(model, another)")
        weight, delta = self.base_layer.weight, self.get_delta_weight(name)
        if name in self.lora_magnitude:
            self._merged_norm = variants.dora_merge_(weight, delta, self.lora_magnitude[name])  # kept to unmerge
        else:
            weight += delta
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the active adapter back out of the base weight; does nothing when not merged."""
        if not self.merged:
            return
        name = self.active_adapter
        weight, delta = self.base_layer.weight, self.get_delta_weight(name)
        if name in self.lora_magnitude:
            variants.dora_unmerge_(weight, delta, self.lora_magnitude[name], self._merged_norm)
        else:
            weight -= delta
        self.merged = False

    def forward(self, x: torch.Tensor, adapter_names: list[str] | None = None) -> torch.Tensor:
        """base(x) plus the active adapter's update, (..., in) -> (..., out). With `adapter_names` (PEFT's
        argument, one name per row) row i gets adapter adapter_names[i] ('__base__' or a disabled one: none)."""
        result = self.base_layer(x)  # (..., out)
        if adapter_names is not None:
            return self._mixed_batch_forward(x, result, adapter_names)
        if self.merged or not self.enabled(self.active_adapter):
            return result
        return self._adapter_output(x, result, self.active_adapter)

    def _adapter_output(self, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
        """result (= base(x)) plus adapter `name`'s update."""
        if name in self.lora_magnitude:
            return variants.dora_output(self, x, result, name)
        update = self.lora_dropout[name](x) @ self.lora_A[name].T @ self.lora_B[name].T  # (..., r) -> (..., out)
        return torch.add(result, update, alpha=self.scaling[name])  # result + scaling * update, in one operation

    def _mixed_batch_forward(self, x: torch.Tensor, result: torch.Tensor, names: list[str]) -> torch.Tensor:
        if self.merged or len(names) != x.shape[0]:
            raise ValueError(f"adapter_names needs an unmerged layer (unmerge_lora(model) first) and one name per "
                             f"row; got {len(names)} names for {x.shape[0]} rows, merged={self.merged}")
        for name in dict.fromkeys(names):  # each adapter once, on its rows only; the other rows keep the base
            if self.enabled(name):
                rows = torch.tensor([i for i, n in enumerate(names) if n == name], device=x.device)
                result[rows] = self._adapter_output(x[rows], result[rows], name)
        return result

    def extra_repr(self) -> str:
        off = [n for n in self.lora_A if n in self.disabled_adapters]
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"scaling={self.scaling}, dora={list(self.lora_magnitude)}, merged={self.merged}"
                + (f", disabled_adapters={off}" if off else ""))


# ------------------------------------------------------------------------------------------------ model level
@dataclass
class LoRAConfig:
    """Which nn.Linear modules get LoRA (by the last component of their name, as in PEFT) and how."""

    r: int = 8
    alpha: float = 8
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    dropout: float = 0.0
    use_rslora: bool = False  # rsLoRA: scaling alpha / sqrt(r)
    use_dora: bool = False  # DoRA: a trained magnitude per output row times the normalised direction
    init_lora_weights: bool | str = True  # True, False, "gaussian" or "pissa", as in PEFT

    def __post_init__(self):
        _check_adapter_args(self.r, self.alpha, self.dropout, self.use_rslora, self.use_dora, self.init_lora_weights)
        targets = (self.target_modules,) if isinstance(self.target_modules, str) else self.target_modules
        if (not isinstance(targets, (list, tuple)) or not targets
                or not all(isinstance(t, str) and t for t in targets)):
            raise ValueError(f"target_modules must be a non-empty list of module names such as "
                             f"('q_proj', 'v_proj'); got {self.target_modules!r}")
        self.target_modules = tuple(dict.fromkeys(targets))  # no duplicates, order kept

    @property
    def scaling(self) -> float:
        return variants.lora_scaling(self.r, self.alpha, self.use_rslora)

    def layer_args(self) -> tuple:
        """(r, alpha, dropout, use_rslora, use_dora, init_lora_weights): one adapter's settings, in that order."""
        return self.r, self.alpha, self.dropout, self.use_rslora, self.use_dora, self.init_lora_weights


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """{qualified name: LoRALinear} for every LoRA layer in `model`, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def require_lora(model: nn.Module) -> dict[str, LoRALinear]:
    """lora_layers(model), or a ValueError if there are none."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers; call apply_lora(model, config) first")
    return layers


def known_adapters(layers: dict[str, LoRALinear]) -> list[str]:
    """The adapter names the layers carry: 'default' first, then the others in the order they were added."""
    return list(dict.fromkeys(name for layer in layers.values() for name in layer.lora_A))


def check_known(layers: dict[str, LoRALinear], name) -> None:
    """Raise, listing the adapters, unless `name` is one of them."""
    known = known_adapters(layers)
    if not isinstance(name, str) or name not in known:
        raise ValueError(f"unknown adapter {name!r}; this model's adapters are {known}")


def _linear_names(model: nn.Module) -> list[str]:
    """The distinct last name components of the model's nn.Linear modules: what target_modules may name."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})


def find_targets(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Qualified names of the modules `config` targets; raises if an entry matches nothing or a non-Linear."""
    if not isinstance(config, LoRAConfig):
        raise TypeError(f"config must be a LoRAConfig, got {type(config).__name__}")
    existing = lora_layers(model)
    if existing:
        raise ValueError(f"the model already has LoRA layers ({', '.join(existing)}); applying LoRA "
                         "twice would wrap them again. Use a fresh model, or merge_and_unload(model) first")
    matches = {t: [] for t in config.target_modules}
    for name, _ in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if last in matches:
            matches[last].append(name)
    unmatched = [t for t, names in matches.items() if not names]
    if unmatched:
        raise ValueError(f"target_modules {unmatched} match no module; the model's nn.Linear names are "
                         f"{_linear_names(model)}")
    modules = {name: model.get_submodule(name) for found in matches.values() for name in found}
    wrong = {name: type(m).__name__ for name, m in modules.items() if not isinstance(m, nn.Linear)}
    if wrong:
        raise TypeError(f"LoRA here wraps nn.Linear only; these targets are not: {wrong}. The model's nn.Linear "
                        f"names are {_linear_names(model)}")
    return [name for name, _ in model.named_modules() if name in modules]  # module order


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def apply_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Wrap every targeted nn.Linear in a LoRALinear, in place; freeze all but A and B (as PEFT); return model."""
    targets = find_targets(model, config)  # every check happens before the first change
    for name in targets:
        variants.check_base_supports(model.get_submodule(name), config.r, config.use_dora, config.init_lora_weights)
    for name in targets:
        _replace(model, name, LoRALinear(model.get_submodule(name), *config.layer_args()))
    return mark_only_lora_as_trainable(model)


def mark_only_lora_as_trainable(model: nn.Module) -> nn.Module:
    """Set requires_grad on the active adapter's A and B (and DoRA magnitude) only, everything else frozen; a
    disabled active adapter stays frozen too."""
    layers = require_lora(model)
    model.requires_grad_(False)
    for layer in layers.values():
        if layer.enabled(layer.active_adapter):
            for p in layer.adapter_parameters(layer.active_adapter):
                p.requires_grad_(True)
    return model


def lora_state_dict(model: nn.Module, adapter_name: str = DEFAULT) -> dict[str, torch.Tensor]:
    """One adapter alone: {'<layer>.lora_A': (r, in), '<layer>.lora_B': (out, r)} for every LoRA layer that
    carries it (and '<layer>.lora_magnitude': (out,) with DoRA)."""
    layers = require_lora(model)
    check_known(layers, adapter_name)
    out = {}
    for name, layer in layers.items():
        if adapter_name in layer.lora_A:
            out[f"{name}.lora_A"] = layer.lora_A[adapter_name].detach()
            out[f"{name}.lora_B"] = layer.lora_B[adapter_name].detach()
            if adapter_name in layer.lora_magnitude:
                out[f"{name}.lora_magnitude"] = layer.lora_magnitude[adapter_name].detach()
    return out


def _check_active_enabled(layers: dict[str, LoRALinear], action: str) -> None:
    off = sorted({layer.active_adapter for layer in layers.values() if layer.active_adapter in layer.disabled_adapters})
    if off:
        raise ValueError(f"the active adapter {off[0]!r} is disabled; enable_adapter_by_name(model, {off[0]!r}) "
                         f"before {action}, or set_adapter(model, another)")


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer (idempotent): inference then costs exactly what the base model costs. Refused
    while the active adapter is disabled (merging would switch it back on)."""
    layers = require_lora(model)
    _check_active_enabled(layers, "merging")
    for layer in layers.values():
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Unmerge every LoRA layer (idempotent), e.g. to train on or to swap adapters."""
    for layer in require_lora(model).values():
        layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge, then put plain nn.Linear layers (with the merged weights) back in place of the LoRA layers.
    Refused while the active adapter is disabled, before any change."""
    layers = require_lora(model)
    _check_active_enabled(layers, "merge_and_unload")
    for name, layer in layers.items():
        layer.merge()
        _replace(model, name, layer.base_layer)
    return model


RUNNING_BASE: weakref.WeakSet = weakref.WeakSet()  # the models inside a disable_adapter() block


@contextmanager
def disable_adapter(model: nn.Module):
    """Run the base model inside the block: every adapter of every layer is disabled (merged layers are unmerged)
    and all is restored on exit, as PEFT's disable_adapter(); serving.disable_adapter_by_name switches off one."""
    layers = require_lora(model)
    merged = [layer for layer in layers.values() if layer.merged]
    for layer in merged:
        layer.unmerge()
    before = {name: set(layer.disabled_adapters) for name, layer in layers.items()}
    for layer in layers.values():
        layer.disabled_adapters.update(layer.lora_A)
    RUNNING_BASE.add(model)
    try:
        yield model
    finally:
        RUNNING_BASE.discard(model)
        for name, layer in layers.items():
            layer.disabled_adapters = before[name]
        for layer in merged:
            layer.merge()


# ---------------------------------------------------------------------------------------------- save / load
def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write the default adapter only to directory `path`, as two files named by ADAPTER_WEIGHTS (safetensors)
    and ADAPTER_CONFIG (JSON); no pickle. With DoRA the magnitudes are saved too; PiSSA is refused, and so is a
    disabled default adapter (the file holds weights, not the switch: it would load switched on)."""
    layers = require_lora(model)
    if any(DEFAULT in layer.disabled_adapters for layer in layers.values()):
        raise ValueError(f"the {DEFAULT!r} adapter is disabled, and a saved adapter would load switched on; "
                         f"enable_adapter_by_name(model, {DEFAULT!r}) before save_adapter")
    from . import adapter_file  # the file format (imported here: it imports this module)
    config = adapter_file.adapter_config(layers)  # refuses what one config cannot describe
    return adapter_file.write(path, lora_state_dict(model), config)


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Load an adapter saved by save_adapter: onto a plain base model (LoRA is applied first) or in place of
    the default adapter of a LoRA model with the same layers and r (alpha, rsLoRA, dropout follow the file)."""
    from . import adapter_file
    config, shapes, tensors = adapter_file.read_adapter(Path(path))
    adapter_file.check_fits(model, config, shapes)  # nothing has changed before this line
    if not lora_layers(model):
        apply_lora(model, config)
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            for key in ("lora_A", "lora_B", "lora_magnitude"):
                if f"{name}.{key}" in tensors:
                    getattr(layer, key)[DEFAULT].copy_(tensors[f"{name}.{key}"])
            layer.alpha[DEFAULT], layer.use_rslora[DEFAULT] = config.alpha, config.use_rslora
            layer.scaling[DEFAULT] = config.scaling
            layer.lora_dropout[DEFAULT] = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
    return model
