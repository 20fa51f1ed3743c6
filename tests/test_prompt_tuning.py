"""Prompt tuning: the invariants of Lester et al. (2021) on small random GPTs."""

import copy

import pytest
import torch
from small_models import assert_unchanged, ids, small_gpt, snapshot, tiny_gpt

from lora_teach.measure import count_parameters
from lora_teach.model import GPT, GPTConfig, masked_cross_entropy
from lora_teach.prompt_tuning import RANDOM_RANGE, PromptTuning
from lora_teach.tokenizer import CharTokenizer
from lora_teach.training import train


@pytest.fixture
def model():
    return small_gpt()


def test_only_the_soft_prompt_is_trainable(model):
    base_total = sum(p.numel() for p in model.parameters())
    pt = PromptTuning(model, num_virtual_tokens=5)
    d = model.config.n_embd
    assert pt.soft_prompt.shape == (5, d)
    assert count_parameters(pt) == (5 * d, base_total + 5 * d)
    assert not any(p.requires_grad for p in model.parameters())


def test_soft_prompt_of_real_tokens_equals_base_on_prompt_then_input(model):
    """The exactness test: soft prompt = embeddings of tokens P  =>  output on x == base output on P + x."""
    P, x = ids(1, 6, seed=1), ids(3, 10, seed=2)
    pt = PromptTuning(copy.deepcopy(model), num_virtual_tokens=6)
    with torch.no_grad():
        pt.soft_prompt.copy_(model.embed(P)[0])
        got, _ = pt(x)
        want, _ = model(torch.cat([P.expand(3, -1), x], dim=1))
    assert got.shape == (3, 10, model.config.vocab_size)
    torch.testing.assert_close(got, want[:, 6:], rtol=0, atol=1e-6)


def test_prompt_positions_never_enter_the_loss(model):
    pt = PromptTuning(model, num_virtual_tokens=4)
    x, y = ids(2, 8, seed=3), ids(2, 8, seed=4)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, -2:] = True
    logits, loss = pt(x, y, loss_mask=mask)
    assert logits.shape[:2] == x.shape  # aligned with idx: the 4 prompt positions are stripped
    torch.testing.assert_close(loss, masked_cross_entropy(logits, y, mask))
    loss.backward()
    assert pt.soft_prompt.grad is not None and pt.soft_prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_vocab_text_and_random_inits(model):
    wte = model.wte.weight
    torch.manual_seed(0)
    vocab = PromptTuning(copy.deepcopy(model), num_virtual_tokens=7, init="vocab").soft_prompt
    rows = (vocab[:, None, :] == wte[None]).all(-1)  # (7, vocab): which embedding row each prompt vector is
    assert rows.any(1).all()
    torch.manual_seed(0)
    again = PromptTuning(copy.deepcopy(model), num_virtual_tokens=7, init="vocab").soft_prompt
    assert torch.equal(vocab, again)  # seeded: repeatable

    text = PromptTuning(copy.deepcopy(model), num_virtual_tokens=7, init="ab c").soft_prompt
    assert torch.equal(text, wte[CharTokenizer().tensor("ab cab ")])  # repeated, then cut to num_virtual_tokens
    cut = PromptTuning(copy.deepcopy(model), num_virtual_tokens=3, init="yes or no").soft_prompt
    assert torch.equal(cut, wte[CharTokenizer().tensor("yes")])

    rand = PromptTuning(copy.deepcopy(model), num_virtual_tokens=50 // 2, init="random").soft_prompt
    assert rand.abs().max() <= RANDOM_RANGE and rand.std() > 0.2


class ConstantAnswer:
    """A task a prompt alone can learn: every input must be followed by token 7."""

    def train_batch(self, batch_size, generator=None):
        x = torch.randint(97, (batch_size, 12), generator=generator)
        mask = torch.zeros_like(x, dtype=torch.bool)
        mask[:, -1] = True
        return x, torch.full_like(x, 7), mask


def test_training_moves_only_the_prompt_and_lowers_the_loss():
    gpt = small_gpt(std=0.2)
    before = snapshot(gpt)
    pt = PromptTuning(gpt, num_virtual_tokens=4)
    start = pt.soft_prompt.detach().clone()
    hist = train(pt, ConstantAnswer(), steps=25, lr=3e-2, batch_size=8, progress=False)
    assert sum(hist.loss[-5:]) / 5 < sum(hist.loss[:5]) / 5 - 0.25  # nats
    assert not torch.equal(pt.soft_prompt, start)
    state, _ = before
    assert all(torch.equal(gpt.state_dict()[k], v) for k, v in state.items())


def test_generate_with_a_real_token_prompt_matches_the_base(model):
    P, x = ids(1, 5, seed=5), ids(2, 4, seed=6)
    pt = PromptTuning(copy.deepcopy(model), num_virtual_tokens=5)
    with torch.no_grad():
        pt.soft_prompt.copy_(model.embed(P)[0])
    out = pt.generate(x, 6, temperature=0)
    want = model.generate(torch.cat([P.expand(2, -1), x], dim=1), 6, temperature=0)
    assert torch.equal(out, want[:, 5:])


def test_follows_the_model_dtype_and_exports_the_prompt_only():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=16)).double()
    pt = PromptTuning(model, num_virtual_tokens=3)
    assert pt.soft_prompt.dtype == torch.float64
    saved = pt.get_prompt_embedding_to_save()
    assert list(saved) == ["soft_prompt"] and saved["soft_prompt"].shape == (3, 8)
    assert not saved["soft_prompt"].requires_grad


@pytest.mark.parametrize("num_virtual_tokens", [0, -3, 2.5, True, "4", None])
def test_bad_num_virtual_tokens_is_refused_before_any_change(model, num_virtual_tokens):
    before = snapshot(model)
    with pytest.raises(ValueError, match="num_virtual_tokens must be a positive int"):
        PromptTuning(model, num_virtual_tokens=num_virtual_tokens)
    assert_unchanged(model, before)


def test_prompt_as_long_as_block_size_is_refused(model):
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"block_size \(32\)"):
        PromptTuning(model, num_virtual_tokens=32)
    assert_unchanged(model, before)


@pytest.mark.parametrize("init, error", [
    ("rand", ValueError), ("Random", ValueError), ("vocabulary", ValueError), ("sample_vocab", ValueError),
    ("", ValueError), ("caf\u00e9 au lait", ValueError), (None, TypeError), (3, TypeError),
])
def test_unknown_init_is_refused_before_any_change(model, init, error):
    before = snapshot(model)
    with pytest.raises(error):
        PromptTuning(model, num_virtual_tokens=4, init=init)
    assert_unchanged(model, before)


def test_a_model_that_is_not_a_gpt_is_refused():
    with pytest.raises(TypeError, match="lora_teach GPT"):
        PromptTuning(torch.nn.Linear(4, 4), num_virtual_tokens=2)


def test_input_too_long_for_block_size_is_refused_and_names_the_limit(model):
    pt = PromptTuning(model, num_virtual_tokens=10)
    pt(ids(1, 22))  # 10 + 22 = 32 fits exactly
    too_long = r"num_virtual_tokens \(10\) \+ input length \(23\) = 33 exceeds block_size \(32\)"
    with pytest.raises(ValueError, match=too_long):
        pt(ids(1, 23))
    with pytest.raises(ValueError, match="batch, time"):
        pt(ids(1, 5)[0])


def test_output_bias_starts_as_the_base_and_trains_only_its_vector():
    from lora_teach.prompt_tuning import OutputBias

    base = tiny_gpt()
    idx = torch.randint(0, base.config.vocab_size, (2, 7))
    expected = base(idx)[0]
    wrapped = OutputBias(base)
    assert torch.equal(wrapped(idx)[0], expected)
    assert [n for n, p in wrapped.named_parameters() if p.requires_grad] == ["bias"]
    assert wrapped.bias.shape == (base.config.vocab_size,)


def test_output_bias_cannot_tell_one_position_or_passage_from_another():
    """Whatever the bias learns, the gap between the logits of any two positions, of any two passages, is the
    base's own: the bias moves every position's logits by the same vector."""
    from lora_teach.prompt_tuning import OutputBias

    base = tiny_gpt()
    wrapped = OutputBias(base)
    with torch.no_grad():
        wrapped.bias.normal_()
    idx = torch.randint(0, base.config.vocab_size, (3, 9))
    ours, theirs = wrapped(idx)[0], base(idx)[0]
    torch.testing.assert_close(ours - ours[:1, :1], theirs - theirs[:1, :1])
    loss = wrapped(idx, idx)[1]
    loss.backward()
    assert wrapped.bias.grad is not None and all(p.grad is None for p in base.parameters())


def test_output_bias_refuses_a_model_that_is_not_ours():
    from lora_teach.prompt_tuning import OutputBias

    with pytest.raises(TypeError, match="lora_teach GPT"):
        OutputBias(torch.nn.Linear(2, 2))
