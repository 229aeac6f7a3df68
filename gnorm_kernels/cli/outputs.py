"""A command's output folder: built beside its final place, moved in when the run finishes, locked
while it runs, and found again by ``--resume`` when the run was killed.

    with OutputFolder(args.out, force=args.force, resume=args.resume, command="prune") as folder:
        trajectory.save(folder.path("trajectory.json"))   # in `.NAME.partial` beside `out`
    # the block finished: the files are now in args.out; had it raised, they would be gone

The guarantees, in the order they are checked (before any work):

* `out` must not be a file, and must be empty or absent unless `force` (then it is replaced
  once the new run is complete);
* one run per folder: a lock file ``.NAME.lock`` beside `out` is held (``fcntl.flock``) for the
  whole run, so a second run writing the same `out` fails at once and touches nothing. The
  kernel drops the lock when its process dies, so a killed run's lock is taken over;
* the run's files are written into ``.NAME.partial`` beside `out`: a stable name, so that after
  a SIGKILL or a power loss ``resume=True`` finds it and carries on. Without `resume` such a
  folder is refused (``force`` discards it). Ctrl-C or SIGTERM (`Interrupted`) in a command that
  can resume keeps it when it holds progress, as a kill does, and releases the lock; an error
  removes it (a resumed run's progress, made by an earlier run, is kept for the next ``--resume``);
* committing renames it into place; a commit that was itself killed half way is repaired at
  the next start (the earlier run is put back until a new one is complete).

No temporary file, lock or partial folder is left behind by a run that finishes or fails; a
run stopped by Ctrl-C or SIGTERM leaves its partial folder, and a killed one its partial folder
and lock file, for ``--resume``.
Standard library only (with `durable`), so the command line can import it before it knows what it
will run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path
from types import TracebackType

from gnorm_kernels.durable import sync_folder, sync_tree

try:
    import fcntl
except ImportError:  # Windows: runs are not locked there
    fcntl = None  # type: ignore[assignment]

__all__ = ["CLIError", "Interrupted", "OutputFolder", "RunLock"]

MARKER = ".gnorm-partial.json"  # inside a partial folder: which command it belongs to


class CLIError(Exception):
    """Bad input on the command line: reported as ``gnorm <command>: error: ...`` with exit status 2."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM (`signum`; `gnorm` turns SIGTERM into this). `kept` is
    the partial folder an `OutputFolder` left for ``--resume`` (None when nothing was kept)."""

    def __init__(self, signum: int = signal.SIGINT, kept: Path | None = None):
        super().__init__(signum)
        self.signum = int(signum)
        self.kept = kept


class RunLock:
    """An exclusive lock on `path` (created if need be) held by this process until `release`.

    ``fcntl.flock`` locks die with their process, so a lock left by a killed run is free. The
    file is removed on release; a run that opened it just before is told by the inode check
    and opens the new one instead, so two runs never both hold it.
    """

    def __init__(self, path: str | os.PathLike, what: str):
        self.path = Path(path)
        self.fd: int | None = None
        if fcntl is None:
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip()
                os.close(fd)
                pid = f" (pid {holder})" if holder.isdigit() else ""
                raise CLIError(
                    f"another gnorm run{pid} is writing {what} now; wait for it to finish or choose another "
                    f"folder (lock: {self.path})"
                ) from None
            except OSError as err:  # a file system without locks: say so rather than run unguarded
                os.close(fd)
                raise CLIError(f"cannot lock {self.path} ({err}); expected a local file system for {what}") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the file was removed under us by a run that finished: take the new one
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None


def _remove_temporary_files(folder: Path) -> None:
    """Drop what an atomic write killed half way leaves (``.NAME.*.tmp``, see `Trajectory.save`)."""
    for stale in folder.rglob(".*.tmp"):
        if stale.is_file():
            stale.unlink(missing_ok=True)


class OutputFolder:
    """A run's output folder, built in ``.NAME.partial`` beside `out` and moved into place at the end.

    `resume`: True continues the partial folder a killed run left (a new run when there is
    none; `resumed` says which); False refuses such a folder and says to pass ``--resume`` or
    ``--force``; None is for commands that cannot resume (they are told ``--force``).
    `command` names the command, so that one command never resumes another's files.
    ``writer=False`` (the other ranks of a torchrun) makes the same checks of `out` and nothing
    else: no lock, no partial folder, `path` creates nothing, commit and discard do nothing.
    As a context manager it commits when the block finishes. When the block is stopped by Ctrl-C
    or SIGTERM (a `KeyboardInterrupt`) and the command can resume, a partial folder holding
    progress stays for ``--resume`` and `Interrupted` (with `kept`) is raised instead. Otherwise a
    raising block discards the partial folder, except a resumed one, whose progress predates this
    run and stays for the next ``--resume``; the lock is released either way.
    """

    def __init__(
        self, out: str | os.PathLike, *, force: bool = False, resume: bool | None = None, command: str = "gnorm",
        writer: bool = True,
    ):
        self.out = Path(out)
        self.force = force
        self.command = command
        self.writer = writer
        self.resumed = False
        self.resumable = resume is not None
        where = Path(os.path.abspath(self.out))
        if not where.name:
            raise CLIError(f"--out {self.out} is the root folder; expected a folder for the run's outputs")
        if self.out.exists() and not self.out.is_dir():
            raise CLIError(f"--out {self.out} is a file; expected a folder for the run's outputs")
        self._final = where
        self.tmp = where.parent / f".{where.name}.partial"
        self._old = where.parent / f".{where.name}.old"
        if not writer:
            self._check_out(resume)
            return
        try:
            where.parent.mkdir(parents=True, exist_ok=True)
            self._lock = RunLock(where.parent / f".{where.name}.lock", f"--out {self.out}")
        except OSError as err:
            raise CLIError(f"cannot write beside --out {self.out}: {err}") from None
        try:
            self._repair_commit()
            self._check_out(resume)
            self._open_partial(resume)
        except BaseException:
            self._lock.release()
            raise

    # ---- the checks made on construction

    def _repair_commit(self) -> None:
        """A commit killed between its two renames: put the earlier run back (or drop its copy)."""
        if not self._old.exists():
            return
        if self._final.exists():
            shutil.rmtree(self._old, ignore_errors=True)
        else:
            self._old.rename(self._final)

    def _check_out(self, resume: bool | None) -> None:
        if self._final.is_dir() and any(self._final.iterdir()) and not self.force:
            what = "a finished run: nothing to resume" if resume and not self.tmp.exists() else "an earlier run?"
            raise CLIError(
                f"--out {self.out} already holds files ({what}); choose another folder "
                "or pass --force to replace it when this run finishes"
            )

    def _open_partial(self, resume: bool | None) -> None:
        if self.tmp.exists():
            owner = self._owner()
            if resume and owner != self.command:
                raise CLIError(
                    f"{self.tmp} holds the progress of {f'a `gnorm {owner}` run' if owner else 'something else'}, "
                    f"not of `gnorm {self.command}`; pass --force without --resume to discard it and start over"
                )
            if resume:
                _remove_temporary_files(self.tmp)
                self.resumed = True
                return
            if not self.force:
                hint = "--resume to continue it or --force" if resume is not None else "--force"
                raise CLIError(
                    f"--out {self.out} has the progress of an interrupted run in {self.tmp} (killed, or the "
                    f"machine stopped?); pass {hint} to discard it and start over"
                )
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        (self.tmp / MARKER).write_text(json.dumps({"command": self.command, "pid": os.getpid()}))

    def _has_progress(self) -> bool:
        """Whether the partial folder holds a file of this run (not only its marker or a torn write)."""
        return any(p.is_file() and p.name != MARKER and not (p.name.startswith(".") and p.name.endswith(".tmp"))
                   for p in self.tmp.rglob("*"))

    def _owner(self) -> str | None:
        try:
            return str(json.loads((self.tmp / MARKER).read_text())["command"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # ---- writing, committing, discarding

    def path(self, *parts: str) -> Path:
        """Where to write a file of this run (inside the partial folder until `commit`)."""
        target = self.tmp.joinpath(*parts)
        if self.writer:
            target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def commit(self) -> Path:
        """Move the finished run into `out` (replacing an earlier one only with `force`)."""
        if not self.writer:
            return self.out
        try:
            if self._final.exists() and any(self._final.iterdir()) and not self.force:  # not a gnorm run's doing
                raise CLIError(
                    f"--out {self.out} filled up while this run was going; outputs left in {self.tmp} "
                    "(pass --resume --force to move them into place)"
                )
            _remove_temporary_files(self.tmp)
            (self.tmp / MARKER).unlink(missing_ok=True)
            sync_tree(self.tmp)
            if self._final.exists():
                self._final.rename(self._old)
            self.tmp.rename(self._final)
            sync_folder(self._final.parent)
            shutil.rmtree(self._old, ignore_errors=True)
        finally:
            self._lock.release()
        return self.out

    def discard(self) -> None:
        """Remove the partial folder and everything written into it; release the lock."""
        if not self.writer:
            return
        try:
            shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            self._lock.release()

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:  # failed, or stopped by Ctrl-C / SIGTERM (both a KeyboardInterrupt in `gnorm`)
            if issubclass(exc_type, KeyboardInterrupt) and self.writer and self.resumable and self._has_progress():
                self._lock.release()  # the progress stays for --resume, as after a kill
                raise Interrupted(getattr(exc, "signum", signal.SIGINT), kept=self.tmp) from None
            if self.resumed and self.writer:  # the progress was there before this run: a command removes only what it made
                self._lock.release()
                print(f"note: the progress in {self.tmp} is kept; --resume continues it, --force starts over",
                      file=sys.stderr)
            else:
                self.discard()
            return
        try:
            self.commit()
        except CLIError:  # `out` filled up meanwhile: the outputs stay where the message says
            raise
        except BaseException:
            self.discard()
            raise


def output_folder(out: str | os.PathLike, *, force: bool = False, resume: bool | None = None, command: str = "gnorm"):
    """The command line's `OutputFolder`: rank 0 writes it and holds its lock; the other ranks
    check --out the same way (so each refuses a bad --out alike) and write nothing."""
    from gnorm_kernels.parallel.distributed import is_main

    return OutputFolder(out, force=force, resume=resume, command=command, writer=is_main())
