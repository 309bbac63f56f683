"""The shellHook as `nix develop` / `nix-shell` / nix-direnv run it: in the project's root, with
no arguments, however big the shell's state; then the kernel starts in the notebook's folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import find_target
from nixprojects import PYTHON, Raw, write_flake, write_shell_nix

from nixkernel.describe import PROJECT_KERNEL_NAME

PROBE = (
    "import os, json; print(json.dumps({k: os.environ.get(k) for k in ('HOOK_RAN_IN', "
    "'ARGS_LEFT', 'LAST_FUNCTION', 'BIG_LENGTH', 'PWD')} | {'cwd': os.getcwd()}))"
)


def probe(run) -> dict:
    assert not run.errors, run.error_text
    return json.loads(run.stdout.strip().splitlines()[-1])


def write(kind: str, directory: Path, attrs: dict, let: str = "") -> Path:
    if kind == "flake":
        return write_flake(directory, {"default": attrs}, let=let)
    return write_shell_nix(directory, attrs, let=let)


@pytest.mark.parametrize("kind", ["flake", "shell.nix"])
def test_a_hook_that_shifts_does_not_eat_the_kernel_argv(
    nix, kind, projects, manager_factory, kernel_runner
):
    """`nix develop` runs its rc as `bash RCFILE` and nix-shell likewise: the hook's `$@` is
    empty. A hook that shifts (or reads `$1`) must not see, nor eat, the kernel's arguments."""
    hook = 'shift; shift; shift; export ARGS_LEFT="$#:${1-none}"'
    project = write(kind, projects / "shifty", {"packages": [PYTHON], "shellHook": hook})
    manager = manager_factory(project_dirs=[str(projects)])
    info = probe(
        kernel_runner(manager, find_target(manager, kind, only=True).name, PROBE, cwd=project)
    )
    assert info["ARGS_LEFT"] == "0:none"


#: A setup script that leaves the shell with ~190 KB of functions and a 200,000-character shell
#: variable: the shape of a heavy C/C++ shell (its functions alone are ~68 KB), bigger than
#: the 128 KiB Linux allows one argv string.
BIG_STDENV = r"""
  bigStdenv = derivation {
    name = "big-stdenv"; system = "x86_64-linux"; builder = "/bin/bash";
    args = [ "-c" ''
      mkdir -p $out
      cat > $out/setup <<'SETUP'
      for pkg_ in $packages; do PATH="$pkg_/bin''${PATH:+:$PATH}"; done; unset pkg_; export PATH
      for ((i_ = 0; i_ < 2500; i_++)); do
        eval "big_function_$i_() { echo \"function $i_ of a shell with very many functions\"; }"
      done
      unset i_
      printf -v BIG_VARIABLE '%*s' 200000 ""
      SETUP
      exit 0
    '' ];
    PATH = "/usr/bin:/bin";
  };
"""


def test_an_rc_bigger_than_one_argv_string_works(nix, projects, manager_factory, kernel_runner):
    """The hook script is a file that bash sources, not one argv string (which Linux caps at
    128 KiB: execve would fail with E2BIG)."""
    hook = 'export LAST_FUNCTION="$(big_function_2499)" BIG_LENGTH="${#BIG_VARIABLE}"'
    attrs = {"packages": [PYTHON], "stdenv": Raw("bigStdenv"), "shellHook": hook}
    project = write_flake(projects / "heavy", {"default": attrs}, let=BIG_STDENV)
    manager = manager_factory(project_dirs=[str(projects)])
    info = probe(
        kernel_runner(manager, find_target(manager, "flake", only=True).name, PROBE, cwd=project)
    )
    assert info["LAST_FUNCTION"] == "function 2499 of a shell with very many functions"
    assert info["BIG_LENGTH"] == "200000"
    (slot,) = (Path(manager.cache_dir) / "envs").iterdir()
    (rc,) = slot.glob("rc-*.sh")
    assert rc.stat().st_size > 128 * 1024


@pytest.mark.parametrize(
    "kind, mode",
    [("flake", "cached"), ("shell.nix", "cached"), ("flake", "direct"), ("shell.nix", "direct"),
     ("auto", "cached")],
)  # fmt: skip
def test_hook_runs_in_the_project_root_and_the_kernel_in_the_notebook_folder(
    nix, kind, mode, projects, manager_factory, kernel_runner, monkeypatch
):
    """Terminal users and nix-direnv run the hook in the project's root (`venvDir=./.venv`,
    `source .venv/bin/activate` are relative to it); the server starts the kernel in the
    notebook's folder, where it must stay. The same in `direct` mode (nix develop / nix-shell
    started in the root), and for the project-following kernel."""
    hook = 'export HOOK_RAN_IN="$PWD"'
    project = write(
        "shell.nix" if kind == "shell.nix" else "flake",
        projects / "deep",
        {"packages": [PYTHON], "shellHook": hook},
    )
    notebooks = project / "notebooks" / "2024"
    notebooks.mkdir(parents=True)
    monkeypatch.setenv("OLDPWD", str(projects))
    manager = manager_factory(project_dirs=[str(projects)], launch_mode=mode, project_kernel=True)
    name = PROJECT_KERNEL_NAME if kind == "auto" else find_target(manager, kind, only=True).name
    info = probe(kernel_runner(manager, name, PROBE, cwd=notebooks))
    assert info["HOOK_RAN_IN"] == str(project)
    assert info["cwd"] == str(notebooks)
    assert info["PWD"] == str(notebooks)


def test_a_temporary_directory_that_cannot_be_made_is_explained(
    nix, projects, manager_factory, kernel_runner, monkeypatch, tmp_path
):
    """Each start makes the shell's temporary directory in the server's TMPDIR (as
    `nix develop`'s `mktemp -d` does): when it cannot, the fallback kernel says why and how to
    fix it."""
    project = write_flake(projects / "tmpless", {"default": {"packages": [PYTHON]}})
    manager = manager_factory(project_dirs=[str(projects)])
    name = find_target(manager, "flake", only=True).name
    assert not kernel_runner(manager, name, "1", cwd=project).errors  # evaluated and cached
    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))
    run = kernel_runner(manager, name, "1", cwd=project)
    assert "Cannot create the shell's temporary directory" in run.error_text
    assert "TMPDIR" in run.error_text
