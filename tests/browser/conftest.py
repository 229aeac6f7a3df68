"""Fixtures for the browser tests: one JupyterLab over notebook copies, one headless Chromium.

Run with `make test-browser` (which installs Debian's chromium when missing); `pytest tests` does not
collect this folder. GNORM_CHROMIUM names the browser (default /usr/bin/chromium); screenshots go to
GNORM_BROWSER_OUT, or to a pytest temporary folder, and the folder is printed at the end of the run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from lab_driver import CHROMIUM_FLAGS, LabServer

ROOT = Path(__file__).resolve().parents[2]
_SHOTS: list[Path] = []


def pytest_terminal_summary(terminalreporter) -> None:
    if _SHOTS:
        terminalreporter.write_line(f"browser screenshots and JupyterLab log: {_SHOTS[0]}")


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder for screenshots (emptied first) and the server log."""
    configured = os.environ.get("GNORM_BROWSER_OUT")
    folder = Path(configured).resolve() if configured else tmp_path_factory.mktemp("browser-screenshots")
    if folder.exists():
        for old in list(folder.glob("*.png")) + list(folder.glob("*.log")):
            old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    _SHOTS.append(folder)
    return folder


@pytest.fixture(scope="session")
def notebooks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty folder JupyterLab serves; each test copies its notebook in (the committed files stay untouched)."""
    return tmp_path_factory.mktemp("notebooks")


@pytest.fixture(scope="session")
def lab(notebooks_dir: Path, shots: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    with LabServer(notebooks_dir, tmp_path_factory.mktemp("lab-state"), shots / "jupyterlab.log") as server:
        yield server


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    """A Playwright browser context in Debian's Chromium with a fresh profile; closed at the end."""
    executable = os.environ.get("GNORM_CHROMIUM", "/usr/bin/chromium")
    if not shutil.which(executable):
        pytest.fail(f"no Chromium at {executable}: run `make test-browser` (it installs Debian's chromium) "
                    f"or set GNORM_CHROMIUM to a Chromium executable")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()
