"""The set-up files agree with each other, so conda/Binder and pip users get the same course."""

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _requirements(path: Path) -> dict[str, str]:
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return {_name(ln): ln for ln in lines if ln and not ln.startswith(("#", "-"))}


def _environment_pip() -> dict[str, str]:
    text = (ROOT / "environment.yml").read_text()
    specs = re.findall(r"^\s+- (?!-)([A-Za-z0-9_.\-]+[^\n#]*)$", text.split("- pip:")[1], flags=re.M)
    return {_name(s): s.strip() for s in specs}


def test_environment_yml_names_the_same_packages_as_requirements():
    assert _environment_pip() == _requirements(ROOT / "requirements.txt")


def test_torch_is_pinned_exactly_for_local_set_up():
    assert _requirements(ROOT / "requirements.txt")["torch"] == "torch==2.13.0"


def test_binder_takes_a_cpu_only_torch():
    text = (ROOT / "environment.yml").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in text


def test_package_depends_on_a_torch_range_not_a_pin():
    """Installing the package on Colab must not replace Colab's own torch."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_dep = next(d for d in deps if _name(d) == "torch")
    assert "==" not in torch_dep and ">=" in torch_dep


def test_test_only_dependencies_stay_out_of_the_course_requirements():
    course = _requirements(ROOT / "requirements.txt")
    for name in ("pytest", "hypothesis", "playwright"):
        assert name not in course
