"""The notebook checker (tests/notebook_rules.py) on small notebooks built here, passing and failing."""

from __future__ import annotations

import base64

import pytest

nbformat = pytest.importorskip("nbformat")
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output  # noqa: E402
from notebook_rules import check_notebook, summary  # noqa: E402

WIDGET = "application/vnd.jupyter.widget-view+json"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


def widget_output(text: str, **extra: str) -> dict:
    return new_output("display_data", data={WIDGET: {"model_id": "m1", "version_major": 2, "version_minor": 0},
                                            "text/plain": text, **extra})


def test_a_clean_notebook_passes(tmp_path):
    nb = new_notebook(cells=[
        new_markdown_cell("# 03 Greedy pruning on GPT-2\n\nWe prune `RATIO = 0.5` of the heads; the table below "
                          "says which differences are resolved.\n\nThe paper reports 96.82% → 90.08% with 117 of "
                          "144 heads pruned.\n\n1. whether layer 0 matters more than layers 2 and 3 (notebooks 01–03), as the table "
                          "below shows;\n2. why (Michel et al., 2019, \"Are Sixteen Heads Really Better than One?\") "
                          "helps, with 95% intervals against random."),
        new_code_cell("from gnorm_kernels.evidence.viz import plot_accuracy_curves\nresult = compare(...)\n"
                      "def pick(rows):\n    return rows[0]",
                      outputs=[new_output("stream", name="stdout", text="greedy-gnorm: 100%|##| 32/32\n")]),
        new_code_cell("explorer", outputs=[widget_output("a: heads pruned: 4 of 8", **{"image/png": PNG})]),
        new_code_cell("display(explorer.widget)\nprint(explorer.summary_text())",
                      outputs=[widget_output("VBox(children=(Dropdown(),))"),
                               new_output("stream", name="stdout", text="heads pruned: 4 of 8\n")]),
    ])
    path = tmp_path / "clean.ipynb"
    nbformat.write(nb, path)
    assert check_notebook(path, allow=[r"paper reports"]) == []


def test_each_rule_finds_its_violation():
    nb = new_notebook(cells=[
        new_markdown_cell("Greedy Gnorm keeps 0.93 accuracy against 0.81 for entropy. Decoding ran 1.48× as fast.\n"
                          "- the pruned model is 2.1x faster\n\nIt uses 12 heads."),
        new_code_cell("def binomial_se(p, n):\n    return (p * (1 - p) / n) ** 0.5\n\n"
                      "def show(grid):\n    plt.imshow(grid)\n\n%matplotlib inline\ndef pick(rows):\n    return rows[0]"),
        new_code_cell("run()", outputs=[widget_output("greedy-gnorm:   0%|          | 0/32 [00:00<?, ?head/s]")]),
        new_code_cell("explorer.widget", outputs=[widget_output("VBox(children=(Dropdown(),))"),
                                                  new_output("stream", name="stderr", text="DeprecationWarning\n")]),
        new_code_cell("display(grid.widget)", outputs=[widget_output("VBox(children=(HBox(children=(Label(value='l…")]),
    ])
    found = check_notebook(nb)
    assert summary(found) == {"claim": 3, "progress-widget": 1, "widget-without-still": 2, "helper": 2}
    claims = [v.detail for v in found if v.rule == "claim"]
    assert claims[0].startswith("Greedy Gnorm keeps 0.93") and "1.48×" in claims[1] and "2.1x" in claims[2]
    assert {v.detail for v in found if v.rule == "helper"} == {"def binomial_se", "def show"}
    assert [v.cell for v in found if v.rule != "claim"] == [1, 1, 2, 3, 4]
    # an allow-list entry lets a sentence through; the others still count
    assert summary(check_notebook(nb, allow=[r"1\.48×"]))["claim"] == 2


def test_a_progress_bar_is_found_from_the_saved_widget_state_too():
    nb = new_notebook(cells=[new_code_cell("run()", outputs=[widget_output("HBox(children=(HTML(value=''),))")])])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {
        "m1": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_m2"]}},
        "m2": {"model_name": "FloatProgressModel", "state": {}}}}}
    assert summary(check_notebook(nb)) == {"claim": 0, "progress-widget": 1, "widget-without-still": 0, "helper": 0}


# The committed notebooks that follow every rule: all of them.
FOLLOWING_THE_RULES = ("01_head_masking.ipynb", "02_gradient_norm_scores.ipynb", "03_greedy_pruning.ipynb",
                       "04_triton_block_norm_kernel.ipynb", "05_real_checkpoints.ipynb", "06_intra_attention_pruning.ipynb",
                       "07_decoder_heads_and_the_kv_cache.ipynb", "08_a_real_llm.ipynb",
                       "09_pruned_models_that_leave_the_package.ipynb")


@pytest.mark.parametrize("name", FOLLOWING_THE_RULES)
def test_committed_notebooks_that_follow_the_rules_keep_doing_so(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "notebooks" / name
    assert check_notebook(path) == [], f"{name} breaks the notebook rules"
