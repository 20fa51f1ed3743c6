"""How the course scores a classification model: four figures from one forward pass over a held-out split.

The model reads `passage + " => " + label word`. At the position that predicts the label's first character
(`task.prompt_len - 1`) the scores of the labels' first characters give the prediction; the same pass gives
- accuracy: the share of examples whose highest-scoring first character is the gold label's;
- label loss: the cross-entropy on every character of the label word (the training objective), averaged over
  those characters;
- decision loss: the cross-entropy of the choice between the labels' first characters only, averaged over the
  examples (chance: ln of the number of labels), what the accuracy reads;
- confusion: counts[true][predicted], one row per gold label, in the order of `task.labels`.
`ClassificationTask.evaluate` returns exactly this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SPLITS = ("val", "test")


@torch.no_grad()
def classification_metrics(task, model: torch.nn.Module, split: str = "val", batch_size: int = 150) -> dict:
    """{"accuracy", "label_loss", "decision_loss", "confusion"} of `model` on the task's 'val' or 'test' split,
    in one forward pass per batch of `batch_size` examples. The model's train/eval mode is restored."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    examples = task.val if split == "val" else task.test
    n_labels = len(task.labels)
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    first_ids = task.first_ids.to(dev)
    at = task.prompt_len - 1  # the position whose output predicts the label's first character
    correct, label_loss, label_chars, decision_loss = 0, 0.0, 0, 0.0
    confusion = torch.zeros(n_labels * n_labels, dtype=torch.long)
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        x, y, mask = (t.to(dev) for t in task.encode(chunk))  # (B, T) each; mask: the label word's characters
        logits, _ = model(x)  # (B, T, vocab)
        gold = torch.tensor([task.labels.index(ex.label) for ex in chunk], device=dev)  # (B,)
        scores = logits[:, at, first_ids]  # (B, n_labels)
        pred = scores.argmax(dim=-1)  # (B,)
        correct += (pred == gold).sum().item()
        confusion += torch.bincount((n_labels * gold + pred).cpu(), minlength=n_labels * n_labels)
        losses = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # (B, T)
        label_loss += losses[mask].sum().item()
        label_chars += mask.sum().item()
        decision_loss += F.cross_entropy(scores, gold, reduction="sum").item()
    model.train(was_training)
    n = len(examples)
    return {"accuracy": correct / n, "label_loss": label_loss / label_chars, "decision_loss": decision_loss / n,
            "confusion": confusion.view(n_labels, n_labels).tolist()}
