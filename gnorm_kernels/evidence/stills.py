"""Still pictures of the notebook widgets, so a committed notebook shows something without a kernel.

A widget lives in the kernel: a notebook read on GitHub or opened after the kernel is gone has
no widget to draw. Displaying one of the explorers of `gnorm_kernels.evidence.widgets` therefore
publishes, in the same output, the widget view together with a PNG of its current state (drawn
with matplotlib, no pyplot state) and a plain-text summary: a live notebook draws the widget, a
static renderer falls back to the picture and the text.
"""

from __future__ import annotations

import base64
import io
import math
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from gnorm_kernels.extras import require

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from gnorm_kernels.engine.trajectory import Trajectory

__all__ = ["png_bytes", "still_bundle", "toggle_grid_figure", "explorer_figure"]

_KEPT, _MASKED, _GONE = "#2a7ab9", "#d62728", "#d9d9d9"


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """`fig` as PNG bytes (a Figure object, not pyplot's: nothing leaks into the notebook)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def still_bundle(widget: Any, png: bytes, text: str) -> dict[str, Any]:
    """The mime bundle of `widget` with a still PNG and a text summary beside its view: live
    frontends draw the widget, static ones (GitHub, nbviewer, a closed kernel) the picture."""
    bundle = dict(widget._repr_mimebundle_() or {})
    bundle["image/png"] = base64.b64encode(png).decode("ascii")
    bundle["text/plain"] = text
    return bundle


def toggle_grid_figure(shown: Mapping[str, Any], present: Any, metric: str) -> Figure:
    """The head grid as `head_toggle_grid` shows it: active heads blue, masked red, pruned grey,
    with the metric and its change in the title."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    present = np.asarray(present, dtype=bool)
    active = np.asarray(shown["mask"], dtype=bool)
    state = np.where(~present, 0, np.where(active, 2, 1))
    num_layers, num_heads = state.shape
    fig = Figure(figsize=(max(3.0, 0.5 * num_heads + 1.2), 0.45 * num_layers + 1.1))
    ax = fig.subplots()
    ax.imshow(state, cmap=ListedColormap([_GONE, _MASKED, _KEPT]), vmin=0, vmax=2)
    ax.grid(False)  # a style with grid lines (seaborn whitegrid) would draw them across the cells
    ax.set_xticks(range(num_heads))
    ax.set_yticks(range(num_layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"{metric} {shown['score']:.4f} ({100 * shown['change']:+.1f} points); "
                 f"{len(shown['masked'])} masked (red)", fontsize=9)
    return fig


def explorer_figure(trajectories: Mapping[str, Trajectory], s: Mapping[str, Any]) -> Figure:
    """What `pruning_explorer` draws for its state `s`: the kept-head grid (numbers: the step each
    head went) beside the accuracy curves, the chosen method's in colour."""
    sns = require("seaborn", "plots", "the pruning explorer's picture")
    from matplotlib.figure import Figure

    trajectory = trajectories[s["method"]]
    num_layers, num_heads = trajectory.shape
    when = np.zeros(trajectory.shape)  # the step each head was pruned at, 0 if kept here
    for index, record in enumerate(trajectory.steps[1 : s["step"] + 1], start=1):
        for layer, head in record.pruned:
            when[layer, head] = index
    labels = np.where(when > 0, when.astype(int).astype(str), "")
    fig = Figure(figsize=(10.5, 0.55 * num_layers + 1.6))
    grid_ax, curve_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [max(num_heads, 4), 6]})
    sns.heatmap(
        s["mask"].numpy().astype(float), ax=grid_ax, cmap=sns.color_palette([_GONE, _KEPT], as_cmap=True),
        vmin=0, vmax=1, cbar=False, linewidths=1, linecolor="white", annot=labels, fmt="",
        annot_kws={"fontsize": 9, "color": "#444444"}, square=num_heads <= 16,
    )
    groups = trajectory.unit == "kv_group"
    grid_ax.set_xlabel("KV group" if groups else "head")
    grid_ax.set_ylabel("layer")
    grid_ax.set_title(f"{s['method']}: kept {'KV groups' if groups else 'heads'} (blue); numbers = step pruned")
    for name, other in trajectories.items():
        if name != s["method"]:
            xs, ys = other.curve("accuracy")
            curve_ax.plot(100 * xs, ys, color="#bbbbbb", linewidth=1)
    xs, ys = trajectory.curve("accuracy")
    curve_ax.plot(100 * xs, ys, color=_KEPT, linewidth=2, label=s["method"])
    curve_ax.axvline(100 * s["ratio"], color=_MASKED, linestyle="--", linewidth=1)
    if s["accuracy"] is not None and not math.isnan(s["accuracy"]):
        curve_ax.plot([100 * s["ratio"]], [s["accuracy"]], "o", color=_MASKED)
    curve_ax.set_xlabel(f"{'KV groups' if groups else 'heads'} pruned (%)")
    curve_ax.set_ylabel("accuracy")
    curve_ax.set_title("accuracy (other methods in grey)")
    curve_ax.set_xlim(0, 100)
    fig.tight_layout()
    return fig
