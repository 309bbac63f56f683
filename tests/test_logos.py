"""Logos that tell kernels apart: a plain virtualenv's kernel has Python's logo, the Nix kernels
(and Python (this project)) the Nix snowflake with a Python badge; in the REST listing, in
installed kernel.json directories, and in JupyterLab's launcher (a screenshot in
test-artifacts/)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import require
from nixprojects import write_flake
from test_browser import ARTIFACTS, CHROMIUM_ARGS, Lab, running_lab

from nixkernel.describe import PROJECT_KERNEL_NAME
from nixkernel.kernelspec import RESOURCES, VENV_RESOURCES

LOGO_FILES = ("logo-svg.svg", "logo-64x64.png", "logo-32x32.png")


def make_venv_project(directory: Path) -> Path:
    (directory / ".venv" / "bin").mkdir(parents=True)
    (directory / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\nuv = 0.4.0\n")
    (directory / ".venv" / "bin" / "python").symlink_to(sys.executable)
    return directory


def test_venv_kernels_have_pythons_logo_and_nix_kernels_the_nix_mark(projects, manager_factory):
    for name in LOGO_FILES:
        nix_logo = (Path(RESOURCES) / name).read_bytes()
        assert nix_logo != (Path(VENV_RESOURCES) / name).read_bytes(), name
    svg = (Path(RESOURCES) / "logo-svg.svg").read_text()
    assert "#5277C3" in svg and "#3776AB" in svg and "#FFD43B" in svg  # Nix blue + Python's
    assert "#5277C3" not in (Path(VENV_RESOURCES) / "logo-svg.svg").read_text()

    make_venv_project(projects / "tool")
    (projects / "api").mkdir()
    (projects / "api" / "shell.nix").write_text("{}\n")
    manager = manager_factory(project_dirs=[str(projects)])
    kinds = {t.kind: t.name for t in manager.targets()}
    assert manager.get_kernel_spec(kinds["venv"]).resource_dir == VENV_RESOURCES
    assert manager.get_kernel_spec(kinds["shell.nix"]).resource_dir == RESOURCES
    assert manager.get_kernel_spec(PROJECT_KERNEL_NAME).resource_dir == RESOURCES
    found = manager.find_kernel_specs()
    assert found[kinds["venv"]] == VENV_RESOURCES and found[kinds["shell.nix"]] == RESOURCES


def test_installed_kernels_get_the_logos_of_their_kind(projects, tmp_path):
    make_venv_project(projects / "tool")
    (projects / "api").mkdir()
    (projects / "api" / "shell.nix").write_text("{}\n")
    prefix = tmp_path / "prefix"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "NIXKERNEL_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "nixkernel.cli", "install", "--all", "--prefix", str(prefix),
         "--dir", str(projects)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    kernels = prefix / "share" / "jupyter" / "kernels"
    for spec_dir in kernels.iterdir():
        expected = VENV_RESOURCES if "-venv-" in spec_dir.name else RESOURCES
        assert sorted(p.name for p in spec_dir.iterdir()) == sorted([*LOGO_FILES, "kernel.json"])
        for name in LOGO_FILES:
            assert (spec_dir / name).read_bytes() == (Path(expected) / name).read_bytes()


@pytest.fixture
def lab_with_both(nix: str, tmp_path: Path) -> Iterator[Lab]:
    """`jupyter lab` whose root holds a flake project and a plain venv project."""
    root = tmp_path / "root"
    project = write_flake(root / "proj")
    make_venv_project(root / "tool")
    with running_lab(root, project, tmp_path / "cache", tmp_path) as lab:
        yield lab


@pytest.mark.browser
def test_launcher_shows_distinct_logos(lab_with_both: Lab):
    require("chromium")
    from playwright.sync_api import expect, sync_playwright

    lab = lab_with_both
    specs = lab.api("kernelspecs")["kernelspecs"]  # type: ignore[index]
    by_display = {m["spec"]["display_name"]: m for m in specs.values()}
    venv_logo = by_display["tool (uv .venv)"]["resources"]["logo-svg"]
    nix_logo = by_display["proj (flake)"]["resources"]["logo-svg"]

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "jupyterlab-launcher-logos.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(30_000)
        try:
            page.goto(f"{lab.url}lab?token={lab.token}")
            sources = {}
            for title, url in (("tool (uv .venv)", venv_logo), ("proj (flake)", nix_logo)):
                card = page.locator(f'.jp-LauncherCard[title="{title}"]').first
                expect(card).to_be_visible()
                icon = card.locator("img")
                expect(icon).to_have_attribute("src", url)
                # Loaded, not a broken image.
                page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                       arg=icon.element_handle())  # fmt: skip
                sources[title] = icon.evaluate(
                    "img => { const c = document.createElement('canvas'); c.width = 16;"
                    " c.height = 16; const x = c.getContext('2d'); x.drawImage(img, 0, 0, 16, 16);"
                    " return Array.from(x.getImageData(0, 0, 16, 16).data).join(','); }"
                )
            page.screenshot(path=str(screenshot), full_page=True)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-launcher-failure.png"))
            raise
        finally:
            browser.close()
    # What the launcher shows differs, pixel for pixel.
    assert sources["tool (uv .venv)"] != sources["proj (flake)"]
    print(f"screenshot: {screenshot}")
