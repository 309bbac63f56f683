"""JupyterLab in Chromium: the launcher shows a project's R kernel (with IRkernel's logo) beside
its Python kernel, and a notebook started from the R card runs R inside the project's shell.
Leaves test-artifacts/jupyterlab-launcher-r-kernel.png."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import require
from nixprojects import PYTHON, r_package, write_flake
from test_browser import (
    ARTIFACTS,
    CHROMIUM_ARGS,
    KERNEL_TIMEOUT_MS,
    Lab,
    running_lab,
)
from test_shell_kernels import evaluate

from nixkernel.kernelspec import NixKernelSpecManager

GREETING = "hello from the R and Python shell"

pytestmark = pytest.mark.browser


@pytest.fixture
def r_lab(nix: str, tmp_path: Path) -> Iterator[Lab]:
    """`jupyter lab` on a root holding a flake whose shell has Python and R, evaluated first
    (as `jupyter nixkernel warm` leaves it): its kernels are known when the page loads."""
    require("R")
    root = tmp_path / "root"
    shell = {"GREETING": GREETING, "packages": [PYTHON, r_package(tmp_path / "wrap")]}
    project = write_flake(root / "analysis", {"default": shell})
    cache = tmp_path / "cache"
    evaluate(NixKernelSpecManager(project_dirs=[str(root)], cache_dir=str(cache)))
    with running_lab(root, project, cache, tmp_path) as lab:
        yield lab


def test_launcher_shows_the_projects_r_kernel_beside_its_python_kernel(r_lab: Lab):
    require("chromium")
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "jupyterlab-launcher-r-kernel.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(30_000)
        try:
            page.goto(f"{r_lab.url}lab?token={r_lab.token}")
            launcher = page.locator(".jp-Launcher-body")
            python_card = launcher.locator('.jp-LauncherCard[title="analysis (flake)"]').first
            r_card = launcher.locator('.jp-LauncherCard[title="analysis (flake: R)"]').first
            expect(python_card).to_be_visible(timeout=KERNEL_TIMEOUT_MS)
            expect(r_card).to_be_visible()
            # The R card's logo is IRkernel's, served from the spec's resource directory.
            src = r_card.locator("img").get_attribute("src") or ""
            assert "/kernelspecs/nix-analysis-flake-ir-" in src and "/logo-" in src, src
            page.screenshot(path=str(screenshot), full_page=True)

            r_card.click()
            panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
            expect(panel.locator(".jp-Toolbar-kernelName")).to_have_text(
                "analysis (flake: R)", timeout=KERNEL_TIMEOUT_MS
            )
            expect(panel.locator(".jp-Notebook-ExecutionIndicator")).to_have_attribute(
                "data-status", "idle", timeout=KERNEL_TIMEOUT_MS
            )
            panel.locator(".jp-Cell").first.click()
            page.keyboard.type('cat(Sys.getenv("GREETING"))')
            page.keyboard.press("Shift+Enter")
            output = panel.locator(".jp-OutputArea-output").first
            expect(output).to_have_text(GREETING, timeout=KERNEL_TIMEOUT_MS)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-r-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    print(f"screenshot: {screenshot}")
