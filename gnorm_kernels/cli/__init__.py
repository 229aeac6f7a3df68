"""The `gnorm` command line: commands, loading with checks, output folders."""

from __future__ import annotations

from gnorm_kernels.cli.main import build_parser, main

__all__ = ["main", "build_parser"]
