"""The tests' tiny models (one configuration, seeded), with the inputs and state checks the test files share.

tests/conftest.py serves `tiny_config()` and `tiny_gpt()` as the `tiny_config` and `tiny_model` fixtures.
"""

from __future__ import annotations

import torch

from lora_teach.model import GPT, GPTConfig

TINY = dict(n_layer=2, n_head=2, n_embd=16, block_size=96)  # vocab_size: the course's 97 characters


def tiny_config(**overrides) -> GPTConfig:
    """The tiny configuration (2 layers, 2 heads, width 16, 96 positions, the course's vocabulary), `overrides`
    replacing any of its fields."""
    return GPTConfig(**{**TINY, **overrides})


def tiny_gpt(seed: int = 0, std: float | None = None, **overrides) -> GPT:
    """A GPT of `tiny_config(**overrides)` initialised after `torch.manual_seed(seed)`, in eval mode. `std`
    re-draws its matrices from N(0, std^2), so that a prompt can steer it (at the default init of 0.02 a random
    model barely reads its context)."""
    torch.manual_seed(seed)
    gpt = GPT(tiny_config(**overrides)).eval()
    if std is not None:
        with torch.no_grad():
            for p in gpt.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, std)
    return gpt


def small_gpt(std: float | None = None) -> GPT:
    """`tiny_gpt` with 32 positions: the model the prompt-tuning, P-tuning and Hugging Face tests assert on."""
    return tiny_gpt(std=std, block_size=32)


def ids(B, T, seed=0, vocab=97) -> torch.Tensor:
    """A (B, T) batch of random token ids from its own generator."""
    return torch.randint(vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def state_copy(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model, before: dict) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def snapshot(model):
    """The state dict and every parameter's requires_grad flag, to check later that nothing changed."""
    return state_copy(model), [p.requires_grad for p in model.parameters()]


def assert_unchanged(model, before) -> None:
    state, flags = before
    assert_same_state(model, state)
    assert [p.requires_grad for p in model.parameters()] == flags


class TinyLM:
    """A stand-in task: random windows of one fixed token sequence (no corpus needed)."""

    name = "tiny"

    def __init__(self, vocab_size=97, block_size=16):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(vocab_size, (400,), generator=g)
        self.block_size = block_size

    def train_batch(self, batch_size, generator=None):
        starts = torch.randint(len(self.ids) - self.block_size - 1, (batch_size,), generator=generator)
        offsets = torch.arange(self.block_size)
        x, y = self.ids[starts[:, None] + offsets], self.ids[starts[:, None] + offsets + 1]
        return x, y, torch.ones_like(x, dtype=torch.bool)

    def evaluate(self, model):
        return {}


LORA_TARGETS = ("q_proj", "v_proj", "up_proj", "down_proj")  # square and non-square


def lora_base(dtype=torch.float64, seed: int = 0) -> GPT:
    """`tiny_gpt` with 16 positions in `dtype`: the base the LoRA variant and serving tests adapt."""
    return tiny_gpt(seed, block_size=16).to(dtype)


def lora_gpt(dtype=torch.float64, **config) -> GPT:
    """`lora_base(dtype)` with LoRA r = 4, alpha = 8 on LORA_TARGETS (`config` overrides any setting)."""
    from lora_teach.lora import LoRAConfig, apply_lora

    return apply_lora(lora_base(dtype), LoRAConfig(**{"r": 4, "alpha": 8, "target_modules": LORA_TARGETS, **config}))


def randomize_all_adapters(model, seed: int = 2, std: float = 0.3) -> None:
    """Add N(0, std^2) noise to every LoRA tensor, so that no adapter sits at its zero start."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
