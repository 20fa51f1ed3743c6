"""Notebook 14 on the paths its committed run does not take: our model in 4 bits, tiny Llama and Qwen2 models in
place of a Hub model, and the settings it must refuse with a clear message.

nbval (pyproject's `--nbval-lax` over notebooks/) re-runs the default, the course model in full precision, and
compares the checked cells with the committed outputs. Here papermill runs the notebook with other parameters,
offline, in a temporary folder: the tiny models are built from a config in the test and saved with a tokenizer
that has a chat template, as an instruct model's folder holds one; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

papermill = pytest.importorskip("papermill")
transformers = pytest.importorskip("transformers")
pytest.importorskip("trl")
pytest.importorskip("bitsandbytes")

from lora_teach.hf import hf_tokenizer  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "14_fine_tuning_like_a_practitioner.ipynb"
pytestmark = [pytest.mark.slow, pytest.mark.notebooks]


def run(tmp_path: Path, monkeypatch, **parameters):
    """Execute notebook 14 with `parameters` in an empty folder, offline; the executed notebook."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    work = tmp_path / "run"
    work.mkdir()
    return papermill.execute_notebook(str(NOTEBOOK), str(tmp_path / "out.ipynb"), parameters=parameters,
                                      kernel_name="python3", cwd=str(work), progress_bar=False, log_output=False)


def printed(nb) -> str:
    return "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.get("outputs", []) if out.get("name") == "stdout")


def chat_tokenizer(kind: str):
    """The course's character tokenizer with the special tokens and the chat template of an instruct model:
    Qwen2.5's or Llama 3's (both without {% generation %} markers: TRL adds them), or none."""
    from trl.chat_template_utils import llama3_chat_template, qwen2_5_chat_template

    tok = hf_tokenizer()
    tok.model_max_length = 512
    if kind == "qwen2":
        tok.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                                "additional_special_tokens": ["<|im_start|>"]})
        tok.chat_template = qwen2_5_chat_template
    elif kind == "llama":
        tok.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                                "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"]})
        tok.chat_template = llama3_chat_template
    return tok


def save_tiny(folder: Path, kind: str, template: str | None = None) -> str:
    """A randomly initialised model of `kind` ('llama', 'qwen2' or 'gpt_neox'), built from a config, saved with a
    tokenizer (the chat template of `template`, default the model's own kind; 'none' for no template)."""
    tok = chat_tokenizer(template or kind)
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=512, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    configs = {"llama": lambda: transformers.LlamaConfig(num_key_value_heads=2, **common),
               "qwen2": lambda: transformers.Qwen2Config(num_key_value_heads=2, **common),
               "gpt_neox": lambda: transformers.GPTNeoXConfig(**common)}
    transformers.set_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(configs[kind]())
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_the_tiny_models_take_the_real_model_path(tmp_path):
    from lora_teach.sft import lora_target_modules, training_chat_template

    for kind in ("llama", "qwen2"):
        folder = save_tiny(tmp_path / kind, kind)
        tok = transformers.AutoTokenizer.from_pretrained(folder)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder)
        assert "generation" in training_chat_template(tok)  # TRL's patched copy of the model's own template
        assert lora_target_modules(model)[-1] == "down_proj"


@pytest.mark.parametrize("kind, quant", [("llama", "none"), ("qwen2", "nf4")])
def test_a_tiny_llama_or_qwen2_runs_every_cell(kind, quant, tmp_path, monkeypatch):
    folder = save_tiny(tmp_path / f"tiny-{kind}", kind)
    text = printed(run(tmp_path, monkeypatch, MODEL=folder, QUANT=quant, STEPS=2))
    assert f"model_type '{kind}'" in text
    assert "LoRA on ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj')" in text
    assert "new tokens: []" in text  # an instruct model brings its chat tokens
    assert "packed 4-bit codes equal to nf4_quantize's: True" in text  # the byte check uses our model anyway
    serving = [line for line in text.splitlines() if line.startswith("row ")]
    assert len(serving) == 6 and all(line.endswith("same: True") for line in serving)
    assert "ref_model: None" in text


def test_our_model_runs_in_4_bits(tmp_path, monkeypatch):
    text = printed(run(tmp_path, monkeypatch, QUANT="nf4", STEPS=2))
    assert "model_type 'gpt2'" in text and "full copies of ['wte', 'lm_head']" in text
    assert "SFT, mean ± std" in text and "ref_model: None" in text


def error_of(tmp_path, monkeypatch, **parameters):
    with pytest.raises(papermill.PapermillExecutionError) as caught:
        run(tmp_path, monkeypatch, **parameters)
    return caught.value


@pytest.mark.parametrize("parameters, words", [
    ({"MODEL": "HuggingFaceTB/SmolLM2-135M-Instruct"}, "not in the local cache"),
    ({"QUANT": "int4"}, "QUANT must be 'none' or 'nf4'"),
])
def test_a_setting_that_cannot_work_stops_at_once_with_what_to_do(parameters, words, tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, **parameters)
    assert err.ename == "SetupError" and words in err.evalue
    assert len(err.traceback) == 1  # the message alone: no traceback through the libraries


def test_a_tokenizer_without_a_chat_template_gets_a_message(tmp_path, monkeypatch):
    folder = save_tiny(tmp_path / "base-model", "llama", template="none")
    err = error_of(tmp_path, monkeypatch, MODEL=folder)
    assert err.ename == "SetupError" and "no chat template" in err.evalue and "-Instruct" in err.evalue


def test_an_architecture_without_known_targets_gets_a_message(tmp_path, monkeypatch):
    folder = save_tiny(tmp_path / "neox", "gpt_neox", template="qwen2")
    err = error_of(tmp_path, monkeypatch, MODEL=folder)
    assert err.ename == "SetupError" and "gpt_neox" in err.evalue and "target_modules" in err.evalue
