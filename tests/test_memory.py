"""Memory arithmetic: parameter counts against real models, bytes against lora_teach.measure on real modules,
each precision mode's bytes per parameter, the LoRA paper's GPT-3 figures and QLoRA's 65B figure, activations,
and the notebooks' memory figures against this module."""

import re
from pathlib import Path

import nbformat
import pytest
import torch

from lora_teach import memory as M
from lora_teach.lora import LoRAConfig, apply_lora, lora_state_dict
from lora_teach.measure import checkpoint_size, count_parameters, training_memory
from lora_teach.model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ model sizes
def test_parameter_counts_match_the_real_models():
    assert M.MODEL_SIZES["tiny"].n_params == count_parameters(GPT(GPTConfig()))[1]
    assert M.MODEL_SIZES["gpt2"].n_params == 124_439_808  # GPT-2 small, tied embeddings
    assert M.MODEL_SIZES["7b"].n_params == 6_738_415_616  # LLaMA-2 7B
    assert M.MODEL_SIZES["70b"].n_params == 68_976_648_192  # LLaMA-2 70B
    assert 65.2e9 < M.MODEL_SIZES["65b"].n_params < 65.3e9  # LLaMA 65B ("65.2B" in the LLaMA paper's table)


def test_block_linear_parameters_are_the_linear_layers_of_the_tiny_model():
    model = GPT(GPTConfig())
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and name != "lm_head")
    assert M.MODEL_SIZES["tiny"].block_linear_params == linear


# ------------------------------------------------------------------------------------------------ precisions
@pytest.mark.parametrize("precision, per_parameter", [
    ("fp32", 16), ("bf16-mixed", 16), ("bf16", 8), ("fp16", 8), ("adam-8bit", 10)])
def test_full_fine_tuning_costs_the_stated_bytes_per_parameter(precision, per_parameter):
    est = M.memory_estimate("7b", "full", precision=precision)
    assert est["total"] == per_parameter * M.MODEL_SIZES["7b"].n_params
    assert M.PRECISIONS[precision].per_trained_parameter == per_parameter
    assert str(per_parameter) in M.PRECISIONS[precision].description  # the bytes are stated on screen


def test_mixed_precision_counts_master_weights_as_optimizer_state_as_zero_does():
    est = M.memory_estimate("7b", "full", precision="bf16-mixed")
    n = M.MODEL_SIZES["7b"].n_params
    assert (est["weights"], est["gradients"], est["optimizer"], est["master"]) == (2 * n, 2 * n, 12 * n, 4 * n)
    assert M.format_bytes(est["total"]) == "108 GB"  # LLaMA-2 7B: 6.74e9 x 16 bytes, before activations


@pytest.mark.parametrize("r, targets", [(1, "q,v"), (8, "q,v"), (4, "q,k,v,o"), (2, "all linear")])
def test_lora_in_fp32_agrees_with_measure_on_the_tiny_model(r, targets):
    torch.manual_seed(0)
    names = M.TARGET_SETS[targets] or ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")
    model = apply_lora(GPT(GPTConfig()), LoRAConfig(r=r, alpha=r, target_modules=names))
    est = M.memory_estimate("tiny", "lora", r, targets, precision="fp32")
    trainable, total = count_parameters(model)
    assert (est["trainable"], est["total_parameters"]) == (trainable, total)
    assert {k: est[k] for k in ("weights", "gradients", "optimizer", "total")} == training_memory(model)
    adapter = lora_state_dict(model)
    on_disk = checkpoint_size(adapter)
    assert est["checkpoint"] <= on_disk < est["checkpoint"] + 128 * len(adapter)  # + the safetensors header


def test_full_fine_tuning_in_fp32_agrees_with_measure():
    model = GPT(GPTConfig())
    est = M.memory_estimate("tiny", "full", precision="fp32")
    assert {k: est[k] for k in ("weights", "gradients", "optimizer", "total")} == training_memory(model)
    assert est["total"] == 16 * est["total_parameters"]
    assert est["checkpoint"] <= checkpoint_size(model) < est["checkpoint"] + 128 * len(model.state_dict())


def test_qlora_stores_the_blocks_linear_layers_in_nf4_and_the_rest_in_16_bits():
    size = M.MODEL_SIZES["7b"]
    est = M.memory_estimate("7b", "lora", r=8, targets="all linear", precision="qlora")
    trainable = M.lora_parameters(size, 8, tuple(size.linears))
    frozen = size.block_linear_params * 4.126953125 / 8 + (size.n_params - size.block_linear_params) * 2
    assert est["weights"] == pytest.approx(frozen + 2 * trainable)
    assert est["gradients"] == 2 * trainable and est["optimizer"] == 8 * trainable
    lora16 = M.memory_estimate("7b", "lora", r=8, targets="all linear", precision="bf16-mixed")
    assert est["total"] < lora16["total"] / 2  # the frozen base dominates, and it shrinks about 4x
    same = M.memory_estimate("7b", "lora", r=8, targets="all linear", precision="bf16-mixed", base_bits=4)
    assert same["weights"] == pytest.approx(est["weights"])


def test_base_bits_change_only_the_frozen_weights():
    ests = {b: M.memory_estimate("7b", "lora", 8, "q,v", "bf16-mixed", base_bits=b) for b in (16, 8, 4)}
    assert ests[16]["weights"] > ests[8]["weights"] > ests[4]["weights"]
    assert len({(e["gradients"], e["optimizer"]) for e in ests.values()}) == 1


def test_nf4_bits_agree_with_the_quantize_module():
    from lora_teach.quantize import bits_per_weight

    assert M.NF4_BITS == bits_per_weight() == M.BASE_BITS[4]


@pytest.mark.parametrize("kwargs, message", [
    ({"model": "8b"}, "unknown model"),
    ({"method": "qlora"}, "method must be one of"),
    ({"r": 0}, "positive int"),
    ({"targets": "q,x"}, "unknown target set"),
    ({"targets": ["gate_proj"], "model": "gpt2"}, "not linear layers"),
    ({"precision": "int4"}, "precision must be one of"),
    ({"optimizer": "lion"}, "optimizer must be one of"),
    ({"base_bits": 3}, "base_bits must be"),
    ({"method": "full", "base_bits": 4}, "no frozen base"),
    ({"method": "full", "precision": "qlora"}, "no frozen base"),
])
def test_memory_estimate_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        M.memory_estimate(**kwargs)


# ----------------------------------------------------------------------------------------------- the papers
def test_the_lora_paper_gpt3_figures():
    """Hu et al. (2021), GPT-3 175B with Adam, 16-bit weights, LoRA r=4 on Wq and Wv."""
    lora = M.memory_estimate("gpt3-175b", "lora", r=4, targets="q,v", precision="fp16")
    full = M.memory_estimate("gpt3-175b", "full", precision="fp16")
    # Table 4 and Table 5: 4.7 M (r=1 on Wq, Wv), 18 M budget (r=4), 37.7 M (r=8, or r=4 on all four)
    assert M.memory_estimate("gpt3-175b", "lora", r=1)["trainable"] == 4_718_592
    assert lora["trainable"] == 18_874_368
    assert M.memory_estimate("gpt3-175b", "lora", r=8)["trainable"] == 37_748_736
    assert M.memory_estimate("gpt3-175b", "lora", r=4, targets="q,k,v,o")["trainable"] == 37_748_736
    assert 9_000 < full["trainable"] / lora["trainable"] < 11_000  # "10,000 times fewer"
    assert full["checkpoint"] == pytest.approx(350e9, rel=0.01)
    assert lora["checkpoint"] == pytest.approx(35e6, rel=0.10)
    assert lora["total"] == pytest.approx(350e9, rel=0.01)  # LoRA keeps the 16-bit weights and little else
    # "up to 2/3 less, as we do not store optimizer states for frozen parameters": pure 16-bit weights + moments
    # is 3x the weights; the paper's 1.2 TB lies between that and weights + gradients + moments
    p = M.lora_paper_gpt3()
    assert p["full_weights_and_moments"] <= 1.2e12 <= p["full_total"]
    assert p["full_weights_and_moments"] == pytest.approx(3 * lora["total"], rel=0.001)
    assert p["full_mixed_precision"] > 2 * 1.2e12  # 16 bytes a parameter is not what the paper counted
    assert M.format_bytes(lora["total"]) == "349 GB" and M.format_bytes(lora["checkpoint"]) == "37.7 MB"


def test_the_qlora_paper_65b_figures():
    """Dettmers et al. (2023): LLaMA 65B fine-tuned on one 48 GB GPU; 16-bit full fine-tuning > 780 GB."""
    p = M.qlora_paper_65b()
    assert p["qlora_with_activations"] < 48e9
    assert p["qlora"]["trainable"] == 80 * 64 * (4 * (8192 + 8192) + 3 * (8192 + 22016))  # r=64, all linear
    assert p["full_16bit_12_bytes"] == pytest.approx(780e9, rel=0.01)  # 16-bit weights, grads; 32-bit moments
    assert p["full_mixed_16_bytes"] > 780e9
    assert M.memory_estimate("65b", "lora", r=64, targets="all linear", precision="bf16-mixed")["total"] > 48e9


# ----------------------------------------------------------------------------------------------- activations
def test_activation_estimate_follows_its_stated_formula():
    size = M.MODEL_SIZES["gpt2"]
    s, b, d, a = 1024, 2, 768, 12
    per_block = s * b * d * (34 + 5 * a * s / d)
    assert M.activation_estimate("gpt2", b, s) == 12 * per_block
    assert M.activation_estimate("gpt2", b, s, checkpointing=True) == 12 * 2 * s * b * d + per_block
    assert M.activation_estimate("gpt2", 2 * b, s) == 2 * M.activation_estimate("gpt2", b, s)  # linear in batch
    assert M.activation_estimate(size, b, s, checkpointing=True) < M.activation_estimate(size, b, s) / 4


@pytest.mark.parametrize("kwargs, error", [
    ({"batch": 0, "seq": 10}, ValueError), ({"batch": 1, "seq": 2.5}, ValueError),
    ({"batch": 1, "seq": 10, "checkpointing": "yes"}, TypeError)])
def test_activation_estimate_rejects_bad_input(kwargs, error):
    with pytest.raises(error):
        M.activation_estimate("tiny", **kwargs)


# ------------------------------------------------------------------------------------ the notebooks agree
def _outputs(name: str) -> str:
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_notebook_02_prints_the_7b_figure_of_this_module():
    text = _outputs("02_full_fine_tuning.ipynb")
    for precision in ("fp32", "bf16-mixed"):
        total = M.memory_estimate("7b", "full", precision=precision)["total"]
        assert re.search(rf"{precision}\b.*{re.escape(M.format_bytes(total))}", text), precision


def test_notebook_09_prints_the_gpt3_figures_of_this_module():
    text = _outputs("09_lora_in_practice.ipynb")
    p = M.lora_paper_gpt3()
    for key in ("lora_total", "full_total", "full_weights_and_moments", "lora_checkpoint", "full_mixed_precision"):
        assert M.format_bytes(p[key]) in text, key


def test_notebook_12_prints_the_papers_figures_of_this_module():
    text = _outputs("12_qlora_from_scratch.ipynb")
    p = M.qlora_paper_65b()
    for key in ("qlora_total", "full_16bit_12_bytes", "qlora_with_activations"):
        assert M.format_bytes(p[key]) in text, key
