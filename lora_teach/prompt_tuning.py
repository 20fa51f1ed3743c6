"""Prompt tuning (Lester, Al-Rfou & Constant, 2021): a trainable soft prompt in front of the input embeddings.

The frozen model reads [P; E(x)]: num_virtual_tokens free vectors P (num_virtual_tokens, d), then the token
embeddings of x. Nothing else changes: no layer gets extra keys or values (that is prefix tuning) and no encoder
produces the vectors (that is P-tuning). Only the num_virtual_tokens * d numbers of P are trained and stored per
task. Outputs at the prompt positions are dropped, so logits line up with `idx` and prompt positions never enter
the loss.

Our names and PEFT's (`PromptTuningConfig`): `num_virtual_tokens` is PEFT's; `init` plays the part of PEFT's
`prompt_tuning_init` (+ `prompt_tuning_init_text`); `soft_prompt` is the weight of PEFT's `PromptEmbedding`;
`get_prompt_embedding_to_save()` (what a task stores) is PEFT's name.

Initialisations from the paper: "random" (uniform in [-0.5, 0.5]; PEFT's RANDOM keeps nn.Embedding's N(0, 1)
instead), "vocab" (embeddings of token ids sampled from the vocabulary; the paper sampled among T5's 5,000 most
common tokens, PEFT's SAMPLE_VOCAB samples the whole vocabulary, as we do) and text (embeddings of a real string
such as the class-label words, repeated or cut to num_virtual_tokens, as PEFT's TEXT init does).
"""

from __future__ import annotations

import difflib

import torch
import torch.nn as nn

from .model import GPT, masked_cross_entropy, sample_next
from .tokenizer import CharTokenizer

INIT_MODES = ("vocab", "random")
RANDOM_RANGE = 0.5  # Lester et al.: random init uniform in [-0.5, 0.5]


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_init(init) -> None:
    """Refuse an `init` that is not a mode, nor text the tokenizer can encode, nor plausible text."""
    if not isinstance(init, str):
        raise TypeError(f"init must be 'vocab', 'random' or a text (str), got {type(init).__name__}")
    if init in INIT_MODES:
        return
    if not init:
        raise ValueError("init text must not be empty; use 'vocab', 'random' or a non-empty text")
    word = init.strip().lower()
    if not any(ch.isspace() for ch in init) and (
        difflib.get_close_matches(word, INIT_MODES, n=1, cutoff=0.6) or word in ("sample_vocab", "text")
    ):
        raise ValueError(f"unknown init {init!r}: the modes are exactly 'vocab' and 'random'; to start from a "
                         "text, pass a phrase (with a space) rather than a single word close to a mode name")
    CharTokenizer().encode(init)  # a ValueError names any character outside the vocabulary


def init_token_ids(init: str, num_virtual_tokens: int, vocab_size: int) -> torch.Tensor:
    """Token ids whose embeddings start the prompt: sampled uniformly ('vocab') or a text repeated/cut."""
    if init == "vocab":
        return torch.randint(vocab_size, (num_virtual_tokens,))  # global RNG: seed it for a repeatable init
    ids = CharTokenizer().encode(init)
    reps = -(-num_virtual_tokens // len(ids))  # ceil: repeat a short text, then cut to num_virtual_tokens
    return torch.tensor((ids * reps)[:num_virtual_tokens])


class PromptTuning(nn.Module):
    """Wrap a GPT with a trainable soft prompt of `num_virtual_tokens` vectors; freezes the GPT in place.

    `init` is "vocab", "random" or a text (see the module docstring). `forward(idx, targets=None, *,
    loss_mask=None)` -> (logits (B, T, vocab) aligned with idx, loss over the real positions)."""

    def __init__(self, model: GPT, num_virtual_tokens: int = 20, init: str = "vocab"):
        super().__init__()
        if not isinstance(model, GPT):
            raise TypeError(f"model must be a lora_teach GPT, got {type(model).__name__}")
        if not _is_positive_int(num_virtual_tokens):
            raise ValueError(f"num_virtual_tokens must be a positive int, got {num_virtual_tokens!r}")
        block_size = model.config.block_size
        if num_virtual_tokens >= block_size:
            raise ValueError(f"num_virtual_tokens ({num_virtual_tokens}) must be smaller than block_size "
                             f"({block_size}): the soft prompt and the input share the model's block_size positions")
        _check_init(init)
        # all checks passed: only now touch the model
        self.base_model = model.requires_grad_(False)
        self.num_virtual_tokens, self.init = num_virtual_tokens, init
        weight = model.wte.weight  # (vocab, d)
        with torch.no_grad():
            if init == "random":
                start = torch.empty(num_virtual_tokens, weight.shape[1]).uniform_(-RANDOM_RANGE, RANDOM_RANGE)
            else:
                start = weight[init_token_ids(init, num_virtual_tokens, weight.shape[0]).to(weight.device)]
        self.soft_prompt = nn.Parameter(start.to(weight).clone())  # (num_virtual_tokens, d)

    def check_length(self, T: int) -> None:
        """Refuse an input of length T that does not fit beside the soft prompt in block_size."""
        limit, n = self.base_model.config.block_size, self.num_virtual_tokens
        if n + T > limit:
            raise ValueError(f"num_virtual_tokens ({n}) + input length ({T}) = {n + T} exceeds block_size ({limit}): "
                             f"feed inputs of at most {limit - n} tokens")

    def inputs_embeds(self, idx: torch.Tensor) -> torch.Tensor:
        """[soft prompt; token embeddings of idx]: (B, T) ids -> (B, num_virtual_tokens + T, d)."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, time) token ids, got shape {tuple(idx.shape)}")
        self.check_length(idx.shape[1])
        prompt = self.soft_prompt.unsqueeze(0).expand(idx.shape[0], -1, -1)  # (B, n, d)
        return torch.cat([prompt, self.base_model.embed(idx)], dim=1)  # (B, n + T, d)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                loss_mask: torch.Tensor | None = None):
        """Logits (B, T, vocab) for the real positions only, and the masked loss when targets are given."""
        logits, _ = self.base_model(inputs_embeds=self.inputs_embeds(idx))  # (B, n + T, vocab)
        logits = logits[:, self.num_virtual_tokens:]  # (B, T, vocab): drop the prompt positions
        loss = None if targets is None else masked_cross_entropy(logits, targets, loss_mask)
        return logits, loss

    def get_prompt_embedding_to_save(self) -> dict[str, torch.Tensor]:
        """What a task checkpoint holds (PEFT's name): {"soft_prompt": (num_virtual_tokens, d)}, detached."""
        return {"soft_prompt": self.soft_prompt.detach().clone()}

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Extend `idx` (B, T) by `max_new_tokens` sampled tokens, the soft prompt always in front."""
        window = self.base_model.config.block_size - self.num_virtual_tokens
        for _ in range(max_new_tokens):
            logits = self(idx[:, -window:])[0][:, -1]  # (B, vocab)
            nxt = sample_next(logits, temperature, top_k, generator)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


class OutputBias(nn.Module):
    """The frozen GPT with one trainable vector added to its logits, the same at every position: a yardstick for
    soft prompts, not a fine-tuning method.

    Petrov, Torr and Bibi ("When Do Prompting and Prefix-Tuning Work?", ICLR 2024) show that a prompt or prefix
    cannot change how the content tokens attend to one another; it can only bias what attention returns, and so
    steer a skill the model has rather than teach a new one. The crudest such steer is a bias on the output: it
    shifts which characters are likely everywhere, and cannot tell one passage from another. Comparing a soft
    prompt's gain with this bias's gain measures how much of what the prompt learned a fixed shift of the output
    already explains. `forward(idx, targets=None, *, loss_mask=None)` as PromptTuning's."""

    def __init__(self, model: GPT):
        super().__init__()
        if not isinstance(model, GPT):
            raise TypeError(f"model must be a lora_teach GPT, got {type(model).__name__}")
        self.base_model = model.requires_grad_(False)
        self.bias = nn.Parameter(torch.zeros(model.config.vocab_size, device=model.wte.weight.device,
                                             dtype=model.wte.weight.dtype))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                loss_mask: torch.Tensor | None = None):
        logits, _ = self.base_model(idx)
        logits = logits + self.bias  # (B, T, vocab) + (vocab,)
        loss = None if targets is None else masked_cross_entropy(logits, targets, loss_mask)
        return logits, loss
