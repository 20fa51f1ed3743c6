"""P-tuning: the prompt encoder, template splicing and dropping the encoder, on small random GPTs."""

import copy
from types import SimpleNamespace

import pytest
import torch
from small_models import assert_unchanged, ids, small_gpt, snapshot

from lora_teach.measure import count_parameters
from lora_teach.model import masked_cross_entropy
from lora_teach.p_tuning import PromptEncoder, PTuning, classification_template
from lora_teach.prompt_tuning import PromptTuning
from lora_teach.training import train


@pytest.fixture
def model():
    return small_gpt()


def base_params(model):
    return sum(p.numel() for p in model.parameters())


def test_prompt_encoder_is_the_papers_bilstm_then_mlp():
    torch.manual_seed(0)
    enc = PromptEncoder(num_virtual_tokens=5, d=16)
    lstm = enc.lstm_head
    assert (lstm.num_layers, lstm.bidirectional, lstm.hidden_size, lstm.input_size) == (2, True, 8, 16)
    assert [type(m).__name__ for m in enc.mlp_head] == ["Linear", "ReLU", "Linear"]
    assert enc().shape == (5, 16)
    # parameters: inputs 5*16; per LSTM layer and direction 4*8*(16 + 8) weights + 2*4*8 biases; MLP 2*(16*16+16)
    lstm_params = 2 * 2 * (4 * 8 * (16 + 8) + 2 * 4 * 8)
    assert sum(p.numel() for p in enc.parameters()) == 5 * 16 + lstm_params + 2 * (16 * 16 + 16)
    with pytest.raises(ValueError, match="kind must be"):
        PromptEncoder(5, 16, kind="gru")


def test_the_lstm_ties_the_virtual_tokens_together():
    """Changing one encoder input moves every output token (bidirectional); with the MLP only its own."""
    torch.manual_seed(0)
    for kind, moved in (("lstm", 5), ("mlp", 1)):
        enc = PromptEncoder(5, 16, kind)
        before = enc().detach()
        with torch.no_grad():
            enc.embedding.weight[2] += 1.0
        changed = (enc().detach() - before).abs().amax(-1) > 0
        assert int(changed.sum()) == moved and changed[2]


def test_splice_positions_of_an_interleaved_template(model):
    pt = PTuning(model, template=[(0, 3), (5, 2)])  # [P0 P1 P2] x0..x4 [P3 P4] x5..x7
    virtual, real = pt.positions(8)
    assert virtual.tolist() == [0, 1, 2, 8, 9]
    assert real.tolist() == [3, 4, 5, 6, 7, 10, 11, 12]
    # logits for real token t are read just before real token t+1: for x4 that is P4, the last virtual token
    assert pt.output_positions(8).tolist() == [3, 4, 5, 6, 9, 10, 11, 12]
    x = ids(2, 8)
    emb = pt.inputs_embeds(x)
    assert emb.shape == (2, 13, model.config.n_embd)
    torch.testing.assert_close(emb[:, real], model.embed(x))
    torch.testing.assert_close(emb[:, virtual], pt.virtual_embeddings().expand(2, -1, -1))


def test_slot_at_the_end_appends_and_its_last_token_predicts_the_next(model):
    pt = PTuning(model, template=[(8, 2)])
    virtual, real = pt.positions(8)
    assert virtual.tolist() == [8, 9] and real.tolist() == list(range(8))
    assert pt.output_positions(8).tolist() == [0, 1, 2, 3, 4, 5, 6, 9]


def test_virtual_tokens_of_real_embeddings_equal_the_base_on_the_spliced_tokens(model):
    """Logits are aligned with the real input: set the virtual tokens to embeddings of tokens Q and
    compare with the base model reading the token sequence Q0 x[:5] Q1 x[5:]."""
    pt = PTuning(copy.deepcopy(model), template=[(0, 3), (5, 2)], encoder="none")
    Q, x = ids(1, 5, seed=7), ids(3, 8, seed=8)
    with torch.no_grad():
        pt.virtual_tokens.copy_(model.embed(Q)[0])
        got, _ = pt(x)
        spliced = torch.cat([Q[:, :3].expand(3, -1), x[:, :5], Q[:, 3:].expand(3, -1), x[:, 5:]], dim=1)
        want, _ = model(spliced)
    assert got.shape == (3, 8, model.config.vocab_size)
    torch.testing.assert_close(got, want[:, pt.output_positions(8)], rtol=0, atol=1e-6)
    # the last logits (what a classification task reads) are the base's last logits
    torch.testing.assert_close(got[:, -1], want[:, -1], rtol=0, atol=1e-6)


def test_a_prepend_template_is_prompt_tuning(model):
    pt = PTuning(copy.deepcopy(model), template=[(0, 4)], encoder="none")
    prompt = PromptTuning(copy.deepcopy(model), num_virtual_tokens=4)
    with torch.no_grad():
        prompt.soft_prompt.copy_(pt.virtual_tokens)
    x = ids(2, 10, seed=9)
    torch.testing.assert_close(pt(x)[0], prompt(x)[0], rtol=0, atol=0)


def test_only_the_encoder_trains_and_gradients_reach_it(model):
    base_total = base_params(model)
    pt = PTuning(model, template=[(0, 3), (5, 2)])
    enc_total = sum(p.numel() for p in pt.prompt_encoder.parameters())
    assert count_parameters(pt) == (enc_total, base_total + enc_total)
    x, y = ids(2, 8, seed=10), ids(2, 8, seed=11)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, -1] = True
    logits, loss = pt(x, y, loss_mask=mask)
    torch.testing.assert_close(loss, masked_cross_entropy(logits, y, mask))
    loss.backward()
    assert all(p.grad is not None for p in pt.prompt_encoder.parameters())
    assert pt.prompt_encoder.embedding.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("encoder", ["lstm", "mlp", "none"])
def test_dropping_the_encoder_keeps_outputs_and_only_num_virtual_tokens_times_d(model, encoder):
    base_total = base_params(model)
    torch.manual_seed(0)
    pt = PTuning(model, template=[(0, 3), (5, 2)], encoder=encoder)
    x = ids(4, 9, seed=12)
    with torch.no_grad():
        before = pt(x)[0]
    assert pt.drop_encoder() is pt
    assert pt.prompt_encoder is None
    with torch.no_grad():
        after = pt(x)[0]
    assert torch.equal(before, after)
    d = model.config.n_embd
    trainable, total = count_parameters(pt)
    assert (trainable, total - base_total) == (0, 5 * d)
    saved = pt.get_prompt_embedding_to_save()
    assert list(saved) == ["virtual_tokens"] and saved["virtual_tokens"].shape == (5, d)
    pt.drop_encoder()  # a second call changes nothing
    assert torch.equal(pt(x)[0], after)


def test_training_with_the_course_loop_moves_the_encoder_not_the_base():
    class ConstantAnswer:
        def train_batch(self, batch_size, generator=None):
            x = torch.randint(97, (batch_size, 10), generator=generator)
            mask = torch.zeros_like(x, dtype=torch.bool)
            mask[:, -1] = True
            return x, torch.full_like(x, 7), mask

    gpt = small_gpt(std=0.3)
    before = snapshot(gpt)
    pt = PTuning(gpt, template=[(0, 2), (6, 2)])
    hist = train(pt, ConstantAnswer(), steps=25, lr=3e-2, batch_size=8, progress=False)
    assert sum(hist.loss[-5:]) / 5 < sum(hist.loss[:5]) / 5 - 0.25  # nats
    state, _ = before
    assert all(torch.equal(gpt.state_dict()[k], v) for k, v in state.items())


def test_classification_template_puts_tokens_before_the_text_and_before_the_separator():
    task = SimpleNamespace(prompt_len=68, SEP=" => ")
    assert classification_template(task, before=3, between=2) == [(0, 3), (64, 2)]


@pytest.mark.parametrize("template, error, match", [
    ([], ValueError, "at least one"),
    ("P x P", TypeError, "list of"),
    (5, TypeError, "list of"),
    ([(0, 0)], ValueError, "count >= 1"),
    ([(-1, 2)], ValueError, "position must be >= 0"),
    ([(4, 1), (1, 1)], ValueError, "strictly increasing"),
    ([(1, 1), (1, 2)], ValueError, "strictly increasing"),
    ([(0, 2.0)], TypeError, "pair of ints"),
    ([(0, True)], TypeError, "pair of ints"),
    ([(0, 1, 2)], TypeError, "pair of ints"),
    ([(0, 20), (3, 12)], ValueError, r"32 virtual tokens must be fewer than block_size \(32\)"),
])
def test_bad_template_is_refused_before_any_change(model, template, error, match):
    before = snapshot(model)
    with pytest.raises(error, match=match):
        PTuning(model, template=template)
    assert_unchanged(model, before)


def test_bad_encoder_or_model_is_refused_before_any_change(model):
    before = snapshot(model)
    with pytest.raises(ValueError, match="encoder must be one of"):
        PTuning(model, template=[(0, 2)], encoder="LSTM")
    assert_unchanged(model, before)
    with pytest.raises(TypeError, match="lora_teach GPT"):
        PTuning(torch.nn.Linear(4, 4), template=[(0, 2)])


def test_inputs_the_template_does_not_fit_are_refused(model):
    pt = PTuning(model, template=[(0, 3), (5, 2)])
    pt(ids(1, 27))  # 5 + 27 = 32 fits exactly
    with pytest.raises(ValueError, match=r"input length \(28\) = 33 exceeds block_size \(32\)"):
        pt(ids(1, 28))
    with pytest.raises(ValueError, match="before real position 5, but the input has only 4 tokens"):
        pt(ids(1, 4))
