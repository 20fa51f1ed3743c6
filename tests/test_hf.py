"""lora_teach.hf: the course model as a transformers OPT or GPT-2 model, and LoRA adapters PEFT can read.

Exactness is measured on the shipped base model (real weights, logits up to about 13). float64 must agree to
1e-10. In float32 OPT scales the queries before attention and we scale inside it, so the two round differently:
our own float32 logits lie up to about 4e-5 from their float64 values (logits up to 13), and the export is
allowed 1e-5 per unit of the largest logit (GPT-2 runs our attention call and agrees bit for bit).
"""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path

import nbformat
import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from small_models import assert_unchanged, ids, small_gpt, snapshot  # noqa: E402

from lora_teach import CharTokenizer, load_base_model, load_corpus  # noqa: E402
from lora_teach.data import CORPORA  # noqa: E402
from lora_teach.hf import (  # noqa: E402
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    from_transformers,
    hf_module_name,
    hf_tokenizer,
    load_peft_adapter,
    save_peft_adapter,
    save_pretrained,
    to_transformers,
)
from lora_teach.lora import LoRAConfig, apply_lora, lora_layers  # noqa: E402
from lora_teach.model import GPT  # noqa: E402
from lora_teach.serving import disable_adapter_by_name  # noqa: E402

ARCHS = ["opt", "gpt2"]
FP64 = dict(rtol=0, atol=1e-10)
FP32 = dict(rtol=0, atol=1e-5)  # scaled by the largest logit where real logits are compared (fp32_tol)


def fp32_tol(reference: torch.Tensor) -> dict:
    """float32 tolerance: 1e-5 per unit of the largest logit (float32 keeps about 7 significant digits)."""
    return dict(rtol=0, atol=1e-5 * max(1.0, reference.abs().max().item()))


@pytest.fixture(scope="module")
def base():
    return load_base_model("cpu")


@pytest.fixture
def no_network(monkeypatch):
    """Offline like CI, and any attempt to open a network connection fails the test (and is recorded)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError(f"network access attempted: {args!r}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert not attempts, f"network calls were attempted: {attempts}"


def logits(model, x):
    """Logits of the course GPT or of a transformers / PEFT model, without gradients."""
    with torch.no_grad():
        return model(x)[0] if isinstance(model, GPT) else model(input_ids=x).logits


# --------------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("architecture", ARCHS)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, FP32), (torch.float64, FP64)])
def test_export_gives_the_same_logits_at_every_length(base, architecture, dtype, tol):
    ours = copy.deepcopy(base).to(dtype)
    hf = to_transformers(ours, architecture)
    assert type(hf).__name__ == {"opt": "OPTForCausalLM", "gpt2": "GPT2LMHeadModel"}[architecture]
    assert next(hf.parameters()).dtype == dtype and not hf.training
    x = ids(3, ours.config.block_size, seed=1)
    for T in (1, 2, 17, 64, ours.config.block_size):
        a, b = logits(ours, x[:, :T]), logits(hf, x[:, :T])
        assert a.shape == b.shape == (3, T, 97)
        torch.testing.assert_close(b, a, **(fp32_tol(a) if tol is FP32 else tol))
    assert logits(ours, x).abs().max() > 1  # real logits, not near-zero ones that would agree trivially


@pytest.mark.parametrize("architecture", ARCHS)
def test_an_export_of_the_wrong_weights_is_caught(base, architecture):
    # the tolerance test can fail: one changed position row moves the logits far beyond it
    hf = to_transformers(base, architecture)
    with torch.no_grad():
        hf.get_submodule({"opt": "model.decoder.embed_positions", "gpt2": "transformer.wpe"}[architecture]
                         ).weight[3] += torch.linspace(-0.5, 0.5, 128)  # (a constant shift LayerNorm would undo)
    x = ids(1, 8)
    assert (logits(hf, x) - logits(base, x)).abs().max() > 1e-3


def test_opt_keeps_its_offset_of_two_and_gpt2_its_transposed_conv1d(base):
    opt, gpt2 = to_transformers(base, "opt"), to_transformers(base, "gpt2")
    wpe = base.wpe.weight
    assert torch.equal(opt.model.decoder.embed_positions.weight[2:], wpe)
    assert opt.model.decoder.embed_positions.weight.shape == (base.config.block_size + 2, 128)
    c_attn = gpt2.transformer.h[1].attn.c_attn.weight  # (in, 3d)
    assert c_attn.shape == (128, 384)
    assert torch.equal(c_attn[:, 128:256], base.blocks[1].attn.k_proj.weight.T)


@pytest.mark.parametrize("architecture", ARCHS)
def test_round_trip_is_exact_both_ways(base, architecture):
    back = from_transformers(to_transformers(base, architecture))
    assert type(back).__name__ == "GPT" and back.config == base.config
    for k, v in base.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    # from a transformers model we did not write: a randomly initialised one of the course's shape
    torch.manual_seed(3)
    fresh = type(to_transformers(base, architecture))(to_transformers(base, architecture).config).eval()
    again = to_transformers(from_transformers(fresh), architecture)
    theirs, ours = fresh.state_dict(), again.state_dict()
    for k, v in ours.items():
        if "embed_positions" in k:  # OPT's two offset rows are never used, so they are not kept
            v, theirs_v = v[2:], theirs[k][2:]
        else:
            theirs_v = theirs[k]
        assert torch.equal(v, theirs_v), k


@pytest.mark.parametrize("architecture", ARCHS)
def test_save_pretrained_loads_offline_with_auto_classes(base, tmp_path, architecture, no_network):
    directory = save_pretrained(base, tmp_path / "course", architecture)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    tok = transformers.AutoTokenizer.from_pretrained(directory)
    text = "ROMEO:\nBut soft, what light through yonder window breaks?"
    x = torch.tensor([tok(text)["input_ids"]])
    assert x[0].tolist() == CharTokenizer().encode(text)
    torch.testing.assert_close(logits(model, x), logits(base, x), **fp32_tol(logits(base, x)))
    assert tok.decode(x[0].tolist()) == text


@pytest.mark.slow
def test_the_tokenizer_encodes_every_shipped_text_as_char_tokenizer(tmp_path):
    hf_tokenizer().save_pretrained(tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert tok.all_special_ids == [] and len(tok) == CharTokenizer().vocab_size
    for name in sorted(CORPORA):
        text = load_corpus(name)
        assert tok(text, add_special_tokens=True)["input_ids"] == CharTokenizer().encode(text), name
    assert tok.decode(CharTokenizer().encode("Emma\n£ 5")) == "Emma\n£ 5"


def test_the_tokenizer_refuses_a_character_outside_the_vocabulary():
    with pytest.raises(Exception, match="UNK"):
        hf_tokenizer()("café")


def test_module_names_follow_each_architecture():
    assert hf_module_name("blocks.2.attn.o_proj", "opt") == "model.decoder.layers.2.self_attn.out_proj"
    assert hf_module_name("blocks.0.mlp.up_proj", "opt") == "model.decoder.layers.0.fc1"
    assert hf_module_name("blocks.0.attn.k_proj", "gpt2") == "transformer.h.0.attn.c_attn"
    assert hf_module_name("blocks.3.mlp.down_proj", "gpt2") == "transformer.h.3.mlp.c_proj"


# ------------------------------------------------------------------------------------------------- adapters
def lora_model(base, dtype=torch.float64, targets=("q_proj", "v_proj", "o_proj", "down_proj"), r=4, alpha=8,
               use_rslora=False, dropout=0.0):
    """Our LoRA on a copy of `base`, with B drawn at random so that the update is not zero."""
    model = apply_lora(copy.deepcopy(base).to(dtype), LoRAConfig(r=r, alpha=alpha, target_modules=targets,
                                                                  use_rslora=use_rslora, dropout=dropout))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            B = layer.lora_B["default"]
            B.copy_(torch.randn(B.shape, generator=gen, dtype=dtype) * 0.1)
    return model.eval()


SETTINGS = [dict(use_rslora=False, dropout=0.0, alpha=8), dict(use_rslora=True, dropout=0.1, alpha=6)]


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("architecture", ARCHS)
def test_peft_loads_our_adapter_with_the_same_logits(base, tmp_path, architecture, settings, no_network):
    ours = lora_model(base, **settings)
    path = save_peft_adapter(ours, tmp_path / "adapter", architecture)
    assert sorted(p.name for p in path.iterdir()) == sorted([PEFT_CONFIG, PEFT_WEIGHTS, "README.md"]) or \
        sorted(p.name for p in path.iterdir()) == sorted([PEFT_CONFIG, PEFT_WEIGHTS])
    config = json.loads((path / PEFT_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["use_rslora"] is settings["use_rslora"] and config["lora_dropout"] == settings["dropout"]
    assert config["fan_in_fan_out"] is (architecture == "gpt2")
    theirs = peft.PeftModel.from_pretrained(to_transformers(copy.deepcopy(base).double(), architecture), path).eval()
    x = ids(2, 128, seed=2)
    torch.testing.assert_close(logits(theirs, x), logits(ours, x), **FP64)
    with torch.no_grad(), theirs.disable_adapter():
        assert (theirs(input_ids=x).logits - logits(ours, x)).abs().max() > 1e-3  # the adapter really acts
    peft_layers = [m for m in theirs.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert peft_layers and all(m.lora_dropout["default"].p == settings["dropout"] if settings["dropout"] else
                               isinstance(m.lora_dropout["default"], torch.nn.Identity) for m in peft_layers)
    assert all(m.use_rslora["default"] is settings["use_rslora"] for m in peft_layers)


def test_peft_names_gpt2s_fused_qkv_as_one_low_rank_update(base, tmp_path):
    ours = lora_model(base, targets=("q_proj", "v_proj"), r=4)
    path = save_peft_adapter(ours, tmp_path / "adapter", "gpt2")
    config = json.loads((path / PEFT_CONFIG).read_text())
    assert config["target_modules"] == ["attn.c_attn"] and config["rank_pattern"] == {"c_attn": 8}
    from safetensors.torch import load_file
    tensors = load_file(str(path / PEFT_WEIGHTS))
    B = tensors["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]  # (3d, 8): q, k, v rows
    assert B.shape == (384, 8) and torch.count_nonzero(B[128:256]) == 0  # no update of k


PEFT_TARGETS = {"opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
                "gpt2": ["c_attn", "attn.c_proj", "c_fc"]}


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("architecture", ARCHS)
def test_we_load_an_adapter_peft_trained_with_the_same_logits(base, tmp_path, architecture, settings, no_network):
    hf = to_transformers(copy.deepcopy(base).double(), architecture)
    config = peft.LoraConfig(r=4, lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                             use_rslora=settings["use_rslora"], target_modules=PEFT_TARGETS[architecture],
                             fan_in_fan_out=architecture == "gpt2", init_lora_weights=False, task_type="CAUSAL_LM")
    theirs = peft.get_peft_model(hf, config).eval()
    theirs.save_pretrained(tmp_path / "adapter")
    ours = load_peft_adapter(copy.deepcopy(base).double(), tmp_path / "adapter").eval()
    x = ids(2, 128, seed=4)
    torch.testing.assert_close(logits(ours, x), logits(theirs, x), **FP64)
    assert (logits(ours, x) - logits(base.double(), x)).abs().max() > 1e-3
    layers = lora_layers(ours)
    expected = 4 * (6 if architecture == "opt" else 5)  # GPT-2: q, k, v from c_attn, o and up
    assert len(layers) == expected
    assert all(m.use_rslora["default"] is settings["use_rslora"] for m in layers.values())
    assert all((m.lora_dropout["default"].p if settings["dropout"] else 0.0) == settings["dropout"]
               for m in layers.values())
    trainable = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    if architecture == "opt":  # the same numbers train in both (GPT-2 shares c_attn's A among q, k and v)
        assert trainable == sum(p.numel() for p in theirs.parameters() if p.requires_grad)


@pytest.mark.parametrize("architecture", ARCHS)
def test_an_adapter_goes_both_ways_unchanged(base, tmp_path, architecture):
    ours = lora_model(base, targets=("q_proj", "k_proj", "v_proj", "up_proj"))
    save_peft_adapter(ours, tmp_path / "a", architecture)
    back = load_peft_adapter(copy.deepcopy(base).double(), tmp_path / "a").eval()
    x = ids(2, 64, seed=6)
    torch.testing.assert_close(logits(back, x), logits(ours, x), **FP64)


# ----------------------------------------------------------------------------------------------- bad inputs
def test_export_refusals(base):
    with pytest.raises(ValueError, match="architecture must be one of"):
        to_transformers(base, "llama")
    with pytest.raises(ValueError, match="merge_and_unload"):
        to_transformers(lora_model(base), "opt")
    with pytest.raises(TypeError, match="course's GPT"):
        to_transformers(torch.nn.Linear(2, 2))
    relu = transformers.OPTForCausalLM(transformers.OPTConfig(
        vocab_size=97, hidden_size=16, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2,
        max_position_embeddings=8, word_embed_proj_dim=16, activation_function="relu"))
    with pytest.raises(ValueError, match="activation_function"):
        from_transformers(relu)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ValueError, match="model_type 'opt' or 'gpt2'"):
        from_transformers(llama)


def test_save_peft_adapter_refusals(base, tmp_path):
    with pytest.raises(ValueError, match="apply_lora"):
        save_peft_adapter(copy.deepcopy(base), tmp_path / "a")
    with pytest.raises(ValueError, match="architecture must be one of"):
        save_peft_adapter(lora_model(base), tmp_path / "a", "bert")
    merged = lora_model(base)
    next(iter(lora_layers(merged).values())).merge()
    with pytest.raises(ValueError, match="unmerge"):
        save_peft_adapter(merged, tmp_path / "a")
    switched_off = disable_adapter_by_name(lora_model(base), "default")
    with pytest.raises(ValueError, match="enable_adapter_by_name"):
        save_peft_adapter(switched_off, tmp_path / "a")
    dora = apply_lora(copy.deepcopy(base), LoRAConfig(r=4, alpha=8, use_dora=True))  # m has no place in plain LoRA
    with pytest.raises(ValueError, match="writes plain LoRA.*DoRA or PiSSA"):
        save_peft_adapter(dora, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def peft_adapter(base, path, architecture="opt", **kwargs):
    """An adapter PEFT itself writes for the export of `base` (float32)."""
    kwargs = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False,
              **kwargs}
    config = kwargs.pop("config", None) or peft.LoraConfig(**kwargs)
    peft.get_peft_model(to_transformers(copy.deepcopy(base), architecture), config).save_pretrained(path)
    return path


def edit_config(path, **changes):
    config = json.loads((path / PEFT_CONFIG).read_text())
    config.update(changes)
    (path / PEFT_CONFIG).write_text(json.dumps(config))
    return path


BAD_ADAPTERS = {
    "other shape": (lambda base, p: peft_adapter(small_gpt(), p), "another shape"),
    "other architecture": (lambda base, p: _llama_adapter(p), "not an adapter for an OPT or GPT-2"),
    "not LoRA": (lambda base, p: peft_adapter(base, p, config=peft.IA3Config(
        target_modules=["k_proj", "fc2"], feedforward_modules=["fc2"])), "peft_type is 'IA3'"),
    "DoRA": (lambda base, p: peft_adapter(base, p, use_dora=True), "use_dora"),
    "modules_to_save": (lambda base, p: peft_adapter(base, p, modules_to_save=["lm_head"]), "modules_to_save"),
    "missing target": (lambda base, p: _rename(peft_adapter(base, p), "layers.3.", "layers.7."),
                       "no module 'model.decoder.layers.7"),
    "fan_in_fan_out on OPT": (lambda base, p: edit_config(peft_adapter(base, p), fan_in_fan_out=True),
                              "fan_in_fan_out is True"),
    "no fan_in_fan_out on GPT-2": (lambda base, p: edit_config(peft_adapter(
        base, p, "gpt2", target_modules=["c_attn"], fan_in_fan_out=True), fan_in_fan_out=False),
        "fan_in_fan_out is False"),
    "no adapter": (lambda base, p: p, "holds no adapter_config.json"),
}


def _llama_adapter(path):
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
    peft.get_peft_model(llama, peft.LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(path)
    return path


def _rename(path, old, new):
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(path / PEFT_WEIGHTS))
    save_file({k.replace(old, new): v for k, v in tensors.items()}, str(path / PEFT_WEIGHTS))
    return path


@pytest.mark.parametrize("case", sorted(BAD_ADAPTERS))
def test_load_peft_adapter_refuses_before_changing_anything(base, tmp_path, case):
    make, message = BAD_ADAPTERS[case]
    path = make(base, tmp_path / "adapter")
    model = copy.deepcopy(base)
    before = snapshot(model)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_peft_adapter(model, path)
    assert_unchanged(model, before)
    assert not lora_layers(model)


def test_load_peft_adapter_refuses_a_model_that_already_has_lora(base, tmp_path):
    path = peft_adapter(base, tmp_path / "adapter")
    with pytest.raises(ValueError, match="has LoRA layers"):
        load_peft_adapter(lora_model(base, dtype=torch.float32), path)


# ------------------------------------------------------------------------------------------------- notebook 11
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "11_from_our_model_to_hugging_face.ipynb"
REFUSE_NETWORK = """
import socket

network_attempts = []


def _refuse(*args, **kwargs):
    network_attempts.append(repr(args)[:200])
    raise OSError("network access attempted")


socket.socket.connect = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
"""


@pytest.mark.notebooks
def test_the_notebooks_default_path_attempts_no_download(monkeypatch):
    """Notebook 11 with its default MODEL = "course", offline, in a kernel where every network call fails."""
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    parameters = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1 and 'MODEL = "course"' in parameters[0].source
    nb.cells.insert(0, nbformat.v4.new_code_cell(REFUSE_NETWORK))
    nb.cells.append(nbformat.v4.new_code_cell("assert not network_attempts, network_attempts\n"
                                              "print('network calls:', len(network_attempts))"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # a failing cell (a download, the final assertion) raises CellExecutionError
    assert nb.cells[-1].outputs[0]["text"] == "network calls: 0\n"


def test_the_network_guard_can_fail(monkeypatch):
    """The guard really refuses a connection (so the notebook test above would notice a download)."""
    namespace = {}
    with monkeypatch.context() as m:
        m.setattr(socket.socket, "connect", socket.socket.connect)
        m.setattr(socket, "create_connection", socket.create_connection)
        m.setattr(socket, "getaddrinfo", socket.getaddrinfo)
        exec(REFUSE_NETWORK, namespace)
        with pytest.raises(OSError, match="network access attempted"):
            socket.create_connection(("huggingface.co", 443))
    assert namespace["network_attempts"]
