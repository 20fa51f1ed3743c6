"""The course's base model: a small decoder-only transformer (GPT) in the spirit of nanoGPT.

References: Radford et al. 2019 (GPT-2), Karpathy's nanoGPT. Pre-norm blocks, learned positions, separate
q/k/v/o projections (the names PEFT's `target_modules` use), and three entry points the fine-tuning methods
need: `inputs_embeds` (prompt tuning, P-tuning), `prefix` (prefix tuning) and `loss_mask` (task losses).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .tokenizer import VOCAB, CharTokenizer


@dataclass
class GPTConfig:
    vocab_size: int = len(VOCAB)
    block_size: int = 128  # longest sequence the model sees, virtual tokens included
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        d = cfg.n_embd
        self.n_head = cfg.n_head
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.o_proj = nn.Linear(d, d)
        self.dropout = cfg.dropout

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, T, C = t.shape
        return t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)

    def forward(self, x: torch.Tensor, prefix: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.shape  # (batch, time, channels)
        q = self._heads(self.q_proj(x))  # (B, nh, T, hs)
        k = self._heads(self.k_proj(x))
        v = self._heads(self.v_proj(x))
        drop = self.dropout if self.training else 0.0
        if prefix is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        else:
            pk, pv = (p.expand(B, -1, -1) if p.dim() == 2 else p for p in prefix)  # (B, P, C) each
            P = pk.shape[1]
            k = torch.cat([self._heads(pk), k], dim=2)  # (B, nh, P+T, hs)
            v = torch.cat([self._heads(pv), v], dim=2)
            # every position sees all P prefix slots, then the causal part of the sequence
            mask = torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(diagonal=P)  # (T, P+T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side again
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.up_proj = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.down_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down_proj(F.gelu(self.up_proj(x))))  # (B, T, C) -> (B, T, 4C) -> (B, T, C)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, prefix=None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), prefix=prefix)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)  # token embeddings
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)  # learned position embeddings
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token embeddings of `idx` (B, T) -> (B, T, C), without positions: what `inputs_embeds` expects."""
        return self.wte(idx)

    def forward(
        self,
        idx: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        prefix: list | None = None,
        loss_mask: torch.Tensor | None = None,
    ):
        """Logits (B, T, vocab) and, when `targets` is given, the mean cross-entropy over positions where
        `loss_mask` is true (all positions without a mask). Give exactly one of `idx` (B, T) token ids or
        `inputs_embeds` (B, T, C). `prefix` is one (key, value) pair per layer, each (P, C) or (B, P, C)."""
        if (idx is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of idx (token ids) or inputs_embeds (embeddings)")
        self._check_input(idx, inputs_embeds)
        x = self.wte(idx) if idx is not None else inputs_embeds  # (B, T, C)
        if x.dim() != 3 or x.shape[-1] != self.config.n_embd:
            raise ValueError(f"embeddings must be (batch, time, {self.config.n_embd}), got {tuple(x.shape)}")
        B, T, C = x.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        if prefix is not None and len(prefix) != len(self.blocks):
            raise ValueError(f"prefix needs one (key, value) pair per layer: {len(self.blocks)}, got {len(prefix)}")
        pos = torch.arange(T, device=x.device)
        x = self.drop(x + self.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, prefix=None if prefix is None else prefix[i])
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab)
        loss = None if targets is None else masked_cross_entropy(logits, targets, loss_mask)
        return logits, loss

    def _check_input(self, idx: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> None:
        """Refuse ids that are not (B, T) integers in 0..vocab_size-1, embeddings of another dtype, or either
        on another device than the model."""
        name, t = ("idx", idx) if idx is not None else ("inputs_embeds", inputs_embeds)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        weight = self.wte.weight
        if idx is not None:
            if idx.dtype not in (torch.long, torch.int):
                raise TypeError(f"idx must hold integer token ids (torch.long), got {idx.dtype}")
            if idx.dim() != 2:
                raise ValueError(f"idx must be (batch, time) token ids, got shape {tuple(idx.shape)}")
        elif inputs_embeds.dtype != weight.dtype:
            raise TypeError(f"inputs_embeds must have the model's dtype {weight.dtype}, got {inputs_embeds.dtype}")
        if t.device != weight.device:
            raise ValueError(f"{name} is on {t.device} but the model is on {weight.device}: move it with "
                             f".to({str(weight.device)!r})")
        if idx is not None and idx.numel() and (idx.min() < 0 or idx.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must be in 0..{self.config.vocab_size - 1}, got values from "
                             f"{idx.min().item()} to {idx.max().item()}")

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Extend `idx` (B, T) by sampling `max_new_tokens` tokens; `temperature=0` picks the most likely."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size:])
            nxt = sample_next(logits[:, -1, :], temperature, top_k, generator)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One next token (B, 1) from last-position logits (B, vocab); `temperature=0` picks the most likely."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None):
    """Mean next-token cross-entropy over the positions where `mask` is true (all when it is None)."""
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets must be (batch, time) = {tuple(logits.shape[:-1])} like the input, "
                         f"got {tuple(targets.shape)}")
    if mask is not None and mask.shape != targets.shape:
        raise ValueError(f"loss_mask must be (batch, time) = {tuple(targets.shape)} like targets, "
                         f"got {tuple(mask.shape)}")
    losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")  # (B*T,)
    if mask is None:
        return losses.mean()
    mask = mask.flatten().to(losses.dtype)
    return (losses * mask).sum() / mask.sum().clamp(min=1)


WEIGHTS = "base_model.safetensors"
CARD = "base_model.json"


def get_device() -> torch.device:
    """CUDA when a GPU is present (Colab), otherwise the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def save_base_model(model: GPT, directory: str | Path, metadata: dict | None = None) -> None:
    """Write the weights (safetensors) and a JSON card with the config and `metadata` to `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, directory / WEIGHTS)
    card = {"config": asdict(model.config), "vocab": VOCAB, **(metadata or {})}
    (directory / CARD).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def base_model_card(directory: str | Path | None = None) -> dict:
    """The JSON card shipped beside the base weights: config, vocabulary and training record."""
    path = Path(directory) / CARD if directory else resources.files("lora_teach") / "weights" / CARD
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}): the file is corrupt or truncated") from None


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (never pickle); a ValueError names a truncated or corrupt file."""
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise ValueError(f"{path} is not a valid safetensors file ({err}): it is truncated, corrupt or "
                         "in another format") from None


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Raise a ValueError naming every tensor of `state` that is missing, unexpected or of another shape."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"missing {k} {expected[k]}" for k in expected if k not in found]
    problems += [f"unexpected {k} {found[k]}" for k in found if k not in expected]
    problems += [f"{k}: file {found[k]}, model {expected[k]}" for k in expected
                 if k in found and found[k] != expected[k]]
    if problems:
        raise ValueError(f"{source} does not match the model (names and shapes that differ):\n  "
                         + "\n  ".join(problems))


def load_base_model(device: str | torch.device | None = None, directory: str | Path | None = None) -> GPT:
    """The pretrained base model shipped with the package (no download), in eval mode."""
    card = base_model_card(directory)
    if card["vocab"] != CharTokenizer().vocab:
        raise ValueError("the weights were trained with a different vocabulary than lora_teach.tokenizer.VOCAB")
    model = GPT(GPTConfig(**card["config"]))
    path = Path(directory) / WEIGHTS if directory else resources.files("lora_teach") / "weights" / WEIGHTS
    state = read_safetensors(path)
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    return model.to(device or get_device()).eval()
