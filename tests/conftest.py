"""Shared fixtures.

`tiny` is the offline default model (trained once and cached under $GNORM_CACHE or
~/.cache/gnorm_kernels; the first run of the suite trains it, about a minute and a
half on 2 cores) with its tokenizer and the synthetic task. It is shared by the whole
session: tests that change the model must work on `copy.deepcopy(tiny.model)`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes tens of seconds (many evaluations of the tiny model)")


class TinySetup(NamedTuple):
    model: Any
    tokenizer: Any
    task: Any


@pytest.fixture(scope="session")
def tiny() -> TinySetup:
    from gnorm_kernels.data.loading import load_task
    from gnorm_kernels.models.loading import load_model

    model, tokenizer = load_model("tiny", progress=False)
    return TinySetup(model, tokenizer, load_task("synthetic"))


@pytest.fixture(scope="session")
def tiny_calibration(tiny: TinySetup) -> list[dict[str, torch.Tensor]]:
    """The calibration split of the synthetic task in batches of 32."""
    return tiny.task.batches("calibration", tiny.tokenizer, batch_size=32)


@pytest.fixture(scope="session")
def tiny_test(tiny: TinySetup) -> list[dict[str, torch.Tensor]]:
    """The test split of the synthetic task in batches of 256."""
    return tiny.task.batches("test", tiny.tokenizer, batch_size=256)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A small random BERT with the synthetic task's tokenizer, saved as a local checkpoint."""
    from gnorm_kernels.data.synthetic import synthetic_tokenizer
    from gnorm_kernels.testing import tiny_random_model

    path = tmp_path_factory.mktemp("model")
    tokenizer = synthetic_tokenizer()
    model = tiny_random_model("bert", vocab_size=len(tokenizer), initializer_range=0.2)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
