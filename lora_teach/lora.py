"""LoRA (Hu et al., 2021) from scratch, in the vocabulary of Hugging Face PEFT.

A frozen linear layer W0 (out, in) gets a trainable low-rank update: h = W0 x + (alpha / r) * B A x, with
A (r, in) kaiming-uniform and B (out, r) zeros, so the adapted model equals the base model at step 0.
References: the LoRA paper, microsoft/LoRA `loralib`, PEFT's `tuners/lora`, minLoRA, rsLoRA (Kalajdzievski, 2023).

Layer:  `LoRALinear` (wraps an nn.Linear kept as `base_layer`, like PEFT), with `merge()` / `unmerge()`.
Model:  `LoRAConfig`, `apply_lora`, `mark_only_lora_as_trainable`, `lora_state_dict`, `merge_lora`,
        `unmerge_lora`, `merge_and_unload`, `disable_adapter`, `save_adapter` / `load_adapter`.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from numbers import Real
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from .model import read_safetensors

# lora_teach's own adapter format; PEFT's format (adapter_model.safetensors + adapter_config.json) is written by
# lora_teach.hf.save_peft_adapter, so no file here looks like a PEFT adapter it is not.
ADAPTER_WEIGHTS = "lora_teach_adapter.safetensors"
ADAPTER_CONFIG = "lora_teach_adapter.json"


# ----------------------------------------------------------------------------------------------- validation
def _check_r(r) -> None:
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"r (the rank) must be a positive int such as 1, 2, 4, 8; got {r!r}")


def _check_alpha(alpha) -> None:
    if not isinstance(alpha, Real) or isinstance(alpha, bool) or not alpha > 0 or math.isinf(alpha):
        raise ValueError(f"alpha must be a finite number > 0 (the paper uses alpha = the first r tried); "
                         f"got {alpha!r}")


def _check_dropout(dropout) -> None:
    if not isinstance(dropout, Real) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), e.g. 0.0 or 0.05; got {dropout!r}")


def _check_rslora(use_rslora) -> None:
    if not isinstance(use_rslora, bool):
        raise TypeError(f"use_rslora must be True or False, got {use_rslora!r}")


def lora_scaling(r: int, alpha: float, use_rslora: bool = False) -> float:
    """The factor on B A: alpha / r (the paper), or alpha / sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


# ---------------------------------------------------------------------------------------------------- layer
class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: h = base(x) + scaling * dropout(x) A^T B^T."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False):
        super().__init__()
        if not (isinstance(base, nn.Linear) or getattr(base, "is_quantized", False)):
            raise TypeError(f"LoRALinear wraps an nn.Linear or a frozen quantised linear layer (QLoRA), "
                            f"got {type(base).__name__}")
        _check_r(r)
        _check_alpha(alpha)
        _check_dropout(dropout)
        _check_rslora(use_rslora)
        self.base_layer = base.requires_grad_(False)  # W0 (out, in) and bias stay frozen
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.use_rslora = r, alpha, use_rslora
        self.scaling = lora_scaling(r, alpha, use_rslora)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=w.device, dtype=w.dtype))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=w.device, dtype=w.dtype))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear, loralib and PEFT do
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False  # True while scaling * B A is folded into base_layer.weight
        self.disabled = False  # True inside disable_adapter(): the layer behaves as the base layer

    def get_delta_weight(self) -> torch.Tensor:
        """The update the adapter adds to the weight: scaling * B A, shape (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, r) @ (r, in) -> (out, in)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (W <- W + scaling B A); a second call does nothing."""
        if getattr(self.base_layer, "is_quantized", False):
            raise ValueError("cannot merge into a quantised base exactly: the sum would have to be quantised again, "
                             "which loses precision; lora_teach.quantize shows that lossy merge")
        if not self.merged:
            self.base_layer.weight += self.get_delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of the base weight (W <- W - scaling B A); does nothing when not merged."""
        if self.merged:
            self.base_layer.weight -= self.get_delta_weight()
            self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)  # (..., out)
        if self.merged or self.disabled:
            return result
        update = self.lora_dropout(x) @ self.lora_A.T @ self.lora_B.T  # (..., in) -> (..., r) -> (..., out)
        return torch.add(result, update, alpha=self.scaling)  # result + scaling * update, in one operation

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"alpha={self.alpha}, scaling={self.scaling:g}, merged={self.merged}")


# ------------------------------------------------------------------------------------------------ model level
@dataclass
class LoRAConfig:
    """Which nn.Linear modules get LoRA (by the last component of their name, as in PEFT) and how."""

    r: int = 8
    alpha: float = 8
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    dropout: float = 0.0
    use_rslora: bool = False

    def __post_init__(self):
        _check_r(self.r)
        _check_alpha(self.alpha)
        _check_dropout(self.dropout)
        _check_rslora(self.use_rslora)
        targets = (self.target_modules,) if isinstance(self.target_modules, str) else self.target_modules
        if (not isinstance(targets, (list, tuple)) or not targets
                or not all(isinstance(t, str) and t for t in targets)):
            raise ValueError(f"target_modules must be a non-empty list of module names such as "
                             f"('q_proj', 'v_proj'); got {self.target_modules!r}")
        self.target_modules = tuple(dict.fromkeys(targets))  # no duplicates, order kept

    @property
    def scaling(self) -> float:
        return lora_scaling(self.r, self.alpha, self.use_rslora)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """{qualified name: LoRALinear} for every LoRA layer in `model`, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _require_lora(model: nn.Module) -> dict[str, LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers; call apply_lora(model, config) first")
    return layers


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
    names = [name for found in matches.values() for name in found]
    modules = {name: model.get_submodule(name) for name in names}
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
        _replace(model, name, LoRALinear(model.get_submodule(name), config.r, config.alpha, config.dropout,
                                         config.use_rslora))
    mark_only_lora_as_trainable(model)
    return model


def mark_only_lora_as_trainable(model: nn.Module) -> nn.Module:
    """Set requires_grad on the LoRA A and B matrices only, every other parameter frozen; return model."""
    layers = _require_lora(model)
    model.requires_grad_(False)
    for layer in layers.values():
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter alone: {'<layer>.lora_A': (r, in), '<layer>.lora_B': (out, r)} for every LoRA layer."""
    out = {}
    for name, layer in _require_lora(model).items():
        out[f"{name}.lora_A"] = layer.lora_A.detach()
        out[f"{name}.lora_B"] = layer.lora_B.detach()
    return out


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer (idempotent): inference then costs exactly what the base model costs."""
    for layer in _require_lora(model).values():
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Unmerge every LoRA layer (idempotent), e.g. to train on or to swap adapters."""
    for layer in _require_lora(model).values():
        layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge, then put plain nn.Linear layers (with the merged weights) back in place of the LoRA layers."""
    for name, layer in _require_lora(model).items():
        layer.merge()
        _replace(model, name, layer.base_layer)
    return model


@contextmanager
def disable_adapter(model: nn.Module):
    """Run the base model inside the block: LoRA layers are switched off (merged ones unmerged, then re-merged)."""
    layers = _require_lora(model)
    merged = [layer for layer in layers.values() if layer.merged]
    for layer in merged:
        layer.unmerge()
    for layer in layers.values():
        layer.disabled = True
    try:
        yield model
    finally:
        for layer in layers.values():
            layer.disabled = False
        for layer in merged:
            layer.merge()


# ---------------------------------------------------------------------------------------------- save / load
def _adapter_config(model: nn.Module) -> dict:
    layers = _require_lora(model)
    first = next(iter(layers.values()))
    if any((m.r, m.alpha, m.use_rslora) != (first.r, first.alpha, first.use_rslora) for m in layers.values()):
        raise ValueError("save_adapter expects one r, alpha and use_rslora for all LoRA layers")
    dropout = first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0
    targets = tuple(dict.fromkeys(name.rsplit(".", 1)[-1] for name in layers))
    config = LoRAConfig(first.r, first.alpha, targets, dropout, first.use_rslora)
    shapes = {name: [m.out_features, m.in_features] for name, m in layers.items()}
    return {**asdict(config), "target_modules": list(targets), "base_shapes": shapes}


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write the adapter only to directory `path`: adapter_model.safetensors + adapter_config.json (no pickle)."""
    config = _adapter_config(model)
    tensors = {k: v.cpu().contiguous() for k, v in lora_state_dict(model).items()}
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / ADAPTER_WEIGHTS))
    (path / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def _read_adapter(path: Path) -> tuple[LoRAConfig, dict[str, list[int]], dict[str, torch.Tensor]]:
    for file in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (path / file).is_file():
            raise FileNotFoundError(f"{path} holds no {file}; save_adapter(model, path) writes it")
    try:
        raw = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path / ADAPTER_CONFIG} is not valid JSON ({err}): the file is corrupt or "
                         "truncated") from None
    if "base_shapes" not in raw:
        raise ValueError(f"{path / ADAPTER_CONFIG} has no 'base_shapes'; it was not written by save_adapter")
    shapes = {name: list(shape) for name, shape in raw.pop("base_shapes").items()}
    keys = [f.name for f in fields(LoRAConfig)]
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise ValueError(f"{path / ADAPTER_CONFIG} has unknown keys {unknown}; the keys are {keys} and 'base_shapes'")
    config = LoRAConfig(**raw)
    tensors = read_safetensors(path / ADAPTER_WEIGHTS)  # a ValueError names a truncated or corrupt file
    expected = {}
    for name, (out_f, in_f) in shapes.items():
        expected[f"{name}.lora_A"] = [config.r, in_f]
        expected[f"{name}.lora_B"] = [out_f, config.r]
    found = {k: list(v.shape) for k, v in tensors.items()}
    if found != expected:
        raise ValueError(f"{path / ADAPTER_WEIGHTS} does not match its config: expected {expected}, found {found}")
    return config, shapes, tensors


def _name_diff(adapter: set[str], model: set[str]) -> str:
    return f"only in the adapter {sorted(adapter - model)}, only in the model {sorted(model - adapter)}"


def _check_fits(model: nn.Module, config: LoRAConfig, shapes: dict[str, list[int]]) -> None:
    """Raise, naming what differs, unless the adapter (config, base shapes) fits `model` as it is."""
    layers = lora_layers(model)
    if layers:
        if set(layers) != set(shapes):
            raise ValueError(f"the adapter's layers differ from the model's LoRA layers: "
                             f"{_name_diff(set(shapes), set(layers))}")
        ranks = {name: m.r for name, m in layers.items() if m.r != config.r}
        if ranks:
            raise ValueError(f"the adapter has r={config.r} but the model's LoRA layers have r={ranks}")
        merged = [name for name, m in layers.items() if m.merged]
        if merged:
            raise ValueError(f"LoRA layers {merged} are merged; call unmerge_lora(model) before loading an adapter")
        modules = layers
    else:
        names = find_targets(model, config)
        if set(names) != set(shapes):
            raise ValueError(f"the adapter's targets {list(config.target_modules)} name other layers in this "
                             f"model: {_name_diff(set(shapes), set(names))}")
        modules = {name: model.get_submodule(name) for name in names}
    found = {name: [m.out_features, m.in_features] for name, m in modules.items()}
    differ = {name: f"adapter (out, in) = {tuple(shapes[name])}, model {tuple(found[name])}"
              for name in shapes if found[name] != shapes[name]}
    if differ:
        raise ValueError(f"the adapter was trained on layers of other shapes: {differ}")


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Load an adapter saved by save_adapter: onto a plain base model (LoRA is applied first) or in place of
    the current adapter of a LoRA model with the same layers and r (alpha, rsLoRA, dropout follow the file)."""
    path = Path(path)
    config, shapes, tensors = _read_adapter(path)
    _check_fits(model, config, shapes)  # nothing has changed before this line
    if not lora_layers(model):
        apply_lora(model, config)
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            layer.lora_A.copy_(tensors[f"{name}.lora_A"])
            layer.lora_B.copy_(tensors[f"{name}.lora_B"])
            layer.alpha, layer.use_rslora, layer.scaling = config.alpha, config.use_rslora, config.scaling
            layer.lora_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
    return model
