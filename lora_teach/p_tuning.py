"""P-tuning (Liu et al., 2021, "GPT Understands, Too"): virtual tokens from a prompt encoder, spliced into a template.

Two ideas distinguish it from prompt tuning (which came a month later and drops the encoder):
1. A prompt encoder produces the virtual token embeddings: trainable inputs (num_virtual_tokens, d) -> a
   2-layer bidirectional LSTM (d/2 units each way) -> an MLP (d -> d -> d), so the virtual tokens are tied
   together rather than free vectors. The encoder only exists during training: afterwards the
   num_virtual_tokens * d embeddings it produces are all that is kept (`drop_encoder`).
2. The virtual tokens sit at template positions that may be interleaved with the real input and the
   discrete "anchor" tokens, e.g. [P0 P1 P2] x [P3 P4] => label. PEFT's P-tuning prepends them only.

A template here is a list of (position, count) slots: `count` virtual tokens are inserted before real token
`position` of the input (position == input length appends them). [(0, 3), (64, 2)] on a 64-character text
followed by " => " gives [P0 P1 P2] text [P3 P4] " => ". The frozen model reads the spliced embeddings
through its `inputs_embeds=` entry point; the logits returned are those that predict each next REAL token,
so they line up with `idx` exactly as the base model's do.

Our names and PEFT's (`PromptEncoderConfig`): `num_virtual_tokens` (the template's total, here an attribute) and
`PromptEncoder` are PEFT's names; `encoder` is PEFT's `encoder_reparameterization_type` ("lstm" or "mlp"; "none"
has no PEFT counterpart); what a task stores is `get_prompt_embedding_to_save()`, PEFT's name. PEFT has no verb
for `drop_encoder`: a PEFT P-tuning checkpoint already holds the encoder's output, not the encoder.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .model import GPT, masked_cross_entropy
from .prompt_tuning import init_token_ids

ENCODERS = ("lstm", "mlp", "none")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class PromptEncoder(nn.Module):
    """Produces the (num_virtual_tokens, d) virtual token embeddings from trainable inputs (PEFT's name).

    "lstm": Liu et al.'s encoder (bidirectional 2-layer LSTM, d/2 units per direction, then Linear-ReLU-Linear);
    "mlp": PEFT's default reparameterisation (Linear-ReLU-Linear-ReLU-Linear, width d)."""

    def __init__(self, num_virtual_tokens: int, d: int, kind: str = "lstm"):
        super().__init__()
        if kind not in ("lstm", "mlp"):
            raise ValueError(f"kind must be 'lstm' or 'mlp', got {kind!r}")
        if d % 2:
            raise ValueError(f"the bidirectional LSTM needs an even embedding width, got {d}")
        self.kind = kind
        self.embedding = nn.Embedding(num_virtual_tokens, d)  # the encoder's own trainable inputs, N(0, 1)
        if kind == "lstm":
            self.lstm_head = nn.LSTM(d, d // 2, num_layers=2, bidirectional=True, batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        else:
            self.mlp_head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))

    def forward(self) -> torch.Tensor:
        """The virtual token embeddings (n, d), n = num_virtual_tokens, all computed together (they see each other)."""
        h = self.embedding.weight.unsqueeze(0)  # (1, n, d)
        if self.kind == "lstm":
            h = self.lstm_head(h)[0]  # (1, n, d): both directions side by side
        return self.mlp_head(h).squeeze(0)  # (n, d)


def check_template(template, block_size: int) -> list[tuple[int, int]]:
    """The template as a list of (position, count) pairs; ValueError/TypeError on anything else."""
    if isinstance(template, (str, bytes)) or not hasattr(template, "__iter__"):
        raise TypeError(f"template must be a list of (position, count) pairs, got {template!r}")
    slots = [tuple(s) if isinstance(s, (tuple, list)) else s for s in template]
    if not slots:
        raise ValueError("template needs at least one (position, count) slot")
    for slot in slots:
        if not (isinstance(slot, tuple) and len(slot) == 2 and all(_is_int(v) for v in slot)):
            raise TypeError(f"each template slot must be a (position, count) pair of ints, got {slot!r}")
        if slot[0] < 0 or slot[1] < 1:
            raise ValueError(f"slot {slot}: position must be >= 0 and count >= 1")
    positions = [p for p, _ in slots]
    if positions != sorted(set(positions)):
        raise ValueError(f"template positions must be strictly increasing, got {positions}")
    total = sum(n for _, n in slots)
    if total >= block_size:
        raise ValueError(f"the template's {total} virtual tokens must be fewer than block_size ({block_size})")
    return slots


def classification_template(task, before: int, between: int) -> list[tuple[int, int]]:
    """[P x before] text [P x between] SEP label for a classification task (its texts share one length)."""
    text_len = task.prompt_len - len(task.SEP)
    return [(0, before), (text_len, between)]


class PTuning(nn.Module):
    """Wrap a GPT with virtual tokens at `template` slots, produced by a prompt encoder; freezes the GPT.

    `encoder` is "lstm" (the paper), "mlp" (PEFT's default) or "none" (free vectors at the same positions,
    started from sampled vocabulary embeddings: the paper's EMB ablation, i.e. prompt tuning spliced in).
    `forward(idx, targets=None, *, loss_mask=None)` -> (logits (B, T, vocab) aligned with idx, loss)."""

    def __init__(self, model: GPT, template, encoder: str = "lstm"):
        super().__init__()
        if not isinstance(model, GPT):
            raise TypeError(f"model must be a lora_teach GPT, got {type(model).__name__}")
        slots = check_template(template, model.config.block_size)
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
        # all checks passed: only now touch the model
        self.base_model = model.requires_grad_(False)
        self.template = slots
        self.num_virtual_tokens = sum(n for _, n in slots)
        weight = model.wte.weight  # (vocab, d)
        if encoder == "none":
            with torch.no_grad():
                start = weight[init_token_ids("vocab", self.num_virtual_tokens, weight.shape[0]).to(weight.device)]
            self.prompt_encoder = None
            self.virtual_tokens = nn.Parameter(start.clone())  # (num_virtual_tokens, d)
        else:
            self.prompt_encoder = PromptEncoder(self.num_virtual_tokens, weight.shape[1], encoder).to(weight)
            self.register_parameter("virtual_tokens", None)  # set by drop_encoder()

    def virtual_embeddings(self) -> torch.Tensor:
        """The (num_virtual_tokens, d) embeddings of the virtual tokens: the encoder's output, or the stored ones."""
        return self.virtual_tokens if self.prompt_encoder is None else self.prompt_encoder()

    def positions(self, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(virtual, real): where the virtual tokens and the T real tokens sit in the spliced input."""
        self.check_length(T)
        is_virtual = []
        for t in range(T + 1):
            is_virtual += [True] * sum(n for p, n in self.template if p == t)
            if t < T:
                is_virtual.append(False)
        flags = torch.tensor(is_virtual)
        return flags.nonzero().squeeze(1), (~flags).nonzero().squeeze(1)

    def output_positions(self, T: int) -> torch.Tensor:
        """(T,) spliced positions whose logits predict real token t + 1: just before it (a virtual token
        may sit in between), the last spliced position for t = T - 1."""
        _, real = self.positions(T)
        return torch.cat([real[1:], real.new_tensor([T + self.num_virtual_tokens])]) - 1

    def check_length(self, T: int) -> None:
        """Refuse an input of length T the template does not fit (slot beyond the end, or too long)."""
        limit, n = self.base_model.config.block_size, self.num_virtual_tokens
        if n + T > limit:
            raise ValueError(f"{n} virtual tokens + input length ({T}) = {n + T} exceeds block_size ({limit}): "
                             f"feed inputs of at most {limit - n} tokens")
        last = self.template[-1][0]
        if last > T:
            raise ValueError(f"the template inserts virtual tokens before real position {last}, but the input "
                             f"has only {T} tokens")

    def inputs_embeds(self, idx: torch.Tensor) -> torch.Tensor:
        """Splice the virtual tokens into the token embeddings: (B, T) ids -> (B, T + num_virtual_tokens, d)."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, time) token ids, got shape {tuple(idx.shape)}")
        self.check_length(idx.shape[1])
        x = self.base_model.embed(idx)  # (B, T, d)
        virtual = self.virtual_embeddings().unsqueeze(0).expand(idx.shape[0], -1, -1)  # (B, n, d)
        pieces, start, used = [], 0, 0
        for position, count in self.template:
            pieces += [x[:, start:position], virtual[:, used:used + count]]
            start, used = position, used + count
        pieces.append(x[:, start:])
        return torch.cat(pieces, dim=1)  # (B, T + n, d)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                loss_mask: torch.Tensor | None = None):
        """Logits (B, T, vocab) predicting each next real token, and the masked loss when targets are given."""
        logits, _ = self.base_model(inputs_embeds=self.inputs_embeds(idx))  # (B, T + n, vocab), n virtual
        logits = logits[:, self.output_positions(idx.shape[1]).to(logits.device)]  # (B, T, vocab)
        loss = None if targets is None else masked_cross_entropy(logits, targets, loss_mask)
        return logits, loss

    @torch.no_grad()
    def drop_encoder(self) -> PTuning:
        """After training: store the encoder's output as frozen (num_virtual_tokens, d) virtual tokens, delete
        the encoder; outputs are unchanged. Returns self."""
        if self.prompt_encoder is not None:
            tokens = self.prompt_encoder().detach().clone()  # (num_virtual_tokens, d)
            self.prompt_encoder = None
            self.virtual_tokens = nn.Parameter(tokens)
        self.virtual_tokens.requires_grad_(False)
        return self

    def get_prompt_embedding_to_save(self) -> dict[str, torch.Tensor]:
        """What a task checkpoint holds (PEFT's name): {"virtual_tokens": (num_virtual_tokens, d)}, the encoder's
        output."""
        with torch.no_grad():
            return {"virtual_tokens": self.virtual_embeddings().detach().clone()}
