import torch

from lora_teach.data import LanguageModelingTask, author_task, sentence_task, split_corpus


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

    assert task.evaluate(Oracle())["accuracy"] == 1.0
