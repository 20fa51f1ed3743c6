"""Every fine-tuning method of the course behind one interface, as the comparison (notebook 10) sets it up.

`METHODS[name]` is a `Method` with three verbs:
- `build(base, task) -> model`: a trainable model made from a deep copy of `base` (which is left untouched);
- `trainable_state(model) -> {name: tensor}`: what one task must store (the whole model for full fine-tuning);
- `for_inference(model) -> model`: the model as it is served, with the same outputs: LoRA merged into the
  weights, the prefix MLP and the P-tuning encoder replaced by the vectors they produce.
Each calls the method's own module, where the verbs have the method's names:

| method | size | stores | ready to serve |
| --- | --- | --- | --- |
| full | every weight | `model.state_dict()` | as it is |
| adapters | `bottleneck` | `adapter_state_dict(model)` | as it is (cannot merge) |
| prefix | `num_virtual_tokens` | `model.get_prompt_embedding_to_save()` | `model.freeze_prefix()` |
| prompt | `num_virtual_tokens` | `model.get_prompt_embedding_to_save()` | as it is |
| p-tuning | `num_virtual_tokens` | `model.get_prompt_embedding_to_save()` | `model.drop_encoder()` |
| lora, lora-all | `r` | `lora_state_dict(model)` | `merge_lora(model)` |
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from .adapters import adapter_state_dict, add_adapters
from .data import LanguageModelingTask
from .lora import LoRAConfig, apply_lora, lora_state_dict, merge_lora
from .p_tuning import PTuning, classification_template
from .prefix import PrefixTuning
from .prompt_tuning import PromptTuning

BOTTLENECK = 16  # adapters: hidden width m of each adapter
PREFIX_TOKENS, PREFIX_HIDDEN = 10, 256  # prefix: key/value slots per layer, width of the reparameterisation MLP
PROMPT_TOKENS = 20  # prompt tuning and P-tuning: virtual tokens
P_TUNING_BEFORE, P_TUNING_BETWEEN = 15, 5  # P-tuning on a classification task: before the text, after it
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")
LORA_TARGETS = {"lora": ("q_proj", "v_proj"), "lora-all": ALL_LINEAR}
LORA_R, LORA_ALPHA = 8, 16  # the same r and alpha for both LoRA settings (so lora-all trains more parameters)


def _as_it_is(model: nn.Module) -> nn.Module:
    return model


@dataclass(frozen=True)
class Method:
    """One method: `setting` says in words how it is set up; `attach(copy_of_base, task)` makes the copy
    trainable; `trainable_state` and `for_inference` are the verbs of the module docstring."""

    setting: str
    attach: Callable[[nn.Module, object], nn.Module]
    trainable_state: Callable[[nn.Module], dict[str, torch.Tensor]]
    for_inference: Callable[[nn.Module], nn.Module] = _as_it_is

    def build(self, base: nn.Module, task) -> nn.Module:
        """A fresh trainable model made from a deep copy of `base` (which is left untouched)."""
        return self.attach(copy.deepcopy(base), task)


def _p_tuning(model: nn.Module, task) -> PTuning:
    """All virtual tokens in front of an LM window; [P x 15] text [P x 5] " => " for a classification task."""
    if isinstance(task, LanguageModelingTask):
        template = [(0, PROMPT_TOKENS)]
    else:
        template = classification_template(task, before=P_TUNING_BEFORE, between=P_TUNING_BETWEEN)
    return PTuning(model, template, encoder="lstm")


def _lora(targets: tuple[str, ...]) -> Callable[[nn.Module, object], nn.Module]:
    return lambda model, task: apply_lora(model, LoRAConfig(r=LORA_R, alpha=LORA_ALPHA, target_modules=targets))


def _prompt_embedding(model: nn.Module) -> dict[str, torch.Tensor]:
    return model.get_prompt_embedding_to_save()


METHODS: dict[str, Method] = {
    "full": Method("every weight", lambda model, task: model.requires_grad_(True), lambda model: model.state_dict()),
    "adapters": Method(f"Houlsby, bottleneck {BOTTLENECK}, layer norms trained",
                       lambda model, task: add_adapters(model, bottleneck=BOTTLENECK, placement="houlsby"),
                       adapter_state_dict),
    "prefix": Method(f"{PREFIX_TOKENS} key/value slots per layer, MLP reparameterisation (hidden {PREFIX_HIDDEN})",
                     lambda model, task: PrefixTuning(model, PREFIX_TOKENS, reparam=True, hidden=PREFIX_HIDDEN),
                     _prompt_embedding, lambda model: model.freeze_prefix()),
    "prompt": Method(f"{PROMPT_TOKENS} soft tokens in front of the input, vocabulary init",
                     lambda model, task: PromptTuning(model, PROMPT_TOKENS, init="vocab"), _prompt_embedding),
    "p-tuning": Method(f"{PROMPT_TOKENS} virtual tokens ({P_TUNING_BEFORE} before the text, {P_TUNING_BETWEEN} "
                       "after it), LSTM encoder", _p_tuning, _prompt_embedding, lambda model: model.drop_encoder()),
    "lora": Method(f"r={LORA_R}, alpha={LORA_ALPHA}, on q_proj and v_proj", _lora(LORA_TARGETS["lora"]),
                   lora_state_dict, merge_lora),
    "lora-all": Method(f"r={LORA_R}, alpha={LORA_ALPHA}, on {', '.join(ALL_LINEAR)}", _lora(ALL_LINEAR),
                       lora_state_dict, merge_lora),
}


def get_method(name: str) -> Method:
    """METHODS[name], or a ValueError naming the methods there are."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {tuple(METHODS)}")
    return METHODS[name]
