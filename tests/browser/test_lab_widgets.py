"""The notebooks' widgets in a real browser: JupyterLab in headless Chromium runs notebooks 01 and 03
(copies) from the Run menu, then a head of 01's toggle grid is clicked and 03's ratio slider is moved,
and what the page shows is held to values computed here with gnorm_kernels from the same settings."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from lab_driver import NotebookPage, copy_notebook
from playwright.sync_api import expect

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
# seconds for all cells of one notebook (03 runs a dozen pruning runs: minutes on 2 idle cores, far more on busy ones)
RUN_TIMEOUT = float(os.environ.get("GNORM_BROWSER_RUN_TIMEOUT", "2400"))
UPDATE_TIMEOUT = 180_000  # ms for a widget to show the kernel's answer to a click
pytestmark = [pytest.mark.browser, pytest.mark.timeout(int(RUN_TIMEOUT) + 1200)]

# Selectors: the stable classes widgets.py gives its controls, or else the controls' descriptions.
HEAD_BUTTON = ".gnorm-head-{l}-{h}, button.widget-toggle-button[title^='layer {l}, head {h}:']"
GRID_SUMMARY = ".gnorm-summary:has-text('heads active') .widget-html-content, .widget-html-content:has-text('heads active')"
UNMASK_ALL = "button.widget-button:has-text('unmask all')"
RATIO_SLIDER = ".gnorm-ratio, .widget-hslider:has(.widget-label:text-is('pruned'))"
WIDGET_BOX = "xpath=ancestor::div[contains(@class, 'widget-vbox')][1]"  # the widget a control is part of
EXPLORER_SUMMARY = ".gnorm-summary:has-text('heads pruned') .widget-html-content, .widget-html-content:has-text('heads pruned')"


def notebook_parameters(path: Path) -> dict[str, Any]:
    """The constants of a notebook's first code cell (its parameters: MODEL, TASK, SEED, ...)."""
    import nbformat

    cell = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    values: dict[str, Any] = {}
    exec(compile(cell.source, f"{path.name} parameters", "exec"), {}, values)
    return values


def check_run(notebook: NotebookPage) -> None:
    """No cell erred or was left unrun, in the page and in the file the page saved; widgets rendered."""
    problems = notebook.errors()
    assert not problems, f"{notebook.notebook}:\n" + "\n".join(problems)
    saved = notebook.save_and_read()
    code = [c for c in saved.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{notebook.notebook} saved with errors: {[e.ename + ': ' + e.evalue for e in errors]}"
    assert all(c.execution_count for c in code), f"{notebook.notebook}: a code cell was not run"
    views = [o for c in code for o in c.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert views, f"{notebook.notebook}: no widget was displayed"


# --------------------------------------------------------------------------- notebook 01: the toggle grid


def grid_expectations(parameters: dict[str, Any]) -> dict[str, Any]:
    """Notebook 01's model and test batches; the two most important heads and the scores the grid must
    show with none, either, and both of them masked (mask_heads + evaluate, as the grid does)."""
    import torch

    from gnorm_kernels.data.loading import load_task
    from gnorm_kernels.evaluation import evaluate
    from gnorm_kernels.heads.families import head_layout
    from gnorm_kernels.heads.masking import mask_heads
    from gnorm_kernels.models.loading import load_model

    # as notebook 01 builds them: eager attention, test batches of 50 grouped by length
    model, tokenizer = load_model(parameters["MODEL"], attn_implementation="eager", progress=False)
    task = load_task(parameters["TASK"], seed=parameters["SEED"])
    test = task.batches("test", tokenizer, batch_size=50, limit=parameters["EVAL_EXAMPLES"], group_by_length=True)
    layout = head_layout(model)

    def score(masked: list[tuple[int, int]]) -> float:
        gates = torch.ones(layout.shape)
        for layer, head in masked:
            gates[layer, head] = 0.0
        with mask_heads(model, gates):
            return evaluate(model, test)["score"]  # the grid's default metric, as the notebook makes it

    baseline = score([])
    heads = [tuple(h) for h in layout.kept_mask().nonzero().tolist()]
    alone = {h: score([h]) for h in heads}
    first, second = sorted(heads, key=lambda h: (alone[h], h))[:2]  # the largest drops
    return {
        "metric": "accuracy",
        "baseline": baseline,
        "first": first,
        "second": second,
        "one": alone[first],
        "second alone": alone[second],
        "two": score([first, second]),
        "heads": len(heads),
    }


def test_head_toggle_grid_in_jupyterlab(lab, chromium, shots, notebooks_dir) -> None:
    source = NOTEBOOKS / "01_head_masking.ipynb"
    copy = copy_notebook(source, notebooks_dir)
    notebook = NotebookPage(chromium.new_page(), lab, copy.name, shots)
    with notebook:
        notebook.open()
        notebook.screenshot("opened")
        notebook.start_run_all()
        want = grid_expectations(notebook_parameters(source))  # while the kernel works
        notebook.wait_for_run(RUN_TIMEOUT)
        summary = notebook.panel.locator(GRID_SUMMARY).first
        summary.wait_for(timeout=UPDATE_TIMEOUT)
        check_run(notebook)
        notebook.screenshot("ran")
        grid = summary.locator(WIDGET_BOX)

        metric, (l1, h1), (l2, h2) = want["metric"], want["first"], want["second"]
        assert abs(want["one"] - want["baseline"]) > 1e-9, f"masking head {want['first']} changes nothing: no test"

        def shows(score: float, masked: int) -> None:
            expect(summary).to_contain_text(f"{metric} {score:.4f}", timeout=UPDATE_TIMEOUT)
            expect(summary).to_contain_text(f"{masked} masked, {want['heads'] - masked} of", timeout=UPDATE_TIMEOUT)

        notebook.panel.locator(UNMASK_ALL).first.click()  # from whatever state the notebook left it in
        notebook.settle()
        shows(want["baseline"], 0)
        notebook.screenshot("grid-0-every-head", grid)

        notebook.panel.locator(HEAD_BUTTON.format(l=l1, h=h1)).first.click()
        notebook.settle()
        shows(want["one"], 1)
        notebook.screenshot(f"grid-1-head-{l1}-{h1}-masked", grid)

        notebook.panel.locator(HEAD_BUTTON.format(l=l2, h=h2)).first.click()
        notebook.settle()
        shows(want["two"], 2)
        notebook.screenshot(f"grid-2-heads-{l1}-{h1}-and-{l2}-{h2}-masked", grid)

        notebook.panel.locator(HEAD_BUTTON.format(l=l1, h=h1)).first.click()  # press it again: unmasked
        notebook.settle()
        shows(want["second alone"], 1)
        notebook.screenshot(f"grid-3-head-{l2}-{h2}-masked", grid)

        notebook.panel.locator(UNMASK_ALL).first.click()
        notebook.settle()
        shows(want["baseline"], 0)
        notebook.screenshot("grid-4-unmasked", grid)


# --------------------------------------------------------------------------- notebook 03: the explorer


def greedy_trajectory(parameters: dict[str, Any]) -> Any:
    """The Greedy-Gnorm trajectory notebook 03 shows in its explorer, rebuilt from its parameters."""
    import torch

    from gnorm_kernels.data.loading import load_task
    from gnorm_kernels.engine.driver import run_method
    from gnorm_kernels.models.loading import load_model

    # as notebook 03 builds it: calibration batches of BATCH_SIZE, test batches of 50 grouped by length,
    # the run as `evidence.compare` makes it for its "greedy-gnorm" (seed SEED)
    torch.manual_seed(parameters["SEED"])
    model, tokenizer = load_model(parameters["MODEL"], progress=False)
    task = load_task(parameters["TASK"], seed=parameters["SEED"])
    calibration = task.batches("calibration", tokenizer, batch_size=parameters["BATCH_SIZE"],
                               limit=parameters["CALIBRATION_EXAMPLES"])
    test = task.batches("test", tokenizer, batch_size=50, limit=parameters["EVAL_EXAMPLES"], group_by_length=True)
    return run_method("greedy-gnorm", model, calibration, test, seed=parameters["SEED"], progress=False)


def explorer_expectation(trajectory: Any, ratio: float) -> tuple[int, int, float]:
    """(heads pruned, heads at the start, accuracy) of the last step with at most round(ratio * heads) pruned."""
    total = trajectory.units_at_start
    wanted = round(ratio * total)
    counts = list(trajectory.units_pruned)
    step = max(i for i, count in enumerate(counts) if count <= wanted)
    metrics = trajectory.steps[step].metrics
    assert metrics is not None and "accuracy" in metrics, f"step {step} of the trajectory was not evaluated"
    return counts[step], total, metrics["accuracy"]


def test_pruning_explorer_in_jupyterlab(lab, chromium, shots, notebooks_dir) -> None:
    source = NOTEBOOKS / "03_greedy_pruning.ipynb"
    copy = copy_notebook(source, notebooks_dir)
    with NotebookPage(chromium.new_page(), lab, copy.name, shots) as notebook:
        notebook.open()
        notebook.start_run_all()
        trajectory = greedy_trajectory(notebook_parameters(source))  # while the kernel works
        notebook.wait_for_run(RUN_TIMEOUT)
        drive_explorer(notebook, trajectory)


def drive_explorer(notebook: NotebookPage, trajectory: Any) -> None:
    """Check the run, then move the explorer's slider by mouse and by keyboard; the summary must follow."""
    page = notebook.page
    slider = notebook.panel.locator(RATIO_SLIDER).first
    summary = notebook.panel.locator(EXPLORER_SUMMARY).first
    slider.wait_for(timeout=UPDATE_TIMEOUT)
    check_run(notebook)
    notebook.screenshot("ran")
    widget = slider.locator(WIDGET_BOX)  # the explorer: controls, summary and picture
    readout = slider.locator(".widget-readout")
    handle = slider.locator(".noUi-handle")
    total = trajectory.units_at_start

    def ratio_shown() -> float:
        return float(readout.inner_text().strip().rstrip("%")) / 100

    def shows(ratio: float) -> None:
        pruned, heads, accuracy = explorer_expectation(trajectory, ratio)
        expect(summary).to_contain_text(re.compile(rf"heads pruned\s*{pruned} of {heads} \("), timeout=UPDATE_TIMEOUT)
        expect(summary).to_contain_text(re.compile(rf"accuracy\s*{accuracy:.4f}"), timeout=UPDATE_TIMEOUT)

    start = ratio_shown()
    notebook.settle()
    shows(start)
    notebook.screenshot(f"explorer-0-at-{100 * start:.0f}pct", widget)

    # drag the handle to three quarters of the track
    target, top = 0.75, trajectory.units_pruned[-1] / total
    track, knob = slider.locator(".noUi-base").bounding_box(), handle.bounding_box()
    y = knob["y"] + knob["height"] / 2
    page.mouse.move(knob["x"] + knob["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(track["x"] + track["width"] * min(target / top, 1.0), y, steps=12)
    page.mouse.up()
    expect(readout).not_to_have_text(f"{start:.1%}", timeout=UPDATE_TIMEOUT)
    dragged = ratio_shown()
    assert abs(dragged - min(target, top)) <= 1.5 / total, f"dragged to {target:.1%} of the track, the slider shows {dragged:.1%}"
    notebook.settle()
    shows(dragged)
    notebook.screenshot(f"explorer-1-dragged-to-{100 * dragged:.0f}pct", widget)

    # three presses of the left arrow key: one head each
    handle.focus()
    for _ in range(3):
        page.keyboard.press("ArrowLeft")
    back = (round(dragged * total) - 3) / total
    expect(readout).to_have_text(f"{back:.1%}", timeout=UPDATE_TIMEOUT)
    notebook.settle()
    shows(back)
    notebook.screenshot(f"explorer-2-keys-to-{100 * back:.0f}pct", widget)
