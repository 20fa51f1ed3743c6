"""lora_teach.memory's real models and its GPU fit table, against published figures.

Parameter counts are the models' published ones (their configs give them exactly; the model cards round them:
Llama-3-8B 8.03 B, Qwen2.5-1.5B 1.54 B with 1.31 B outside the embedding, Qwen2.5-7B 7.61 B with 6.53 B,
Mistral-7B 7.24 B). The memory headline checked is QLoRA's (Dettmers et al., 2023): LLaMA 65B fine-tuned on one
48 GB GPU, where 16-bit full fine-tuning needs more than 780 GB.
"""

from __future__ import annotations

import pytest

from lora_teach import memory as M

PUBLISHED = {  # key -> (parameters, parameters outside the embedding and head, as the model card rounds them)
    "llama-3-8b": (8_030_261_248, None),
    "qwen2.5-1.5b": (1_543_714_304, 1.31e9),
    "qwen2.5-7b": (7_615_616_512, 6.53e9),
    "mistral-7b": (7_241_732_096, None),
}


@pytest.mark.parametrize("key", sorted(PUBLISHED))
def test_each_real_model_has_its_published_parameter_count(key):
    size = M.REAL_MODELS[key]
    total, non_embedding = PUBLISHED[key]
    assert size.n_params == total
    if non_embedding:
        tied = key == "qwen2.5-1.5b"
        outside = size.n_params - (1 if tied else 2) * size.vocab * size.d_model
        assert round(outside / 1e9, 2) == non_embedding / 1e9


def test_the_old_presets_keep_their_numbers():
    assert M.MODEL_SIZES["7b"].n_params == 6_738_415_616
    assert M.MODEL_SIZES["70b"].n_params == 68_976_648_192
    assert M.llama_parameters(32, 4096, 11008, 32000) == M.MODEL_SIZES["7b"].n_params
    assert set(M.MODEL_SIZES) == {"tiny", "gpt2", "7b", "65b", "70b", "gpt3-175b"}  # notebook 09's calculator


def test_qwen_biases_and_tied_head_are_counted():
    untied = M.llama_parameters(28, 1536, 8960, 151936, d_kv=256, qkv_bias=True)
    tied = M.llama_parameters(28, 1536, 8960, 151936, d_kv=256, qkv_bias=True, tied=True)
    assert untied - tied == 151936 * 1536
    no_bias = M.llama_parameters(28, 1536, 8960, 151936, d_kv=256, tied=True)
    assert tied - no_bias == 28 * (1536 + 2 * 256)


def test_real_models_work_with_the_existing_estimates():
    est = M.memory_estimate("llama-3-8b", "lora", r=16, targets="all linear", precision="bf16-mixed")
    # q and o (4096 -> 4096), k and v (4096 -> 1024), gate, up and down (4096 <-> 14336): 41.9 M at r = 16
    assert est["trainable"] == 32 * 16 * (2 * (4096 + 4096) + 2 * (4096 + 1024) + 3 * (4096 + 14336)) == 41_943_040


def test_qlora_65b_fits_48_gb_with_the_papers_settings_and_full_fine_tuning_needs_780():
    paper = M.fine_tuning_memory("65b", "qlora", r=64, seq=512, adapter_dtype="bf16", other_bytes=2)
    assert 40e9 < paper["total"] < 48e9
    assert M.qlora_paper_65b()["full_16bit_12_bytes"] > 780e9
    # PEFT's defaults (fp32 adapters, fp32 embeddings after prepare_model_for_kbit_training) cost more
    peft_defaults = M.fine_tuning_memory("65b", "qlora", r=64, seq=512)
    assert peft_defaults["total"] - paper["total"] == pytest.approx(
        M.lora_parameters(M.MODEL_SIZES["65b"], 64, tuple(M.MODEL_SIZES["65b"].linears)) * 4
        + (M.MODEL_SIZES["65b"].n_params - M.MODEL_SIZES["65b"].block_linear_params) * 2)


def test_the_parts_add_up_and_follow_the_stated_bytes():
    size = M.REAL_MODELS["mistral-7b"]
    full = M.fine_tuning_memory("mistral-7b", "full", seq=1024)
    assert full["weights"] + full["gradients"] + full["optimizer"] == 16 * size.n_params
    assert full["logits"] == 1024 * size.vocab * M.LOGIT_BYTES
    assert full["activations"] == M.activation_estimate("mistral-7b", 1, 1024, checkpointing=True)
    assert full["total"] == sum(full[k] for k in ("weights", "gradients", "optimizer", "activations", "logits"))
    lora = M.fine_tuning_memory("mistral-7b", "lora", r=16, seq=1024)
    adapters = M.lora_parameters(size, 16, tuple(size.linears))
    assert lora["gradients"] == 4 * adapters and lora["optimizer"] == 8 * adapters  # fp32, as PEFT keeps them
    assert lora["weights"] == 2 * size.n_params + 4 * adapters
    qlora = M.fine_tuning_memory("mistral-7b", "qlora", r=16, seq=1024)
    other = size.n_params - size.block_linear_params
    assert qlora["weights"] == pytest.approx(size.block_linear_params * M.NF4_BITS / 8 + 4 * other + 4 * adapters)


def test_the_vocabulary_matters_llama_3_logits_and_embeddings():
    llama, mistral = (M.fine_tuning_memory(k, "qlora") for k in ("llama-3-8b", "mistral-7b"))
    assert llama["logits"] == 128256 / 32000 * mistral["logits"]
    assert llama["weights"] > mistral["weights"] + 3e9  # 96 k more embedding and head rows, in fp32


def test_the_fit_table_matches_what_practitioners_see():
    rows = {(r["model"], r["method"]): r for r in M.fit_table()}
    for name in ("Llama-3-8B", "Qwen2.5-7B", "Mistral-7B"):
        assert not any(rows[name, "full"][g] for g in M.GPUS)  # 7-8 B x 16 bytes > 112 GB
        assert rows[name, "qlora"]["T4 16 GB"]  # the free Colab GPU
        assert not rows[name, "lora"]["T4 16 GB"] and rows[name, "lora"]["A100 40 GB"]  # a 16-bit base: 14-16 GB
    assert all(rows["Qwen2.5-1.5B", m]["T4 16 GB"] for m in ("lora", "qlora"))
    assert rows["Qwen2.5-1.5B", "full"]["A100 40 GB"] and not rows["Qwen2.5-1.5B", "full"]["L4 24 GB"]


def test_fits_keeps_the_reserve():
    assert M.fits(15e9, "T4 16 GB") and not M.fits(15e9 + 1, "T4 16 GB")


@pytest.mark.parametrize("call, message", [
    (lambda: M.fine_tuning_memory("llama-3-8b", "dora"), "method must be one of"),
    (lambda: M.fine_tuning_memory("llama-3-8b", "lora", adapter_dtype="fp16"), "adapter_dtype must be one of"),
    (lambda: M.fine_tuning_memory("llama-3-8b", "lora", r=0), "positive int"),
    (lambda: M.fine_tuning_memory("llama-3-8b", "full", other_bytes=2), "other_bytes is for LoRA"),
    (lambda: M.fine_tuning_memory("llama-4", "lora"), "unknown model"),
    (lambda: M.fine_tuning_memory(M.ModelSize("x", 10, 1, {"q_proj": (2, 2)}, 2, 1), "lora"), "vocab"),
    (lambda: M.fits(1e9, "H100"), "gpu must be one of"),
])
def test_bad_input_is_refused_with_the_allowed_values(call, message):
    with pytest.raises(ValueError, match=message):
        call()
