"""The course's classification evaluation equals the same figures computed directly, in one batch."""

import pytest
import torch
import torch.nn.functional as F

from lora_teach.data import author_task, sentence_task
from lora_teach.evaluation import classification_metrics


def _direct(task, model, examples) -> dict:
    """The four figures from one forward pass over all examples, written out plainly."""
    x, y, mask = task.encode(examples)
    with torch.no_grad():
        logits, label_loss = model(x, y, loss_mask=mask)  # the model's own masked mean over label characters
    gold = torch.tensor([task.labels.index(ex.label) for ex in examples])
    scores = logits[:, task.prompt_len - 1, task.first_ids]  # (N, n_labels)
    pred = scores.argmax(dim=-1)
    n = len(task.labels)
    confusion = [[sum(1 for g, p in zip(gold.tolist(), pred.tolist(), strict=True) if (g, p) == (i, j))
                  for j in range(n)] for i in range(n)]
    return {"accuracy": (pred == gold).float().mean().item(), "label_loss": label_loss.item(),
            "decision_loss": F.cross_entropy(scores, gold).item(), "confusion": confusion}


@pytest.mark.parametrize("make_task", [author_task, sentence_task])
@pytest.mark.parametrize("split", ["val", "test"])
def test_the_evaluation_equals_a_direct_computation(tiny_model, make_task, split):
    task = make_task()
    got = classification_metrics(task, tiny_model, split)
    want = _direct(task, tiny_model, task.val if split == "val" else task.test)
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-6)
    assert got["label_loss"] == pytest.approx(want["label_loss"], rel=1e-5)
    assert got["decision_loss"] == pytest.approx(want["decision_loss"], rel=1e-5)
    assert got["confusion"] == want["confusion"]
    assert sum(map(sum, got["confusion"])) == len(task.val if split == "val" else task.test)
    assert task.evaluate(tiny_model, split=split) == got  # what every classification task returns


def test_the_batch_size_does_not_change_the_figures(tiny_model):
    task = sentence_task()
    one, many = classification_metrics(task, tiny_model, batch_size=1000), classification_metrics(task, tiny_model,
                                                                                                   batch_size=7)
    assert one["accuracy"] == many["accuracy"] and one["confusion"] == many["confusion"]
    assert one["label_loss"] == pytest.approx(many["label_loss"], rel=1e-5)
    assert one["decision_loss"] == pytest.approx(many["decision_loss"], rel=1e-5)


def test_the_model_keeps_its_mode(tiny_model):
    task = sentence_task()
    tiny_model.train()
    classification_metrics(task, tiny_model)
    assert tiny_model.training
    tiny_model.eval()
    classification_metrics(task, tiny_model)
    assert not tiny_model.training


def test_bad_arguments_are_refused(tiny_model):
    task = sentence_task()
    with pytest.raises(ValueError, match="'val' or 'test'"):
        classification_metrics(task, tiny_model, "train")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        classification_metrics(task, tiny_model, batch_size=0)
