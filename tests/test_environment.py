"""The install: pyproject.toml, environment.yml, constraints.txt and the Makefile agree with each other
and with the virtual environment the tests run in."""

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "gnorm-kernels"
# What the core install must do without: the notebook stack, the figures, Triton, GLUE's reader.
EXTRA_ONLY = {"matplotlib", "seaborn", "ipywidgets", "jupyterlab", "triton", "datasets"}
# The start of a child-process script in which importing any of EXTRA_ONLY fails, as uninstalled.
HIDE_EXTRAS = f"""
import sys
BLOCKED = {sorted(EXTRA_ONLY)!r}
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by the test)", name=name)
sys.meta_path.insert(0, Hide())
"""


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pyproject_requirements() -> list[Requirement]:
    """The core requirements and those of every extra, without the package's references to its own extras."""
    project = _project()
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += extra
    return [r for r in map(Requirement, lines) if canonicalize_name(r.name) != PACKAGE]


def _environment_pip_section() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)


def _constraints() -> dict[str, str]:
    """constraints.txt as {canonical name: pinned version}; every line must be a plain `name==version`."""
    pins: dict[str, str] = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.!]*)", line)
        assert match, f"constraints.txt line {number}: expected a plain 'name==version' pin, got {line!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = match[2]
    return pins


def test_environment_yml_matches_pyproject():
    declared = {_name(str(r)) for r in _pyproject_requirements()}

    pip_section = _environment_pip_section()
    listed = {_name(r) for r in pip_section if not r.startswith("-")}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "-e ." in pip_section, "the package itself must be installed editable"
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"])
    assert listed == declared, f"only in environment.yml: {listed - declared}; only in pyproject: {declared - listed}"


def test_torch_is_pinned_in_both_places():
    env = (ROOT / "environment.yml").read_text()
    make = (ROOT / "Makefile").read_text()
    assert "torch==2.13.0" in env
    assert "TORCH_SPEC ?= torch==2.13.0" in make
    assert _constraints().get("torch") == "2.13.0", "constraints.txt must pin torch==2.13.0, the Makefile's TORCH_SPEC"


def test_every_requirement_admits_its_pinned_version():
    pins = _constraints()
    environment = [Requirement(r) for r in _environment_pip_section() if not r.startswith("-")]
    for source, requirements in (("pyproject.toml", _pyproject_requirements()), ("environment.yml", environment)):
        for requirement in requirements:
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{source} requires {requirement}, which constraints.txt does not pin (run make lock)"
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"{source} requires {requirement}, but constraints.txt pins {name}=={pins[name]}"
            )


def test_environment_yml_installs_through_the_constraints():
    pip_section = _environment_pip_section()
    assert "-c constraints.txt" in pip_section, "environment.yml's pip section must read constraints.txt"
    header = (ROOT / "constraints.txt").read_text().splitlines()[:3]
    recorded = next((m[1] for line in header if (m := re.search(r"python (\d+\.\d+)", line))), None)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = next(str(d).split("=", 1)[1] for d in env["dependencies"] if str(d).startswith("python="))
    assert recorded == python, f"constraints.txt was made on python {recorded}; environment.yml asks for {python}"


def test_constraints_cover_every_installed_distribution():
    """A distribution in this environment that constraints.txt does not pin, or pins at another version,
    means the file is stale: `make lock` (after a requirement changed) or `make setup` (a stale venv)."""
    pins = _constraints()
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    installed.pop(PACKAGE, None)
    missing = sorted(f"{n}=={v}" for n, v in installed.items() if n not in pins)
    assert not missing, f"installed but not pinned in constraints.txt: {missing}"
    differ = sorted(
        f"{n}: installed {v}, pinned {pins[n]}" for n, v in installed.items() if not SpecifierSet(f"=={pins[n]}").contains(v, prereleases=True)
    )
    assert not differ, f"installed versions differ from constraints.txt: {differ}"
    assert PACKAGE not in pins, "constraints.txt must not pin the package itself"


def test_setup_installs_every_extra_through_the_constraints():
    extras = _project()["optional-dependencies"]
    everything = {canonicalize_name(e) for r in extras["all"] for e in Requirement(r).extras}
    assert everything == {canonicalize_name(e) for e in extras} - {"all", "dev"}, "the [all] extra must name every other extra but dev"
    dry_run = _make("-n", "setup", "--always-make")
    installs = [line for line in dry_run.splitlines() if " pip install " in line]
    assert installs, f"make setup runs no pip install:\n{dry_run}"
    assert all("--constraint constraints.txt" in line for line in installs), f"an install ignores constraints.txt:\n{dry_run}"
    assert '"torch==2.13.0"' in installs[1] and '-e ".[all,dev]"' in installs[2], f"torch first, then .[all,dev]:\n{dry_run}"


def test_test_and_demo_targets_never_reach_the_hub():
    commands = _make("-n", "test", "test-fast", "test-browser", "demo", "notebooks", "CHROMIUM=/bin/sh")
    runs = [line for line in commands.splitlines() if re.search(r"(pytest|/gnorm |nbconvert)", line)]
    assert len(runs) == 5, f"expected one pytest, gnorm or nbconvert line per target, got:\n{commands}"
    for line in runs:
        for variable in ("HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "HF_DATASETS_OFFLINE=1"):
            assert variable in line, f"{variable} missing from: {line}"


def test_core_modules_import_without_the_extras():
    """Every module of the package imports with matplotlib, seaborn, ipywidgets, jupyterlab, triton and
    datasets hidden, except the figures module and the Triton kernel files (loaded on first use)."""
    needs_extra = {"gnorm_kernels.evidence.viz"} | {
        f"gnorm_kernels.kernels.{path.stem}" for path in (ROOT / "gnorm_kernels" / "kernels").glob("*.py") if _imports_triton(path)
    }
    script = f"""
import importlib, pkgutil, sys
{HIDE_EXTRAS}import gnorm_kernels
skip = {sorted(needs_extra)!r}
names = sorted(m.name for m in pkgutil.walk_packages(gnorm_kernels.__path__, "gnorm_kernels.") if m.name not in skip)
for name in names:
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
print(len(names), "modules")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, f"a core module needs an extra:\n{result.stderr[-3000:]}"


def test_a_missing_extra_is_one_line_naming_it(tmp_path):
    """With the extras hidden, what needs one raises MissingExtra naming the extra to install, and the
    commands that write figures refuse before any work (no output folder, exit status 2)."""
    script = f"""
import contextlib, io, sys
from pathlib import Path
{HIDE_EXTRAS}import torch
import gnorm_kernels as gk
from gnorm_kernels.extras import MissingExtra
from gnorm_kernels.testing import tiny_random_model

def refused(call, extra):
    try:
        call()
    except MissingExtra as err:
        assert f"gnorm-kernels[{{extra}}]" in str(err) and "\\n" not in str(err), err
        return str(err)
    raise AssertionError(f"{{call}} ran without its extra")

print(refused(lambda: gk.plot_head_grid(torch.rand(2, 2)), "plots"))
print(refused(lambda: gk.head_toggle_grid(tiny_random_model("bert"), []), "notebooks"))
print(refused(lambda: gk.load_task("glue/sst2"), "glue"))
from gnorm_kernels.cli.commands import main
out = Path({str(tmp_path)!r})
for command in (["prune", "--method", "random"], ["compare", "--methods", "random"]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main([*command, "--out", str(out / command[0]), "--quiet"])
        except SystemExit as stop:
            assert stop.code == 2, (command, stop.code, err.getvalue())
        else:
            raise AssertionError(command)
    assert "gnorm-kernels[plots]" in err.getvalue() and "Traceback" not in err.getvalue(), err.getvalue()
    assert not (out / command[0]).exists() and not list(out.iterdir()), list(out.iterdir())
    print(err.getvalue().strip())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 5, lines
    assert "matplotlib is not installed" in lines[0] and "ipywidgets is not installed" in lines[1]
    assert "datasets is not installed" in lines[2] and "matplotlib, seaborn are not installed" in lines[4]


def _imports_triton(path: Path) -> bool:
    """Whether a file imports triton at module level (a kernel file, imported only by kernel_module)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "triton" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "triton":
            return True
    return False


def _make(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    result = subprocess.run(["make", "--no-print-directory", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert result.returncode == 0, f"make {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout
