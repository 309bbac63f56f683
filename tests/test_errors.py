"""Environments that cannot be made start the fallback kernel, which answers every cell with a
message naming the project and the fix (instead of a kernel dying in a restart loop)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import IN_CI, find_target, running_kernel
from nixprojects import DEFAULT_SHELL, Raw, write_flake, write_shell_nix

FALLBACK = "nixkernel-fallback"


def start_failing(manager, cwd, kernel_runner):
    run = kernel_runner(manager, find_target(manager, only=True).name, "print('unreachable')", cwd)
    assert run.implementation == FALLBACK
    assert run.stdout == ""
    assert len(run.errors) == 1 and run.errors[0]["ename"] == "NixKernelError"
    return run.error_text


def test_no_nix_anywhere(
    nix, projects, manager_factory, kernel_runner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    project = write_flake(projects / "p")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if os.path.exists("/nix/var/nix/profiles/default/bin/nix"):
        # The launcher also looks there (nix.FALLBACK_LOCATIONS), and it is outside what a test
        # can hide. CI installs Debian's nix-bin, which puts no nix in the default profile, so
        # there this must never skip.
        reason = "this machine has a default-profile Nix: 'not found' cannot happen here"
        if IN_CI:
            pytest.fail(f"{reason}; under CI=true the test must run (CI's Nix is nix-bin)")
        pytest.skip(reason)
    text = start_failing(manager_factory(project_dirs=[str(projects)]), project, kernel_runner)
    assert "Nix was not found" in text
    assert "nix_executable" in text and str(project) in text


def test_configured_nix_that_does_not_exist(nix, projects, manager_factory, kernel_runner):
    project = write_flake(projects / "p")
    manager = manager_factory(project_dirs=[str(projects)], nix_executable="/opt/no/nix")
    text = start_failing(manager, project, kernel_runner)
    assert "/opt/no/nix" in text and "nix_executable" in text


def test_nix_file_that_fails_to_evaluate(nix, projects, manager_factory, kernel_runner):
    shells = {"default": {**DEFAULT_SHELL, "BROKEN": Raw('throw "the answer is not 41"')}}
    project = write_flake(projects / "broken", shells)
    text = start_failing(manager_factory(project_dirs=[str(projects)]), project, kernel_runner)
    assert f"Project: {project}" in text
    assert "flake.nix: the answer is not 41" in text  # Nix's own message, where it points
    assert "develop" in text and "--show-trace" in text  # how to see all of it


def test_nixpkgs_missing_from_nix_path(
    nix, projects, manager_factory, kernel_runner, monkeypatch: pytest.MonkeyPatch
):
    project = projects / "classic"
    project.mkdir()
    (project / "shell.nix").write_text("with import <nixpkgs> {}; mkShell {}\n")
    monkeypatch.setenv("NIX_PATH", "")
    text = start_failing(manager_factory(project_dirs=[str(projects)]), project, kernel_runner)
    assert "<nixpkgs>" in text and "NIX_PATH" in text and "nix-channel --add" in text


def test_flake_file_git_does_not_track(nix, projects, manager_factory, kernel_runner):
    project = write_flake(projects / "untracked", git=False)
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    subprocess.run(["git", "-C", str(project), "add", "mini.nix"], check=True)
    text = start_failing(manager_factory(project_dirs=[str(projects)]), project, kernel_runner)
    assert "git add --intent-to-add flake.nix" in text and str(project) in text


def test_environment_without_ipykernel(nix, projects, manager_factory, kernel_runner, tmp_path):
    """The fallback kernel still starts in the server's Python when the project's environment
    has a PYTHONPATH for its own Python and the notebook's folder has a module named like one
    the fallback imports: neither reaches the server's Python."""
    bare = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = Raw(
        f'(mini.hostWrapper "python" [ {{ name = "python3"; target = "{bare}/bin/python3"; }} ])'
    )
    poisoned = tmp_path / "project-site-packages"
    (poisoned / "traitlets").mkdir(parents=True)
    (poisoned / "traitlets" / "__init__.py").write_text("raise ImportError('poisoned')\n")
    shell = {**DEFAULT_SHELL, "packages": [python], "PYTHONPATH": str(poisoned)}
    project = write_shell_nix(projects / "noipy", shell)
    (project / "zmq.py").write_text("raise ImportError('shadowed')\n")
    text = start_failing(manager_factory(project_dirs=[str(projects)]), project, kernel_runner)
    assert "cannot import ipykernel" in text and "ps.ipykernel" in text


def test_fallback_kernel_keeps_answering(nix, projects, manager_factory):
    """The error kernel stays up: a second cell gets the same answer, no restart loop."""
    project = write_flake(projects / "b", {"default": {"X": Raw('throw "nope"')}})
    manager = manager_factory(project_dirs=[str(projects)])
    with running_kernel(manager, find_target(manager, only=True).name, project, timeout=60) as (
        km,
        kc,
    ):
        for _ in range(2):
            reply = kc.execute_interactive("1 + 1", timeout=60)
            assert reply["content"]["status"] == "error"
            assert "nope" in "\n".join(reply["content"]["traceback"])
        assert km.is_alive()


def test_flake_at_a_path_nix_cannot_name(nix, projects, manager_factory, kernel_runner):
    """No Nix can express a flake path with '#' (or '?', '^'): say so, with the way out,
    instead of Nix's own parse error. (Spaces and the like depend on the version:
    test_nix_calls.py::test_flake_path_characters_by_the_running_nix.)"""
    project = write_flake(projects / "my#project")
    text = start_failing(manager_factory(project_dirs=[str(projects)]), project, kernel_runner)
    assert "Nix cannot use the flake in" in text and "'#'" in text and "shell.nix" in text


def test_shell_nix_at_such_a_path_works(nix, projects, manager_factory, kernel_runner):
    project = write_shell_nix(projects / "mön projet")
    manager = manager_factory(project_dirs=[str(projects)])
    run = kernel_runner(
        manager,
        find_target(manager, only=True).name,
        "import os; print(os.environ['GREETING'])",
        project,
    )
    assert run.stdout.strip() == "hello from the dev shell"
