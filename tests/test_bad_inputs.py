"""Bad input across the package API: one table, one rule.

Every row calls the package with one bad input and expects a ValueError, TypeError or FileNotFoundError whose
message names the problem AND the values that are allowed (the `mentions` of the row). The error must come
before anything changes: the model the call was given has the same state dict (bit for bit), the same module
structure (`str(model)` and the module names), the same requires_grad flags and the same train/eval mode after it.

Rows cover wrong types, ranks (tensor dimensions) and shapes; LoRA targets that match nothing; dropout values;
prompt, prefix and template lengths; adapter files from another model or rank; truncated or corrupt files; the
wrong dtype or device. Small random models (2 layers, width 16, block 32) keep the whole table fast.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from lora_teach import compare
from lora_teach.adapters import add_adapters
from lora_teach.data import LanguageModelingTask, author_task
from lora_teach.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoRAConfig,
    LoRALinear,
    apply_lora,
    load_adapter,
    lora_layers,
    merge_lora,
    save_adapter,
)
from lora_teach.measure import checkpoint_size, step_time, training_memory
from lora_teach.methods import get_method
from lora_teach.model import CARD, GPT, WEIGHTS, GPTConfig, load_base_model, save_base_model
from lora_teach.p_tuning import PTuning
from lora_teach.prefix import PrefixTuning
from lora_teach.prompt_tuning import PromptTuning
from lora_teach.tokenizer import CharTokenizer
from lora_teach.training import train

SMALL = dict(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=16)


# ------------------------------------------------------------------------------------------------ builders
def gpt(seed: int = 0, **overrides) -> GPT:
    """A small random GPT in eval mode (trainable, as a fresh model is)."""
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**SMALL, **overrides})).eval()


def lora_gpt(r: int = 4, targets=("q_proj", "v_proj"), seed: int = 0, **overrides) -> GPT:
    """A small GPT with LoRA whose B matrices are random, so that loading over them would show."""
    model = apply_lora(gpt(seed, **overrides), LoRAConfig(r=r, alpha=2 * r, target_modules=targets))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            B = layer.lora_B["default"]
            B.copy_(torch.randn(B.shape, generator=gen))
    return model


def ids(T: int = 5, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, SMALL["vocab_size"], (batch, T), generator=torch.Generator().manual_seed(0))


@cache
def lm_task() -> LanguageModelingTask:
    return LanguageModelingTask("shakespeare", block_size=16)


def saved_adapter(tmp: Path, **lora_kwargs) -> Path:
    """Directory of an adapter saved by save_adapter from `lora_gpt(**lora_kwargs)`."""
    return save_adapter(lora_gpt(**lora_kwargs), tmp / "adapter")


def truncated(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def with_config(path: Path, **changes) -> Path:
    """Rewrite the adapter's JSON config with `changes` (a tampered or hand-edited file)."""
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    config.update(changes)
    (path / ADAPTER_CONFIG).write_text(json.dumps(config))
    return path


def base_dir_with_other_weights(tmp: Path) -> Path:
    """A base-model directory whose card says width 16 but whose weights come from a width-32 model."""
    save_base_model(gpt(), tmp / "base")
    save_base_model(gpt(n_embd=32), tmp / "other")
    (tmp / "base" / WEIGHTS).write_bytes((tmp / "other" / WEIGHTS).read_bytes())
    return tmp / "base"


def base_dir(tmp: Path) -> Path:
    save_base_model(gpt(), tmp / "base")
    return tmp / "base"


# ----------------------------------------------------------------------------------------------- the table
@dataclass
class Case:
    id: str
    subject: Callable[[], object] | None  # builds what the call receives (and must leave unchanged), or None
    call: Callable  # call(subject, tmp_path): the bad call
    error: type[Exception]
    mentions: tuple[str, ...]  # the problem and the allowed values: every one must appear in the message


def C(id, subject, call, error, *mentions) -> Case:
    return Case(id, subject, call, error, mentions)


CASES = [
    # ---- the model: config, and what forward() accepts (type, rank, shape, range, dtype, device)
    C("config-heads-do-not-divide-width", None, lambda s, t: GPTConfig(n_embd=30, n_head=4),
      ValueError, "n_embd (30)", "divisible by n_head (4)"),
    C("config-dropout-one", None, lambda s, t: GPTConfig(dropout=1.0), ValueError, "dropout", "[0, 1)"),
    C("config-layers-float", None, lambda s, t: GPTConfig(n_layer=2.0), ValueError, "n_layer", "positive int"),
    C("forward-idx-and-embeds", gpt, lambda m, t: m(ids(), inputs_embeds=torch.zeros(1, 5, 16)),
      ValueError, "exactly one", "idx", "inputs_embeds"),
    C("forward-idx-1d", gpt, lambda m, t: m(ids()[0]), ValueError, "idx", "(batch, time)", "(5,)"),
    C("forward-idx-float", gpt, lambda m, t: m(ids().float()), TypeError, "idx", "torch.float32", "torch.long"),
    C("forward-idx-not-a-tensor", gpt, lambda m, t: m([[1, 2, 3]]), TypeError, "idx", "tensor", "list"),
    C("forward-token-id-out-of-range", gpt, lambda m, t: m(torch.tensor([[3, 97]])),
      ValueError, "token ids", "0..96"),
    C("forward-negative-token-id", gpt, lambda m, t: m(torch.tensor([[-1, 3]])), ValueError, "token ids", "0..96"),
    C("forward-longer-than-block", gpt, lambda m, t: m(ids(T=33)), ValueError, "33", "block_size 32"),
    C("forward-embeds-wrong-width", gpt, lambda m, t: m(inputs_embeds=torch.zeros(1, 4, 8)),
      ValueError, "(batch, time, 16)", "(1, 4, 8)"),
    C("forward-embeds-wrong-dtype", gpt, lambda m, t: m(inputs_embeds=torch.zeros(1, 4, 16, dtype=torch.float64)),
      TypeError, "torch.float64", "torch.float32"),
    C("forward-input-on-another-device", gpt,
      lambda m, t: m(torch.zeros(1, 4, dtype=torch.long, device="meta")), ValueError, "meta", "cpu"),
    C("forward-targets-wrong-shape", gpt, lambda m, t: m(ids(T=5), ids(T=4)), ValueError, "targets", "(1, 5)"),
    C("forward-loss-mask-wrong-shape", gpt, lambda m, t: m(ids(T=5), ids(T=5), loss_mask=torch.ones(1, 4)),
      ValueError, "loss_mask", "(1, 5)"),
    C("forward-prefix-one-layer-short", gpt,
      lambda m, t: m(ids(), prefix=[(torch.zeros(2, 16), torch.zeros(2, 16))]), ValueError, "prefix", "2"),
    # ---- base-model files: another model's weights, truncated or corrupt files
    C("base-weights-of-another-width", None, lambda s, t: load_base_model("cpu", base_dir_with_other_weights(t)),
      ValueError, "wte.weight", "(97, 32)", "(97, 16)"),
    C("base-weights-truncated", None, lambda s, t: load_base_model("cpu", truncated(base_dir(t) / WEIGHTS).parent),
      ValueError, WEIGHTS, "safetensors"),
    C("base-card-corrupt", None,
      lambda s, t: load_base_model("cpu", truncated(base_dir(t) / CARD, keep=0.3).parent), ValueError, CARD, "JSON"),
    # ---- LoRA: config values, targets, applying twice, the layer itself
    C("lora-rank-zero", None, lambda s, t: LoRAConfig(r=0), ValueError, "r (the rank)", "positive int"),
    C("lora-rank-float", None, lambda s, t: LoRAConfig(r=4.0), ValueError, "r (the rank)", "positive int"),
    C("lora-rank-bool", None, lambda s, t: LoRAConfig(r=True), ValueError, "r (the rank)", "positive int"),
    C("lora-alpha-zero", None, lambda s, t: LoRAConfig(alpha=0), ValueError, "alpha", "> 0"),
    C("lora-alpha-string", None, lambda s, t: LoRAConfig(alpha="16"), ValueError, "alpha", "> 0"),
    C("lora-dropout-one", None, lambda s, t: LoRAConfig(dropout=1.0), ValueError, "dropout", "[0, 1)"),
    C("lora-dropout-negative", None, lambda s, t: LoRAConfig(dropout=-0.1), ValueError, "dropout", "[0, 1)"),
    C("lora-no-targets", None, lambda s, t: LoRAConfig(target_modules=[]), ValueError, "target_modules", "q_proj"),
    C("lora-rslora-not-bool", None, lambda s, t: LoRAConfig(use_rslora="yes"), TypeError, "use_rslora", "True"),
    C("lora-target-matches-nothing", gpt, lambda m, t: apply_lora(m, LoRAConfig(target_modules=("query",))),
      ValueError, "query", "match no module", "q_proj", "lm_head"),
    C("lora-one-of-two-targets-matches-nothing", gpt,
      lambda m, t: apply_lora(m, LoRAConfig(target_modules=("q_proj", "qproj"))), ValueError, "qproj", "q_proj"),
    C("lora-target-not-linear", gpt, lambda m, t: apply_lora(m, LoRAConfig(target_modules=("attn",))),
      TypeError, "attn", "nn.Linear", "q_proj"),
    C("lora-applied-twice", lora_gpt, lambda m, t: apply_lora(m, LoRAConfig()),
      ValueError, "already has LoRA", "fresh model"),
    C("lora-config-as-dict", gpt, lambda m, t: apply_lora(m, {"r": 4}), TypeError, "LoRAConfig", "dict"),
    C("lora-layer-wraps-a-conv", lambda: nn.Conv1d(4, 4, 1), lambda m, t: LoRALinear(m, r=2, alpha=2),
      TypeError, "nn.Linear", "Conv1d"),
    C("lora-layer-rank-zero", lambda: nn.Linear(8, 8), lambda m, t: LoRALinear(m, r=0, alpha=2),
      ValueError, "r (the rank)", "positive int"),
    C("lora-merge-without-lora", gpt, lambda m, t: merge_lora(m), ValueError, "no LoRA layers", "apply_lora"),
    # ---- LoRA adapter files: another model, another rank, other layers, merged target, bad files
    C("adapter-from-a-wider-model", gpt, lambda m, t: load_adapter(m, saved_adapter(t, n_embd=32)),
      ValueError, "blocks.0.attn.q_proj", "(32, 32)", "(16, 16)"),
    C("adapter-from-a-wider-model-onto-lora", lora_gpt, lambda m, t: load_adapter(m, saved_adapter(t, n_embd=32)),
      ValueError, "blocks.0.attn.q_proj", "(32, 32)", "(16, 16)"),
    C("adapter-of-another-rank", lora_gpt, lambda m, t: load_adapter(m, saved_adapter(t, r=8)),
      ValueError, "r=8", "4"),
    C("adapter-on-other-layers", lora_gpt, lambda m, t: load_adapter(m, saved_adapter(t, targets=("k_proj",))),
      ValueError, "only in the adapter", "k_proj", "q_proj"),
    C("adapter-from-a-deeper-model", gpt, lambda m, t: load_adapter(m, saved_adapter(t, n_layer=3)),
      ValueError, "blocks.2.attn.q_proj"),
    C("adapter-onto-a-merged-model", lambda: merge_lora(lora_gpt()), lambda m, t: load_adapter(m, saved_adapter(t)),
      ValueError, "merged", "unmerge_lora"),
    C("adapter-weights-truncated", lora_gpt,
      lambda m, t: load_adapter(m, truncated(saved_adapter(t) / ADAPTER_WEIGHTS).parent),
      ValueError, ADAPTER_WEIGHTS, "safetensors"),
    C("adapter-weights-not-safetensors", lora_gpt,
      lambda m, t: load_adapter(m, _overwrite(saved_adapter(t) / ADAPTER_WEIGHTS, b"\x80\x04K\x01.").parent),
      ValueError, ADAPTER_WEIGHTS, "safetensors"),
    C("adapter-config-corrupt", lora_gpt,
      lambda m, t: load_adapter(m, truncated(saved_adapter(t) / ADAPTER_CONFIG, keep=0.4).parent),
      ValueError, ADAPTER_CONFIG, "JSON"),
    C("adapter-config-with-rank-zero", gpt, lambda m, t: load_adapter(m, with_config(saved_adapter(t), r=0)),
      ValueError, "r (the rank)", "positive int"),
    C("adapter-config-rank-disagrees-with-weights", gpt,
      lambda m, t: load_adapter(m, with_config(saved_adapter(t), r=2)),
      ValueError, "does not match its config", "[2, 16]", "[4, 16]"),
    C("adapter-config-unknown-key", gpt, lambda m, t: load_adapter(m, with_config(saved_adapter(t), rank=4)),
      ValueError, ADAPTER_CONFIG, "rank", "target_modules"),
    C("adapter-directory-missing", gpt, lambda m, t: load_adapter(m, t / "nowhere"),
      FileNotFoundError, ADAPTER_CONFIG, "save_adapter"),
    # ---- bottleneck adapters
    C("adapters-bottleneck-zero", gpt, lambda m, t: add_adapters(m, bottleneck=0),
      ValueError, "bottleneck", "positive int"),
    C("adapters-bottleneck-float", gpt, lambda m, t: add_adapters(m, bottleneck=8.0),
      ValueError, "bottleneck", "positive int"),
    C("adapters-unknown-placement", gpt, lambda m, t: add_adapters(m, placement="parallel"),
      ValueError, "parallel", "houlsby", "pfeiffer"),
    C("adapters-added-twice", lambda: add_adapters(gpt()), lambda m, t: add_adapters(m),
      ValueError, "already has adapters"),
    C("adapters-init-std-zero", gpt, lambda m, t: add_adapters(m, init_std=0.0), ValueError, "init_std", "positive"),
    C("adapters-layer-norm-flag-not-bool", gpt, lambda m, t: add_adapters(m, train_layer_norms="yes"),
      TypeError, "train_layer_norms", "True or False"),
    C("adapters-on-a-linear", lambda: nn.Linear(16, 16), lambda m, t: add_adapters(m),
      TypeError, "lora_teach GPT", "Linear"),
    # ---- prefix tuning
    C("prefix-length-zero", gpt, lambda m, t: PrefixTuning(m, num_virtual_tokens=0),
      ValueError, "num_virtual_tokens", "positive int"),
    C("prefix-length-fills-the-block", gpt, lambda m, t: PrefixTuning(m, num_virtual_tokens=32),
      ValueError, "num_virtual_tokens (32)", "block_size (32)"),
    C("prefix-reparam-not-bool", gpt, lambda m, t: PrefixTuning(m, 4, reparam="yes"), TypeError, "reparam", "True"),
    C("prefix-hidden-zero", gpt, lambda m, t: PrefixTuning(m, 4, hidden=0), ValueError, "hidden", "positive int"),
    C("prefix-on-a-linear", lambda: nn.Linear(16, 16), lambda m, t: PrefixTuning(m, 4),
      TypeError, "lora_teach GPT", "Linear"),
    C("prefix-input-too-long", lambda: PrefixTuning(gpt(), 4), lambda m, t: m(ids(T=30)),
      ValueError, "num_virtual_tokens (4)", "at most 28"),
    # ---- prompt tuning
    C("prompt-length-zero", gpt, lambda m, t: PromptTuning(m, num_virtual_tokens=0),
      ValueError, "num_virtual_tokens", "positive int"),
    C("prompt-length-fills-the-block", gpt, lambda m, t: PromptTuning(m, num_virtual_tokens=32),
      ValueError, "num_virtual_tokens (32)", "block_size (32)"),
    C("prompt-init-misspelt-mode", gpt, lambda m, t: PromptTuning(m, 4, init="vocabulary"),
      ValueError, "vocabulary", "'vocab'", "'random'"),
    C("prompt-init-text-outside-vocab", gpt, lambda m, t: PromptTuning(m, 4, init="naïve café"),
      ValueError, "not in the vocabulary", "printable ASCII"),
    C("prompt-init-not-a-string", gpt, lambda m, t: PromptTuning(m, 4, init=3), TypeError, "init", "'vocab'"),
    C("prompt-on-a-linear", lambda: nn.Linear(16, 16), lambda m, t: PromptTuning(m, 4),
      TypeError, "lora_teach GPT", "Linear"),
    C("prompt-input-too-long", lambda: PromptTuning(gpt(), 8), lambda m, t: m(ids(T=30)),
      ValueError, "num_virtual_tokens (8)", "at most 24"),
    C("prompt-input-1d", lambda: PromptTuning(gpt(), 8), lambda m, t: m(ids()[0]), ValueError, "(batch, time)"),
    # ---- P-tuning templates
    C("ptuning-empty-template", gpt, lambda m, t: PTuning(m, []), ValueError, "template", "(position, count)"),
    C("ptuning-slot-of-zero-tokens", gpt, lambda m, t: PTuning(m, [(0, 0)]), ValueError, "count >= 1"),
    C("ptuning-template-as-string", gpt, lambda m, t: PTuning(m, "0:3"), TypeError, "(position, count)"),
    C("ptuning-float-count", gpt, lambda m, t: PTuning(m, [(0, 2.0)]), TypeError, "pair of ints"),
    C("ptuning-positions-not-increasing", gpt, lambda m, t: PTuning(m, [(5, 2), (0, 2)]),
      ValueError, "strictly increasing", "[5, 0]"),
    C("ptuning-template-fills-the-block", gpt, lambda m, t: PTuning(m, [(0, 32)]),
      ValueError, "32 virtual tokens", "block_size (32)"),
    C("ptuning-unknown-encoder", gpt, lambda m, t: PTuning(m, [(0, 4)], encoder="gru"),
      ValueError, "gru", "lstm", "mlp"),
    C("ptuning-slot-beyond-the-input", lambda: PTuning(gpt(), [(10, 2)], encoder="none"),
      lambda m, t: m(ids(T=5)), ValueError, "position 10", "5 tokens"),
    # ---- the training loop and measurements
    C("train-zero-steps", gpt, lambda m, t: train(m, lm_task(), steps=0, lr=1e-3, progress=False),
      ValueError, "steps", "positive int"),
    C("train-lr-zero", gpt, lambda m, t: train(m, lm_task(), steps=2, lr=0, progress=False), ValueError, "lr", "> 0"),
    C("train-lr-string", gpt, lambda m, t: train(m, lm_task(), steps=2, lr="1e-3", progress=False),
      ValueError, "lr", "> 0"),
    C("train-unknown-schedule", gpt, lambda m, t: train(m, lm_task(), steps=2, lr=1e-3, schedule="linear",
                                                         progress=False), ValueError, "'constant'", "'cosine'"),
    C("train-batch-size-zero", gpt, lambda m, t: train(m, lm_task(), steps=2, lr=1e-3, batch_size=0, progress=False),
      ValueError, "batch_size", "positive int"),
    C("train-negative-grad-clip", gpt, lambda m, t: train(m, lm_task(), steps=2, lr=1e-3, grad_clip=-1.0,
                                                           progress=False), ValueError, "grad_clip", "None"),
    C("train-frozen-model", lambda: gpt().requires_grad_(False),
      lambda m, t: train(m, lm_task(), steps=2, lr=1e-3, progress=False), ValueError, "no trainable parameters"),
    C("memory-unknown-optimizer", gpt, lambda m, t: training_memory(m, optimizer="adagrad"),
      ValueError, "adagrad", "adamw", "sgd"),
    C("step-time-zero-steps", gpt, lambda m, t: step_time(m, lm_task().train_batch(2), steps=0),
      ValueError, "steps", ">= 1"),
    C("checkpoint-size-of-none", None, lambda s, t: checkpoint_size(None), TypeError, "dict of tensors", "nn.Module",
      "NoneType"),
    C("step-time-frozen-model", lambda: gpt().requires_grad_(False),
      lambda m, t: step_time(m, lm_task().train_batch(2)), ValueError, "no trainable parameters"),
    # ---- data, tokenizer, comparison
    C("unknown-corpus", None, lambda s, t: LanguageModelingTask("dickens"), ValueError, "dickens", "austen"),
    C("unknown-split", gpt, lambda m, t: author_task().evaluate(m, split="train"), ValueError, "'val'", "'test'"),
    C("encode-outside-vocab", None, lambda s, t: CharTokenizer().encode("señor"), ValueError, "ñ", "printable ASCII"),
    C("decode-outside-vocab", None, lambda s, t: CharTokenizer().decode([97]), ValueError, "97", "0..96"),
    C("compare-unknown-method", gpt, lambda m, t: get_method("qlora"), ValueError, "qlora", "lora"),
    C("compare-unknown-task", None, lambda s, t: compare.make_task("imdb"), ValueError, "imdb", "author"),
]


def _overwrite(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------------------------- the check
def fingerprint(subject) -> dict | None:
    """Everything a refused call must leave as it was: state dict, structure, trainable flags, mode."""
    if not isinstance(subject, nn.Module):
        return None
    return {
        "state": {k: v.detach().clone() for k, v in subject.state_dict().items()},
        "repr": str(subject),
        "modules": [name for name, _ in subject.named_modules()],
        "requires_grad": {name: p.requires_grad for name, p in subject.named_parameters()},
        "training": {name: m.training for name, m in subject.named_modules()},
    }


def assert_unchanged(before: dict | None, subject) -> None:
    if before is None:
        return
    after = fingerprint(subject)
    assert after["repr"] == before["repr"], "the module structure changed"
    assert after["modules"] == before["modules"], "the module names changed"
    assert after["requires_grad"] == before["requires_grad"], "requires_grad flags changed"
    assert after["training"] == before["training"], "train/eval mode changed"
    assert after["state"].keys() == before["state"].keys(), "state dict keys changed"
    changed = [k for k, v in before["state"].items() if not torch.equal(v, after["state"][k])]
    assert not changed, f"these tensors changed: {changed}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_clearly_before_anything_changes(case: Case, tmp_path):
    subject = case.subject() if case.subject else None
    before = fingerprint(subject)
    with pytest.raises(case.error) as info:
        case.call(subject, tmp_path)
    message = str(info.value)
    missing = [m for m in case.mentions if m not in message]
    assert not missing, f"the message does not mention {missing}: {message!r}"
    assert_unchanged(before, subject)


def test_the_table_is_big_enough_and_has_unique_ids():
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


def test_the_fingerprint_notices_a_change():
    """The check above can fail: a changed weight, a wrapped module or a flipped flag are all caught."""
    for change in (lambda m: m.lm_head.weight.data.add_(1e-6),
                   lambda m: apply_lora(m, LoRAConfig()),
                   lambda m: m.wte.requires_grad_(False),
                   lambda m: m.train()):
        model = gpt()
        before = fingerprint(model)
        change(model)
        with pytest.raises(AssertionError):
            assert_unchanged(before, model)


def test_a_refused_partial_target_list_wraps_no_layer_at_all():
    """The valid name in a partly wrong target list must not have been wrapped before the refusal."""
    model = gpt()
    with pytest.raises(ValueError):
        apply_lora(model, LoRAConfig(target_modules=("q_proj", "qproj")))
    assert not lora_layers(model)
    assert all(type(b.attn.q_proj) is nn.Linear for b in model.blocks)


def test_a_refused_adapter_file_leaves_the_current_adapter_working(tmp_path):
    """After a refused load the model still computes exactly what it computed before."""
    model = lora_gpt()
    x = ids(T=8, batch=2)
    expected = model(x)[0]
    with pytest.raises(ValueError):
        load_adapter(model, saved_adapter(tmp_path, r=8))
    torch.testing.assert_close(model(x)[0], expected, rtol=0, atol=0)


def test_refusing_applies_to_a_deep_copy_too():
    """A refusal on a copy does not touch the original (Method.build copies its base)."""
    base = gpt()
    before = fingerprint(base)
    with pytest.raises(ValueError):
        apply_lora(copy.deepcopy(base), LoRAConfig(target_modules=("nothing",)))
    assert_unchanged(before, base)
