import pytest
import torch

from lora_teach.measure import (
    activation_memory,
    checkpoint_size,
    count_parameters,
    print_trainable_parameters,
    step_time,
    training_memory,
)


class OneLinear(torch.nn.Module):
    """A model whose answers are known: one Linear layer, loss = mean of its output."""

    def __init__(self, n_in=32, n_out=8):
        super().__init__()
        self.lin = torch.nn.Linear(n_in, n_out, bias=False)

    def forward(self, x, y=None, loss_mask=None):
        out = self.lin(x)
        return out, out.mean()


def test_parameter_counts(capsys):
    m = OneLinear()
    assert count_parameters(m) == (256, 256)
    m.lin.weight.requires_grad_(False)
    assert count_parameters(m) == (0, 256)
    m.lin.weight.requires_grad_(True)
    line = print_trainable_parameters(m)
    assert line == "trainable params: 256 || all params: 256 || trainable%: 100.0000"
    assert capsys.readouterr().out.strip() == line


def test_shared_weights_counted_once():
    a = torch.nn.Linear(4, 4, bias=False)
    m = torch.nn.Sequential(a, a)
    assert count_parameters(m) == (16, 16)


def test_training_memory_is_16_bytes_per_parameter_with_adam():
    m = OneLinear()
    mem = training_memory(m)
    assert mem == {"weights": 1024, "gradients": 1024, "optimizer": 2048, "total": 4096}
    assert mem["total"] / 256 == 16
    m.lin.weight.requires_grad_(False)
    assert training_memory(m)["total"] == 1024


def test_activation_memory_of_a_linear_layer_is_its_input():
    m = OneLinear()
    x = torch.randn(5, 32)
    batch = (x, torch.zeros(5), torch.ones(5))
    # the weight gradient needs the input (5 x 32 floats); the weight itself is not counted
    assert activation_memory(m, batch) == 5 * 32 * 4
    m.lin.weight.requires_grad_(False)
    x.requires_grad_(False)
    assert activation_memory(m, batch) == 0  # frozen layer and constant input: nothing to save


def test_checkpoint_size_counts_the_bytes():
    size = checkpoint_size({"w": torch.zeros(1000)})
    assert 4000 < size < 4000 + 200  # data plus a small JSON header


def test_step_time_runs_and_updates(tiny_model):
    x = torch.randint(97, (2, 8))
    before = tiny_model.lm_head.weight.detach().clone()
    t = step_time(tiny_model, (x, x, torch.ones_like(x, dtype=torch.bool)), steps=2, warmup=1)
    assert t > 0
    assert not torch.equal(before, tiny_model.lm_head.weight)


def test_interleaved_times_calls_each_function_in_rotating_turns():
    from lora_teach.measure import interleaved_times

    calls = []
    runs = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    seconds = interleaved_times(runs, repeats=3, warmup=1)
    assert set(seconds) == {"a", "b", "c"} and all(s >= 0 for s in seconds.values())
    assert calls == ["a", "b", "c"] + ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


@pytest.mark.parametrize("kwargs,words", [({"repeats": 0}, "repeats must be an int >= 1"),
                                          ({"warmup": -1}, "warmup must be an int >= 0"),
                                          ({"repeats": 2.5}, "repeats must be an int")])
def test_interleaved_times_refuses_bad_counts(kwargs, words):
    from lora_teach.measure import interleaved_times

    with pytest.raises(ValueError, match=words):
        interleaved_times({"a": lambda: None}, **kwargs)
    with pytest.raises(ValueError, match="non-empty dict"):
        interleaved_times({})


def test_training_step_updates_only_the_trainable_parameters(tiny_model):
    from lora_teach.measure import training_step

    for p in tiny_model.parameters():
        p.requires_grad_(False)
    head = tiny_model.lm_head.weight.requires_grad_(True)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    x = torch.randint(0, tiny_model.config.vocab_size, (2, 8))
    training_step(tiny_model, (x, x, torch.ones_like(x, dtype=torch.bool)))()
    changed = [k for k, v in tiny_model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == ["lm_head.weight"] and head.grad is not None


def test_training_step_is_the_step_train_takes(tiny_model):
    import copy

    from lora_teach.measure import training_step
    from lora_teach.training import train_step

    x = torch.randint(0, tiny_model.config.vocab_size, (2, 8))
    batch = (x, x, torch.ones_like(x, dtype=torch.bool))
    timed, stepped = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    training_step(timed, batch, lr=1e-2)()
    stepped.train()
    train_step(stepped, torch.optim.AdamW(list(stepped.parameters()), lr=1e-2), batch)
    assert all(torch.equal(a, b) for a, b in zip(timed.parameters(), stepped.parameters(), strict=True))
