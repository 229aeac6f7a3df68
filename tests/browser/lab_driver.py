"""A JupyterLab server on loopback and a Chromium page that drives it, for the browser tests.

`LabServer` starts `jupyter lab` on 127.0.0.1 with a token, over a folder of notebook copies, with
its own settings (no network checks, every cell kept in the page) and stops it together with every
kernel it started. `NotebookPage` opens a notebook in the browser, runs all its cells from the Run
menu and reads what the page shows.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import nbformat
import psutil

# The notebook on show (JupyterLab hides the panels of other tabs with lm-mod-hidden).
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# JupyterLab user settings: keep every cell in the page (no windowing), never fetch news or updates.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def copy_notebook(source: Path, folder: Path) -> Path:
    """Copy a notebook with its outputs and widget state cleared, so that all the page shows comes from this run."""
    notebook = nbformat.read(source, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    notebook.metadata.pop("widgets", None)
    target = folder / source.name
    nbformat.write(notebook, target)
    return target


class LabServer:
    """`jupyter lab` on 127.0.0.1:<free port> serving `root`; a context manager that always stops it."""

    def __init__(self, root: Path, state: Path, log: Path, *, startup_timeout: float = 180.0):
        self.root, self.state, self.log_path = Path(root), Path(state), Path(log)
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self._log = None

    def __enter__(self) -> "LabServer":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        settings = self.state / "lab-settings"
        for name, values in LAB_SETTINGS.items():
            path = settings / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        env = dict(os.environ)
        env.update(
            JUPYTER_CONFIG_DIR=str(self.state / "config"),
            JUPYTER_RUNTIME_DIR=str(self.state / "runtime"),
            JUPYTERLAB_SETTINGS_DIR=str(settings),
            JUPYTERLAB_WORKSPACES_DIR=str(self.state / "workspaces"),
            JUPYTER_DATA_DIR=str(self.state / "data"),
            IPYTHONDIR=str(self.state / "ipython"),
        )
        command = [
            sys.executable, "-m", "jupyter", "lab",
            "--no-browser", "--allow-root",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
            "--ServerApp.terminals_enabled=False",
            "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, env=env, cwd=self.root, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.process.returncode} before answering:\n{self.log_tail()}")
            try:
                self.api("GET", "status")
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"jupyter lab did not answer on {self.url} within {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def api(self, method: str, path: str) -> Any:
        request = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def lab_url(self, notebook: str) -> str:
        """The notebook in a workspace of its own, emptied first: no tab of an earlier page is restored."""
        workspace = re.sub(r"[^A-Za-z0-9_-]", "-", Path(notebook).stem)
        return f"{self.url}/lab/workspaces/{workspace}/tree/{notebook}?reset&token={self.token}"

    def stop(self) -> None:
        """Shut the kernels down through the server, then end the server and anything left of its children."""
        if self.process is None:
            return
        try:
            if self.process.poll() is None:
                children = psutil.Process(self.process.pid).children(recursive=True)
                try:
                    for kernel in self.api("GET", "kernels"):
                        self.api("DELETE", f"kernels/{kernel['id']}")
                except OSError:
                    pass
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
                alive = [c for c in children if c.is_running()]
                for child in alive:
                    child.terminate()
                _, alive = psutil.wait_procs(alive, timeout=10)
                for child in alive:
                    child.kill()
        finally:
            self.process = None
            if self._log is not None:
                self._log.close()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


class NotebookPage:
    """One notebook open in JupyterLab in a Playwright page; as a context manager, it screenshots a
    failure and always shuts its kernel down and closes the page."""

    def __init__(self, page: Any, server: LabServer, notebook: str, shots: Path):
        self.page, self.server, self.notebook, self.shots = page, server, notebook, Path(shots)
        self.name = Path(notebook).stem
        self.panel = page.locator(PANEL)  # every locator of this notebook's cells and widgets starts here

    def open(self, timeout: float = 180.0) -> None:
        """Open the notebook and wait until all its cells are in the page and its kernel is idle."""
        cells = len(nbformat.read(self.server.root / self.notebook, as_version=4).cells)
        self.page.goto(self.server.lab_url(self.notebook), timeout=timeout * 1000)
        self.page.wait_for_function(
            "([panel, n]) => document.querySelectorAll(panel + ' .jp-Notebook .jp-Cell').length === n",
            arg=[PANEL, cells], timeout=timeout * 1000, polling=500,
        )
        self.wait_for_kernel_idle(timeout)

    def wait_for_kernel_idle(self, timeout: float) -> None:
        """Wait until the status bar says the kernel is idle (started, and not busy)."""
        self.page.wait_for_function(
            "() => [...document.querySelectorAll('.jp-StatusBar-Widget')].some(e => /\\| Idle/.test(e.innerText))",
            timeout=timeout * 1000, polling=500,
        )

    def settle(self, quiet: float = 3.0, timeout: float = 300.0) -> None:
        """Wait until the kernel has been idle for `quiet` seconds: every queued widget event handled,
        so each output (a widget's picture included) shows its final state."""
        deadline = time.monotonic() + timeout
        idle_since = None
        while time.monotonic() < deadline:
            idle = self.page.evaluate(
                "() => [...document.querySelectorAll('.jp-StatusBar-Widget')].some(e => /\\| Idle/.test(e.innerText))"
            )
            now = time.monotonic()
            idle_since = (idle_since or now) if idle else None
            if idle_since is not None and now - idle_since >= quiet:
                return
            time.sleep(0.25)
        raise TimeoutError(f"{self.notebook}: the kernel did not stay idle for {quiet} s within {timeout} s")

    def start_run_all(self) -> None:
        """Run > Run All Cells (returns at once; `wait_for_run` waits)."""
        self.page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
        self.page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()

    def wait_for_run(self, timeout: float) -> None:
        """Wait until every code cell has an execution count, or one failed and the rest were dropped."""
        self.page.wait_for_function(
            """panel => {
                const prompts = [...document.querySelectorAll(panel + ' .jp-Notebook .jp-CodeCell .jp-InputArea-prompt')];
                const done = prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
                const failed = document.querySelector(panel + " .jp-Notebook [data-mime-type='application/vnd.jupyter.error']");
                const running = prompts.some(p => p.textContent.includes('*'));
                return (done || failed) && !running;
            }""",
            arg=PANEL,
            timeout=timeout * 1000,
            polling=1000,
        )

    def errors(self) -> list[str]:
        """Error outputs and failed widget views in the page, with the cell they are in."""
        found = []
        for cell in self.panel.locator(".jp-Notebook .jp-CodeCell").all():
            prompt = cell.locator(".jp-InputArea-prompt").inner_text().strip()
            for output in cell.locator("[data-mime-type='application/vnd.jupyter.error']").all():
                found.append(f"cell {prompt}: {output.inner_text()[-1500:]}")
            text = cell.locator(".jp-Cell-outputWrapper").inner_text()
            if "Error displaying widget" in text:
                found.append(f"cell {prompt}: a widget shows 'Error displaying widget'")
        unrun = [c.locator(".jp-InputArea-prompt").inner_text().strip() for c in self.panel.locator(".jp-Notebook .jp-CodeCell").all()]
        unrun = [p for p in unrun if not re.search(r"\[\d+\]", p)]
        if unrun:
            found.append(f"{len(unrun)} code cells have no execution count")
        return found

    def save_and_read(self) -> nbformat.NotebookNode:
        """Save from the page (Ctrl+S) and read back what the server wrote."""
        self.panel.locator(".jp-Notebook").click(position={"x": 5, "y": 5})
        before = self.server.api("GET", f"contents/{self.notebook}?content=0")["last_modified"]
        self.page.keyboard.press("Control+s")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.server.api("GET", f"contents/{self.notebook}?content=0")["last_modified"] != before:
                break
            time.sleep(0.5)
        return nbformat.reads(json.dumps(self.server.api("GET", f"contents/{self.notebook}")["content"]), as_version=4)

    def screenshot(self, label: str, locator: Any | None = None) -> Path:
        """The page (or one element of it, scrolled into view) as <notebook>-<label>.png."""
        path = self.shots / f"{self.name}-{label}.png"
        if locator is None:
            self.page.screenshot(path=str(path))
        else:
            locator.scroll_into_view_if_needed()
            locator.screenshot(path=str(path))
        return path

    def __enter__(self) -> "NotebookPage":
        return self

    def __exit__(self, kind: type | None, *rest: Any) -> None:
        """On an exception, save what the page showed (<notebook>-failure.png); always close."""
        if kind is not None:
            try:
                self.page.screenshot(path=str(self.shots / f"{self.name}-failure.png"), full_page=True)
            except Exception:
                pass
        self.close()

    def close(self) -> None:
        """Shut this notebook's kernel down and close the page."""
        try:
            for session in self.server.api("GET", "sessions"):
                if session.get("path") == self.notebook:
                    self.server.api("DELETE", f"sessions/{session['id']}")
        finally:
            self.page.close()
