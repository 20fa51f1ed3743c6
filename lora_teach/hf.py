"""From the course's GPT to Hugging Face transformers and PEFT, and back, with nothing lost.

The course model is an OPT model (`OPTForCausalLM`) of a tiny size: separate q, k, v and output projections
with biases, pre-LayerNorm blocks, learned positions (OPT stores two extra rows in front: its offset of 2),
GELU and an untied output head. It is also a GPT-2 model (`GPT2LMHeadModel`) whose fused `c_attn` holds q, k
and v side by side in a `Conv1D`, a layer that stores its weight as (in, out), the transpose of nn.Linear.

Model:      `to_transformers`, `from_transformers`, `save_pretrained` (model + tokenizer, loadable offline by
            `AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)`), `hf_tokenizer`.
Adapters:   `save_peft_adapter` writes PEFT's own format (`adapter_config.json` + `adapter_model.safetensors`,
            which `peft.PeftModel.from_pretrained` reads); `load_peft_adapter` reads one PEFT wrote.
Names:      `hf_module_name` maps a course module name to the exported model's.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from .lora import DEFAULT, LoRALinear, lora_layers, mark_only_lora_as_trainable
from .model import GPT, GPTConfig, read_safetensors
from .tokenizer import VOCAB, CharTokenizer

ARCHITECTURES = ("opt", "gpt2")
PEFT_CONFIG = "adapter_config.json"  # the file names PEFT's save_pretrained writes and from_pretrained reads
PEFT_WEIGHTS = "adapter_model.safetensors"
OPT_OFFSET = 2  # OPT's learned positions start at row 2 of embed_tokens' neighbour, embed_positions

# course name (inside blocks.{i}.) -> exported name (inside the architecture's layer {i}.)
_BLOCK_NAMES = {
    "opt": {"ln_1": "self_attn_layer_norm", "attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj",
            "attn.v_proj": "self_attn.v_proj", "attn.o_proj": "self_attn.out_proj", "ln_2": "final_layer_norm",
            "mlp.up_proj": "fc1", "mlp.down_proj": "fc2"},
    "gpt2": {"ln_1": "ln_1", "attn.q_proj": "attn.c_attn", "attn.k_proj": "attn.c_attn",
             "attn.v_proj": "attn.c_attn", "attn.o_proj": "attn.c_proj", "ln_2": "ln_2",
             "mlp.up_proj": "mlp.c_fc", "mlp.down_proj": "mlp.c_proj"},
}
_LAYER_PREFIX = {"opt": "model.decoder.layers.", "gpt2": "transformer.h."}
_QKV = ("attn.q_proj", "attn.k_proj", "attn.v_proj")  # their order inside GPT-2's c_attn


def _check_architecture(architecture) -> None:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {list(ARCHITECTURES)}, got {architecture!r}")


def hf_module_name(name: str, architecture: str = "opt") -> str:
    """The exported model's name for the course module `name`, e.g. 'blocks.0.attn.o_proj' ->
    'model.decoder.layers.0.self_attn.out_proj' (OPT) or 'transformer.h.0.attn.c_proj' (GPT-2)."""
    _check_architecture(architecture)
    if name == "lm_head":
        return "lm_head"
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if not match or match.group(2) not in _BLOCK_NAMES[architecture]:
        raise ValueError(f"{name!r} is not a module of the course GPT that the export maps; the mapped names are "
                         f"'lm_head' and 'blocks.<i>.' + one of {sorted(_BLOCK_NAMES[architecture])}")
    return f"{_LAYER_PREFIX[architecture]}{match.group(1)}.{_BLOCK_NAMES[architecture][match.group(2)]}"


# ------------------------------------------------------------------------------------------------- the model
def hf_config(cfg: GPTConfig, architecture: str = "opt"):
    """The transformers config of the same shape: `OPTConfig` or `GPT2Config`."""
    _check_architecture(architecture)
    from transformers import GPT2Config, OPTConfig

    common = dict(vocab_size=cfg.vocab_size, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
                  pad_token_id=None)
    if architecture == "opt":
        return OPTConfig(hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                         ffn_dim=4 * cfg.n_embd, max_position_embeddings=cfg.block_size, do_layer_norm_before=True,
                         word_embed_proj_dim=cfg.n_embd, activation_function="gelu", enable_bias=True,
                         dropout=cfg.dropout, attention_dropout=cfg.dropout, layerdrop=0.0, **common)
    return GPT2Config(n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=4 * cfg.n_embd,
                      n_positions=cfg.block_size, activation_function="gelu", layer_norm_epsilon=1e-5,
                      resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, **common)


def _require_plain(model: nn.Module) -> None:
    if not isinstance(model, GPT):
        raise TypeError(f"expected the course's GPT (lora_teach.model.GPT), got {type(model).__name__}")
    if lora_layers(model):
        raise ValueError("the model has LoRA layers: export the base model and write the adapter with "
                         "save_peft_adapter, or merge it in first with lora_teach.lora.merge_and_unload(model)")


def _hf_state(state: dict[str, torch.Tensor], cfg: GPTConfig, architecture: str) -> dict[str, torch.Tensor]:
    """The course state dict, renamed (and for GPT-2 fused and transposed) into the exported model's."""
    out = {"lm_head.weight": state["lm_head.weight"]}
    if architecture == "opt":
        wpe = state["wpe.weight"]
        out["model.decoder.embed_tokens.weight"] = state["wte.weight"]
        out["model.decoder.embed_positions.weight"] = torch.cat([wpe.new_zeros(OPT_OFFSET, wpe.shape[1]), wpe])
        out["model.decoder.final_layer_norm.weight"] = state["ln_f.weight"]
        out["model.decoder.final_layer_norm.bias"] = state["ln_f.bias"]
    else:
        out["transformer.wte.weight"] = state["wte.weight"]
        out["transformer.wpe.weight"] = state["wpe.weight"]
        out["transformer.ln_f.weight"] = state["ln_f.weight"]
        out["transformer.ln_f.bias"] = state["ln_f.bias"]
    for i in range(cfg.n_layer):
        for ours in _BLOCK_NAMES[architecture]:
            src, dst = f"blocks.{i}.{ours}", hf_module_name(f"blocks.{i}.{ours}", architecture)
            if architecture == "gpt2" and ours in _QKV:
                if ours == _QKV[0]:  # c_attn = [q | k | v], stored (in, 3d) like every Conv1D
                    out[f"{dst}.weight"] = torch.cat([state[f"blocks.{i}.{n}.weight"] for n in _QKV]).T
                    out[f"{dst}.bias"] = torch.cat([state[f"blocks.{i}.{n}.bias"] for n in _QKV])
                continue
            transpose = architecture == "gpt2" and ours.endswith("_proj")  # Conv1D: (in, out)
            out[f"{dst}.weight"] = state[f"{src}.weight"].T if transpose else state[f"{src}.weight"]
            out[f"{dst}.bias"] = state[f"{src}.bias"]
    return {k: v.contiguous() for k, v in out.items()}


def to_transformers(model: GPT, architecture: str = "opt"):
    """A transformers `OPTForCausalLM` ('opt') or `GPT2LMHeadModel` ('gpt2') with the course model's weights,
    dtype and device, in eval mode: its logits equal the course model's for any input up to the context."""
    _check_architecture(architecture)
    _require_plain(model)
    from transformers import GPT2LMHeadModel, OPTForCausalLM

    weight = model.wte.weight
    hf = (OPTForCausalLM if architecture == "opt" else GPT2LMHeadModel)(hf_config(model.config, architecture))
    hf = hf.to(device=weight.device, dtype=weight.dtype)
    state = _hf_state(model.state_dict(), model.config, architecture)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k in dict(hf.named_parameters())]:
        raise RuntimeError(f"the export missed parameters: missing {missing}, unexpected {unexpected}")
    return hf.eval()


def _architecture_of(hf_model) -> str:
    kind = getattr(getattr(hf_model, "config", None), "model_type", None)
    if kind not in ARCHITECTURES:
        raise ValueError(f"from_transformers reads an OPTForCausalLM or a GPT2LMHeadModel (model_type 'opt' or "
                         f"'gpt2'); got {type(hf_model).__name__} with model_type {kind!r}")
    return kind


def _course_config(hf_config_) -> GPTConfig:
    """The GPTConfig of an OPT or GPT-2 config, refusing settings the course model cannot express."""
    c = hf_config_
    if c.model_type == "opt":
        problems = {"do_layer_norm_before": (c.do_layer_norm_before, True), "activation_function":
                    (c.activation_function, "gelu"), "word_embed_proj_dim": (c.word_embed_proj_dim, c.hidden_size),
                    "ffn_dim": (c.ffn_dim, 4 * c.hidden_size), "enable_bias": (c.enable_bias, True)}
        dims = dict(vocab_size=c.vocab_size, block_size=c.max_position_embeddings, n_layer=c.num_hidden_layers,
                    n_head=c.num_attention_heads, n_embd=c.hidden_size, dropout=float(c.dropout))
    else:
        problems = {"activation_function": (c.activation_function, "gelu"), "n_inner": (c.n_inner or 4 * c.n_embd,
                    4 * c.n_embd), "layer_norm_epsilon": (c.layer_norm_epsilon, 1e-5)}
        dims = dict(vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer, n_head=c.n_head,
                    n_embd=c.n_embd, dropout=float(c.resid_pdrop))
    wrong = {k: f"{got!r} (the course model needs {need!r})" for k, (got, need) in problems.items() if got != need}
    if wrong:
        raise ValueError(f"this {c.model_type} model differs from the course architecture: {wrong}")
    return GPTConfig(**dims)


def from_transformers(hf_model) -> GPT:
    """The course GPT with the weights of an `OPTForCausalLM` or `GPT2LMHeadModel` of the course's shape (the
    inverse of `to_transformers`: a round trip gives back the same tensors), on its device, in eval mode."""
    architecture = _architecture_of(hf_model)
    cfg = _course_config(hf_model.config)
    hf_state = hf_model.state_dict()
    model = GPT(cfg)
    expected = _hf_state(model.state_dict(), cfg, architecture)  # names and shapes the export would write
    problems = [f"{k}: expected {tuple(v.shape)}, found {tuple(hf_state[k].shape) if k in hf_state else 'nothing'}"
                for k, v in expected.items() if k not in hf_state or hf_state[k].shape != v.shape]
    if problems:
        raise ValueError("the transformers model does not fit the course architecture:\n  " + "\n  ".join(problems))
    state = {"lm_head.weight": hf_state["lm_head.weight"]}
    if architecture == "opt":
        state["wte.weight"] = hf_state["model.decoder.embed_tokens.weight"]
        state["wpe.weight"] = hf_state["model.decoder.embed_positions.weight"][OPT_OFFSET:]
        state["ln_f.weight"] = hf_state["model.decoder.final_layer_norm.weight"]
        state["ln_f.bias"] = hf_state["model.decoder.final_layer_norm.bias"]
    else:
        for ours in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"):
            state[ours] = hf_state[f"transformer.{ours}"]
    d = cfg.n_embd
    for i in range(cfg.n_layer):
        for ours in _BLOCK_NAMES[architecture]:
            src = hf_module_name(f"blocks.{i}.{ours}", architecture)
            w, b = hf_state[f"{src}.weight"], hf_state[f"{src}.bias"]
            if architecture == "gpt2" and ours in _QKV:
                part = slice(_QKV.index(ours) * d, (_QKV.index(ours) + 1) * d)
                w, b = w[:, part], b[part]
            if architecture == "gpt2" and ours.endswith("_proj"):
                w = w.T  # Conv1D (in, out) -> nn.Linear (out, in)
            state[f"blocks.{i}.{ours}.weight"], state[f"blocks.{i}.{ours}.bias"] = w, b
    weight = hf_model.get_input_embeddings().weight
    model = model.to(device=weight.device, dtype=weight.dtype)
    model.load_state_dict({k: v.contiguous() for k, v in state.items()}, strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------------- the tokenizer
def hf_tokenizer():
    """The course's character tokenizer as a transformers fast tokenizer, built with the `tokenizers` library:
    one token per character, the ids of `CharTokenizer`, no special tokens; an unknown character is refused."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(CharTokenizer().vocab)}
    # "[UNK]" is deliberately not in the vocabulary: the tokenizer then raises on a character it lacks
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character alone
    tok.decoder = decoders.Fuse()  # decode by joining the characters, no spaces between them
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=GPTConfig.block_size)


def save_pretrained(model: GPT, directory: str | Path, architecture: str = "opt") -> Path:
    """Write the exported model and its tokenizer to `directory`, as a Hub repository holds them:
    `AutoModelForCausalLM.from_pretrained(directory)` and `AutoTokenizer.from_pretrained(directory)` load it."""
    hf = to_transformers(model, architecture)  # every check happens before anything is written
    if model.config.vocab_size != len(VOCAB):
        raise ValueError(f"the tokenizer has the course's {len(VOCAB)} characters; this model has a vocabulary of "
                         f"{model.config.vocab_size}")
    directory = Path(directory)
    hf.save_pretrained(directory)
    hf_tokenizer().save_pretrained(directory)
    return directory


# ------------------------------------------------------------------------------------------------- adapters
def _peft_targets(names: list[str], architecture: str) -> list[str]:
    """PEFT target_modules for exported module names: the last component, or two where it is ambiguous
    (GPT-2 has a c_proj in attention and in the MLP)."""
    if architecture == "gpt2":
        return sorted({n if n == "lm_head" else ".".join(n.split(".")[-2:]) for n in names})
    return sorted({n.rsplit(".", 1)[-1] for n in names})


def save_peft_adapter(model: nn.Module, path: str | Path, architecture: str = "opt",
                      base_model_name_or_path: str | None = None) -> Path:
    """Write the LoRA adapter of a course model as PEFT does, for `to_transformers(base, architecture)`:
    adapter_config.json (PEFT's LoraConfig) and adapter_model.safetensors (PEFT's tensor names). The default
    adapter is written, plain LoRA only: DoRA and PiSSA are refused.

    On GPT-2, q, k and v share one `c_attn`: their LoRA layers become one LoRA of c_attn whose A stacks theirs
    and whose B is block-diagonal (rank = the sum of their ranks, written to `rank_pattern` / `alpha_pattern`
    so the scaling stays the same); PEFT then sees one dropout mask where ours had one per projection."""
    _check_architecture(architecture)
    from peft import LoraConfig

    layers = lora_layers(model)
    if not isinstance(model, GPT) or not layers:
        raise ValueError("save_peft_adapter needs a course GPT with LoRA layers: call "
                         "lora_teach.lora.apply_lora(model, config) first")
    merged = [n for n, m in layers.items() if m.merged]
    if merged:
        raise ValueError(f"LoRA layers {merged} are merged into the base weights; unmerge_lora(model) first")
    off = [n for n, m in layers.items() if DEFAULT in m.disabled_adapters]
    if off:
        raise ValueError(f"the adapter {DEFAULT!r} is switched off in {off}; the file would load switched on: "
                         f"call enable_adapter_by_name(model, {DEFAULT!r}) first")
    family = [n for n, m in layers.items() if DEFAULT in m.lora_magnitude or m.init_lora_weights[DEFAULT] == "pissa"]
    if family:
        raise ValueError(f"save_peft_adapter writes plain LoRA; the default adapter of {family} uses DoRA or PiSSA. "
                         "Save it with lora_teach.lora.save_adapter (DoRA), or merge it in first (PiSSA)")
    settings = {n: (m.r[DEFAULT], m.alpha[DEFAULT], m.use_rslora[DEFAULT], _dropout(m)) for n, m in layers.items()}
    if len(set(settings.values())) > 1:
        raise ValueError(f"save_peft_adapter expects one r, alpha, use_rslora and dropout for all layers, "
                         f"got {settings}")
    r, alpha, rslora, dropout = settings[next(iter(settings))]
    hf_names = {n: hf_module_name(n, architecture) for n in layers}  # refuses a layer the export does not map
    tensors, ranks = {}, set()
    for name, layer in layers.items():
        if architecture == "gpt2" and name.rsplit(".", 2)[-2] + "." + name.rsplit(".", 1)[-1] in _QKV:
            continue
        tensors[f"base_model.model.{hf_names[name]}.lora_A.weight"] = layer.lora_A[DEFAULT].detach()
        tensors[f"base_model.model.{hf_names[name]}.lora_B.weight"] = layer.lora_B[DEFAULT].detach()
    if architecture == "gpt2":
        tensors.update(_fused_qkv(layers, model.config, ranks))
    fused = ranks.pop() if ranks else r
    rank_pattern = {"c_attn": fused} if fused != r else {}
    alpha_pattern = {}
    if rank_pattern:  # keep the scaling alpha / r (or alpha / sqrt(r)) of every projection
        factor = rank_pattern["c_attn"] / r
        alpha_pattern = {"c_attn": alpha * (math.sqrt(factor) if rslora else factor)}
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, use_rslora=rslora,
                        target_modules=_peft_targets(list(hf_names.values()), architecture),
                        fan_in_fan_out=architecture == "gpt2", bias="none", task_type="CAUSAL_LM",
                        rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
                        base_model_name_or_path=base_model_name_or_path)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(path))
    save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, str(path / PEFT_WEIGHTS),
              metadata={"format": "pt"})
    return path


def _dropout(layer: LoRALinear) -> float:
    """The dropout rate of the layer's default adapter."""
    dropout = layer.lora_dropout[DEFAULT]
    return dropout.p if isinstance(dropout, nn.Dropout) else 0.0


def _fused_qkv(layers: dict[str, LoRALinear], cfg: GPTConfig, ranks: set) -> dict[str, torch.Tensor]:
    """GPT-2's c_attn LoRA from the course's q, k, v LoRA layers of each block: A stacked, B block-diagonal."""
    out, d = {}, cfg.n_embd
    for i in range(cfg.n_layer):
        present = [n for n in _QKV if f"blocks.{i}.{n}" in layers]
        if not present:
            continue
        parts = [layers[f"blocks.{i}.{n}"] for n in present]
        A = torch.cat([p.lora_A[DEFAULT].detach() for p in parts])  # (sum of r, in)
        B = A.new_zeros(3 * d, A.shape[0])  # (3d, sum of r): q rows, then k, then v
        col = 0
        for n, p in zip(present, parts, strict=True):
            row = _QKV.index(n) * d
            B[row:row + d, col:col + p.r[DEFAULT]] = p.lora_B[DEFAULT].detach()
            col += p.r[DEFAULT]
        ranks.add(A.shape[0])
        name = hf_module_name(f"blocks.{i}.attn.q_proj", "gpt2")
        out[f"base_model.model.{name}.lora_A.weight"] = A
        out[f"base_model.model.{name}.lora_B.weight"] = B
    if len(ranks) > 1:
        raise ValueError(f"the blocks adapt different sets of q, k, v (c_attn ranks {sorted(ranks)}); PEFT's "
                         "single c_attn target needs the same set in every block")
    return out


_SUPPORTED = {"peft_type": "LORA", "bias": "none", "use_dora": False}
_EMPTY = ("modules_to_save", "layers_to_transform", "layers_pattern", "trainable_token_indices")


def _read_peft_config(path: Path) -> dict:
    for file in (PEFT_CONFIG, PEFT_WEIGHTS):
        if not (path / file).is_file():
            raise FileNotFoundError(f"{path} holds no {file}; PEFT's save_pretrained (or save_peft_adapter) "
                                    "writes it")
    try:
        config = json.loads((path / PEFT_CONFIG).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path / PEFT_CONFIG} is not valid JSON ({err})") from None
    for key, allowed in _SUPPORTED.items():
        if config.get(key, allowed) != allowed:
            raise ValueError(f"{path / PEFT_CONFIG}: {key} is {config.get(key)!r}; load_peft_adapter reads plain "
                             f"LoRA adapters only ({key} = {allowed!r})")
    for key in _EMPTY:
        if config.get(key):
            raise ValueError(f"{path / PEFT_CONFIG}: {key} is {config[key]!r}; load_peft_adapter reads adapters "
                             f"without {key} (it must be empty or null)")
    return config


def load_peft_adapter(model: GPT, path: str | Path) -> GPT:
    """Put onto the course model (without LoRA layers) an adapter PEFT saved for `to_transformers(model, ...)`
    of either architecture, with PEFT's r, alpha (and rank/alpha patterns), rsLoRA and dropout; return model.

    Refused, before anything changes: another PEFT type than LoRA, DoRA, trained biases or modules_to_save; an
    adapter for another architecture or other shapes; targets this model does not have; a fan_in_fan_out that
    does not match the architecture (GPT-2's Conv1D needs True, OPT's nn.Linear False)."""
    _require_plain(model)
    path = Path(path)
    config = _read_peft_config(path)
    tensors = read_safetensors(path / PEFT_WEIGHTS)
    keys = sorted(tensors)
    architecture = ("opt" if keys and all(".model.decoder." in k or ".lm_head." in k for k in keys) else
                    "gpt2" if keys and all(".transformer.h." in k or ".lm_head." in k for k in keys) else None)
    if architecture is None:
        raise ValueError(f"{path / PEFT_WEIGHTS} is not an adapter for an OPT or GPT-2 export of the course model "
                         f"(its tensors are named like {keys[:2]}); expected names such as "
                         "'base_model.model.model.decoder.layers.0.self_attn.q_proj.lora_A.weight'")
    fifo = bool(config.get("fan_in_fan_out", False))
    if fifo != (architecture == "gpt2"):
        layout = ("(in, out) in a Conv1D: it needs fan_in_fan_out=True" if architecture == "gpt2" else
                  "(out, in) in an nn.Linear: it needs fan_in_fan_out=False")
        raise ValueError(f"fan_in_fan_out is {fifo} but the adapter is for {architecture}, whose layers store "
                         f"their weight as {layout}")
    wanted = {hf_module_name(n, architecture): n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    plan, problems = {}, []
    for key in keys:
        match = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])\.weight", key)
        if not match:
            problems.append(f"{key}: not a LoRA A or B weight")
            continue
        module = match.group(1)
        if module not in wanted:
            problems.append(f"{key}: the exported model has no module {module!r}")
            continue
        plan.setdefault(module, {})[match.group(2)] = tensors[key]
    problems += [f"{m}: lora_A and lora_B must both be present" for m, ab in plan.items() if set(ab) != {"A", "B"}]
    if problems:
        raise ValueError(f"{path / PEFT_WEIGHTS} does not fit this model's {architecture} export:\n  "
                         + "\n  ".join(problems))
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    new_layers = {}
    for module, ab in plan.items():
        A, B = ab["A"], ab["B"]  # (r, in), (out, r)
        r = A.shape[0]
        alpha = _pattern(alpha_pattern, module, config["lora_alpha"])
        expected_r = _pattern(rank_pattern, module, config["r"])
        if B.shape[1] != r or r != expected_r:
            raise ValueError(f"{module}: lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} do not have the "
                             f"config's rank {expected_r}")
        course = [wanted[module]]
        if module.endswith("attn.c_attn"):  # one low-rank update of q, k and v: the same A, B split by rows
            block = module[len(_LAYER_PREFIX["gpt2"]):].split(".")[0]
            course = [f"blocks.{block}.{n}" for n in _QKV]
        for j, name in enumerate(course):
            base = model.get_submodule(name)
            rows = slice(j * base.out_features, (j + 1) * base.out_features) if len(course) > 1 else slice(None)
            b = B[rows]
            if (A.shape[1], b.shape[0]) != (base.in_features, base.out_features):
                raise ValueError(f"{module}: the adapter's layer is (in, out) = ({A.shape[1]}, {b.shape[0]}), the "
                                 f"model's {name} is ({base.in_features}, {base.out_features}): an adapter for "
                                 "another shape")
            new_layers[name] = (r, alpha, A, b)
    dropout = float(config.get("lora_dropout", 0.0))
    rslora = bool(config.get("use_rslora", False))
    for name, (r, alpha, A, b) in new_layers.items():  # every check has passed: now change the model
        layer = LoRALinear(model.get_submodule(name), r, alpha, dropout, rslora)
        with torch.no_grad():
            layer.lora_A[DEFAULT].copy_(A)
            layer.lora_B[DEFAULT].copy_(b)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
    return mark_only_lora_as_trainable(model)


def _pattern(pattern: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches the end of the module name."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default
