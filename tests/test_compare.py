import pytest
import torch

from lora_teach.compare import METHODS, build, for_inference, make_task, run_one, summarise, task_checkpoint
from lora_teach.measure import count_parameters
from lora_teach.model import GPT, GPTConfig


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=128)).eval()


@pytest.mark.parametrize("method", METHODS)
def test_build_leaves_the_base_untouched(base, method):
    before = {k: v.clone() for k, v in base.state_dict().items()}
    flags = [p.requires_grad for p in base.parameters()]
    model = build(method, base, make_task("author"))
    trainable, total = count_parameters(model)
    assert 0 < trainable <= total
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k])
    assert [p.requires_grad for p in base.parameters()] == flags


@pytest.mark.parametrize("method", METHODS)
def test_served_model_gives_the_trained_model_outputs(base, method):
    task = make_task("author")
    model = build(method, base, task)
    with torch.no_grad():  # move every trainable tensor off its init so the check means something
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    idx = task.prompts(task.val[:4])
    model.eval()
    expected, _ = model(idx)
    served = for_inference(method, model)
    torch.testing.assert_close(served(idx)[0], expected, atol=1e-5, rtol=1e-5)


def test_per_task_checkpoints_are_smaller_than_the_model(base):
    task = make_task("author")
    full = sum(t.numel() for t in task_checkpoint("full", build("full", base, task)).values())
    for method in METHODS[1:]:
        stored = sum(t.numel() for t in task_checkpoint(method, build(method, base, task)).values())
        assert stored < full, method


def test_unknown_names_are_refused(base):
    with pytest.raises(ValueError, match="unknown method 'bitfit'"):
        build("bitfit", base, make_task("author"))
    with pytest.raises(ValueError, match="unknown task 'imdb'"):
        make_task("imdb")


def test_run_one_and_summary(base):
    rows = [run_one("lora", "author", base, seed, steps=2, batch_size=4) for seed in (0, 1)]
    assert {"quality", "trainable", "checkpoint_bytes", "step_ms", "activation_bytes"} <= set(rows[0])
    summary = summarise(rows)
    assert len(summary) == 1 and summary[0]["seeds"] == 2
    assert summary[0]["quality"] == pytest.approx((rows[0]["quality"] + rows[1]["quality"]) / 2)


def test_served_forward_runs_the_model_as_served_without_an_autograd_graph(base):
    from lora_teach.compare import served_forward

    seen = []
    base.train().requires_grad_(True)  # a trainable model would otherwise record a graph at every forward pass
    handle = base.register_forward_hook(lambda m, args, out: seen.append((torch.is_inference_mode_enabled(),
                                                                         out[0].requires_grad)))
    try:
        forward = served_forward(base, torch.zeros(2, 5, dtype=torch.long))
        forward()
        forward()
    finally:
        handle.remove()
    assert seen == [(True, False), (True, False)]
    assert not base.training
