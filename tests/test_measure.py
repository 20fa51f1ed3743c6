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
