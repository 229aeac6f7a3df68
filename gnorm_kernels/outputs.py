"""A command's output folder: built beside its final place and moved in only when the run finishes.

A failed or interrupted run leaves nothing half-written and never touches an earlier run's files.
An existing non-empty folder is refused unless ``force``, in which case it is replaced once the new
run is complete. Every `gnorm` subcommand that writes files writes them this way:

    with OutputFolder(args.out, force=args.force) as folder:
        trajectory.save(folder.path("trajectory.json"))   # inside a temporary sibling folder
    # the block finished: the files are now in args.out; had it raised, they would be gone

Standard library only, so the command line can import it before it knows what it will run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

__all__ = ["CLIError", "OutputFolder"]


class CLIError(Exception):
    """Bad input on the command line: reported as ``gnorm <command>: error: ...`` with exit status 2."""


class OutputFolder:
    """A run's output folder, built in a temporary sibling folder and moved into place at the end.

    Checks happen on construction, before any work: `out` must not be a file, must be empty or
    absent unless `force`, and its parent must be writable. As a context manager it commits when
    the block finishes and discards the temporary folder when the block raises.
    """

    def __init__(self, out: str | os.PathLike, *, force: bool = False):
        self.out = Path(out)
        self.force = force
        if self.out.exists() and not self.out.is_dir():
            raise CLIError(f"--out {self.out} is a file; expected a folder for the run's outputs")
        if self.out.is_dir() and any(self.out.iterdir()) and not force:
            raise CLIError(
                f"--out {self.out} already holds files (an earlier run?); choose another folder "
                "or pass --force to replace it when this run finishes"
            )
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(self.tmp, 0o777 & ~mask)  # mkdtemp makes it private; the run's folder should not be
        except OSError as err:
            raise CLIError(f"cannot write beside --out {self.out}: {err}") from None

    def path(self, *parts: str) -> Path:
        """Where to write a file of this run (inside the temporary folder until `commit`)."""
        target = self.tmp.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def commit(self) -> Path:
        """Move the finished run into `out` (replacing an earlier one only with `force`)."""
        old = None
        if self.out.exists():
            if any(self.out.iterdir()) and not self.force:  # appeared while we ran
                raise CLIError(f"--out {self.out} filled up while this run was going; outputs left in {self.tmp}")
            old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.out.parent))
            self.out.rename(old / "run")
        self.tmp.rename(self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out

    def discard(self) -> None:
        """Remove the temporary folder and everything written into it."""
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:  # failed, interrupted or killed (SIGTERM raises SystemExit in `gnorm`)
            self.discard()
            return
        try:
            self.commit()
        except CLIError:  # `out` filled up meanwhile: the outputs stay where the message says
            raise
        except BaseException:
            self.discard()
            raise
