"""A shell's R kernel inside a real jupyter_server (pytest-jupyter): listed in
/api/kernelspecs with IRkernel's language and logos, beside the Python kernel of a shell that
has both, and run through a session and the kernel websocket, as JupyterLab does."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import require
from nixprojects import PYTHON, r_package, write_flake, write_shell_nix
from test_server import PNG_MAGIC, execute, get_json, start_session
from test_shell_kernels import evaluate
from traitlets.config import Config

from nixkernel.kernelspec import NixKernelSpecManager


@pytest.fixture
def r_projects(nix: str, jp_root_dir: Path, tmp_path: Path) -> dict[str, Path]:
    """An R-only flake and a shell.nix with Python and R under the server's root, evaluated
    before the server starts (as `jupyter nixkernel warm` leaves them)."""
    require("R")
    r = r_package(tmp_path / "wrap")
    shell = {"GREETING": "hello from the R shell", "packages": [r]}
    projects = {
        "stats": write_flake(jp_root_dir / "stats", {"default": shell}),
        "both": write_shell_nix(jp_root_dir / "both", {**shell, "packages": [PYTHON, r]}),
    }
    evaluate(NixKernelSpecManager(project_dirs=[str(jp_root_dir)], cache_dir=str(tmp_path / "c")))
    return projects


@pytest.fixture
def jp_server_config(r_projects: dict[str, Path], tmp_path: Path) -> Config:
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"nixkernel": True}},
            "NixKernelSpecManager": {
                "cache_dir": str(tmp_path / "c"),
                "discover_flake_shells": False,
            },
        }
    )


def ours(listing: dict, project: Path) -> dict[str, dict]:
    """The listing's models of ``project``'s kernels, by language."""
    return {
        model["spec"]["language"]: model
        for model in listing["kernelspecs"].values()
        if model["spec"]["metadata"].get("nixkernel", {}).get("project") == str(project)
    }


async def test_server_lists_the_r_kernel_with_irkernels_logos_and_runs_it(
    jp_fetch, jp_ws_fetch, jp_serverapp, jp_root_dir, jp_base_url, r_projects
):
    listing = await get_json(jp_fetch, "api", "kernelspecs")
    stats = ours(listing, r_projects["stats"])
    both = ours(listing, r_projects["both"])
    assert list(stats) == ["R"]  # an R-only shell: no Python kernel
    assert sorted(both) == ["R", "python"]
    assert both["python"]["spec"]["display_name"] == "both (shell.nix)"
    model = stats["R"]
    assert model["spec"]["display_name"] == "stats (flake: R)"
    assert model["name"] != "ir"  # not Debian's system-wide spec

    # The logos are IRkernel's, from the spec's resource directory in the shell's R library.
    irkernel = subprocess.run(
        ["R", "-s", "-e", 'cat(system.file("kernelspec", package = "IRkernel"))'],
        capture_output=True,
        text=True,
    ).stdout
    assert set(model["resources"]) == {"logo-64x64", "logo-svg"}
    logo = await jp_fetch(model["resources"]["logo-64x64"][len(jp_base_url) :])
    assert logo.body.startswith(PNG_MAGIC)
    assert logo.body == (Path(irkernel) / "logo-64x64.png").read_bytes()

    notebook = r_projects["stats"] / "analysis" / "r.ipynb"
    kernel_id = await start_session(jp_fetch, jp_root_dir, notebook, model["name"])
    run = await execute(jp_ws_fetch, kernel_id, 'cat(Sys.getenv("GREETING"), getwd(), sep = "|")')
    assert not run.errors, run.error_text
    assert run.stdout == f"hello from the R shell|{notebook.parent}"
    jp_serverapp.kernel_spec_manager.stop_background_refresh()
