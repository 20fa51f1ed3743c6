"""A character-level tokenizer whose fixed vocabulary covers every corpus the course ships."""

from __future__ import annotations

import torch

# Newline, the 95 printable ASCII characters, and the pound sign (it occurs once, in Mansfield Park).
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127)) + "£"


class CharTokenizer:
    """Maps each character to one token id and back; refuses characters outside its vocabulary."""

    def __init__(self, vocab: str = VOCAB):
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab must not repeat a character")
        self.vocab = vocab
        self.stoi = {ch: i for i, ch in enumerate(vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; a ValueError names any character the vocabulary lacks."""
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError:
            unknown = sorted({ch for ch in text if ch not in self.stoi})
            raise ValueError(
                f"characters {unknown!r} are not in the vocabulary; allowed: newline, printable ASCII and '£'"
            ) from None

    def decode(self, ids) -> str:
        """The text of a sequence of token ids (a list or a 1-D tensor)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside 0..{self.vocab_size - 1}")
        return "".join(self.vocab[i] for i in ids)

    def tensor(self, text: str) -> torch.Tensor:
        """`encode` as a 1-D long tensor."""
        return torch.tensor(self.encode(text), dtype=torch.long)
