"""environment.yml and pyproject.toml must name the same dependencies."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    declared |= {_name(r) for r in project["optional-dependencies"]["dev"]}

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {_name(r) for r in pip_section if not r.startswith("-e")}
    assert "-e ." in pip_section, "the package itself must be installed editable"
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"])
    assert listed == declared, f"only in environment.yml: {listed - declared}; only in pyproject: {declared - listed}"


def test_torch_is_pinned_in_both_places():
    env = (ROOT / "environment.yml").read_text()
    make = (ROOT / "Makefile").read_text()
    assert "torch==2.13.0" in env
    assert "TORCH_SPEC ?= torch==2.13.0" in make
