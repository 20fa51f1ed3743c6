"""The method registry: every method builds onto a copy of the base, names what a task stores, and is served
with the outputs it was trained to give."""

import pytest
import torch

from lora_teach.data import LanguageModelingTask, sentence_task
from lora_teach.lora import lora_layers
from lora_teach.measure import count_parameters
from lora_teach.methods import (
    ALL_LINEAR,
    BOTTLENECK,
    LORA_R,
    METHODS,
    PREFIX_TOKENS,
    PROMPT_TOKENS,
    get_method,
)

# the tiny model's 96 positions hold a sentence example (70 characters) and 20 virtual tokens


def _nudged(model: torch.nn.Module) -> torch.nn.Module:
    """Move every trainable tensor off its start, so that a check on the outputs means something."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    return model


def test_the_registry_holds_the_seven_settings_of_the_comparison():
    assert list(METHODS) == ["full", "adapters", "prefix", "prompt", "p-tuning", "lora", "lora-all"]
    assert all(method.setting for method in METHODS.values())


@pytest.mark.parametrize("name", list(METHODS))
def test_build_makes_a_trainable_copy_and_leaves_the_base_untouched(tiny_model, name):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    flags = [p.requires_grad for p in tiny_model.parameters()]
    model = METHODS[name].build(tiny_model, sentence_task())
    trainable, total = count_parameters(model)
    assert 0 < trainable <= total
    assert (trainable == total) == (name == "full")
    assert all(torch.equal(v, before[k]) for k, v in tiny_model.state_dict().items())
    assert [p.requires_grad for p in tiny_model.parameters()] == flags


@pytest.mark.parametrize("name", list(METHODS))
def test_the_trainable_state_is_detached_and_smaller_than_the_whole_model(tiny_model, name):
    task = sentence_task()
    model = METHODS[name].build(tiny_model, task)
    state = METHODS[name].trainable_state(model)
    assert state and all(isinstance(v, torch.Tensor) and not v.requires_grad for v in state.values())
    stored = sum(v.numel() for v in state.values())
    whole = sum(v.numel() for v in tiny_model.state_dict().values())
    assert (stored == whole) if name == "full" else (stored < whole)


@pytest.mark.parametrize("name", list(METHODS))
def test_the_served_model_gives_the_trained_models_outputs(tiny_model, name):
    task = sentence_task()
    method = METHODS[name]
    model = _nudged(method.build(tiny_model, task)).eval()
    idx = task.prompts(task.val[:4])
    with torch.no_grad():
        expected = model(idx)[0]
        served = method.for_inference(model)
        torch.testing.assert_close(served(idx)[0], expected, atol=1e-5, rtol=1e-5)
    if name in ("prefix", "p-tuning"):  # the MLP or encoder is gone: only frozen vectors are left
        assert count_parameters(served)[0] == 0
    if name in ("lora", "lora-all"):  # B A is in the weights
        assert all(layer.merged for layer in lora_layers(served).values())


def test_the_sizes_are_the_ones_the_settings_name(tiny_model):
    task = sentence_task()
    built = {name: METHODS[name].build(tiny_model, task) for name in ("adapters", "prefix", "prompt", "p-tuning")}
    assert built["adapters"].blocks[0].attn.adapter.down.out_features == BOTTLENECK
    assert built["prefix"].num_virtual_tokens == PREFIX_TOKENS
    assert built["prompt"].num_virtual_tokens == built["p-tuning"].num_virtual_tokens == PROMPT_TOKENS
    for name, size in (("adapters", BOTTLENECK), ("prefix", PREFIX_TOKENS), ("prompt", PROMPT_TOKENS),
                       ("lora", LORA_R)):
        assert str(size) in METHODS[name].setting, name


def test_p_tuning_puts_its_tokens_in_the_template_or_in_front_of_a_window(tiny_model):
    classification = METHODS["p-tuning"].build(tiny_model, sentence_task())
    text_len = sentence_task().prompt_len - len(sentence_task().SEP)
    assert classification.template == [(0, 15), (text_len, 5)]
    window = METHODS["p-tuning"].build(tiny_model, LanguageModelingTask("shakespeare", block_size=32))
    assert window.template == [(0, PROMPT_TOKENS)]


def test_lora_on_all_linear_layers_wraps_the_six_projections_of_every_block(tiny_model):
    model = METHODS["lora-all"].build(tiny_model, sentence_task())
    layers = lora_layers(model)
    assert {name.rsplit(".", 1)[-1] for name in layers} == set(ALL_LINEAR)
    assert len(layers) == len(ALL_LINEAR) * tiny_model.config.n_layer
    expected = sum(LORA_R * (layer.in_features + layer.out_features) for layer in layers.values())
    assert count_parameters(model)[0] == expected
    assert expected > count_parameters(METHODS["lora"].build(tiny_model, sentence_task()))[0]


def test_an_unknown_method_is_refused_with_the_names_there_are():
    assert get_method("lora") is METHODS["lora"]
    with pytest.raises(ValueError, match=r"unknown method 'bitfit'; choose one of \('full', 'adapters'"):
        get_method("bitfit")
