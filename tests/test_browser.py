"""JupyterLab in Chromium (Playwright on Debian's chromium): a user opens a notebook in a flake
project, picks the project's kernel in the Select Kernel dialog, runs a cell, and sees the
dev shell's variable in the output; on a project nothing is cached for, the cell shows the
build's progress, then its result."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from helpers import require
from nixprojects import DEFAULT_SHELL, write_flake
from test_building import slow_project

from nixkernel.cache import ENTRY_FILE, EnvironmentCache
from nixkernel.describe import NixSource

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
GREETING = "hello from the project's flake"
SERVER_START_TIMEOUT = 60
KERNEL_TIMEOUT_MS = 60_000  # a first start evaluates the dev shell with Nix
STDOUT = '[data-mime-type="application/vnd.jupyter.stdout"]'
STDERR = '[data-mime-type="application/vnd.jupyter.stderr"]'

pytestmark = pytest.mark.browser


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    project: Path
    cold: Path | None = None
    """A shell.nix project whose environment takes a 12 s build (the cold-start test's)."""
    cold_marker: str = ""
    cache_dir: Path | None = None

    def api(self, path: str) -> object:
        """GET /api/<path> as JSON."""
        request = urllib.request.Request(
            f"{self.url}api/{path}", headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(process: subprocess.Popen, lab: Lab, log: Path) -> None:
    """Poll /api/status until the server answers (or exits, or the deadline passes)."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        if process.poll() is not None:
            pytest.fail(f"jupyter lab exited with {process.returncode}:\n{log.read_text()}")
        try:
            lab.api("status")
            return
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                pytest.fail(
                    f"jupyter lab did not answer in {SERVER_START_TIMEOUT} s:\n{log.read_text()}"
                )
            time.sleep(0.2)  # poll interval, not synchronisation


@contextlib.contextmanager
def running_lab(root: Path, project: Path, cache: Path, tmp_path: Path) -> Iterator[Lab]:
    """`jupyter lab` on a free port over ``root``, nixkernel enabled by the installed config.d
    file (as after `pip install nixkernel`), its cache in ``cache``; stopped afterwards."""
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,  # NIX_CONFIG from the nix fixture
        "NIXKERNEL_CACHE_DIR": str(cache),
        # No user settings or saved workspace: the page starts the same every run.
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
    }
    # Never ask about the news feed: its notification would sit over the notebook.
    settings = tmp_path / "jupyter-config" / "lab" / "user-settings" / "@jupyterlab"
    notification = settings / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text('{"fetchNews": "false"}')
    log = tmp_path / "jupyter-lab.log"
    argv = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
        f"--port={port}", "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
        "--NixKernelSpecManager.discover_flake_shells=False",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(argv, env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT)
    lab = Lab(f"http://127.0.0.1:{port}/", token, root, project, cache_dir=cache)
    try:
        wait_for_server(process, lab, log)
        yield lab
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def lab(nix: str, tmp_path: Path) -> Iterator[Lab]:
    """`jupyter lab` on a free port, root_dir holding one flake project, nixkernel enabled by
    the installed config.d file (as after `pip install nixkernel`)."""
    root = tmp_path / "root"
    project = write_flake(root / "proj", {"default": {**DEFAULT_SHELL, "GREETING": GREETING}})
    cold, cold_marker = slow_project(root / "cold", seconds=12)
    with running_lab(root, project, tmp_path / "cache", tmp_path) as lab:
        lab.cold, lab.cold_marker = cold, cold_marker
        yield lab


def project_kernel(lab: Lab, project: Path | None = None) -> dict:
    project = project or lab.project
    specs = lab.api("kernelspecs")["kernelspecs"]  # type: ignore[index]
    for model in specs.values():
        if model["spec"]["metadata"].get("nixkernel", {}).get("project") == str(project):
            return model
    pytest.fail(
        f"no nixkernel kernel for {project} in {sorted(specs)}: is nixkernel installed "
        "(pip install -e .), so that jupyter_server_config.d/nixkernel.json enables it?"
    )


def test_pick_project_kernel_in_jupyterlab_and_run_a_cell(lab: Lab):
    require("chromium")
    from playwright.sync_api import expect, sync_playwright

    kernel = project_kernel(lab)
    display_name = kernel["spec"]["display_name"]
    assert display_name == "proj (flake)"
    # The notebook names another kernel: the user switches it in the kernel picker.
    notebook = lab.project / "demo.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells.append(nbformat.v4.new_code_cell('import os; print(os.environ["GREETING"])'))
    nbformat.write(nb, notebook)

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "jupyterlab-project-kernel.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(30_000)
        try:
            page.goto(f"{lab.url}lab/tree/proj/demo.ipynb?token={lab.token}")

            panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
            kernel_button = panel.locator(".jp-Toolbar-kernelName")
            expect(kernel_button).to_have_text("Python 3 (ipykernel)", timeout=KERNEL_TIMEOUT_MS)

            kernel_button.click()
            dialog = page.locator(".jp-Dialog")
            expect(dialog.locator(".jp-Dialog-header")).to_have_text("Select Kernel")
            dialog.locator("select").select_option(label=display_name)
            dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
            expect(dialog).to_have_count(0)
            expect(kernel_button).to_have_text(display_name)
            # Idle again: the project's kernel is up.
            expect(panel.locator(".jp-Notebook-ExecutionIndicator")).to_have_attribute(
                "data-status", "idle", timeout=KERNEL_TIMEOUT_MS
            )

            panel.locator(".jp-Cell").first.click()
            page.keyboard.press("Shift+Enter")
            # stdout: on a cold start the cell also shows the build's progress, on stderr.
            output = panel.locator(STDOUT).first
            expect(output).to_have_text(GREETING, timeout=KERNEL_TIMEOUT_MS)

            page.screenshot(path=str(screenshot), full_page=True)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    print(f"screenshot: {screenshot}")

    # The server agrees: the notebook's session runs the project's kernel.
    sessions = lab.api("sessions")
    assert [(s["path"], s["kernel"]["name"]) for s in sessions] == [  # type: ignore[union-attr]
        ("proj/demo.ipynb", kernel["name"])
    ]


def test_a_cold_project_shows_its_build_in_the_cell_then_the_result(lab: Lab):
    """A notebook of a project nothing is cached for: the kernel is usable (idle) within
    seconds while Nix builds, the cell run at once shows the build's progress before the
    environment is cached, then its own output from the environment, without a re-run. A
    screenshot of each stage goes to test-artifacts/."""
    require("chromium")
    from playwright.sync_api import expect, sync_playwright

    kernel = project_kernel(lab, lab.cold)
    notebook = lab.cold / "cold.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": kernel["name"],
        "display_name": kernel["spec"]["display_name"],
        "language": "python",
    }
    nb.cells.append(nbformat.v4.new_code_cell('import os; print(os.environ["GREETING"])'))
    nbformat.write(nb, notebook)
    entry = Path(EnvironmentCache(str(lab.cache_dir)).slot(
        NixSource("file", str(lab.cold / "shell.nix"))
    )) / ENTRY_FILE  # fmt: skip

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(30_000)
        try:
            page.goto(f"{lab.url}lab/tree/cold/cold.ipynb?token={lab.token}")
            panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
            # Usable long before the 12 s build ends: no "Connecting" for its duration.
            status = page.get_by_role("button", name="cold (shell.nix) | Idle")
            expect(status).to_be_visible(timeout=10_000)
            cell = panel.locator(".jp-Cell").first
            cell.click()
            page.keyboard.press("Shift+Enter")
            expect(cell.locator(".jp-InputPrompt")).to_have_text("[*]:")
            progress = panel.locator(STDERR).first
            expect(progress).to_contain_text(f"-{lab.cold_marker}.drv", timeout=30_000)
            assert not entry.exists(), "the build had ended: nothing to see"
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-cold-building.png"), full_page=True)

            expect(panel.locator(STDOUT).first).to_have_text(
                lab.cold_marker, timeout=KERNEL_TIMEOUT_MS
            )
            expect(progress).to_contain_text("the environment is ready")
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-cold-result.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-cold-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
