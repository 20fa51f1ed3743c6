"""lora_teach's own adapter file format, behind `lora.save_adapter` and `lora.load_adapter`.

A directory with two files: ADAPTER_WEIGHTS (safetensors: `<layer>.lora_A` (r, in), `<layer>.lora_B` (out, r), and
`<layer>.lora_magnitude` (out,) with DoRA) and ADAPTER_CONFIG (JSON: the LoRAConfig fields plus `base_shapes`, each
layer's (out, in)). PEFT's own format (adapter_model.safetensors + adapter_config.json) is written and read by
`lora_teach.hf`. Every check here runs before anything in the model changes, and names what differs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from .lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, DEFAULT, LoRAConfig, LoRALinear, find_targets, lora_layers
from .model import read_safetensors


def adapter_config(layers: dict[str, LoRALinear]) -> dict:
    """What ADAPTER_CONFIG holds for the default adapter of `layers`; refuses what one config cannot describe."""
    settings = {name: (m.r[DEFAULT], m.alpha[DEFAULT], m.use_rslora[DEFAULT]) for name, m in layers.items()}
    if len(set(settings.values())) > 1:
        raise ValueError("save_adapter expects one r, alpha and use_rslora for all LoRA layers")
    if any(m.init_lora_weights[DEFAULT] == "pissa" for m in layers.values()):
        raise ValueError("a PiSSA adapter means nothing without the residual base it was split from (the base "
                         "weight changed at init); save the merged model instead: merge_and_unload(model)")
    if len({DEFAULT in m.lora_magnitude for m in layers.values()}) > 1:
        raise ValueError("save_adapter expects use_dora to be the same for all LoRA layers")
    first = next(iter(layers.values()))
    r, alpha, use_rslora = settings[next(iter(layers))]
    dropout = first.lora_dropout[DEFAULT].p if isinstance(first.lora_dropout[DEFAULT], nn.Dropout) else 0.0
    targets = tuple(dict.fromkeys(name.rsplit(".", 1)[-1] for name in layers))
    written = asdict(LoRAConfig(r, alpha, targets, dropout, use_rslora, DEFAULT in first.lora_magnitude))
    for key, plain in (("use_dora", False), ("init_lora_weights", True)):  # a plain LoRA file stays as it was
        if written[key] == plain:
            del written[key]
    shapes = {name: [m.out_features, m.in_features] for name, m in layers.items()}
    return {**written, "target_modules": list(targets), "base_shapes": shapes}


def write(path: str | Path, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    """Write `tensors` (safetensors, no pickle) and `config` (JSON) into directory `path`; return the path."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path / ADAPTER_WEIGHTS))
    (path / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def read_adapter(path: Path) -> tuple[LoRAConfig, dict[str, list[int]], dict[str, torch.Tensor]]:
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


def check_fits(model: nn.Module, config: LoRAConfig, shapes: dict[str, list[int]]) -> None:
    """Raise, naming what differs, unless the adapter (config, base shapes) fits `model` as it is."""
    layers = lora_layers(model)
    if layers:
        if set(layers) != set(shapes):
            raise ValueError(f"the adapter's layers differ from the model's LoRA layers: "
                             f"{_name_diff(set(shapes), set(layers))}")
        ranks = {name: m.r[DEFAULT] for name, m in layers.items() if m.r[DEFAULT] != config.r}
        if ranks:
            raise ValueError(f"the adapter has r={config.r} but the model's LoRA layers have r={ranks}")
        dora = {name: DEFAULT in m.lora_magnitude for name, m in layers.items()
                if (DEFAULT in m.lora_magnitude) != config.use_dora}
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
