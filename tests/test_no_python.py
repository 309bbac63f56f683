"""Shells with no Python (a Go or Rust shell, a library-only shell): once evaluated they are
listed with that problem, and their kernel says so with the fix. The server's own python3 (on
the PATH that ``nix develop`` appends to the shell's) never runs in their place."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from nixprojects import PYTHON, write_flake, write_shell_nix

from nixkernel.cache import EnvironmentCache

FALLBACK = "nixkernel-fallback"
GO_SHELL = {"GOPATH": "/tmp/go", "packages": []}
FIX = "python3.withPackages (ps: [ ps.ipykernel ])"


@pytest.fixture
def server_python_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A python3 with ipykernel first on the server's PATH: the one a shell without Python would
    silently have run."""
    bin_dir = tmp_path / "server-bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


def warm(manager) -> None:
    for target in manager.refresh():
        source = target.nix_source()
        if source is not None:
            manager.cache.ensure(source, manager.nix_executable or None)


@pytest.mark.parametrize("mode", ["cached", "direct"])
def test_shell_without_python_is_listed_with_the_problem_and_its_kernel_explains(
    nix, projects, manager_factory, kernel_runner, server_python_on_path, mode
):
    """The kernel of an evaluated shell with no python3 on its own PATH is the fallback kernel
    naming the fix, though the server's PATH has a python3 with ipykernel (describe.find_python
    searches only the shell's PATH entries; in direct mode, the shell's PATH minus the server's)."""
    project = write_flake(projects / "gotool", {"default": GO_SHELL})
    manager = manager_factory(project_dirs=[str(projects)], launch_mode=mode)
    (before,) = manager.refresh()
    assert before.problem is None  # not evaluated yet: nothing known about its Python

    warm(manager)
    (target,) = manager.refresh()
    assert target.problem and "no python3" in target.problem and FIX in target.problem
    spec = manager.get_kernel_spec(target.name)
    assert spec.metadata["nixkernel"]["problem"] == target.problem

    run = kernel_runner(manager, target.name, "import sys; print(sys.executable)", project)
    assert run.implementation == FALLBACK, run.stdout
    assert run.stdout == ""
    text = run.error_text
    assert "There is no Python" in text and str(project) in text and FIX in text
    assert run.errors[0]["evalue"]  # a one-line summary for clients that show only that


def test_shell_with_python_has_no_problem(nix, projects, manager_factory, kernel_runner):
    write_shell_nix(projects / "py", {"packages": [PYTHON]})
    manager = manager_factory(project_dirs=[str(projects)])
    warm(manager)
    (target,) = manager.refresh()
    assert target.problem is None


def test_list_shows_the_no_python_problem(nix, projects, tmp_path):
    write_flake(projects / "gotool", {"default": GO_SHELL})
    cache = tmp_path / "cache"
    env = {**os.environ, "NIXKERNEL_CACHE_DIR": str(cache), "JUPYTER_CONFIG_DIR": str(tmp_path)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "nixkernel.cli", *args, str(projects)],
                              capture_output=True, text=True, env=env, timeout=300)  # fmt: skip

    from nixkernel.kernelspec import NixKernelSpecManager

    warm(NixKernelSpecManager(project_dirs=[str(projects)], cache_dir=str(cache)))
    rows = {r["kind"]: r for r in json.loads(cli("list", "--json").stdout)}
    assert "no python3" in rows["flake"]["problem"]
    table = cli("list").stdout
    assert "no Python" in table and FIX in table
    assert EnvironmentCache(str(cache)).slots()
