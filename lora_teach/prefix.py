"""Prefix tuning (Li & Liang, 2021): trainable keys and values prepended at EVERY attention layer.

The frozen model is untouched; each layer l attends to P extra (key, value) pairs before the real tokens:
K_l = [P_k^l ; W_k x], V_l = [P_v^l ; W_v x]. These are not input tokens: they are never embedded, have no
positions, and are not produced by the layers below. During training the prefix comes from a small MLP
(embedding P x d -> Linear -> tanh -> Linear -> 2·L·d), which the paper found more stable than optimising
the prefix directly; after training only the resulting 2·L·P·d numbers are kept (`freeze_prefix`).

Our names and PEFT's (`PrefixTuningConfig`): the number of slots P is `num_virtual_tokens`, PEFT's name;
`reparam` is PEFT's `prefix_projection` and `hidden` its `encoder_hidden_size` (the embedding and MLP together
are PEFT's `PrefixEncoder`); what a task stores is `get_prompt_embedding_to_save()`, PEFT's name. PEFT has no
verb for `freeze_prefix`: a PEFT prefix checkpoint already holds the MLP's output, not the MLP.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class PrefixTuning(nn.Module):
    """Wrap a GPT with a trainable prefix of `num_virtual_tokens` (key, value) slots per layer; freezes the GPT.

    `reparam=True` produces the prefix with the MLP (`hidden` units); `reparam=False` optimises the prefix
    tensors directly, starting from the very tensors the MLP would give at init (so only the
    parameterisation differs). `forward(idx, targets=None, *, loss_mask=None)` -> (logits, loss), like GPT."""

    def __init__(self, model: nn.Module, num_virtual_tokens: int, reparam: bool = True, hidden: int = 256):
        super().__init__()
        if not isinstance(getattr(model, "blocks", None), nn.ModuleList):
            raise TypeError(f"expected a lora_teach GPT (a model with .blocks), got {type(model).__name__}")
        block_size = model.config.block_size
        if not _is_positive_int(num_virtual_tokens):
            raise ValueError(f"num_virtual_tokens must be a positive int, got {num_virtual_tokens!r}")
        if num_virtual_tokens >= block_size:
            raise ValueError(f"num_virtual_tokens ({num_virtual_tokens}) must be smaller than block_size "
                             f"({block_size}): prefix and sequence together must fit in block_size")
        if not isinstance(reparam, bool):
            raise TypeError(f"reparam must be True or False, got {reparam!r}")
        if not _is_positive_int(hidden):
            raise ValueError(f"hidden must be a positive int (the MLP width), got {hidden!r}")
        cfg = model.config
        self.base_model = model.requires_grad_(False)
        self.num_virtual_tokens, self.n_layer, self.n_embd = num_virtual_tokens, cfg.n_layer, cfg.n_embd
        like = next(model.parameters())  # the prefix follows the model's device and dtype
        start = torch.randn(num_virtual_tokens, cfg.n_embd)  # P' (P, d): the MLP's input
        self.embedding = nn.Parameter(start.to(like.device, like.dtype))
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, hidden), nn.Tanh(), nn.Linear(hidden, 2 * cfg.n_layer * cfg.n_embd)
        ).to(like.device, like.dtype)
        # start the prefix near zero vectors rather than at random keys and values
        nn.init.normal_(self.mlp[-1].weight, std=1e-3)
        nn.init.zeros_(self.mlp[-1].bias)
        self.register_parameter("prefix", None)  # (L, 2, P, d) once the MLP is dropped
        if not reparam:
            self._drop_mlp(trainable=True)

    @property
    def reparam(self) -> bool:
        """True while the prefix is produced by the MLP, False once it is stored directly."""
        return self.mlp is not None

    def prefix_tensors(self) -> torch.Tensor:
        """The prefix of every layer as one tensor (L, 2, P, d): [layer, key/value, slot, channel]."""
        if self.mlp is None:
            return self.prefix
        flat = self.mlp(self.embedding)  # (P, d) -> (P, hidden) -> (P, 2*L*d)
        return flat.view(self.num_virtual_tokens, self.n_layer, 2, self.n_embd).permute(1, 2, 0, 3)  # (L, 2, P, d)

    def prefix_key_values(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One (key, value) pair per layer, each (P, d): what GPT's `prefix=` entry point takes."""
        tensors = self.prefix_tensors()  # (L, 2, P, d)
        return [(layer[0], layer[1]) for layer in tensors]

    def _drop_mlp(self, trainable: bool) -> None:
        """Store the current prefix as a parameter and delete the embedding and the MLP."""
        with torch.no_grad():
            tensors = self.prefix_tensors().detach().clone()  # (L, 2, P, d)
        self.embedding = None
        self.mlp = None
        self.prefix = nn.Parameter(tensors, requires_grad=trainable)

    def freeze_prefix(self) -> PrefixTuning:
        """After training: keep only the 2·L·P·d prefix numbers (frozen), drop the MLP; returns self."""
        if self.mlp is not None:
            self._drop_mlp(trainable=False)
        self.prefix.requires_grad_(False)
        return self

    def get_prompt_embedding_to_save(self) -> dict[str, torch.Tensor]:
        """What a task checkpoint holds (PEFT's name): {"prefix_keys", "prefix_values"}, each (L, P, d), detached."""
        with torch.no_grad():
            tensors = self.prefix_tensors().detach().clone()  # (L, 2, P, d)
        return {"prefix_keys": tensors[:, 0].contiguous(), "prefix_values": tensors[:, 1].contiguous()}

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                loss_mask: torch.Tensor | None = None):
        """Logits (B, T, vocab) aligned with `idx` (the prefix adds no output positions) and the loss."""
        if not isinstance(idx, torch.Tensor):
            raise TypeError(f"idx must be a tensor of token ids (batch, time), got {type(idx).__name__}")
        T = idx.shape[-1]
        limit, n = self.base_model.config.block_size, self.num_virtual_tokens
        if n + T > limit:
            raise ValueError(f"num_virtual_tokens ({n}) + sequence length ({T}) exceeds block_size ({limit}): "
                             f"feed sequences of at most {limit - n} tokens")
        return self.base_model(idx, targets, prefix=self.prefix_key_values(), loss_mask=loss_mask)
