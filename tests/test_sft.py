"""lora_teach.sft: the instruction data, the chat format, the model checks and the scoring of notebook 14."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("trl")

from lora_teach import author_task, sentence_task  # noqa: E402
from lora_teach.hf import hf_tokenizer, to_transformers  # noqa: E402
from lora_teach.model import load_base_model  # noqa: E402
from lora_teach.sft import (  # noqa: E402
    CHATML_TRAINING_TEMPLATE,
    CONTINUE_COUNTS,
    COURSE_CHAT_TEMPLATE,
    COURSE_SPECIAL_TOKENS,
    LABELS,
    LINEAR_LAYERS,
    QUESTIONS,
    SetupError,
    add_chat_format,
    chat_batch,
    conversation,
    embedding_names,
    end_of_turn_ids,
    extract_label,
    generate_answers,
    instruction_splits,
    label_accuracy,
    lora_target_modules,
    loss_characters,
    mean_and_std,
    model_source,
    preference_pairs,
    saved_for_backward_bytes,
    split_for_continuation,
    stores_transposed,
    tensor_bytes,
    training_chat_template,
)

QWEN_CHATML = (  # the shape of a ChatML template as instruct models ship it: no {% generation %} markers
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def splits():
    return instruction_splits()


@pytest.fixture
def course_tokenizer():
    tok = hf_tokenizer()
    add_chat_format(tok)
    return tok


def chatml_tokenizer(template=QWEN_CHATML):
    tok = hf_tokenizer()
    tok.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                            "additional_special_tokens": ["<|im_start|>"]})
    tok.chat_template = template
    return tok


# ------------------------------------------------------------------------------------------------------ data
def test_the_splits_hold_every_task_example_and_the_open_ended_kind(splits):
    tasks = {"author": author_task(), "sentence": sentence_task()}
    for split, rows in splits.items():
        counts = {kind: sum(r["kind"] == kind for r in rows) for kind in QUESTIONS}
        assert counts == {"author": len(getattr(tasks["author"], split)),
                          "sentence": len(getattr(tasks["sentence"], split)), "continue": CONTINUE_COUNTS[split]}


def test_no_passage_is_shared_between_splits(splits):
    passages = {split: {r["passage"] for r in rows} for split, rows in splits.items()}
    assert not passages["train"] & passages["val"]
    assert not passages["train"] & passages["test"]
    assert not passages["val"] & passages["test"]


def test_every_row_is_a_two_turn_conversation_whose_answer_is_the_assistant_turn(splits):
    for rows in splits.values():
        for r in rows:
            user, assistant = r["messages"]
            assert user["role"] == "user" and user["content"].startswith(QUESTIONS[r["kind"]] + " ")
            assert assistant == {"role": "assistant", "content": r["answer"]}
            if r["kind"] in LABELS:
                assert r["answer"] in LABELS[r["kind"]] and user["content"].endswith(r["passage"])
            else:  # the open-ended kind: the beginning in the question, the rest as the answer
                assert r["passage"] == user["content"][len(QUESTIONS["continue"]) + 1:] + " " + r["answer"]


def test_the_splits_are_the_same_every_time_and_shuffled(splits):
    again = instruction_splits()
    assert again == splits
    kinds = [r["kind"] for r in splits["train"][:60]]
    assert len(set(kinds)) == 3  # the kinds are mixed, not in blocks


def test_a_continuation_is_cut_at_a_space_within_its_first_40_characters():
    beginning, rest = split_for_continuation("It is a truth universally acknowledged, that a single man")
    assert beginning == "It is a truth universally acknowledged," and rest == "that a single man"
    with pytest.raises(ValueError, match="no space"):
        split_for_continuation("x" * 64)


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind must be one of"):
        conversation("translate", "text", "answer")


def test_preference_pairs_reject_another_answer_of_the_same_kind(splits):
    rows = splits["train"][:200]
    pairs = preference_pairs(rows)
    assert len(pairs) == len(rows)
    for row, pair in zip(rows, pairs, strict=True):
        assert pair["prompt"] == row["messages"][:1]
        assert pair["chosen"] == [{"role": "assistant", "content": row["answer"]}]
        rejected = pair["rejected"][0]["content"]
        assert rejected != row["answer"]
        if row["kind"] in LABELS:
            assert rejected in LABELS[row["kind"]]
        else:
            assert rejected in {r["answer"] for r in rows if r["kind"] == "continue"}
    assert preference_pairs(rows) == pairs  # seeded
    with pytest.raises(ValueError, match="another passage"):
        preference_pairs([r for r in rows if r["kind"] == "continue"][:1])


# ------------------------------------------------------------------------------------------------ chat format
def test_the_course_tokenizer_gets_its_chat_tokens_once(course_tokenizer):
    ids = add_chat_format(course_tokenizer)  # a second call
    assert course_tokenizer.convert_ids_to_tokens(ids) == list(COURSE_SPECIAL_TOKENS.values())
    assert sorted(ids) == [97, 98, 99, 100] and len(course_tokenizer) == 101  # after the 97 characters
    assert course_tokenizer.eos_token == "<|end|>" and course_tokenizer.pad_token == "<|pad|>"
    assert course_tokenizer.chat_template == COURSE_CHAT_TEMPLATE


def test_the_course_template_puts_the_loss_on_the_answer_and_its_end_token(course_tokenizer):
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    messages = conversation("author", "It is a truth universally acknowledged", "austen")["messages"]
    text, loss = loss_characters(course_tokenizer, messages)
    assert text == ("<|user|>Who wrote this passage? It is a truth universally acknowledged<|end|>"
                    "<|assistant|>austen<|end|>")
    assert loss == "·" * (len(text) - len("austen<|end|>")) + "austen<|end|>"
    assert is_chat_template_stop_token_trained(course_tokenizer)
    prompt = course_tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
    assert text.startswith(prompt) and prompt.endswith("<|assistant|>")


def test_the_course_template_refuses_a_system_turn(course_tokenizer):
    with pytest.raises(Exception, match="roles user and assistant"):
        course_tokenizer.apply_chat_template([{"role": "system", "content": "be brief"}], tokenize=False)


def test_add_chat_format_refuses_another_tokenizer():
    with pytest.raises(SetupError, match="training_chat_template"):
        add_chat_format(chatml_tokenizer())


def test_chat_batch_labels_only_the_assistant_tokens(course_tokenizer, splits):
    rows = splits["train"][:4]
    batch = chat_batch(course_tokenizer, [r["messages"] for r in rows])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    for i, row in enumerate(rows):
        labelled = batch["labels"][i][batch["labels"][i] != -100]
        assert course_tokenizer.decode(labelled) == row["answer"] + "<|end|>"
        n = int(batch["attention_mask"][i].sum())
        assert (batch["input_ids"][i, n:] == course_tokenizer.pad_token_id).all()


def test_a_template_with_markers_is_kept(course_tokenizer):
    assert training_chat_template(course_tokenizer) == COURSE_CHAT_TEMPLATE


def test_a_chatml_template_without_markers_gets_the_chatml_training_template():
    tok = chatml_tokenizer()
    template = training_chat_template(tok)
    assert template == CHATML_TRAINING_TEMPLATE
    tok.chat_template = template
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    text, loss = loss_characters(tok, messages)
    assert text == "<|im_start|>user↵hi<|im_end|>↵<|im_start|>assistant↵ok<|im_end|>↵"
    assert loss.strip("·") == "ok<|im_end|>"
    plain = chatml_tokenizer().apply_chat_template(messages, tokenize=False)
    assert tok.apply_chat_template(messages, tokenize=False) == plain  # the same text, with markers


def test_a_template_trl_knows_is_patched_by_trl():
    from trl.chat_template_utils import qwen2_5_chat_template, qwen2_5_training_chat_template

    assert training_chat_template(chatml_tokenizer(qwen2_5_chat_template)) == qwen2_5_training_chat_template


def test_a_tokenizer_without_template_or_with_an_unknown_one_gets_a_clear_message():
    tok = hf_tokenizer()
    with pytest.raises(SetupError, match="base .*model.*-Instruct"):
        training_chat_template(tok)
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}"
    with pytest.raises(SetupError, match="generation %"):
        training_chat_template(tok)


def test_generation_stops_at_the_end_of_turn_tokens(course_tokenizer):
    assert end_of_turn_ids(course_tokenizer) == [97]
    tok = chatml_tokenizer()
    assert end_of_turn_ids(tok) == [tok.convert_tokens_to_ids("<|im_end|>")]


# ---------------------------------------------------------------------------------------------------- models
@pytest.fixture
def offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_model_source_exports_the_course_model_as_gpt2(tmp_path):
    folder = model_source("course", tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.model_type == "gpt2" and stores_transposed(model)
    assert model_source(folder, tmp_path / "unused") == folder  # a saved folder is taken as it is


@pytest.mark.parametrize("name, words", [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "HF_HUB_OFFLINE=1.*not in the local cache.*hf download"),
    ("./no/such/folder", "no folder"),
    ("", "MODEL must be"),
])
def test_model_source_says_what_to_do_offline_or_for_a_missing_folder(name, words, offline, tmp_path):
    with pytest.raises(SetupError, match=words):
        model_source(name, tmp_path)


def test_a_folder_without_config_is_refused(tmp_path):
    with pytest.raises(SetupError, match="config.json"):
        model_source(str(tmp_path), tmp_path)


def test_a_setup_error_shows_in_jupyter_without_a_traceback():
    err = SetupError("set MODEL to 'course'")
    assert err._render_traceback_() == ["SetupError: set MODEL to 'course'"]
    assert isinstance(err, ValueError)


def tiny(kind: str):
    """A tiny randomly initialised model of an architecture, built from its config (nothing downloaded)."""
    common = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=16, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    configs = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config,
               "gemma": transformers.GemmaConfig, "gemma2": transformers.Gemma2Config,
               "phi3": transformers.Phi3Config}
    if kind in configs:
        return transformers.AutoModelForCausalLM.from_config(configs[kind](**common))
    if kind == "opt":
        return to_transformers(load_base_model("cpu"), "opt")
    if kind == "gpt2":
        return to_transformers(load_base_model("cpu"), "gpt2")
    return transformers.AutoModelForCausalLM.from_config(transformers.GPTNeoXConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))


@pytest.mark.parametrize("kind", sorted(LINEAR_LAYERS))
def test_the_known_architectures_have_the_listed_linear_layers_and_peft_all_linear_finds_them(kind):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    model = tiny(kind)
    assert lora_target_modules(model) == LINEAR_LAYERS[kind]
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear", fan_in_fan_out=kind == "gpt2"))
    names = {n.rsplit(".", 1)[-1] for n, m in wrapped.named_modules() if isinstance(m, LoraLayer)}
    assert names == set(LINEAR_LAYERS[kind])


def test_an_unknown_architecture_gets_a_message_that_says_what_to_do():
    with pytest.raises(SetupError, match="gpt_neox.*named_modules.*target_modules"):
        lora_target_modules(tiny("gpt_neox"))


def test_embedding_names_and_layout():
    assert embedding_names(tiny("gpt2")) == ["wte", "lm_head"]
    assert embedding_names(tiny("llama")) == ["embed_tokens", "lm_head"]
    assert not stores_transposed(tiny("opt"))


# --------------------------------------------------------------------------------------------------- scoring
def test_extract_label_takes_the_label_named_first():
    labels = LABELS["author"]
    assert extract_label("austen", labels) == "austen"
    assert extract_label("This was written by Herman Melville, not Austen.", labels) == "melville"
    assert extract_label("no idea", labels) is None


def test_label_accuracy_counts_answers_that_name_the_label(splits):
    rows = [r for r in splits["test"] if r["kind"] == "sentence"][:4]
    answers = [rows[0]["answer"], "It is a " + rows[1]["answer"] + ".", "", "statement question exclamation"]
    expected = (2 + (extract_label(answers[3], LABELS["sentence"]) == rows[3]["answer"])) / 4
    assert label_accuracy(answers, rows) == expected
    with pytest.raises(ValueError, match="one answer per row"):
        label_accuracy(answers[:2], rows)
    with pytest.raises(ValueError, match="only the kinds"):
        label_accuracy(["x"], [r for r in splits["test"] if r["kind"] == "continue"][:1])


def test_mean_and_std_is_the_sample_deviation():
    assert mean_and_std([0.5, 0.6, 0.7]) == pytest.approx((0.6, 0.1))
    assert mean_and_std([0.4]) == (0.4, 0.0)
    with pytest.raises(ValueError):
        mean_and_std([])


def test_generate_answers_is_greedy_batched_and_leaves_the_tokenizer_as_it_was(course_tokenizer, splits):
    model = to_transformers(load_base_model("cpu"), "gpt2")
    model.resize_token_embeddings(len(course_tokenizer))
    model.train()
    rows = splits["test"][:5]
    one_batch = generate_answers(model, course_tokenizer, [r["messages"] for r in rows], max_new_tokens=6)
    small_batches = generate_answers(model, course_tokenizer, [r["messages"] for r in rows], max_new_tokens=6,
                                     batch_size=2)
    assert one_batch == small_batches and len(one_batch) == 5
    assert course_tokenizer.padding_side == "right" and model.training
    with pytest.raises(ValueError, match="one name per conversation"):
        generate_answers(model, course_tokenizer, [r["messages"] for r in rows], adapter_names=["a"])


# ---------------------------------------------------------------------------------------------------- memory
def test_tensor_bytes_counts_shared_tensors_once():
    a = torch.nn.Linear(4, 3)
    b = torch.nn.Linear(4, 3)
    b.weight = a.weight
    assert tensor_bytes(a) == 4 * (12 + 3)
    assert tensor_bytes(a, b, None) == 4 * (12 + 3 + 3)


def test_checkpointing_keeps_less_for_the_backward_pass(course_tokenizer, splits):
    model = to_transformers(load_base_model("cpu"), "gpt2")
    model.resize_token_embeddings(len(course_tokenizer))
    batch = chat_batch(course_tokenizer, [r["messages"] for r in splits["train"][:8]])
    plain = saved_for_backward_bytes(model, batch)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert 0 < saved_for_backward_bytes(model, batch) < plain / 4


# ------------------------------------------------------------------------------- notebook 14's exercise checks
@pytest.fixture(scope="module")
def nb14():
    from lora_teach.exercises import nb14_fine_tuning_like_a_practitioner as module

    return module


def test_each_exercise_passes_its_right_answer(nb14, course_tokenizer, capsys):
    messages = [{"role": "user", "content": "What kind of sentence is this? Who could say"},
                {"role": "assistant", "content": "question"}]
    _, loss = loss_characters(course_tokenizer, messages)
    assert loss.strip("·") == "question<|end|>"  # 8 characters and one end token: 9 tokens
    assert nb14.check_loss_tokens(9) and nb14.check_bnb_defaults("b")
    assert nb14.check_reference_copy_gb(7_615_616_512 * (4 + 8 / 64 + 32 / (64 * 256)) / 8 / 1e9)  # the solution
    assert [getattr(nb14, name).right_answer() for name in nb14.__all__][:2] == [9, "b"]
    from lora_teach.memory import REAL_MODELS

    assert nb14.QWEN_7B_PARAMETERS == REAL_MODELS["qwen2.5-7b"].n_params
    assert capsys.readouterr().out.count("✓") == 3
    assert nb14.check_reference_copy_gb(nb14.check_reference_copy_gb.right_answer())


def test_bnb_defaults_answer_is_what_transformers_gives():
    from transformers import BitsAndBytesConfig

    defaults = BitsAndBytesConfig(load_in_4bit=True)
    assert (defaults.bnb_4bit_quant_type, defaults.bnb_4bit_use_double_quant,
            defaults.bnb_4bit_compute_dtype) == ("fp4", False, torch.float32)


@pytest.mark.parametrize("check, answer, words", [
    ("check_loss_tokens", 8, "learns to stop"),
    ("check_loss_tokens", 10, "belongs to the prompt"),
    ("check_loss_tokens", 11, "only what is inside"),
    ("check_bnb_defaults", "a", "none of it is the default"),
    ("check_bnb_defaults", "c", "'fp4'"),
    ("check_bnb_defaults", "d", "load_in_8bit"),
    ("check_reference_copy_gb", 7_615_616_512 * 2 / 1e9, "bf16"),
    ("check_reference_copy_gb", 7_615_616_512 * 4 / 8 / 1e9, "code alone"),
    ("check_reference_copy_gb", 7_615_616_512 * 4.5 / 8 / 1e9, "fp32 block constants"),
    ("check_reference_copy_gb", 7_615_616_512 * 4.127 / 8 / 2**30, "2^30"),
])
def test_a_common_mistake_gets_its_own_message(nb14, check, answer, words, capsys):
    assert getattr(nb14, check)(answer) is False
    out = capsys.readouterr().out
    assert out.startswith("✗ ") and words in out and "Hint:" in out


@pytest.mark.parametrize("check", ["check_loss_tokens", "check_bnb_defaults", "check_reference_copy_gb"])
def test_an_unanswered_exercise_waits_and_garbage_never_raises(nb14, check, capsys):
    assert getattr(nb14, check)(None) is False
    assert capsys.readouterr().out.startswith("… ")
    for garbage in ("x", [1], object(), float("nan")):
        assert getattr(nb14, check)(garbage) is False
    assert "Traceback" not in capsys.readouterr().out
