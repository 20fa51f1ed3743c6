"""LoRA (Hu et al., 2021) from scratch, in the vocabulary of Hugging Face PEFT, and its family.

A frozen linear layer W0 (out, in) gets a trainable low-rank update: h = W0 x + (alpha / r) * B A x, with
A (r, in) kaiming-uniform and B (out, r) zeros, so the adapted model equals the base model at step 0.
References: the LoRA paper, microsoft/LoRA `loralib`, PEFT's `tuners/lora`, minLoRA, rsLoRA (Kalajdzievski, 2023).

The family, each a small step on the same layer, named as in PEFT 0.21:
- rsLoRA: `LoRAConfig(use_rslora=True)`, scaling alpha / sqrt(r).
- DoRA (Liu et al., 2024): `LoRAConfig(use_dora=True)`, W' = m * (W0 + s B A) / ||W0 + s B A|| row by row, with
  the norm detached in the backward pass, as PEFT does.
- PiSSA (Meng et al., 2024): `LoRAConfig(init_lora_weights="pissa")`, A and B from the top-r singular triplets of
  W0, the base keeps the residual.
- LoRA+ (Hayou et al., 2024): `loraplus_param_groups` / `create_loraplus_optimizer`, B learns ratio times faster.
- Several named adapters beside the default one (`add_adapter`, `set_adapter`, `delete_adapter`), each switched
  off and on by name (`disable_adapter_by_name`, `enable_adapter_by_name`, `disabled_adapters`), and a batch in
  which each row uses its own adapter (`forward_with_adapters`, PEFT's `adapter_names`).

Layer:  `LoRALinear` (wraps an nn.Linear kept as `base_layer`, like PEFT), with `merge()` / `unmerge()`.
Model:  `LoRAConfig`, `apply_lora`, `mark_only_lora_as_trainable`, `lora_state_dict`, `merge_lora`,
        `unmerge_lora`, `merge_and_unload`, `disable_adapter`, `save_adapter` / `load_adapter`; by name:
        `add_adapter`, `set_adapter`, `delete_adapter`, `disable_adapter_by_name`, `enable_adapter_by_name`.
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
import torch.nn.functional as F
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


INIT_LORA_WEIGHTS = (True, False, "gaussian", "pissa")  # the values of PEFT's init_lora_weights supported here
DEFAULT = "default"  # the name of the adapter that lives in lora_A / lora_B, as in PEFT
BASE_ROW = "__base__"  # in adapter_names: this row runs the base model alone (PEFT's name)


def _check_dora(use_dora) -> None:
    if not isinstance(use_dora, bool):
        raise TypeError(f"use_dora must be True or False, got {use_dora!r}")


def _check_init(init_lora_weights) -> None:
    ok = isinstance(init_lora_weights, bool) or (isinstance(init_lora_weights, str)
                                                 and init_lora_weights in INIT_LORA_WEIGHTS)
    if not ok:
        raise ValueError(f"init_lora_weights must be one of {list(INIT_LORA_WEIGHTS)} here (True: A kaiming-uniform, "
                         f"B zeros; False: both random, for tests; 'gaussian': A ~ N(0, 1/r); 'pissa': principal "
                         f"singular vectors); got {init_lora_weights!r}")


def _check_family(use_dora, init_lora_weights) -> None:
    _check_dora(use_dora)
    _check_init(init_lora_weights)
    if use_dora and init_lora_weights == "pissa":
        raise ValueError("use_dora=True with init_lora_weights='pissa' is not supported here; choose one: "
                         "use_dora=True with init_lora_weights in [True, False, 'gaussian'], or PiSSA without DoRA")


def lora_scaling(r: int, alpha: float, use_rslora: bool = False) -> float:
    """The factor on B A: alpha / r (the paper), or alpha / sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


# ---------------------------------------------------------------------------------------------------- layer
class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: h = base(x) + scaling * dropout(x) A^T B^T.

    The default adapter lives in `lora_A` / `lora_B` (plus `lora_magnitude` with DoRA); named adapters added with
    `add_named_adapter` live beside it in dictionaries keyed by name, and `active_adapter` says which one runs;
    an adapter named in `disabled_adapters` contributes nothing until it is enabled again."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False,
                 use_dora: bool = False, init_lora_weights: bool | str = True):
        super().__init__()
        if not (isinstance(base, nn.Linear) or getattr(base, "is_quantized", False)):
            raise TypeError(f"LoRALinear wraps an nn.Linear or a frozen quantised linear layer (QLoRA), "
                            f"got {type(base).__name__}")
        _check_r(r)
        _check_alpha(alpha)
        _check_dropout(dropout)
        _check_rslora(use_rslora)
        _check_family(use_dora, init_lora_weights)
        self._check_base_supports(base, r, use_dora, init_lora_weights)
        self.base_layer = base.requires_grad_(False)  # W0 (out, in) and bias stay frozen
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.use_rslora = r, alpha, use_rslora
        self.scaling = lora_scaling(r, alpha, use_rslora)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=w.device, dtype=w.dtype))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=w.device, dtype=w.dtype))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear, loralib and PEFT do
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False  # True while the active adapter is folded into base_layer.weight
        self.disabled = False  # True inside disable_adapter(): the layer behaves as the base layer
        self.disabled_adapters: set[str] = set()  # switched off by name (disable_adapter_by_name): add nothing
        self.active_adapter = DEFAULT
        self._row_adapters = None  # a list of adapter names, one per batch row, inside forward_with_adapters
        self.use_dora, self.init_lora_weights = use_dora, init_lora_weights
        if init_lora_weights is not True:
            self._init_weights(self.lora_A, self.lora_B, init_lora_weights)
        if use_dora:
            self.lora_magnitude = nn.Parameter(self._dora_norm(self.lora_A, self.lora_B, self.scaling))  # (out,)

    @staticmethod
    def _check_base_supports(base, r, use_dora, init_lora_weights) -> None:
        if getattr(base, "is_quantized", False) and (use_dora or init_lora_weights == "pissa"):
            raise ValueError("use_dora=True and init_lora_weights='pissa' need the base weight in full precision; "
                             "on a quantised base use plain LoRA (use_dora=False, init_lora_weights True or False)")
        if init_lora_weights == "pissa" and r > min(base.in_features, base.out_features):
            raise ValueError(f"PiSSA takes the top r singular vectors, so r must be <= min(in, out) = "
                             f"{min(base.in_features, base.out_features)}; got r={r}")

    @torch.no_grad()
    def _init_weights(self, lora_A: torch.Tensor, lora_B: torch.Tensor, init) -> None:
        """The non-default initialisations of PEFT: False (both random), 'gaussian' or 'pissa'."""
        if init is False:  # PEFT leaves B as nn.Linear draws it: the branch is not zero (for tests)
            nn.init.kaiming_uniform_(lora_B, a=math.sqrt(5))
        elif init == "gaussian":
            nn.init.normal_(lora_A, std=1 / self.r)
        elif init == "pissa":
            self._pissa_init(lora_A, lora_B)

    @torch.no_grad()
    def _pissa_init(self, lora_A: torch.Tensor, lora_B: torch.Tensor) -> None:
        """PiSSA as PEFT 0.21 does it: W = U S V^T; B = U_r sqrt(S_r / s), A = sqrt(S_r / s) V_r^T, so that
        s B A = U_r S_r V_r^T whatever the scaling s; the base keeps the residual W - s B A. The SVD runs in
        float32 (PEFT's precision) unless the weight is float64, which PEFT refuses and we keep in float64."""
        weight = self.base_layer.weight
        dtype = weight.dtype
        w = weight.to(torch.float64 if dtype == torch.float64 else torch.float32)  # (out, in)
        U, S, Vh = torch.linalg.svd(w, full_matrices=False)  # (out, k), (k,), (k, in)
        Ur, Sr, Vhr = U[:, : self.r], S[: self.r] / self.scaling, Vh[: self.r]
        A = torch.diag(torch.sqrt(Sr)) @ Vhr  # (r, in)
        B = Ur @ torch.diag(torch.sqrt(Sr))  # (out, r)
        lora_A.copy_(A)
        lora_B.copy_(B)
        weight.copy_((w - self.scaling * B @ A).to(dtype))  # the residual W - U_r S_r V_r^T

    def _dora_norm(self, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
        """||W0 + s B A|| of each output row (dim 1 of the (out, in) weight), B A detached as in PEFT: (out,)."""
        lora_weight = (lora_B @ lora_A).detach()  # (out, in)
        return torch.linalg.norm(self.base_layer.weight + scaling * lora_weight, dim=1)

    # ------------------------------------------------------------------------------------ adapters by name
    def adapter_names(self) -> list[str]:
        """The adapters this layer carries: 'default' first, then the named ones in the order added."""
        extra = getattr(self, "lora_A_by_name", None)
        return [DEFAULT] + (list(extra) if extra is not None else [])

    def _parts(self, name: str):
        """(A, B, magnitude or None, scaling, dropout) of adapter `name`."""
        if name == DEFAULT:
            return (self.lora_A, self.lora_B, self.lora_magnitude if self.use_dora else None, self.scaling,
                    self.lora_dropout)
        magnitude = self.lora_magnitude_by_name[name] if name in self.lora_magnitude_by_name else None
        return (self.lora_A_by_name[name], self.lora_B_by_name[name], magnitude, self.scaling_by_name[name],
                self.lora_dropout_by_name[name])

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        """The trainable tensors of adapter `name` in this layer: A, B (and DoRA's magnitude)."""
        A, B, magnitude, _, _ = self._parts(name)
        return [A, B] + ([magnitude] if magnitude is not None else [])

    def add_named_adapter(self, name: str, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False,
                          use_dora: bool = False, init_lora_weights: bool | str = True) -> None:
        """Add adapter `name` beside the default one (frozen until made active); the model-level add_adapter
        checks its arguments first."""
        if getattr(self, "lora_A_by_name", None) is None:
            self.lora_A_by_name, self.lora_B_by_name = nn.ParameterDict(), nn.ParameterDict()
            self.lora_magnitude_by_name, self.lora_dropout_by_name = nn.ParameterDict(), nn.ModuleDict()
            self.scaling_by_name, self.r_by_name = {}, {}
        w = self.base_layer.weight
        A = torch.empty(r, self.in_features, device=w.device, dtype=w.dtype)  # (r, in)
        B = torch.zeros(self.out_features, r, device=w.device, dtype=w.dtype)  # (out, r)
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        self.scaling_by_name[name], self.r_by_name[name] = lora_scaling(r, alpha, use_rslora), r
        if init_lora_weights is not True:
            self._init_weights(A, B, init_lora_weights)
        self.lora_A_by_name[name] = nn.Parameter(A, requires_grad=False)
        self.lora_B_by_name[name] = nn.Parameter(B, requires_grad=False)
        self.lora_dropout_by_name[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if use_dora:
            norm = self._dora_norm(A, B, self.scaling_by_name[name])
            self.lora_magnitude_by_name[name] = nn.Parameter(norm, requires_grad=False)

    def delete_named_adapter(self, name: str) -> None:
        """Remove adapter `name` (not the default one, not the active one; the model-level call checks)."""
        for store in (self.lora_A_by_name, self.lora_B_by_name, self.lora_magnitude_by_name,
                      self.lora_dropout_by_name, self.scaling_by_name, self.r_by_name):
            if name in store:
                del store[name]
        self.disabled_adapters.discard(name)

    # ---------------------------------------------------------------------------------------- merge, forward
    def get_delta_weight(self, adapter_name: str = DEFAULT) -> torch.Tensor:
        """The low-rank update of an adapter: scaling * B A, shape (out, in)."""
        if adapter_name == DEFAULT:
            return (self.lora_B @ self.lora_A) * self.scaling  # (out, r) @ (r, in) -> (out, in)
        A, B, _, scaling, _ = self._parts(adapter_name)
        return (B @ A) * scaling

    def _check_mergeable(self) -> None:
        if getattr(self.base_layer, "is_quantized", False):
            raise ValueError("cannot merge into a quantised base exactly: the sum would have to be quantised again, "
                             "which loses precision; lora_teach.quantize shows that lossy merge")

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the active adapter into the base weight (W <- W + scaling B A; DoRA: W <- m (W + s B A) / ||.||);
        a second call does nothing."""
        self._check_mergeable()
        if self.merged:
            return
        name = self.active_adapter
        if name in self.disabled_adapters:
            raise ValueError(f"adapter {name!r} is disabled, so merging it would switch it back on; "
                             f"enable_adapter_by_name(model, {name!r}) first, or set_adapter(model, another)")
        if name == DEFAULT and not self.use_dora:
            self.base_layer.weight += self.get_delta_weight()
            self.merged = True
            return
        if name not in self.adapter_names():
            return  # this layer does not carry the active adapter: nothing to fold in
        _, _, magnitude, _, _ = self._parts(name)
        weight, delta = self.base_layer.weight, self.get_delta_weight(name)
        if magnitude is None:
            weight += delta
        else:
            self._merged_norm = torch.linalg.norm(weight + delta, dim=1)  # (out,), kept for an exact unmerge
            weight.copy_((magnitude / self._merged_norm).view(-1, 1) * (weight + delta))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the active adapter back out of the base weight; does nothing when not merged."""
        if not self.merged:
            return
        name = self.active_adapter
        if name == DEFAULT and not self.use_dora:
            self.base_layer.weight -= self.get_delta_weight()
            self.merged = False
            return
        _, _, magnitude, _, _ = self._parts(name)
        weight, delta = self.base_layer.weight, self.get_delta_weight(name)
        if magnitude is None:
            weight -= delta
        else:
            weight.copy_(weight / (magnitude / self._merged_norm).view(-1, 1) - delta)
            del self._merged_norm
        self.merged = False

    def _adapter_output(self, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
        """base(x) = `result` plus adapter `name`'s contribution (DoRA's as PEFT computes it)."""
        if name not in self.adapter_names():
            return result
        A, B, magnitude, scaling, dropout = self._parts(name)
        if magnitude is None:
            update = dropout(x) @ A.T @ B.T  # (..., in) -> (..., r) -> (..., out)
            return torch.add(result, update, alpha=scaling)
        # DoRA: m * (W0 + s B A) x / ||W0 + s B A|| = base(x) + (m/n - 1) W0 x + (m/n) s B A x
        if isinstance(dropout, nn.Identity) or not self.training:
            bias = self.base_layer.bias
            base_result = result if bias is None else result - bias  # W0 x, without the bias
        else:
            x = dropout(x)
            base_result = F.linear(x, self.base_layer.weight)
        norm = self._dora_norm(A, B, scaling).detach()  # a constant in the backward pass (DoRA, section 4.3)
        mag_norm_scale = (magnitude / norm).view(1, -1)  # (1, out)
        lora_result = x @ A.T @ B.T  # (..., out)
        return result + ((mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling)

    def _mixed_forward(self, x: torch.Tensor, result: torch.Tensor, names: list[str]) -> torch.Tensor:
        """Each row of the batch through its own adapter (or none, '__base__'), as PEFT's adapter_names does."""
        if x.shape[0] != len(names):
            raise ValueError(f"adapter_names has {len(names)} entries for a batch of {x.shape[0]} rows; "
                             "give one name per row")
        for name in dict.fromkeys(names):  # each adapter once, on its rows only
            if name == BASE_ROW or name in self.disabled_adapters or name not in self.adapter_names():
                continue  # these rows keep the base output
            rows = torch.tensor([i for i, n in enumerate(names) if n == name], device=x.device)
            result[rows] = self._adapter_output(x[rows], result[rows], name)
        return result

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)  # (..., out)
        if self.merged or self.disabled:
            return result
        if self._row_adapters is not None:
            return self._mixed_forward(x, result, self._row_adapters)
        if self.active_adapter in self.disabled_adapters:
            return result
        if self.active_adapter != DEFAULT or self.use_dora:
            return self._adapter_output(x, result, self.active_adapter)
        update = self.lora_dropout(x) @ self.lora_A.T @ self.lora_B.T  # (..., in) -> (..., r) -> (..., out)
        return torch.add(result, update, alpha=self.scaling)  # result + scaling * update, in one operation

    def extra_repr(self) -> str:
        text = (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"alpha={self.alpha}, scaling={self.scaling:g}, merged={self.merged}")
        if self.use_dora:
            text += ", use_dora=True"
        if self.init_lora_weights is not True:
            text += f", init_lora_weights={self.init_lora_weights!r}"
        if self.disabled_adapters:
            text += f", disabled_adapters={[n for n in self.adapter_names() if n in self.disabled_adapters]}"
        return text


# ------------------------------------------------------------------------------------------------ model level
@dataclass
class LoRAConfig:
    """Which nn.Linear modules get LoRA (by the last component of their name, as in PEFT) and how."""

    r: int = 8
    alpha: float = 8
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    dropout: float = 0.0
    use_rslora: bool = False
    use_dora: bool = False  # DoRA: a trained magnitude per output row times the normalised direction
    init_lora_weights: bool | str = True  # True, False, "gaussian" or "pissa", as in PEFT

    def __post_init__(self):
        _check_r(self.r)
        _check_alpha(self.alpha)
        _check_dropout(self.dropout)
        _check_rslora(self.use_rslora)
        _check_family(self.use_dora, self.init_lora_weights)
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
        LoRALinear._check_base_supports(model.get_submodule(name), config.r, config.use_dora,
                                        config.init_lora_weights)
    for name in targets:
        _replace(model, name, LoRALinear(model.get_submodule(name), config.r, config.alpha, config.dropout,
                                         config.use_rslora, config.use_dora, config.init_lora_weights))
    mark_only_lora_as_trainable(model)
    return model


def mark_only_lora_as_trainable(model: nn.Module) -> nn.Module:
    """Set requires_grad on the active adapter's A and B (and DoRA magnitude) only, everything else frozen; a
    disabled active adapter stays frozen too (disable_adapter_by_name)."""
    layers = _require_lora(model)
    model.requires_grad_(False)
    for layer in layers.values():
        if layer.active_adapter in layer.disabled_adapters:
            continue
        if layer.active_adapter == DEFAULT:
            layer.lora_A.requires_grad_(True)
            layer.lora_B.requires_grad_(True)
            if layer.use_dora:
                layer.lora_magnitude.requires_grad_(True)
        elif layer.active_adapter in layer.adapter_names():
            for p in layer.adapter_parameters(layer.active_adapter):
                p.requires_grad_(True)
    return model


def lora_state_dict(model: nn.Module, adapter_name: str = DEFAULT) -> dict[str, torch.Tensor]:
    """One adapter alone: {'<layer>.lora_A': (r, in), '<layer>.lora_B': (out, r)} for every LoRA layer
    (and '<layer>.lora_magnitude': (out,) with DoRA). `adapter_name` picks a named adapter instead of 'default'."""
    layers = _require_lora(model)
    if adapter_name != DEFAULT:
        _check_known(model, adapter_name)
    out = {}
    for name, layer in layers.items():
        if adapter_name == DEFAULT:
            out[f"{name}.lora_A"] = layer.lora_A.detach()
            out[f"{name}.lora_B"] = layer.lora_B.detach()
            if layer.use_dora:
                out[f"{name}.lora_magnitude"] = layer.lora_magnitude.detach()
        elif adapter_name in layer.adapter_names():
            A, B, magnitude, _, _ = layer._parts(adapter_name)
            out[f"{name}.lora_A"], out[f"{name}.lora_B"] = A.detach(), B.detach()
            if magnitude is not None:
                out[f"{name}.lora_magnitude"] = magnitude.detach()
    return out


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer (idempotent): inference then costs exactly what the base model costs. Refused
    while the active adapter is disabled (merging would switch it back on)."""
    layers = _require_lora(model)
    _check_active_enabled(model, "merging")
    for layer in layers.values():
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Unmerge every LoRA layer (idempotent), e.g. to train on or to swap adapters."""
    for layer in _require_lora(model).values():
        layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge, then put plain nn.Linear layers (with the merged weights) back in place of the LoRA layers.
    Refused while the active adapter is disabled, before any change."""
    layers = _require_lora(model)
    _check_active_enabled(model, "merge_and_unload")
    for name, layer in layers.items():
        layer.merge()
        _replace(model, name, layer.base_layer)
    return model


@contextmanager
def disable_adapter(model: nn.Module):
    """Run the base model inside the block: LoRA layers are switched off (merged ones unmerged, then re-merged).
    All adapters at once, as PEFT's disable_adapter(); disable_adapter_by_name switches off one, until enabled."""
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


# ------------------------------------------------------------------------------------------ named adapters
def adapter_names(model: nn.Module) -> list[str]:
    """Every adapter of the model: 'default' first, then the named ones in the order they were added."""
    return _known_adapters(model)


def _known_adapters(model: nn.Module) -> list[str]:
    names = {}
    for layer in _require_lora(model).values():
        names.update(dict.fromkeys(layer.adapter_names()))
    return list(names)


def _check_known(model: nn.Module, name) -> None:
    known = adapter_names(model)
    if not isinstance(name, str) or name not in known:
        raise ValueError(f"unknown adapter {name!r}; this model's adapters are {known}")


def _check_unmerged(model: nn.Module, action: str) -> None:
    merged = [name for name, layer in lora_layers(model).items() if layer.merged]
    if merged:
        raise ValueError(f"LoRA layers {merged} are merged; call unmerge_lora(model) before {action}")


def _check_active_enabled(model: nn.Module, action: str) -> None:
    off = sorted({layer.active_adapter for layer in lora_layers(model).values()
                  if layer.active_adapter in layer.disabled_adapters})
    if off:
        raise ValueError(f"the active adapter {off[0]!r} is disabled; enable_adapter_by_name(model, {off[0]!r}) "
                         f"before {action}, or set_adapter(model, another)")


def disabled_adapters(model: nn.Module) -> list[str]:
    """The adapters switched off by disable_adapter_by_name, in the order of adapter_names(model)."""
    off = set().union(*(layer.disabled_adapters for layer in _require_lora(model).values()))
    return [name for name in adapter_names(model) if name in off]


def disable_adapter_by_name(model: nn.Module, adapter_name: str) -> nn.Module:
    """Switch adapter `adapter_name` off, whether active or not, until enable_adapter_by_name: it adds nothing to
    any forward pass and its tensors are frozen (as PEFT freezes the adapters it disables). Return model.

    - As the active adapter, the model runs the base; set_adapter may still make it active, and it stays off.
    - In forward_with_adapters, the rows that name it run the base, as '__base__' rows do (and as every row does
      inside disable_adapter()): switching an adapter off never needs the request list rewritten.
    - merge_lora and merge_and_unload refuse while the active adapter is disabled, save_adapter while 'default'
      is; delete_adapter forgets the switch with the adapter.
    Refused while merged (unmerge_lora first) and inside a disable_adapter() block (which re-merges on exit).
    Disabling a disabled adapter does nothing. PEFT switches all adapters at once (disable_adapter(),
    disable_adapter_layers()); switching one by name is this course's."""
    layers = _require_lora(model)
    _check_known(model, adapter_name)
    _check_unmerged(model, "disabling an adapter")
    if any(layer.disabled for layer in layers.values()):
        raise ValueError("inside a disable_adapter(model) block every adapter is off already, and merged layers "
                         "are merged again on exit; call disable_adapter_by_name after the block")
    for layer in layers.values():
        if adapter_name in layer.adapter_names():
            layer.disabled_adapters.add(adapter_name)
            for p in layer.adapter_parameters(adapter_name):
                p.requires_grad_(False)
    return model


def enable_adapter_by_name(model: nn.Module, adapter_name: str) -> nn.Module:
    """Switch a disabled adapter back on, exactly as it was (the tensors never changed); the active adapter is
    trainable again, as set_adapter makes it. Refused while merged; enabling an enabled adapter does nothing.
    Return model."""
    layers = _require_lora(model)
    _check_known(model, adapter_name)
    _check_unmerged(model, "enabling an adapter")
    for layer in layers.values():
        if adapter_name in layer.disabled_adapters:
            layer.disabled_adapters.discard(adapter_name)
            if layer.active_adapter == adapter_name:
                for p in layer.adapter_parameters(adapter_name):
                    p.requires_grad_(True)
    return model


def add_adapter(model: nn.Module, adapter_name: str, config: LoRAConfig) -> nn.Module:
    """Add a named adapter beside the default one on the LoRA layers `config.target_modules` names (frozen
    until set_adapter makes it active); PiSSA is refused, since it would rewrite the base weight all adapters
    share. Return model."""
    layers = _require_lora(model)
    if not isinstance(adapter_name, str) or not adapter_name or adapter_name in (DEFAULT, BASE_ROW):
        raise ValueError(f"adapter_name must be a non-empty string other than {DEFAULT!r} and {BASE_ROW!r}; "
                         f"got {adapter_name!r}")
    if adapter_name in adapter_names(model):
        raise ValueError(f"an adapter named {adapter_name!r} exists already; this model's adapters are "
                         f"{adapter_names(model)}. delete_adapter(model, {adapter_name!r}) first, or choose a new name")
    if not isinstance(config, LoRAConfig):
        raise TypeError(f"config must be a LoRAConfig, got {type(config).__name__}")
    if config.init_lora_weights == "pissa":
        raise ValueError("init_lora_weights='pissa' is supported for the default adapter only (apply_lora): it "
                         "moves the principal part out of the base weight, which every adapter shares; choose "
                         f"one of {[v for v in INIT_LORA_WEIGHTS if v != 'pissa']}")
    _check_unmerged(model, "adding an adapter")
    last = {name: name.rsplit(".", 1)[-1] for name in layers}
    unmatched = [t for t in config.target_modules if t not in last.values()]
    if unmatched:
        raise ValueError(f"target_modules {unmatched} match no LoRA layer; a named adapter goes on the layers "
                         f"apply_lora wrapped: {sorted(set(last.values()))}")
    for name, layer in layers.items():
        if last[name] in config.target_modules:
            layer.add_named_adapter(adapter_name, config.r, config.alpha, config.dropout, config.use_rslora,
                                    config.use_dora, config.init_lora_weights)
    return model


def set_adapter(model: nn.Module, adapter_name: str) -> nn.Module:
    """Make `adapter_name` the one every LoRA layer runs (and the only trainable one, as in PEFT); return model."""
    layers = _require_lora(model)
    _check_known(model, adapter_name)
    _check_unmerged(model, "switching adapters")
    for layer in layers.values():
        layer.active_adapter = adapter_name
    return mark_only_lora_as_trainable(model)


def active_adapter(model: nn.Module) -> str:
    """The name of the adapter the model runs."""
    return next(iter(_require_lora(model).values())).active_adapter


def delete_adapter(model: nn.Module, adapter_name: str) -> nn.Module:
    """Remove a named adapter (not 'default', not the active one); return model."""
    layers = _require_lora(model)
    if adapter_name == DEFAULT:
        raise ValueError("the default adapter is the layers' own lora_A and lora_B and cannot be deleted; "
                         "merge_and_unload(model) removes LoRA altogether")
    _check_known(model, adapter_name)
    if adapter_name == active_adapter(model):
        raise ValueError(f"{adapter_name!r} is the active adapter; set_adapter(model, another) before deleting it "
                         f"(this model's adapters are {adapter_names(model)})")
    for layer in layers.values():
        if adapter_name in layer.adapter_names():
            layer.delete_named_adapter(adapter_name)
    return model


def forward_with_adapters(model: nn.Module, idx: torch.Tensor, adapter_names: list[str]):
    """model(idx) in which row i of the batch runs adapter adapter_names[i] ('__base__': no adapter), as PEFT's
    `model(..., adapter_names=[...])` does at inference. The model must be in eval mode and unmerged. DoRA
    adapters are allowed here (PEFT 0.21 refuses them in a mixed batch); each row equals its adapter merged.
    A row naming a disabled adapter (disable_adapter_by_name) runs the base model, as a '__base__' row does."""
    layers = _require_lora(model)
    known = _known_adapters(model)
    if not isinstance(adapter_names, (list, tuple)):
        raise TypeError(f"adapter_names must be a list of adapter names, one per row; "
                        f"got {type(adapter_names).__name__}")
    unknown = sorted({repr(n) for n in adapter_names if not isinstance(n, str) or n not in known + [BASE_ROW]})
    if unknown:
        raise ValueError(f"unknown adapter names {unknown}; allowed: {known + [BASE_ROW]}")
    if not isinstance(idx, torch.Tensor) or idx.dim() < 1 or len(adapter_names) != idx.shape[0]:
        rows = idx.shape[0] if isinstance(idx, torch.Tensor) and idx.dim() >= 1 else "?"
        raise ValueError(f"adapter_names has {len(adapter_names)} entries for a batch of {rows} rows; "
                         "give one name per row")
    if model.training:
        raise ValueError("forward_with_adapters is for inference: call model.eval() first (as PEFT refuses "
                         "adapter_names in training mode)")
    _check_unmerged(model, "a mixed-adapter batch")
    for layer in layers.values():
        layer._row_adapters = list(adapter_names)
    try:
        return model(idx)
    finally:
        for layer in layers.values():
            layer._row_adapters = None


# ------------------------------------------------------------------------------------------------- LoRA+
def loraplus_param_groups(model: nn.Module, lr: float, loraplus_lr_ratio: float = 16.0,
                          loraplus_weight_decay: float = 0.0) -> list[dict]:
    """LoRA+ (Hayou et al., 2024): the trainable parameters in optimizer groups as PEFT's
    create_loraplus_optimizer makes them: 'A' at lr; 'B' (B matrices and every 1-D tensor, e.g. DoRA's
    magnitude) at lr * loraplus_lr_ratio, 'B_no_decay' (biases, layer norms) the same without weight decay.
    Empty groups are left out."""
    for key, value in (("lr", lr), ("loraplus_lr_ratio", loraplus_lr_ratio)):
        if not isinstance(value, Real) or isinstance(value, bool) or not value > 0 or math.isinf(value):
            raise ValueError(f"{key} must be a finite number > 0 (PEFT's default ratio is 16 in the paper's "
                             f"spirit: B learns 16 times faster than A); got {value!r}")
    if not isinstance(loraplus_weight_decay, Real) or isinstance(loraplus_weight_decay, bool) \
            or not loraplus_weight_decay >= 0:
        raise ValueError(f"loraplus_weight_decay must be a number >= 0, got {loraplus_weight_decay!r}")
    no_decay = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    groups = {"A": [], "B": [], "B_no_decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "lora_B" in name or param.ndim == 1:
            decays = id(param) not in no_decay and "bias" not in name
            groups["B" if decays else "B_no_decay"].append(param)
        else:
            groups["A"].append(param)
    if not any(groups.values()):
        raise ValueError("the model has no trainable parameters; apply_lora(model, config) first")
    settings = {"A": (lr, loraplus_weight_decay), "B": (lr * loraplus_lr_ratio, loraplus_weight_decay),
                "B_no_decay": (lr * loraplus_lr_ratio, 0.0)}
    return [{"name": key, "params": params, "lr": settings[key][0], "weight_decay": settings[key][1]}
            for key, params in groups.items() if params]


def create_loraplus_optimizer(model: nn.Module, optimizer_cls=torch.optim.AdamW, *, lr: float,
                              loraplus_lr_ratio: float = 16.0, **kwargs) -> torch.optim.Optimizer:
    """An optimizer over loraplus_param_groups (PEFT's signature; `loraplus_weight_decay` may be in kwargs)."""
    weight_decay = kwargs.pop("loraplus_weight_decay", 0.0)
    groups = loraplus_param_groups(model, lr, loraplus_lr_ratio, weight_decay)
    return optimizer_cls(groups, lr=lr, **kwargs)


# ---------------------------------------------------------------------------------------------- save / load
def _adapter_config(model: nn.Module) -> dict:
    layers = _require_lora(model)
    first = next(iter(layers.values()))
    if any((m.r, m.alpha, m.use_rslora) != (first.r, first.alpha, first.use_rslora) for m in layers.values()):
        raise ValueError("save_adapter expects one r, alpha and use_rslora for all LoRA layers")
    if any(m.init_lora_weights == "pissa" for m in layers.values()):
        raise ValueError("a PiSSA adapter means nothing without the residual base it was split from (the base "
                         "weight changed at init); save the merged model instead: merge_and_unload(model)")
    if any(m.use_dora != first.use_dora for m in layers.values()):
        raise ValueError("save_adapter expects use_dora to be the same for all LoRA layers")
    dropout = first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0
    targets = tuple(dict.fromkeys(name.rsplit(".", 1)[-1] for name in layers))
    config = LoRAConfig(first.r, first.alpha, targets, dropout, first.use_rslora, first.use_dora)
    shapes = {name: [m.out_features, m.in_features] for name, m in layers.items()}
    written = asdict(config)
    for key, plain in (("use_dora", False), ("init_lora_weights", True)):  # a plain LoRA file stays as it was
        if written[key] == plain:
            del written[key]
    return {**written, "target_modules": list(targets), "base_shapes": shapes}


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write the default adapter only to directory `path`, as two files named by ADAPTER_WEIGHTS (safetensors)
    and ADAPTER_CONFIG (JSON); no pickle. With DoRA the magnitudes are saved too; PiSSA is refused, and so is a
    disabled default adapter (the file holds weights, not the switch: it would load switched on)."""
    if DEFAULT in disabled_adapters(model):
        raise ValueError(f"the {DEFAULT!r} adapter is disabled, and a saved adapter would load switched on; "
                         f"enable_adapter_by_name(model, {DEFAULT!r}) before save_adapter")
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
        if config.use_dora:
            expected[f"{name}.lora_magnitude"] = [out_f]
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
        dora = {name: m.use_dora for name, m in layers.items() if m.use_dora != config.use_dora}
        if dora:
            raise ValueError(f"the adapter has use_dora={config.use_dora} but the model's LoRA layers have "
                             f"use_dora={dora}")
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
            if config.use_dora:
                layer.lora_magnitude.copy_(tensors[f"{name}.lora_magnitude"])
            layer.alpha, layer.use_rslora, layer.scaling = config.alpha, config.use_rslora, config.scaling
            layer.lora_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
    return model
