"""Graded exercises of notebook 11: from our model to Hugging Face (transformers and PEFT)."""

from __future__ import annotations

import warnings

import torch

from .core import _describe, _failed, _missing, _passed, check_number, right_answer

__all__ = ["check_llama_all_linear", "check_opt_attention_config", "check_fused_qkv_params"]

LLAMA_HINT = ("list every nn.Linear of a Llama block by its last name: four in attention, three in the gated "
              "MLP. \"all-linear\" leaves out only the output head.")


def _llama_all_linear_names() -> list[str]:
    """The module names PEFT's "all-linear" wraps in a tiny Llama built from a config (nothing downloaded)."""
    import peft
    import transformers

    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2)
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)  # inside fork_rng: the learner's random stream is left as it was
        model = peft.get_peft_model(transformers.LlamaForCausalLM(config),
                                    peft.LoraConfig(r=2, target_modules="all-linear"))
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if isinstance(m, peft.tuners.lora.LoraLayer)})


@right_answer(_llama_all_linear_names)
def check_llama_all_linear(answer) -> bool:
    """11: the module names target_modules="all-linear" adapts in a Llama-style model."""
    name = "llama_all_linear"
    if answer is None:
        return _missing(name, LLAMA_HINT)
    if isinstance(answer, str):
        return _failed(f"`{name}` is the string {answer!r}; it should be a list of module names such as "
                       "[\"q_proj\", ...].", LLAMA_HINT)
    if not isinstance(answer, (list, tuple, set)) or not all(isinstance(a, str) for a in answer):
        return _failed(f"`{name}` should be a list of module names (strings), got {_describe(answer)}.", LLAMA_HINT)
    try:
        expected = set(_llama_all_linear_names())
    except Exception as err:  # noqa: BLE001 (a check never raises)
        return _failed(f"the check could not build its tiny Llama ({type(err).__name__}: {err}).",
                       "is peft installed? `pip install peft`")
    got = {a.strip() for a in answer}
    if got == expected:
        return _passed(f"PEFT's \"all-linear\" wraps exactly these {len(expected)} layers of every Llama block: "
                       f"{sorted(expected)}. The gated MLP has three matrices where OPT and GPT-2 have two, and "
                       "lm_head stays as it is (adapting the output head is rarely wanted).")
    extra, missing = sorted(got - expected), sorted(expected - got)
    known = {"lm_head": "\"all-linear\" leaves the output head lm_head out.",
             "out_proj": "out_proj is OPT's name; Llama calls its output projection o_proj.",
             "fc1": "fc1 and fc2 are OPT's MLP; Llama's gated MLP has gate_proj, up_proj and down_proj.",
             "fc2": "fc1 and fc2 are OPT's MLP; Llama's gated MLP has gate_proj, up_proj and down_proj.",
             "c_attn": "c_attn is GPT-2's fused q, k, v; Llama keeps q_proj, k_proj and v_proj separate."}
    for wrong in extra:
        if wrong in known:
            return _failed(f"{wrong!r} is not adapted: {known[wrong]}", LLAMA_HINT)
    if missing == ["gate_proj"]:
        return _failed("gate_proj is missing: Llama's MLP is down(SiLU(gate(x)) ⊙ up(x)), three linear layers.",
                       LLAMA_HINT)
    if missing and set(missing) <= {"gate_proj", "up_proj", "down_proj"}:
        return _failed(f"the MLP's {missing} are missing: \"all-linear\" adapts the MLP too, not only attention.",
                       LLAMA_HINT)
    return _failed(f"not quite: {'missing ' + str(missing) if missing else ''}"
                   f"{'; ' if missing and extra else ''}{'not in a Llama block ' + str(extra) if extra else ''}.",
                   LLAMA_HINT)


OPT_HINT = ("print the names of one OPT block with named_modules() (the cell 'Finding target names' did): OPT's "
            "output projection is not called o_proj.")


def _small_opt():
    """A small OPT model of the course's architecture, exported from a seeded course GPT."""
    from ..hf import to_transformers
    from ..model import GPT, GPTConfig

    torch.manual_seed(0)
    return to_transformers(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16)), "opt")


OPT_ATTENTION = ["q_proj", "k_proj", "v_proj", "out_proj"]  # the four attention projections of an OPT block


def _opt_attention_config():
    import peft

    return peft.LoraConfig(r=8, lora_alpha=16, target_modules=OPT_ATTENTION)


@right_answer(_opt_attention_config)
def check_opt_attention_config(config) -> bool:
    """11: a LoraConfig that puts LoRA on all four attention projections of every OPT block, and nowhere else."""
    name = "opt_attention_config"
    try:
        import peft
    except ImportError:
        return _failed("peft is not installed.", "`pip install peft`")
    if config is None:
        return _missing(name, OPT_HINT)
    if not isinstance(config, peft.LoraConfig):
        return _failed(f"`{name}` should be a peft.LoraConfig(...), got {_describe(config)}.", OPT_HINT)
    if config.fan_in_fan_out:
        return _failed("fan_in_fan_out=True is for GPT-2's Conv1D layers, stored (in, out); OPT's are nn.Linear.",
                       "leave fan_in_fan_out at its default, False.")
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = peft.get_peft_model(_small_opt(), config)
        except Exception as err:  # noqa: BLE001 (a check never raises)
            return _failed(f"PEFT refused the config: {type(err).__name__}: {str(err)[:200]}", OPT_HINT)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    names = {n.rsplit(".", 1)[-1] for n in wrapped}
    expected = set(OPT_ATTENTION)
    if names == expected and len(wrapped) == 4 * 2:
        return _passed("LoRA is on q_proj, k_proj, v_proj and out_proj in every block. With \"o_proj\" PEFT "
                       "matched three of the four names and skipped the fourth without a word: after "
                       "get_peft_model, print what was wrapped (or print_trainable_parameters) and compare "
                       "with what you meant.")
    targets = config.target_modules
    if isinstance(targets, (set, list, tuple)) and "o_proj" in targets and "out_proj" not in names:
        return _failed("\"o_proj\" still matches nothing in OPT, so the output projection gets no LoRA; PEFT "
                       "does not warn when only some of the names match.", OPT_HINT)
    if names > expected:
        return _failed(f"LoRA also landed on {sorted(names - expected)}: the task asks for the attention "
                       "projections only (\"all-linear\" adapts the MLP too).", "list the four names explicitly.")
    return _failed(f"LoRA landed on {sorted(names)} in {len(wrapped)} places; expected q_proj, k_proj, v_proj "
                   "and the output projection in each of the 2 blocks.", OPT_HINT)


@right_answer(lambda: 24 * (768 + 3 * 768))  # rank 3 x 8: A (24, 768) and B (2304, 24)
def check_fused_qkv_params(answer) -> bool:
    """11: trainable numbers per block of the smallest LoRA on GPT-2 small's c_attn that holds three independent
    rank-8 updates of q, k and v."""
    d, r = 768, 8
    expected = check_fused_qkv_params.right_answer()
    return check_number(
        answer, expected, name="fused_params", rel_tol=1e-9,
        hint="stacked into one fused layer, what rank can three independent rank-8 updates have (the notebook "
             "printed it for our size)? Then count A and B of one 768 → 2304 layer at that rank.",
        explanation="rank 24 on c_attn: A (24, 768) and B (2304, 24), 73,728 numbers a block, twice the 36,864 of "
                    "three separate rank-8 LoRAs on 768 → 768 projections. To hold three separate adapters exactly, B "
                    "needs only its three diagonal blocks (the rest stays zero): that is how save_peft_adapter "
                    "writes our q and v adapters for GPT-2, at rank 16.",
        mistakes=[(r * (d + 3 * d), "that is one LoRA of rank 8 on c_attn: q, k and v share its A, so together "
                                    "their updates have rank 8 at most, not three independent rank-8 updates."),
                  (3 * r * (d + d), "that is three separate rank-8 LoRAs on 768 → 768 layers; GPT-2 has one layer, "
                                    "c_attn (768 → 2304), and one LoRA on it must reach rank 24."),
                  (2 * r * (d + 3 * d), "rank 16 holds two independent rank-8 updates (q and v); q, k and v "
                                        "need three."),
                  (3 * r * (d + 3 * d) * 12, "that is for all 12 blocks; the question asks per block.")])
