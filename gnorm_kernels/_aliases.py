"""The flat module paths of gnorm-kernels 0.1 (``gnorm_kernels.greedy``, ``gnorm_kernels.arch``, ...)
as aliases of the subpackage modules that now hold their code, for one release.

Importing an old path imports the new module, registers it under the old name too, and warns
once with a `DeprecationWarning` naming the new path. The old names that are now subpackages
(``data``, ``models``, ``evidence``, ``cli``) need no alias: the subpackage exports what they did.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__all__ = ["MOVED", "install"]

# old module (under gnorm_kernels) -> new module (under gnorm_kernels)
MOVED: dict[str, str] = {
    "arch": "heads.families", "layout": "heads.layout", "head_units": "heads.units",
    "masking": "heads.masking", "surgery": "heads.surgery", "pruning": "heads.pruning",
    "grouped_attention": "heads.grouped_attention",
    "tasks": "data.tasks", "synthetic": "data.synthetic", "tables": "data.tables",
    "labels": "data.labels", "batch": "data.batches", "checkpoint": "checkpoints.formats",
    "tiny_lm": "models.tiny_lm", "training": "models.training",
    "objectives": "scoring.objectives", "gnorm": "scoring.gnorm", "baselines": "scoring.baselines",
    "scores": "scoring.registry", "presets": "scoring.presets",
    "greedy": "engine.driver", "choice": "engine.choice", "trajectory": "engine.trajectory",
    "resume": "engine.resume", "bootstrap": "evidence.statistics", "report": "evidence.report",
    "viz": "evidence.viz", "widgets": "evidence.widgets",
    "distributed": "parallel.distributed", "fsdp": "parallel.fsdp",
    "cli_load": "cli.load", "outputs": "cli.outputs", "evaluate": "evaluation",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``gnorm_kernels.<old>`` and loads it as the module it moved to."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, old = fullname.partition(".")
        if package != "gnorm_kernels" or old not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        old = spec.name.partition(".")[2]
        new = f"gnorm_kernels.{MOVED[old]}"
        warnings.warn(f"{spec.name} moved to {new}; the old path goes away in the next release",
                      DeprecationWarning, stacklevel=3)
        module = importlib.import_module(new)
        self._spec = module.__spec__  # the import system overwrites it with the alias's spec
        return module

    def exec_module(self, module):
        module.__spec__ = self._spec


def install() -> None:
    """Put the alias finder on `sys.meta_path` (once)."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
