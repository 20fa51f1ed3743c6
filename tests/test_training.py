import copy

import pytest
import torch

from lora_teach.data import LanguageModelingTask, author_task
from lora_teach.training import GRAD_CLIP, lr_at, seed_everything, train, train_step


def test_train_reduces_loss_and_is_reproducible(tiny_config):
    from lora_teach.model import GPT

    task = LanguageModelingTask("austen", block_size=32, eval_windows=8)
    runs = []
    for _ in range(2):
        seed_everything(0)
        model = GPT(tiny_config)
        runs.append(train(model, task, steps=40, lr=3e-3, batch_size=8, eval_every=20, progress=False))
    hist = runs[0]
    assert sum(hist.loss[-5:]) / 5 < sum(hist.loss[:5]) / 5 - 0.5
    assert hist.loss == runs[1].loss  # same seed, same numbers
    assert [s for s, _ in hist.evals] == [20, 40]
    assert hist.evals[-1][1]["loss"] < hist.evals[0][1]["loss"]


def test_eval_at_start_records_step_zero_and_changes_nothing_else(tiny_config):
    from lora_teach.model import GPT

    task = LanguageModelingTask("austen", block_size=32, eval_windows=8)
    seed_everything(0)
    model = GPT(tiny_config)
    untrained = task.evaluate(model)
    runs = {}
    for at_start in (False, True):
        seed_everything(0)
        runs[at_start] = train(GPT(tiny_config), task, steps=6, lr=3e-3, batch_size=4, eval_every=3,
                               eval_at_start=at_start, progress=False)
    assert [s for s, _ in runs[False].evals] == [3, 6]  # the default is unchanged
    assert [s for s, _ in runs[True].evals] == [0, 3, 6]
    assert runs[True].evals[0][1] == untrained  # step 0 is the model before any update
    assert runs[True].loss == runs[False].loss and runs[True].evals[1:] == runs[False].evals
    seed_everything(0)
    alone = train(GPT(tiny_config), task, steps=2, lr=3e-3, batch_size=4, eval_at_start=True, progress=False)
    assert [s for s, _ in alone.evals] == [0, 2]  # without eval_every: before and after
    with pytest.raises(ValueError, match="eval_at_start must be True or False"):
        train(GPT(tiny_config), task, steps=1, lr=1e-3, eval_at_start=1, progress=False)


def test_train_updates_only_trainable_parameters(tiny_model):
    frozen = {n: p.detach().clone() for n, p in tiny_model.named_parameters() if "lm_head" not in n}
    for n, p in tiny_model.named_parameters():
        p.requires_grad_("lm_head" in n)
    train(tiny_model, author_task(), steps=3, lr=1e-2, batch_size=4, progress=False)
    for n, p in tiny_model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_bad_arguments_are_refused(tiny_model):
    task = author_task()
    with pytest.raises(ValueError, match="steps must be a positive int"):
        train(tiny_model, task, steps=0, lr=1e-3)
    with pytest.raises(ValueError, match="schedule must be"):
        train(tiny_model, task, steps=1, lr=1e-3, schedule="linear")
    tiny_model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(tiny_model, task, steps=1, lr=1e-3)


def test_schedule():
    assert lr_at(0, 100, 1.0, 10, "cosine") == pytest.approx(0.1)
    assert lr_at(10, 100, 1.0, 10, "cosine") == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, 10, "cosine") == pytest.approx(0.1)
    assert lr_at(50, 100, 1.0, 0, "constant") == 1.0


def test_train_is_train_step_repeated(tiny_model):
    """The same batches through train_step, with the same optimizer, give train's losses and weights."""
    task = LanguageModelingTask("austen", block_size=32, eval_windows=8)
    trained, stepped = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    hist = train(trained, task, steps=3, lr=1e-2, batch_size=4, seed=5, progress=False)
    generator = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    opt = torch.optim.AdamW(list(stepped.parameters()), lr=1e-2, weight_decay=0.0)
    stepped.train()
    losses = [train_step(stepped, opt, task.train_batch(4, generator)).item() for _ in range(3)]
    assert losses == hist.loss
    assert all(torch.equal(a, b) for a, b in zip(trained.parameters(), stepped.parameters(), strict=True))


@pytest.mark.parametrize("grad_clip", [GRAD_CLIP, None])
def test_train_step_clips_the_gradient_norm(tiny_model, grad_clip):
    x = torch.randint(97, (4, 16))
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.0)  # no update: only the gradients matter here
    train_step(tiny_model, opt, (x, x, torch.ones_like(x, dtype=torch.bool)), grad_clip)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in tiny_model.parameters()]))
    assert (norm <= GRAD_CLIP + 1e-4) == (grad_clip is not None)  # an untrained model's gradient norm exceeds 1
