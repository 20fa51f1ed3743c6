import hashlib

import pytest
import torch

from lora_teach.data import LanguageModelingTask, _clean, author_task, sentence_task, split_corpus
from lora_teach.tokenizer import CharTokenizer


def test_splits_are_deterministic_and_disjoint():
    train, val = split_corpus("shakespeare")
    assert (train, val) == split_corpus.__wrapped__("shakespeare")
    assert 0.09 < len(val) / (len(train) + len(val)) < 0.11
    assert val[:200] not in train


def test_task_examples_are_deterministic():
    a = author_task.__wrapped__()
    b = author_task.__wrapped__()
    assert a.train == b.train and a.test == b.test
    s1, s2 = sentence_task.__wrapped__(), sentence_task.__wrapped__()
    assert s1.val == s2.val


def test_tasks_are_balanced_and_held_out():
    for task in (author_task(), sentence_task()):
        for split in (task.train, task.val, task.test):
            counts = {lab: sum(ex.label == lab for ex in split) for lab in task.labels}
            assert len(set(counts.values())) == 1, counts
        assert not {ex.text for ex in task.train} & {ex.text for ex in task.test}
        assert len({len(ex.text) for ex in task.train + task.val + task.test}) == 1


def test_classification_batches_mask_only_the_label():
    task = author_task()
    x, y, mask = task.train_batch(8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == mask.shape == (8, task.seq_len - 1)
    tok = task.tok
    for row_y, row_m in zip(y, mask, strict=True):
        assert tok.decode(row_y[row_m]) in task.labels
    # the first masked target is predicted right after the separator
    first = mask.float().argmax(dim=1)
    assert (first == task.prompt_len - 1).all()


def test_lm_batches_are_shifted_by_one():
    task = LanguageModelingTask("austen", block_size=16)
    x, y, mask = task.train_batch(4, torch.Generator().manual_seed(0))
    assert torch.equal(x[:, 1:], y[:, :-1]) and mask.all()


def test_evaluate_on_a_model_that_knows_the_answer():
    """A stand-in model that always puts its mass on the gold label's first letter scores 100%."""
    task = sentence_task()
    gold_first = {ex.text: task.tok.stoi[ex.label[0]] for ex in task.val}

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, idx, targets=None, loss_mask=None):
            logits = torch.zeros(*idx.shape, 97)
            for i, row in enumerate(idx):
                text = task.tok.decode(row[: task.prompt_len - len(task.SEP)])
                logits[i, :, gold_first[text]] = 10.0
            return logits, None if targets is None else torch.tensor(0.0)

    metrics = task.evaluate(Oracle())
    assert set(metrics) == {"accuracy", "label_loss", "decision_loss", "confusion"}
    assert metrics["accuracy"] == 1.0 and metrics["decision_loss"] < 1e-3
    per_label = len(task.val) // len(task.labels)  # the classes are balanced
    assert metrics["confusion"] == [[per_label if i == j else 0 for j in range(3)] for i in range(3)]


# ------------------------------------------------------------------------- test splits: deterministic, disjoint

def _digest(examples) -> str:
    return hashlib.sha256("\n".join(f"{ex.label}|{ex.text}" for ex in examples).encode()).hexdigest()[:16]


def test_the_train_and_validation_splits_other_notebooks_print_have_not_moved():
    """Adding the test splits left every training and validation example where it was (digests of 2026-11-30)."""
    assert _digest(author_task().train) == "e7980b1672c4ab02"
    assert _digest(author_task().val) == "5cf3b64ced406ae2"
    assert _digest(sentence_task().train) == "090992dc353c06ea"
    assert _digest(sentence_task().val) == "20e7e513ac304cf4"


@pytest.mark.parametrize("corpus", ["shakespeare", "austen", "melville"])
@pytest.mark.parametrize("block_size", [96, 128])
def test_lm_test_windows_are_deterministic_and_share_no_character_with_validation(corpus, block_size):
    task = LanguageModelingTask(corpus, block_size=block_size)
    again = LanguageModelingTask(corpus, block_size=block_size)
    assert torch.equal(task.test_starts, again.test_starts) and torch.equal(task.eval_starts, again.eval_starts)
    assert len(task.test_starts) == len(task.eval_starts) - 1
    span = block_size + 1  # a window reads block_size inputs and one more target
    val_chars = {int(s) + i for s in task.eval_starts for i in range(span)}
    test_chars = {int(s) + i for s in task.test_starts for i in range(span)}
    assert len(test_chars) == len(task.test_starts) * span  # test windows do not overlap each other either
    assert not val_chars & test_chars
    assert max(test_chars) < len(task.val_ids)


def test_austen_test_windows_come_from_text_pretraining_never_saw():
    """Pretraining read only split_corpus('austen')[0] (scripts/pretrain_base.py); the test windows lie in the
    other part, and none of them occurs in the pretraining text."""
    task = LanguageModelingTask("austen", block_size=96)
    train, _ = split_corpus("austen")
    tok = CharTokenizer()
    for start in task.test_starts:
        window = tok.decode(task.val_ids[int(start):int(start) + 97].tolist())
        assert window not in train


def test_lm_evaluate_reads_the_split_it_is_asked_for():
    task = LanguageModelingTask("shakespeare", block_size=16, eval_windows=8)

    class Mean(torch.nn.Module):  # loss = mean of the targets' ids: tells which windows were read
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, y):
            return None, y.float().mean()

    val, test = task.evaluate(Mean())["loss"], task.evaluate(Mean(), split="test")["loss"]
    assert val != test
    assert val == pytest.approx(torch.stack([task.val_ids[s + 1:s + 17].float().mean() for s in task.eval_starts])
                                .mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="'val' or 'test'"):
        task.evaluate(Mean(), split="validation")


def test_a_corpus_too_short_for_test_windows_is_refused():
    with pytest.raises(ValueError, match="no room for test windows"):
        LanguageModelingTask("shakespeare", block_size=128, eval_windows=2000)


def _intervals(task, split, corpus, label):
    flat = _clean(split_corpus(corpus)[1])
    starts = []
    for ex in getattr(task, split):
        if ex.label == label:
            start = flat.find(ex.text)
            assert start >= 0 and flat.find(ex.text, start + 1) == -1  # found once: its position is known
            starts.append(start)
    return starts


@pytest.mark.parametrize("corpus", ["austen", "shakespeare", "melville"])
def test_author_test_passages_share_no_character_with_validation_passages(corpus):
    task = author_task()
    val = _intervals(task, "val", corpus, corpus)
    test = _intervals(task, "test", corpus, corpus)
    length = len(task.test[0].text)
    assert len(test) == 100 and len(val) == 100
    assert all(abs(t - v) >= length for t in test for v in val)
    assert all(abs(a - b) >= length for i, a in enumerate(test) for b in test[i + 1:])
    assert author_task.__wrapped__().test == task.test  # deterministic


def test_sentence_splits_are_disjoint():
    task = sentence_task()
    texts = {split: {ex.text for ex in getattr(task, split)} for split in ("train", "val", "test")}
    assert not texts["train"] & texts["val"] and not texts["train"] & texts["test"]
    assert not texts["val"] & texts["test"]
    assert sentence_task.__wrapped__().test == task.test


@pytest.mark.parametrize("n_train", [1, 8, 100, 500])
def test_the_held_out_splits_do_not_depend_on_how_much_training_data_is_drawn(n_train):
    default, other = author_task(), author_task.__wrapped__(n_train=n_train)
    assert other.val == default.val and other.test == default.test
    assert len(other.train) == 3 * n_train
    if n_train <= 300:
        assert {e.text for e in other.train} <= {e.text for e in default.train}


def test_dialogue_keeps_the_quoted_speech_only():
    from lora_teach.data import dialogue

    text = 'He said "yes." Then: "I am quite sure of it, sir," she replied, "and so is my sister."'
    assert dialogue(text).splitlines() == ["I am quite sure of it, sir,", "and so is my sister."]


def test_a_language_modelling_task_can_model_part_of_a_corpus():
    from lora_teach.data import dialogue

    whole = LanguageModelingTask("austen")
    part = LanguageModelingTask("austen", select=dialogue, name="lm-austen-dialogue")
    assert part.name == "lm-austen-dialogue" and 0 < len(part.train_ids) < len(whole.train_ids)
    with pytest.raises(TypeError, match="select must be a function"):
        LanguageModelingTask("austen", select="dialogue")
