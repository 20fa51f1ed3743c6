"""The shipped corpora, their deterministic train/validation/test splits, and the course's tasks.

Every task offers the same two verbs, so one training loop serves every method:
`task.train_batch(batch_size, generator)` -> (x, y, loss_mask) and `task.evaluate(model)` -> metrics.
Validation is for choosing (a learning rate, a step count), test for reporting: `task.evaluate(model,
split="test")`. Every split is deterministic, and test shares no character with validation.
"""

from __future__ import annotations

import gzip
import random
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import torch

from .evaluation import classification_metrics
from .tokenizer import CharTokenizer

CORPORA = {
    "austen": ["austen/emma", "austen/mansfieldpark", "austen/northangerabbey", "austen/persuasion",
               "austen/prideprejudice", "austen/sensesensibility"],
    "shakespeare": ["tinyshakespeare"],
    "melville": ["mobydick"],
}
CHUNK = 1000  # split granularity in characters: every 10th chunk is validation


@cache
def load_corpus(name: str) -> str:
    """The full text of a shipped corpus: 'austen' (six novels), 'shakespeare' or 'melville'."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose one of {sorted(CORPORA)}")
    root = resources.files("lora_teach") / "data"
    parts = [gzip.decompress((root / f"{p}.txt.gz").read_bytes()).decode("utf-8") for p in CORPORA[name]]
    return "\n\n".join(parts)


@cache
def split_corpus(name: str) -> tuple[str, str]:
    """(train, validation) text: consecutive 1000-character chunks, every 10th to validation."""
    text = load_corpus(name)
    chunks = [text[i:i + CHUNK] for i in range(0, len(text), CHUNK)]
    train = "".join(c for i, c in enumerate(chunks) if i % 10 != 9)
    val = "".join(c for i, c in enumerate(chunks) if i % 10 == 9)
    return train, val


def dialogue(text: str, min_chars: int = 20) -> str:
    """The quoted speech of `text` (spans between straight double quotes of at least `min_chars` characters), one
    span a line: what the characters of a novel say, without the narration around it."""
    return "\n".join(m.strip() for m in re.findall(rf'"([^"]{{{min_chars},}})"', text))


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


class LanguageModelingTask:
    """Next-character prediction on a corpus; the metric is the loss (nats per character) on held-out windows.

    Both held-out splits come from the validation text of `split_corpus` (for Austen: the chunks pretraining
    never saw): `eval_windows` evenly spaced validation windows, and a test window halfway between each pair
    of neighbouring validation windows, so test and validation share no character."""

    def __init__(self, corpus: str, block_size: int = 128, eval_windows: int = 64, select=None, name: str = ""):
        """`select`: a function applied to the training and the validation text (both), to model a part of the
        corpus (`dialogue` keeps the quoted speech); `name` then names the task (default: lm-<corpus>)."""
        if select is not None and not callable(select):
            raise TypeError(f"select must be a function from text to text, or None, got {type(select).__name__}")
        tok = CharTokenizer()
        train, val = split_corpus(corpus)
        if select is not None:
            train, val = select(train), select(val)
        self.name = name or f"lm-{corpus}"
        self.corpus = corpus
        self.block_size = block_size
        self.train_ids = tok.tensor(train)
        self.val_ids = tok.tensor(val)
        # fixed, evenly spaced validation windows: the same numbers every run
        last = len(self.val_ids) - block_size - 1
        self.eval_starts = torch.linspace(0, last, eval_windows).long()
        # test windows: halfway between neighbouring validation windows (eval_windows - 1 of them)
        if eval_windows < 2 or last / (eval_windows - 1) < 2 * (block_size + 1):
            raise ValueError(f"{eval_windows} validation windows of {block_size + 1} characters leave no room for "
                             f"test windows between them in {len(self.val_ids)} characters of held-out {corpus}")
        self.test_starts = (self.eval_starts[:-1] + self.eval_starts[1:]) // 2

    def _windows(self, ids: torch.Tensor, starts: torch.Tensor):
        offsets = torch.arange(self.block_size)
        x = ids[starts[:, None] + offsets]  # (B, T)
        y = ids[starts[:, None] + offsets + 1]  # (B, T), shifted by one
        return x, y

    def train_batch(self, batch_size: int, generator: torch.Generator | None = None):
        """Random training windows: x, y (B, T) and a loss mask of ones."""
        starts = torch.randint(len(self.train_ids) - self.block_size - 1, (batch_size,), generator=generator)
        x, y = self._windows(self.train_ids, starts)
        return x, y, torch.ones_like(x, dtype=torch.bool)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batch_size: int = 32, split: str = "val") -> dict:
        """Mean loss over the fixed 'val' (default) or 'test' windows, and its perplexity."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        starts = self.eval_starts if split == "val" else self.test_starts
        was_training = model.training
        model.eval()
        dev = _device_of(model)
        total = 0.0
        for i in range(0, len(starts), batch_size):
            x, y = self._windows(self.val_ids, starts[i:i + batch_size])
            _, loss = model(x.to(dev), y.to(dev))
            total += loss.item() * len(x)
        model.train(was_training)
        loss = total / len(starts)
        return {"loss": loss, "perplexity": float(torch.tensor(loss).exp())}


@dataclass(frozen=True)
class Example:
    text: str  # the input, always `text_len` characters long
    label: str  # one of the task's label words


class ClassificationTask:
    """A labelled-text task scored exactly: the model reads `text + SEP` and must write the label word.

    Label words start with different letters, so the prediction is the label whose first letter gets the
    highest probability right after the separator. Training uses the loss on the label word only.
    """

    SEP = " => "

    def __init__(self, name: str, labels: list[str], train: list[Example], val: list[Example],
                 test: list[Example]):
        if len({lab[0] for lab in labels}) != len(labels):
            raise ValueError(f"label words must start with different letters: {labels}")
        self.name, self.labels = name, list(labels)
        self.train, self.val, self.test = train, val, test
        self.tok = CharTokenizer()
        self.first_ids = torch.tensor([self.tok.stoi[lab[0]] for lab in labels])
        self.prompt_len = len(train[0].text) + len(self.SEP)
        self.seq_len = self.prompt_len + max(len(lab) for lab in labels)

    def prompt(self, text: str) -> str:
        return text + self.SEP

    def encode(self, examples: list[Example]):
        """x, y (B, seq_len - 1) and a mask true exactly where y is a label character."""
        pad = self.tok.stoi["\n"]
        rows, masks = [], []
        for ex in examples:
            ids = self.tok.encode(self.prompt(ex.text) + ex.label)
            mask = [0] * self.prompt_len + [1] * len(ex.label)
            rows.append(ids + [pad] * (self.seq_len - len(ids)))
            masks.append(mask + [0] * (self.seq_len - len(mask)))
        seq = torch.tensor(rows)
        mask = torch.tensor(masks, dtype=torch.bool)
        return seq[:, :-1], seq[:, 1:], mask[:, 1:]

    def train_batch(self, batch_size: int, generator: torch.Generator | None = None):
        idx = torch.randint(len(self.train), (batch_size,), generator=generator).tolist()
        return self.encode([self.train[i] for i in idx])

    def prompts(self, examples: list[Example]) -> torch.Tensor:
        """Token ids of the prompts only (B, prompt_len): what the model sees before answering."""
        return torch.tensor([self.tok.encode(self.prompt(ex.text)) for ex in examples])

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, examples: list[Example], batch_size: int = 100) -> torch.Tensor:
        """Index of the predicted label for each example."""
        was_training = model.training
        model.eval()
        dev = _device_of(model)
        preds = []
        for i in range(0, len(examples), batch_size):
            logits, _ = model(self.prompts(examples[i:i + batch_size]).to(dev))
            preds.append(logits[:, -1, self.first_ids.to(dev)].argmax(dim=-1).cpu())
        model.train(was_training)
        return torch.cat(preds)

    def evaluate(self, model: torch.nn.Module, split: str = "val") -> dict:
        """Accuracy, label loss, decision loss and confusion counts on the 'val' or 'test' split, from one
        forward pass per batch (`lora_teach.evaluation.classification_metrics`)."""
        return classification_metrics(self, model, split)


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _passage_starts(flat: str, n: int, length: int, rng: random.Random,
                    avoid: list[int] | None = None) -> list[int]:
    """Starts of `n` passages of `length` characters in `flat`, each at a word boundary. A passage that would
    share a character with one starting at a position in `avoid`, or with one drawn before it, is drawn again
    (only when `avoid` is given: without it, draws are independent and may overlap)."""
    taken = sorted(avoid or [])
    out = []
    while len(out) < n:
        start = rng.randrange(len(flat) - length - 50)
        start = flat.index(" ", start) + 1
        if avoid is not None:
            if any(abs(start - other) < length for other in taken):
                continue
            taken.append(start)
        out.append(start)
    return out


def _passages(text: str, n: int, length: int, rng: random.Random) -> list[str]:
    """`n` passages of exactly `length` characters, whitespace collapsed, starting at a word boundary."""
    flat = _clean(text)
    return [flat[s:s + length] for s in _passage_starts(flat, n, length, rng)]


AUTHORS = {"austen": "austen", "shakespeare": "shakespeare", "melville": "melville"}


AUTHOR_TRAIN_DEFAULT = 300


@cache
def author_task(n_train: int = AUTHOR_TRAIN_DEFAULT, n_val: int = 100, n_test: int = 100, length: int = 64,
                seed: int = 0) -> ClassificationTask:
    """Who wrote this passage: Austen, Shakespeare or Melville? `n_*` examples per author and split.

    Train passages come from the training text, validation and test from the held-out text; a test passage
    shares no character with any validation passage (nor with another test passage). Validation and test do not
    depend on `n_train`: a smaller training split is the first `n_train` passages per author of the default draw,
    and the generator behind the held-out splits moves as the default draw moves it."""
    rng = random.Random(seed)
    splits = {"train": [], "val": [], "test": []}
    for i, (corpus, label) in enumerate(AUTHORS.items()):
        train_text, val_text = split_corpus(corpus)
        train_rng = random.Random()
        train_rng.setstate(rng.getstate())  # the training draw starts where the shared generator is...
        splits["train"] += [Example(p, label) for p in _passages(train_text, n_train, length, train_rng)]
        _passages(train_text, AUTHOR_TRAIN_DEFAULT, length, rng)  # ...which moves as the default draw moves it
        flat = _clean(val_text)
        # n_val + n_test draws keep the generator where it always was, so train and validation never move
        val_starts = _passage_starts(flat, n_val + n_test, length, rng)[:n_val]
        test_rng = random.Random(1000 * seed + i + 1)  # test passages: their own generator, clear of validation
        test_starts = _passage_starts(flat, n_test, length, test_rng, avoid=val_starts)
        splits["val"] += [Example(flat[s:s + length], label) for s in val_starts]
        splits["test"] += [Example(flat[s:s + length], label) for s in test_starts]
    train_rng = random.Random()
    train_rng.setstate(rng.getstate())
    train_rng.shuffle(splits["train"])
    rng.shuffle([None] * (AUTHOR_TRAIN_DEFAULT * len(AUTHORS)))  # as if the default training split were shuffled
    for name in ("val", "test"):
        rng.shuffle(splits[name])
    return ClassificationTask("author", list(AUTHORS.values()), **splits)


SENTENCE_LABELS = {"?": "question", "!": "exclamation", ".": "statement"}


def _sentences(text: str, min_len: int, max_len: int) -> dict[str, list[str]]:
    """Sentences by their closing mark, without it, between min_len and max_len characters."""
    found = {mark: [] for mark in SENTENCE_LABELS}
    for m in re.finditer(r"[^.!?]+[.!?]", _clean(text.replace('"', ""))):
        s = m.group().strip()
        body, mark = s[:-1].strip(), s[-1]
        if min_len <= len(body) <= max_len and body[0].isupper() and not re.search(r"[;:]|Mr$|Mrs$|Dr$", body):
            found[mark].append(body)
    return found


@cache
def sentence_task(n_train: int = 300, n_val: int = 50, n_test: int = 50, length: int = 56,
                  seed: int = 0) -> ClassificationTask:
    """Is this Austen sentence a question, an exclamation or a statement? Its closing mark is removed.

    Sentences are left-padded with spaces to `length` characters; `n_*` examples per class and split. A
    sentence that occurs with two different marks, or in both halves of the corpus, is left out."""
    rng = random.Random(seed)
    train_text, val_text = split_corpus("austen")
    found = {"train": _sentences(train_text, 12, length), "held": _sentences(val_text, 12, length)}
    marks_of: dict[str, set] = {}
    for by_mark in found.values():
        for mark, bodies in by_mark.items():
            for body in bodies:
                marks_of.setdefault(body, set()).add(mark)
    in_train = {b for bodies in found["train"].values() for b in bodies}
    splits = {"train": [], "val": [], "test": []}
    for half, parts in (("train", {"train": n_train}), ("held", {"val": n_val, "test": n_test})):
        for mark, label in SENTENCE_LABELS.items():
            pool = sorted({b for b in found[half][mark] if len(marks_of[b]) == 1
                           and (half == "train" or b not in in_train)})
            rng.shuffle(pool)
            need = sum(parts.values())
            if len(pool) < need:
                raise ValueError(f"only {len(pool)} {label} sentences for {need} examples")
            used = 0
            for split, n in parts.items():
                splits[split] += [Example(s.rjust(length), label) for s in pool[used:used + n]]
                used += n
    for examples in splits.values():
        rng.shuffle(examples)
    return ClassificationTask("sentence", list(SENTENCE_LABELS.values()), **splits)
