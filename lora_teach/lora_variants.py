"""The LoRA family: each variant is a small change to one step of the plain layer in `lora_teach.lora`.

- rsLoRA (Kalajdzievski, 2023), `LoRAConfig(use_rslora=True)`: the scaling is alpha / sqrt(r) instead of alpha / r
  (`lora_scaling`; PEFT: `LoraConfig(use_rslora=True)`, the layer's `scaling[name]`).
- DoRA (Liu et al., 2024), `LoRAConfig(use_dora=True)`: W' = m * (W0 + s B A) / ||W0 + s B A||, row by row (one
  magnitude per output feature, as the official code and PEFT compute it; the paper's "column" norm is the same
  norm for a weight written (in, out)), the norm detached in the backward pass as PEFT does. The trained
  magnitude m (out,) is the layer's `lora_magnitude[name]` (PEFT: `lora_magnitude_vector[name]`); `dora_output`,
  `dora_merge_`, `dora_unmerge_`.
- PiSSA (Meng et al., 2024), `LoRAConfig(init_lora_weights="pissa")`: A and B from the top-r singular triplets of
  W0, the base keeps the residual (`pissa_init_`; PEFT's `pissa_init`). `init_lora_weights_` also does PEFT's
  False (B random, for tests) and "gaussian". A trained PiSSA adapter needs that residual base; PEFT can also save
  it as a plain LoRA of rank 2r for the original base (`path_initial_model_for_weight_conversion` of
  `save_pretrained`).
- LoRA+ (Hayou et al., 2024): only the optimizer changes, B learns `loraplus_lr_ratio` times faster
  (`loraplus_param_groups`, `create_loraplus_optimizer`: PEFT's `peft.optimizers.create_loraplus_optimizer`). As in
  PEFT, the ratio has no default: the paper suggests about 2**4 = 16 as a place to start, to be tuned.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn as nn
import torch.nn.functional as F

INIT_LORA_WEIGHTS = (True, False, "gaussian", "pissa")  # the values of PEFT's init_lora_weights supported here


# ------------------------------------------------------------------------------------------- the options
def check_variant_options(use_rslora, use_dora, init_lora_weights) -> None:
    """Raise, naming the allowed values, unless the three variant options are valid together."""
    for name, value in (("use_rslora", use_rslora), ("use_dora", use_dora)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    if not (isinstance(init_lora_weights, bool) or init_lora_weights in INIT_LORA_WEIGHTS[2:]):
        raise ValueError(f"init_lora_weights must be one of {list(INIT_LORA_WEIGHTS)} here (True: A kaiming-uniform, "
                         f"B zeros; False: both random, for tests; 'gaussian': A ~ N(0, 1/r); 'pissa': principal "
                         f"singular vectors); got {init_lora_weights!r}")
    if use_dora and init_lora_weights == "pissa":
        raise ValueError("use_dora=True with init_lora_weights='pissa' is not supported here; choose one: "
                         "use_dora=True with init_lora_weights in [True, False, 'gaussian'], or PiSSA without DoRA")


def check_base_supports(base: nn.Module, r: int, use_dora: bool, init_lora_weights) -> None:
    """Raise unless `base` allows DoRA and PiSSA as asked: both need a full-precision weight; PiSSA, r <= min(in,
    out)."""
    if getattr(base, "is_quantized", False) and (use_dora or init_lora_weights == "pissa"):
        raise ValueError("use_dora=True and init_lora_weights='pissa' need the base weight in full precision; "
                         "on a quantised base use plain LoRA (use_dora=False, init_lora_weights True or False)")
    if init_lora_weights == "pissa" and r > min(base.in_features, base.out_features):
        raise ValueError(f"PiSSA takes the top r singular vectors, so r must be <= min(in, out) = "
                         f"{min(base.in_features, base.out_features)}; got r={r}")


# ------------------------------------------------------------------------------------------------ rsLoRA
def lora_scaling(r: int, alpha: float, use_rslora: bool = False) -> float:
    """The factor on B A: alpha / r (the paper), or alpha / sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


# ---------------------------------------------------------------------------------- other initialisations
@torch.no_grad()
def init_lora_weights_(A: torch.Tensor, B: torch.Tensor, init, weight: torch.Tensor, scaling: float) -> None:
    """PEFT's initialisations other than the default (True), in place: False (B kaiming-uniform too, so the
    branch is not zero: for tests), 'gaussian' (A ~ N(0, 1/r)) or 'pissa' (which also rewrites `weight`)."""
    if init is False:
        nn.init.kaiming_uniform_(B, a=math.sqrt(5))
    elif init == "gaussian":
        nn.init.normal_(A, std=1 / A.shape[0])
    elif init == "pissa":
        pissa_init_(A, B, weight, scaling)


@torch.no_grad()
def pissa_init_(A: torch.Tensor, B: torch.Tensor, weight: torch.Tensor, scaling: float) -> None:
    """PiSSA as PEFT 0.21 does it: W = U S V^T; B = U_r sqrt(S_r / s), A = sqrt(S_r / s) V_r^T, so that
    s B A = U_r S_r V_r^T whatever the scaling s; `weight` keeps the residual W - s B A. The SVD runs in
    float32 (PEFT's precision) unless the weight is float64, which PEFT refuses and we keep in float64."""
    r, dtype = A.shape[0], weight.dtype
    w = weight.to(torch.float64 if dtype == torch.float64 else torch.float32)  # (out, in)
    U, S, Vh = torch.linalg.svd(w, full_matrices=False)  # (out, k), (k,), (k, in)
    Ur, Sr, Vhr = U[:, :r], S[:r] / scaling, Vh[:r]
    principal_A = torch.diag(torch.sqrt(Sr)) @ Vhr  # (r, in)
    principal_B = Ur @ torch.diag(torch.sqrt(Sr))  # (out, r)
    A.copy_(principal_A)
    B.copy_(principal_B)
    weight.copy_((w - scaling * principal_B @ principal_A).to(dtype))  # the residual W - U_r S_r V_r^T


# -------------------------------------------------------------------------------------------------- DoRA
def dora_norm(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """||W0 + s B A|| of each output row (dim 1 of the (out, in) weight), B A detached as in PEFT: (out,)."""
    lora_weight = (B @ A).detach()  # (out, in)
    return torch.linalg.norm(weight + scaling * lora_weight, dim=1)


def dora_output(layer: nn.Module, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
    """base(x) = `result` plus DoRA adapter `name`'s contribution, as PEFT computes it:
    m * (W0 + s B A) x / ||W0 + s B A|| = base(x) + (m/n - 1) W0 x + (m/n) s B A x."""
    A, B, scaling, dropout = layer.lora_A[name], layer.lora_B[name], layer.scaling[name], layer.lora_dropout[name]
    base = layer.base_layer
    if isinstance(dropout, nn.Identity) or not layer.training:
        base_result = result if base.bias is None else result - base.bias  # W0 x, without the bias
    else:
        x = dropout(x)
        base_result = F.linear(x, base.weight)
    norm = dora_norm(base.weight, A, B, scaling).detach()  # a constant in the backward pass (DoRA, section 4.3)
    mag_norm_scale = (layer.lora_magnitude[name] / norm).view(1, -1)  # (1, out)
    lora_result = x @ A.T @ B.T  # (..., out)
    return result + ((mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling)


def dora_merge_(weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """weight <- m (weight + delta) / ||weight + delta|| row by row, in place; returns that norm (out,), which an
    exact unmerge needs."""
    norm = torch.linalg.norm(weight + delta, dim=1)  # (out,)
    weight.copy_((magnitude / norm).view(-1, 1) * (weight + delta))
    return norm


def dora_unmerge_(weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, norm: torch.Tensor) -> None:
    """Undo dora_merge_ in place, given the norm it returned."""
    weight.copy_(weight / (magnitude / norm).view(-1, 1) - delta)


# ------------------------------------------------------------------------------------------------- LoRA+
def _check_positive(key: str, value) -> None:
    if not isinstance(value, Real) or isinstance(value, bool) or not value > 0 or math.isinf(value):
        hint = (" (B's rate over A's; it has no default, as in PEFT: Hayou et al. suggest about 2**4 = 16 to start)"
                if key == "loraplus_lr_ratio" else "")
        raise ValueError(f"{key} must be a finite number > 0{hint}; got {value!r}")


def loraplus_param_groups(model: nn.Module, lr: float, *, loraplus_lr_ratio: float,
                          loraplus_weight_decay: float = 0.0) -> list[dict]:
    """LoRA+ (Hayou et al., 2024): the trainable parameters in optimizer groups as PEFT's
    create_loraplus_optimizer makes them: 'A' at lr; 'B' (B matrices and every 1-D tensor, e.g. DoRA's
    magnitude) at lr * loraplus_lr_ratio, 'B_no_decay' (biases, layer norms) the same without weight decay.
    Empty groups are left out."""
    _check_positive("lr", lr)
    _check_positive("loraplus_lr_ratio", loraplus_lr_ratio)
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
                              loraplus_lr_ratio: float, **kwargs) -> torch.optim.Optimizer:
    """An optimizer over loraplus_param_groups (PEFT's signature: lr and loraplus_lr_ratio required;
    `loraplus_weight_decay` may be in kwargs)."""
    weight_decay = kwargs.pop("loraplus_weight_decay", 0.0)
    groups = loraplus_param_groups(model, lr, loraplus_lr_ratio=loraplus_lr_ratio, loraplus_weight_decay=weight_decay)
    return optimizer_cls(groups, lr=lr, **kwargs)
