"""The `gnorm` command line: commands, loading with checks, output folders.

Names resolve on first use (`gnorm_kernels._lazy`): importing one module never imports its siblings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gnorm_kernels._lazy import lazy_exports

if TYPE_CHECKING:
    from gnorm_kernels.cli.commands import build_parser, main

__getattr__, __dir__, __all__, _EXPORTS = lazy_exports(__name__, __file__)
