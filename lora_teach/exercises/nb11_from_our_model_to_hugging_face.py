"""Graded exercises of notebook 11: from our model to Hugging Face (transformers and PEFT)."""

from __future__ import annotations

import warnings

import torch

from .core import _describe, _failed, _missing, _passed, check_choice

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
    expected = {"q_proj", "k_proj", "v_proj", "out_proj"}
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


def check_fused_qkv_lora(answer) -> bool:
    """11: what one LoRA of rank r on GPT-2's fused c_attn is."""
    return check_choice(
        answer, "c", name="fused_qkv_lora",
        wrong={"a": "the three share one A (r, d): the updates of q, k and v read the same r input directions, so "
                    "they are not independent. Three separate rank-r adapters would reach rank 3r; the notebook "
                    "printed 8 against 24.",
               "b": "A is (r, in) and B (out, r) either way. fan_in_fan_out only transposes the update B A before "
                    "it is added to the Conv1D weight, which is stored (in, out).",
               "d": "LoRA trains unmerged on Conv1D as on nn.Linear; merging is for inference, after training. "
                    "fan_in_fan_out=True is all the transposed storage asks for."},
        explanation="the update of c_attn is B A with B (3d, r): its three row blocks are q's, k's and v's "
                    "updates, all of them B_i A with the same A, so stacked they have rank at most r.")
