"""How `gnorm` stops: SIGTERM is turned into Ctrl-C's `KeyboardInterrupt` (`Interrupted`), so both
keep a run's progress for ``--resume``, and one line says what a stopped run left behind."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from gnorm_kernels.cli.outputs import Interrupted

__all__ = ["stop_like_ctrl_c_on_sigterm", "interruption"]


@contextmanager
def stop_like_ctrl_c_on_sigterm() -> Iterator[None]:
    """Inside the block SIGTERM raises `Interrupted` (a KeyboardInterrupt), so it stops a run as
    Ctrl-C does: its progress is kept for --resume; the previous handler is restored on exit."""
    import signal
    import threading

    def handler(signum, frame):
        raise Interrupted(signum)

    install = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, handler) if install else None
    try:
        yield
    finally:
        if install:
            signal.signal(signal.SIGTERM, previous)


def interruption(stop: KeyboardInterrupt, command: str, argv: Sequence[str]) -> tuple[int, str]:
    """The exit status (128 + the signal) and the one line that says what a stopped run left."""
    import shlex
    import signal

    signum = getattr(stop, "signum", signal.SIGINT)
    kept = getattr(stop, "kept", None)
    name = signal.Signals(signum).name
    if kept is None:
        return 128 + signum, f"gnorm {command}: interrupted by {name}; earlier outputs untouched\n"
    again = shlex.join(["gnorm", *argv, *([] if "--resume" in argv else ["--resume"])])
    return 128 + signum, f"gnorm {command}: interrupted by {name}; progress kept in {kept}; continue with: {again}\n"
