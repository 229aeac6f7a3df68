"""Writes that survive a crash or a power loss: flush what was written before the rename that
publishes it, and the folder that holds the new name after it. Standard library only, imported
by the trajectory record and by the command line's output folders.
"""

from __future__ import annotations

import os

__all__ = ["sync_folder", "sync_tree"]


def _fsync(path: str | os.PathLike) -> None:
    """Flush a file or a folder to disk; a no-op where it cannot be opened or synced (a folder on
    Windows, some network file systems)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sync_folder(folder: str | os.PathLike) -> None:
    """Make the entries of `folder` (a rename into it) durable."""
    _fsync(folder)


def sync_tree(root: str | os.PathLike) -> None:
    """Flush every file under `root`, then every folder, to disk (before `root` is renamed into
    place, so that after a power loss the renamed folder never holds torn files)."""
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(os.path.join(folder, name))
        _fsync(folder)
