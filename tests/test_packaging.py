"""The two install descriptions agree, no requirement admits a torch newer than 2.13.x, and
the install says which builds it installed."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + project["optional-dependencies"]["dev"]
    return {Requirement(line).name.lower(): Requirement(line) for line in lines}, project


def conda_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    return {Requirement(line).name.lower(): Requirement(line) for line in pip_section}, conda


def test_environment_yml_names_the_same_pins_as_pyproject():
    ours, _ = pyproject_requirements()
    conda, _ = conda_requirements()
    assert set(conda) == set(ours), f"only in one of them: {set(conda) ^ set(ours)}"
    for name, requirement in ours.items():
        assert conda[name].specifier == requirement.specifier, name
        assert conda[name].extras == requirement.extras, name


def test_python_versions_agree():
    _, project = pyproject_requirements()
    _, conda = conda_requirements()
    assert "python=3.11" in conda
    assert project["requires-python"] == ">=3.11,<3.12"


def test_torch_is_pinned_to_2_13():
    ours, _ = pyproject_requirements()
    torch = ours["torch"].specifier
    assert torch.contains("2.13.0") and torch.contains("2.13.1")
    assert not torch.contains("2.14.0") and not torch.contains("3.0.0")
    constraint = (ROOT / "constraints.txt").read_text()
    assert "torch==2.13.0" in constraint.splitlines()


def test_mmcv_range_is_what_mmseg_accepts():
    ours, _ = pyproject_requirements()
    assert str(ours["mmcv"].specifier) == "==2.1.0"  # mmseg 1.2.2 asserts 2.0.0rc4 <= mmcv < 2.2
    import mmcv
    import mmseg
    assert mmcv.__version__ == "2.1.0" and mmseg.__version__ == "1.2.2"


def test_make_install_says_which_builds_it_installed():
    """A CPU torch where a CUDA one was meant (or the reverse) shows at the end of the install."""
    import subprocess
    import sys

    import mmcv
    import torch

    venv = Path(sys.executable).parent.parent
    if not (venv / ".stamp-base").is_file():  # would install into a venv make did not make
        pytest.skip(f"{venv} was not made by `make install`")
    done = subprocess.run(["make", "install", f"VENV={venv}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    build = f"(CUDA {torch.version.cuda})" if torch.version.cuda else "(CPU)"
    assert f">>> installed: torch {torch.__version__} {build} | mmcv {mmcv.__version__}" in \
        done.stdout
