"""Interactive explorers for the notebooks, built with ipywidgets.

Each builder returns a small object that holds the widget (`.widget`, ready to display), the
controls a reader clicks, and `.shown`: a dict of what the widget displays right now. Methods
such as `set_ratio` or `toggle` drive it exactly as a click would, so the same object works in a
notebook, in a script and in tests, with or without a browser. The controls a browser test
needs carry stable CSS classes: ``gnorm-ratio`` (the ratio slider), ``gnorm-method`` (the method
picker), ``gnorm-summary`` (the summary text of either widget), ``gnorm-head`` and
``gnorm-head-L-H`` (the toggle button of layer L, head H).

* `head_toggle_grid(model, batches)`: one toggle button per head; pressing one masks that head
  (`gnorm_kernels.heads.masking.mask_heads`) and re-evaluates the model.
* `pruning_explorer(trajectories)`: a pruning-ratio slider and a method dropdown that read the
  kept-head grid, accuracy, parameter count and size straight from precomputed `Trajectory`s.

Displayed (``display(explorer)`` or as a cell's last value), each publishes its widget with a
still PNG of its current state and a text summary beside it (`gnorm_kernels.evidence.stills`),
so a committed notebook shows them without a kernel; `still()` and `summary_text()` give both.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from gnorm_kernels.engine.trajectory import Trajectory
from gnorm_kernels.evaluation import evaluate
from gnorm_kernels.evidence.stills import explorer_figure, png_bytes, still_bundle, toggle_grid_figure
from gnorm_kernels.heads.families import head_layout
from gnorm_kernels.heads.layout import Head
from gnorm_kernels.heads.masking import mask_heads

__all__ = ["HeadToggleGrid", "PruningExplorer", "head_toggle_grid", "pruning_explorer"]



def _widgets():
    from gnorm_kernels.extras import require

    return require("ipywidgets", "notebooks", "the notebook widgets")


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


# --------------------------------------------------------------------------- head toggles


class HeadToggleGrid:
    """Toggle buttons on the [layers x heads] grid; pressed = head masked; re-evaluates on change.

    `shown` holds ``mask`` (bool [L, H], True where the head is active: present and not
    masked), ``masked`` (the masked heads as (layer, head) pairs), ``score`` (the task metric),
    ``accuracy``, ``loss``, ``baseline`` (the metric with every head active) and ``change``
    (score minus baseline). Evaluations are cached per set of masked heads.
    """

    def __init__(self, model: torch.nn.Module, batches: Sequence[Mapping[str, torch.Tensor]], *, metric: str = "accuracy"):
        w = _widgets()
        self.model = model
        self.batches = list(batches)
        if not self.batches:
            raise ValueError("head_toggle_grid needs at least one batch (with labels) to evaluate on, got none")
        self.metric = metric
        self.layout = head_layout(model)
        self.present = self.layout.kept_mask()
        self._cache: dict[tuple[Head, ...], dict[str, float]] = {}
        self._hold = False
        self.shown: dict[str, Any] = {}

        num_layers, num_heads = self.layout.shape
        self.buttons: dict[Head, Any] = {}
        rows = []
        for layer in range(num_layers):
            row = [w.Label(f"layer {layer}", layout=w.Layout(width="70px"))]
            for head in range(num_heads):
                here = bool(self.present[layer, head])
                button = w.ToggleButton(
                    value=False,
                    description=str(head) if here else "×",
                    tooltip=f"layer {layer}, head {head}: " + ("press to mask" if here else "pruned"),
                    disabled=not here,
                    layout=w.Layout(width="46px"),
                )
                button.add_class("gnorm-head").add_class(f"gnorm-head-{layer}-{head}")
                button.observe(self._on_toggle, names="value")
                self.buttons[(layer, head)] = button
                row.append(button)
            rows.append(w.HBox(row))
        self.reset_button = w.Button(description="unmask all", icon="undo")
        self.reset_button.on_click(lambda _: self.reset())
        self.status = w.HTML().add_class("gnorm-summary")
        self.widget = w.VBox([*rows, w.HBox([self.reset_button, self.status])])
        self._update()

    # ---- driving it
    def toggle(self, layer: int, head: int, masked: bool | None = None) -> dict[str, Any]:
        """Press (or set, with `masked`) the button of head (layer, head); returns `shown`."""
        button = self._button(layer, head)
        button.value = (not button.value) if masked is None else bool(masked)
        return self.shown

    def set_mask(self, mask: torch.Tensor) -> dict[str, Any]:
        """Set every button from a [L, H] mask (1/True = active, 0/False = masked); one evaluation."""
        mask = torch.as_tensor(mask)
        if tuple(mask.shape) != self.layout.shape:
            raise ValueError(f"mask must have shape {list(self.layout.shape)}, got {list(mask.shape)}")
        self._hold = True
        try:
            for (layer, head), button in self.buttons.items():
                if not button.disabled:
                    button.value = not bool(mask[layer, head])
        finally:
            self._hold = False
        self._update()
        return self.shown

    def reset(self) -> dict[str, Any]:
        """Unmask every head."""
        return self.set_mask(torch.ones(self.layout.shape, dtype=torch.bool))

    # ---- without a kernel
    def still(self) -> bytes:
        """A PNG of the grid as it stands: active heads blue, masked red, pruned grey."""
        return png_bytes(toggle_grid_figure(self.shown, self.present, self.metric))

    def summary_text(self) -> str:
        """The status line as plain text."""
        s = self.shown
        return (f"{self.metric} {s['score']:.4f} ({100 * s['change']:+.1f} points against {s['baseline']:.4f} "
                f"with every head); masked: {', '.join(f'({l}, {h})' for l, h in s['masked']) or 'none'}")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return still_bundle(self.widget, self.still(), self.summary_text())

    # ---- internals
    def _button(self, layer: int, head: int) -> Any:
        if (layer, head) not in self.buttons:
            raise ValueError(f"no head ({layer}, {head}): the grid is {list(self.layout.shape)}")
        button = self.buttons[(layer, head)]
        if button.disabled:
            raise ValueError(f"head ({layer}, {head}) is physically pruned; it cannot be masked")
        return button

    def _masked(self) -> tuple[Head, ...]:
        return tuple(sorted(k for k, b in self.buttons.items() if b.value and not b.disabled))

    def _evaluate(self, masked: tuple[Head, ...]) -> dict[str, float]:
        if masked not in self._cache:
            gates = torch.ones(self.layout.shape)
            for layer, head in masked:
                gates[layer, head] = 0.0
            with mask_heads(self.model, gates):
                self._cache[masked] = evaluate(self.model, self.batches, metric=self.metric)
        return self._cache[masked]

    def _on_toggle(self, change: Mapping[str, Any]) -> None:
        change["owner"].button_style = "danger" if change["new"] else ""
        if not self._hold:
            self._update()

    def _update(self) -> None:
        masked = self._masked()
        result = self._evaluate(masked)
        baseline = self._evaluate(())["score"]
        mask = self.present.clone()
        for layer, head in masked:
            mask[layer, head] = False
        self.shown = {
            "mask": mask,
            "masked": list(masked),
            "score": result["score"],
            "accuracy": result.get("accuracy"),  # None for a causal LM on text alone
            "loss": result.get("loss", result.get("token_loss")),
            "baseline": baseline,
            "change": result["score"] - baseline,
        }
        n_active = int(mask.sum())
        against = (f"{result['score'] / baseline:.2f}× the {baseline:.2f} with every head; lower is better"
                   if self.metric == "perplexity" else f"{_points(result['score'] - baseline)} points against {baseline:.4f} with every head")
        self.status.value = (f"<b>{self.metric} {result['score']:.4f}</b> ({against}); {len(masked)} masked, {n_active} of "
                             f"{self.layout.num_heads_total} heads active")


def head_toggle_grid(
    model: torch.nn.Module, batches: Sequence[Mapping[str, torch.Tensor]], *, metric: str = "accuracy"
) -> HeadToggleGrid:
    """A grid of toggle buttons, one per head, that re-evaluates `model` on `batches` with the
    pressed heads masked. Display it (the widget, with a still picture and text beside it for
    readers without a kernel) or `.widget` alone; read `.shown`."""
    return HeadToggleGrid(model, batches, metric=metric)


# --------------------------------------------------------------------------- pruning explorer


class PruningExplorer:
    """A pruning-ratio slider and a method dropdown over precomputed trajectories.

    Nothing is re-run: for a ratio r the explorer finds the step of the chosen trajectory after
    which round(r * heads) heads are gone, and shows that step's kept-head grid, metrics,
    parameter count and size. `shown` holds ``method``, ``ratio`` (the fraction actually pruned),
    ``step``, ``unit`` (the trajectory's: "head" or "kv_group"), ``heads_pruned`` (units),
    ``mask`` (bool, True = kept), ``accuracy``, ``score`` (the trajectory's metric), ``evaluated``
    (False when that step was not evaluated and the metrics are interpolated), ``params``, ``encoder_params``, ``size_mb`` and the unpruned
    model's ``base_accuracy``, ``base_params`` and ``base_size_mb``.
    """

    def __init__(
        self,
        trajectories: Mapping[str, Trajectory],
        *,
        method: str | None = None,
        ratio: float = 0.0,
        draw: bool = True,
    ):
        w = _widgets()
        if not isinstance(trajectories, Mapping) or not trajectories:
            raise ValueError("pruning_explorer needs a non-empty {name: Trajectory} mapping")
        for name, trajectory in trajectories.items():
            if not isinstance(trajectory, Trajectory):
                raise TypeError(f"trajectory {name!r} must be a gnorm_kernels.engine.trajectory.Trajectory, got {type(trajectory).__name__}")
            if len(trajectory.steps) < 2:
                raise ValueError(f"trajectory {name!r} has no pruning step to explore")
        shapes = {t.shape for t in trajectories.values()}
        if len(shapes) != 1:
            raise ValueError(f"all trajectories must come from one head grid, got shapes {sorted(shapes)}")
        self.trajectories = dict(trajectories)
        self.draw = draw
        self._images: dict[tuple[str, int], bytes] = {}
        self.shown: dict[str, Any] = {}

        first = method if method is not None else next(iter(self.trajectories))
        if first not in self.trajectories:
            raise ValueError(f"unknown method {first!r}; expected one of {list(self.trajectories)}")
        total = self.trajectories[first].units_at_start
        self.dropdown = w.Dropdown(options=list(self.trajectories), value=first, description="method")
        self.dropdown.add_class("gnorm-method")
        self.slider = w.FloatSlider(
            value=0.0, min=0.0, max=self._max_ratio(first), step=1.0 / total,
            description="pruned", readout_format=".1%", continuous_update=True,
            layout=w.Layout(width="460px"),
        ).add_class("gnorm-ratio")
        self.summary = w.HTML().add_class("gnorm-summary")
        self.image = w.Image(format="png")
        self.dropdown.observe(self._on_method, names="value")
        self.slider.observe(lambda _: self._update(), names="value")
        self.widget = w.VBox([w.HBox([self.dropdown, self.slider]), self.summary, self.image])
        self.set_ratio(ratio)

    # ---- driving it
    def set_ratio(self, ratio: float) -> dict[str, Any]:
        """Move the slider to `ratio` (fraction of heads pruned, clipped to what the run covers)."""
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be a number in [0, 1] (the fraction of heads pruned), got {ratio!r}")
        value = min(float(ratio), self.slider.max)
        if self.slider.value == value:
            self._update()
        else:
            self.slider.value = value
        return self.shown

    def set_method(self, name: str) -> dict[str, Any]:
        """Choose a trajectory from the dropdown by name."""
        if name not in self.trajectories:
            raise ValueError(f"unknown method {name!r}; expected one of {list(self.trajectories)}")
        self.dropdown.value = name
        return self.shown

    # ---- reading trajectories
    def _max_ratio(self, name: str) -> float:
        trajectory = self.trajectories[name]
        return trajectory.units_pruned[-1] / trajectory.units_at_start

    def step_for(self, name: str, ratio: float) -> int:
        """The step of trajectory `name` after which round(ratio * heads) heads are pruned
        (the last step not past it, when steps remove several heads at once): `Trajectory.step_for`."""
        return self.trajectories[name].step_for(ratio)

    def state(self, name: str, ratio: float) -> dict[str, Any]:
        """What the explorer shows for method `name` at `ratio`, read from the trajectory."""
        trajectory = self.trajectories[name]
        step = self.step_for(name, ratio)
        record = trajectory.steps[step]
        first = trajectory.steps[0]
        metric = trajectory.settings.get("metric", "accuracy") or "accuracy"
        pruned = trajectory.units_pruned[step]
        fraction = pruned / trajectory.units_at_start
        evaluated = record.metrics is not None
        if evaluated:
            accuracy = record.metrics.get("accuracy")
            score = record.metrics.get(metric, accuracy)
        else:
            accuracy = trajectory.metric_at(fraction, "accuracy")
            score = trajectory.metric_at(fraction, metric)
        return {
            "method": name,
            "ratio": fraction,
            "step": step,
            "unit": trajectory.unit,
            "heads_pruned": pruned,
            "heads_total": trajectory.units_at_start,
            "mask": trajectory.mask_at(steps=step),
            "accuracy": accuracy,
            "score": score,
            "metric": metric,
            "evaluated": evaluated,
            "params": record.params,
            "encoder_params": record.encoder_params,
            "size_mb": record.size_mb,
            "base_accuracy": first.accuracy,
            "base_score": None if first.metrics is None else first.metrics.get(metric),
            "base_params": first.params,
            "base_size_mb": first.size_mb,
        }

    # ---- internals
    def _on_method(self, change: Mapping[str, Any]) -> None:
        name = change["new"]
        top = self._max_ratio(name)
        # keep the slider's value valid before the new range applies
        if self.slider.value > top:
            self.slider.value = top
        self.slider.max = top
        self._update()

    def _update(self) -> None:
        self.shown = self.state(self.dropdown.value, self.slider.value)
        self.summary.value = self._summary_html(self.shown)
        if self.draw:
            self.image.value = self.still()

    @staticmethod
    def _summary_rows(s: Mapping[str, Any]) -> list[tuple[str, str]]:
        def fmt(value: float | None) -> str:
            return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"

        note = "" if s["evaluated"] else " (interpolated: this step was not evaluated)"
        change = ""
        if s["accuracy"] is not None and s["base_accuracy"] is not None and not math.isnan(s["accuracy"]):
            change = f" ({_points(s['accuracy'] - s['base_accuracy'])} points)"
        rows = [
            (f"{'KV groups' if s.get('unit') == 'kv_group' else 'heads'} pruned",
             f"{s['heads_pruned']} of {s['heads_total']} ({s['ratio']:.1%}), step {s['step']}"),
            ("accuracy", f"{fmt(s['accuracy'])}{change}{note}"),
            ("parameters", f"{s['params']:,} ({s['params'] / s['base_params']:.1%} of {s['base_params']:,}); "
                           f"encoder {s['encoder_params']:,}"),
            ("size", f"{s['size_mb']:.3f} MB ({s['size_mb'] / s['base_size_mb']:.1%} of {s['base_size_mb']:.3f} MB)"),
        ]
        if s["metric"] == "perplexity":  # a causal LM on text: no accuracy, lower perplexity is better
            rows[1] = ("perplexity", fmt(s["score"]) + ("" if not s["base_score"] or math.isnan(s["score"])
                                                        else f" ({s['score'] / s['base_score']:.2f}× unpruned)") + note)
        elif s["metric"] != "accuracy":
            rows.insert(2, (s["metric"], fmt(s["score"])))
        return rows

    @classmethod
    def _summary_html(cls, s: Mapping[str, Any]) -> str:
        body = "".join(f"<tr><td style='padding-right:1em'><b>{k}</b></td><td>{v}</td></tr>" for k, v in cls._summary_rows(s))
        return f"<table>{body}</table>"

    def _render(self, s: Mapping[str, Any]) -> bytes:
        return png_bytes(explorer_figure(self.trajectories, s))

    # ---- without a kernel
    def still(self) -> bytes:
        """A PNG of what the explorer shows now (the grid and the curves)."""
        key = (self.shown["method"], self.shown["step"])
        if key not in self._images:
            self._images[key] = self._render(self.shown)
        return self._images[key]

    def summary_text(self) -> str:
        """The summary table as plain text, one "name: value" line per row."""
        return "\n".join(f"{k}: {v}" for k, v in self._summary_rows(self.shown))

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return still_bundle(self.widget, self.still(), f"{self.shown['method']}: " + self.summary_text())


def pruning_explorer(
    trajectories: Mapping[str, Trajectory], *, method: str | None = None, ratio: float = 0.0, draw: bool = True
) -> PruningExplorer:
    """A ratio slider and a method dropdown that show, from precomputed trajectories, the kept-head
    grid, accuracy, parameter count and size at that ratio. Display it (the widget, with a still
    picture and text beside it for readers without a kernel) or `.widget` alone; read `.shown`.
    `draw=False` skips the figure (the summary and `shown` still update)."""
    return PruningExplorer(trajectories, method=method, ratio=ratio, draw=draw)
