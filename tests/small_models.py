"""Small seeded models, inputs and state checks that several method test files share."""

from __future__ import annotations

import torch

from lora_teach.model import GPT, GPTConfig


def small_gpt(std=None) -> GPT:
    """A seeded 2-layer GPT with block_size 32; `std` re-draws its matrices so that a prompt can steer it
    (at the default init of 0.02 a random model barely reads its context)."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=32)).eval()
    if std is not None:
        with torch.no_grad():
            for p in gpt.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, std)
    return gpt


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
