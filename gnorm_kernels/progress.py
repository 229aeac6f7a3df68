"""Progress bars that read the same in a terminal, a live notebook and a committed one.

tqdm.auto draws a widget bar inside Jupyter; an executed notebook stores that widget's state as
it was when saved, and a reader without a kernel sees "0%| | 0/32" frozen forever. So the
package's long loops use `progress_bar`, which draws text bars (tqdm.std) everywhere unless told
otherwise by the ``GNORM_PROGRESS`` environment variable:

* ``text`` (the default; ``auto`` means the same): text bars; inside a Jupyter kernel they
  refresh at most every 5 s, so a stored output stays a few lines;
* ``off``: no bars (what `make notebooks` uses, so executed notebooks store none);
* ``widget``: tqdm.auto's bars (widgets in a live notebook, for interactive use only).

A caller's ``disable=True`` (``progress=False``) always wins.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["PROGRESS_ENV", "progress_mode", "progress_bar"]

PROGRESS_ENV = "GNORM_PROGRESS"
_MODES = ("text", "auto", "off", "widget")


def progress_mode() -> str:
    """"text", "off" or "widget", from ``GNORM_PROGRESS`` (unset or "auto": "text")."""
    mode = os.environ.get(PROGRESS_ENV, "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"{PROGRESS_ENV} must be one of {', '.join(_MODES)}; got {mode!r}")
    return "text" if mode == "auto" else mode


def _in_jupyter_kernel() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and hasattr(shell, "kernel")


def progress_bar(iterable: Any = None, **options: Any) -> Any:
    """A tqdm bar over `iterable` (or one updated by hand, with ``total=``) in the mode
    `progress_mode` gives; `options` are tqdm's (desc, total, leave, disable, mininterval, ...)."""
    mode = progress_mode()
    if mode == "widget":
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm

        if mode == "off":
            options["disable"] = True
        elif _in_jupyter_kernel():
            options["mininterval"] = max(float(options.get("mininterval", 0.1)), 5.0)
    return tqdm(iterable, **options)
