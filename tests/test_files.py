"""Files: weights and adapters are read with safetensors, never pickle; a file that does not fit is refused.

1. A static scan of the package, the tools, the experiments, the benchmarks and the notebooks for pickle:
   `torch.load` without `weights_only=True`, `torch.save`, `import pickle` (or dill, joblib, shelve,
   cloudpickle), `np.load(..., allow_pickle=True)`, `read_pickle`. The scan is tested on snippets, so it can fail.
2. What ships is safetensors: no pickle-format file in the repository, every .safetensors file opens.
3. The loaders do not unpickle: they work with pickle and torch.load switched off, and a pickle payload saved
   under a safetensors name is refused without running its code.
4. A file that does not match the model is refused with the names and shapes that differ; truncated, empty or
   corrupt files get a ValueError that names the file; a refused save writes nothing.
"""

from __future__ import annotations

import ast
import json
import pickle
import subprocess
from pathlib import Path

import nbformat
import pytest
import torch
from safetensors import safe_open
from small_models import tiny_gpt

from lora_teach import model as model_module
from lora_teach.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoRAConfig, apply_lora, load_adapter, save_adapter
from lora_teach.model import CARD, GPT, WEIGHTS, load_base_model, save_base_model

ROOT = Path(__file__).resolve().parents[1]
# tests are not scanned: test_files.py builds a pickle on purpose
SCANNED = ("lora_teach", "tools", "scripts", "experiments", "benchmarks")
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "joblib", "shelve", "cloudpickle", "marshal"}
PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".joblib", ".npz", ".npy"}


# ------------------------------------------------------------------------------------------- 1. the scan
def unsafe_uses(source: str) -> list[str]:
    """Every way `source` could read or write a pickle: one line per finding, with its line number."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in PICKLE_MODULES:
                found.append(f"line {node.lineno}: from {node.module} import ...")
            if node.module == "torch" and any(a.name in ("load", "save") for a in node.names):
                found.append(f"line {node.lineno}: from torch import load/save")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name, owner = node.func.attr, ast.unparse(node.func.value)
            keywords = {k.arg: k.value for k in node.keywords}
            if owner == "torch" and name == "load":
                safe = isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
                if not safe:
                    found.append(f"line {node.lineno}: torch.load without weights_only=True")
            elif owner == "torch" and name == "save":
                found.append(f"line {node.lineno}: torch.save writes a pickle (use safetensors)")
            elif name == "load" and owner in ("np", "numpy"):
                flag = keywords.get("allow_pickle")
                if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                    found.append(f"line {node.lineno}: np.load with allow_pickle")
            elif name in ("read_pickle", "to_pickle"):
                found.append(f"line {node.lineno}: {name}")
    return found


def notebook_source(path: Path) -> str:
    """The code cells of a notebook as one Python source (IPython magics and shell lines blanked)."""
    nb = nbformat.read(path, as_version=4)
    lines = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            lines += ["" if ln.lstrip().startswith(("%", "!")) else ln for ln in cell.source.splitlines()]
    return "\n".join(lines)


def scanned_sources() -> list[tuple[str, str]]:
    files = [p for folder in SCANNED for p in sorted((ROOT / folder).rglob("*.py"))]
    sources = [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")) for p in files]
    notebooks = sorted((ROOT / "notebooks").rglob("*.ipynb"))
    sources += [(str(p.relative_to(ROOT)), notebook_source(p)) for p in notebooks
                if ".ipynb_checkpoints" not in p.parts]
    return sources


def test_package_scripts_and_notebooks_never_read_or_write_pickle():
    sources = scanned_sources()
    assert any(name.startswith("lora_teach/") for name, _ in sources)
    assert any(name.endswith(".ipynb") for name, _ in sources)
    problems = {name: found for name, source in sources if (found := unsafe_uses(source))}
    assert not problems, f"unsafe (pickle) uses: {problems}"


@pytest.mark.parametrize("snippet, unsafe", [
    ("import torch\nsd = torch.load('m.pt')", True),
    ("import torch\nsd = torch.load('m.pt', weights_only=False)", True),
    ("import torch\nkw = {}\nsd = torch.load('m.pt', **kw)", True),
    ("import torch\nsd = torch.load('m.pt', map_location='cpu', weights_only=True)", False),
    ("from torch import load\nsd = load('m.pt')", True),
    ("import torch\ntorch.save(model.state_dict(), 'm.pt')", True),
    ("import pickle\nobj = pickle.loads(data)", True),
    ("from pickle import loads", True),
    ("import joblib", True),
    ("import dill as d", True),
    ("import numpy as np\nx = np.load('a.npy', allow_pickle=True)", True),
    ("import numpy as np\nx = np.load('a.npy')", False),
    ("import pandas as pd\ndf = pd.read_pickle('x')", True),
    ("from safetensors.torch import load_file\nsd = load_file('m.safetensors')", False),
    ("note = 'never call torch.load or import pickle'", False),
])
def test_the_scan_finds_unsafe_uses(snippet, unsafe):
    assert bool(unsafe_uses(snippet)) is unsafe, unsafe_uses(snippet)


# ------------------------------------------------------------------------------------ 2. what the repo ships
def repository_files() -> list[Path]:
    """Files git tracks (or would track: untracked, not ignored); every file under ROOT without git."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [p for p in ROOT.rglob("*") if p.is_file() and ".venv" not in p.parts and ".git" not in p.parts]


def test_no_pickle_format_file_is_shipped_and_every_safetensors_file_opens():
    files = repository_files()
    pickles = [str(p.relative_to(ROOT)) for p in files if p.suffix in PICKLE_SUFFIXES]
    assert not pickles, f"pickle-format files in the repository: {pickles}"
    tensors = [p for p in files if p.suffix == ".safetensors"]
    assert ROOT / "lora_teach" / "weights" / WEIGHTS in tensors
    for path in tensors:
        with safe_open(str(path), framework="pt") as f:
            assert list(f.keys()), path


# --------------------------------------------------------------------------------- 3. loaders never unpickle
@pytest.fixture
def no_pickle(monkeypatch):
    """Make every pickle entry point (and torch.load) fail loudly for the duration of a test."""
    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used to read a file")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)


def lora_gpt(r: int = 4, seed: int = 0, **overrides) -> GPT:
    model = apply_lora(tiny_gpt(seed, **overrides), LoRAConfig(r=r, alpha=r))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B.default"):
                p.normal_(generator=torch.Generator().manual_seed(seed + 1))
    return model


def test_the_shipped_base_model_loads_without_pickle(no_pickle):
    model = load_base_model("cpu")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_base_model_and_adapter_round_trip_without_pickle(no_pickle, tmp_path):
    original = tiny_gpt()
    save_base_model(original, tmp_path / "base")
    loaded = load_base_model("cpu", tmp_path / "base")
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    trained = lora_gpt()
    save_adapter(trained, tmp_path / "adapter")
    fresh = load_adapter(tiny_gpt(), tmp_path / "adapter")
    x = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fresh(x)[0], trained(x)[0], rtol=0, atol=0)


def pickle_payload(marker: Path) -> bytes:
    """A pickle that creates `marker` when it is unpickled: what a malicious checkpoint could do."""
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return pickle.dumps(Payload())


def test_a_pickle_payload_really_runs_code_when_unpickled(tmp_path):
    """The payload the next test uses is live: unpickling it creates the marker file."""
    marker = tmp_path / "ran"
    pickle.loads(pickle_payload(marker)).close()
    assert marker.exists()


@pytest.mark.parametrize("kind", ["adapter", "base"])
def test_a_pickle_under_a_safetensors_name_is_refused_without_running_it(kind, tmp_path):
    marker = tmp_path / "ran"
    if kind == "adapter":
        folder = save_adapter(lora_gpt(), tmp_path / "adapter")
        (folder / ADAPTER_WEIGHTS).write_bytes(pickle_payload(marker))
        load = lambda: load_adapter(tiny_gpt(), folder)
        name = ADAPTER_WEIGHTS
    else:
        folder = tmp_path / "base"
        save_base_model(tiny_gpt(), folder)
        (folder / WEIGHTS).write_bytes(pickle_payload(marker))
        load = lambda: load_base_model("cpu", folder)
        name = WEIGHTS
    with pytest.raises(ValueError, match=f"{name}.*not a valid safetensors file"):
        load()
    assert not marker.exists(), "the pickle ran"


# ----------------------------------------------------------------------------- 4. files that do not fit
def test_base_weights_of_another_model_are_refused_with_every_name_and_shape(tmp_path):
    save_base_model(tiny_gpt(), tmp_path / "base")
    save_base_model(tiny_gpt(n_embd=32), tmp_path / "other")
    (tmp_path / "base" / WEIGHTS).write_bytes((tmp_path / "other" / WEIGHTS).read_bytes())
    with pytest.raises(ValueError) as info:
        load_base_model("cpu", tmp_path / "base")
    message = str(info.value)
    wide, narrow = tiny_gpt(n_embd=32).state_dict(), tiny_gpt().state_dict()
    differing = [k for k in narrow if wide[k].shape != narrow[k].shape]
    assert len(differing) == len(narrow)  # every tensor depends on the width
    for key in differing:
        assert f"{key}: file {tuple(wide[key].shape)}, model {tuple(narrow[key].shape)}" in message


def test_base_weights_with_a_missing_and_an_extra_tensor_are_refused_by_name(tmp_path):
    from safetensors.torch import save_file

    save_base_model(tiny_gpt(), tmp_path / "base")
    state = {k: v.contiguous() for k, v in tiny_gpt().state_dict().items()}
    state.pop("lm_head.weight")
    state["extra.weight"] = torch.zeros(3)
    save_file(state, str(tmp_path / "base" / WEIGHTS))
    with pytest.raises(ValueError, match=r"missing lm_head\.weight \(97, 16\)[\s\S]*unexpected extra\.weight \(3,\)"):
        load_base_model("cpu", tmp_path / "base")


def test_check_state_dict_accepts_a_matching_state():
    model = tiny_gpt()
    model_module.check_state_dict(model, tiny_gpt(seed=1).state_dict(), "a state")


def test_an_adapter_from_a_wider_model_is_refused_naming_every_layer_and_both_shapes(tmp_path):
    folder = save_adapter(lora_gpt(n_embd=32), tmp_path / "adapter")
    with pytest.raises(ValueError) as info:
        load_adapter(tiny_gpt(), folder)
    message = str(info.value)
    for block in (0, 1):
        for proj in ("q_proj", "v_proj"):
            assert f"blocks.{block}.attn.{proj}': 'adapter (out, in) = (32, 32), model (16, 16)" in message


def test_an_adapter_whose_tensors_disagree_with_its_config_is_refused_with_both_shapes(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = save_adapter(lora_gpt(r=4), tmp_path / "adapter")
    tensors = load_file(str(folder / ADAPTER_WEIGHTS))
    tensors["blocks.0.attn.q_proj.lora_A"] = torch.zeros(2, 16)
    save_file(tensors, str(folder / ADAPTER_WEIGHTS))
    with pytest.raises(ValueError, match=r"does not match its config[\s\S]*\[4, 16\][\s\S]*\[2, 16\]"):
        load_adapter(tiny_gpt(), folder)


@pytest.mark.parametrize("keep", [0.0, 0.05, 0.5, 0.99])
@pytest.mark.parametrize("which", [ADAPTER_WEIGHTS, ADAPTER_CONFIG])
def test_truncated_adapter_files_are_refused_by_name(which, keep, tmp_path):
    folder = save_adapter(lora_gpt(), tmp_path / "adapter")
    data = (folder / which).read_bytes()
    (folder / which).write_bytes(data[: int(len(data) * keep)])
    model = tiny_gpt()
    with pytest.raises(ValueError, match=which.replace(".", r"\.")):
        load_adapter(model, folder)
    assert not any("lora" in name for name, _ in model.named_modules())


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
@pytest.mark.parametrize("which", [WEIGHTS, CARD])
def test_truncated_base_model_files_are_refused_by_name(which, keep, tmp_path):
    save_base_model(tiny_gpt(), tmp_path / "base")
    data = (tmp_path / "base" / which).read_bytes()
    (tmp_path / "base" / which).write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=which.replace(".", r"\.")):
        load_base_model("cpu", tmp_path / "base")


def test_a_refused_save_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_adapter(tiny_gpt(), tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_adapter_config_is_plain_json_with_the_base_shapes(tmp_path):
    folder = save_adapter(lora_gpt(r=4), tmp_path / "adapter")
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    assert config["r"] == 4 and config["base_shapes"]["blocks.0.attn.q_proj"] == [16, 16]


def test_our_adapter_format_does_not_borrow_peft_file_names(tmp_path):
    # PEFT would try to load a folder holding adapter_config.json and fail on our keys: a look-alike trap.
    folder = save_adapter(lora_gpt(r=4), tmp_path / "adapter")
    assert sorted(p.name for p in folder.iterdir()) == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS])
    peft_names = {"adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"}
    assert not peft_names & {ADAPTER_CONFIG, ADAPTER_WEIGHTS}
