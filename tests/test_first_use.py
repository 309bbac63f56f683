"""What a new user meets on the command line: a hint when no project is found, kernels named
by display name or prefix, ``list | head``, ``warm`` of a kernel with nothing to evaluate,
``Python (this project)`` and kernel.json files of projects that are gone in ``list``, and
commands to copy that work when pasted (paths with spaces)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_cli
from nixprojects import DEFAULT_SHELL, write_flake, write_shell_nix

from nixkernel import doctor
from nixkernel.describe import KernelTarget, NixSource, ipykernel_hint


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Private Jupyter config/data directories and cache, as for a user with nothing set up."""
    config = tmp_path / "jupyter-config"
    config.mkdir()
    environ = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(config),
        "JUPYTER_DATA_DIR": str(tmp_path / "jupyter-data"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "NIXKERNEL_CACHE_DIR": str(tmp_path / "cache"),
    }
    environ.pop("JUPYTER_PATH", None)
    return environ


def cli(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return run_cli(*args, env=env, cwd=cwd)


def make_venv_project(directory: Path) -> Path:
    (directory / ".venv" / "bin").mkdir(parents=True)
    (directory / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\nuv = 0.4.0\n")
    (directory / ".venv" / "bin" / "python").symlink_to(sys.executable)
    return directory


# -- list with nothing to list ---------------------------------------------------------------------


def test_list_in_a_folder_without_projects_says_how_to_point_it_at_them(env, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    result = cli(env, "list", cwd=home)
    assert result.returncode == 0
    assert f"No projects found under {home}" in result.stdout
    assert "jupyter nixkernel list ~/projects" in result.stdout
    assert "c.NixKernelSpecManager.project_dirs" in result.stdout
    assert "Python (this project)" in result.stdout  # still offered by the server

    as_json = cli(env, "list", "--json", cwd=home)
    assert [r["name"] for r in json.loads(as_json.stdout)] == ["nix-this-project"]
    assert "No projects found" in as_json.stderr  # stdout stays one JSON document


def test_list_piped_into_head_prints_no_traceback(env, tmp_path):
    projects = tmp_path / "many"
    for i in range(700):  # well over a pipe buffer of table lines
        (projects / f"project-{i:03}").mkdir(parents=True)
        (projects / f"project-{i:03}" / "shell.nix").write_text("{}\n")
    command = f"{shlex.quote(sys.executable)} -m nixkernel.cli list {shlex.quote(str(projects))}"
    result = subprocess.run(["bash", "-c", f"set -o pipefail; {command} | head -n 2"],
                            capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert result.stdout.startswith("NAME")
    assert len(result.stdout.splitlines()) == 2
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    assert result.stderr == ""


# -- show by display name or prefix, DIR as list takes it ------------------------------------------


def test_show_takes_a_display_name_or_a_unique_prefix_and_dir_like_list(env, tmp_path):
    projects = tmp_path / "projects"
    for name in ("api", "apps"):
        (projects / name).mkdir(parents=True)
        (projects / name / "shell.nix").write_text("{}\n")
    rows = json.loads(cli(env, "list", "--json", str(projects)).stdout)
    api = next(r["name"] for r in rows if r["display_name"] == "api (shell.nix)")

    for wanted in ("api (shell.nix)", "API (SHELL.NIX)", "api ", api, api[:12]):
        result = cli(env, "show", wanted, str(projects), "--json")
        assert result.returncode == 0, (wanted, result.stderr)
        assert json.loads(result.stdout)["name"] == api, wanted

    ambiguous = cli(env, "show", "ap", str(projects))
    assert ambiguous.returncode == 1
    assert "could be any of 2 kernels" in ambiguous.stderr
    assert "api (shell.nix)" in ambiguous.stderr and "apps (shell.nix)" in ambiguous.stderr

    missing = cli(env, "show", "nothing-like-it", str(projects))
    assert missing.returncode == 1 and "no kernel named nothing-like-it" in missing.stderr


# -- warm of a kernel with nothing to evaluate -----------------------------------------------------


def test_warm_of_a_venv_kernel_says_it_has_nothing_to_evaluate_by_name(env, tmp_path):
    projects = tmp_path / "projects"
    make_venv_project(projects / "tool")
    (row,) = [r for r in json.loads(cli(env, "list", "--json", str(projects)).stdout)
              if r["kind"] == "venv"]  # fmt: skip
    result = cli(env, "warm", "tool", "--dir", str(projects))
    assert result.returncode == 0, result.stderr
    assert f"{row['name']} (tool (uv .venv)) has no Nix environment: nothing to evaluate" in (
        result.stdout
    )


# -- the list is the list --------------------------------------------------------------------------


def test_list_all_shows_this_project_kernel_as_nixkernels_even_when_installed(env, tmp_path):
    projects = tmp_path / "projects"
    (projects / "api").mkdir(parents=True)
    (projects / "api" / "shell.nix").write_text("{}\n")
    assert cli(env, "install", "--all", "--dir", str(projects)).returncode == 0
    rows = json.loads(cli(env, "list", "--all", "--json", str(projects)).stdout)
    this = [r for r in rows if r["name"] == "nix-this-project"]
    assert len(this) == 1 and this[0]["kind"] == "auto"
    assert this[0]["display_name"] == "Python (this project)"


def test_installed_kernels_of_a_project_that_is_gone_are_flagged_and_uninstall_missing_removes_them(
    env, tmp_path
):
    projects = tmp_path / "projects"
    for name in ("kept", "gone"):
        (projects / name).mkdir(parents=True)
        (projects / name / "shell.nix").write_text("{}\n")
    assert cli(env, "install", "--all", "--dir", str(projects)).returncode == 0
    kernels = Path(env["JUPYTER_DATA_DIR"]) / "kernels"
    installed = sorted(p.name for p in kernels.iterdir())
    assert len(installed) == 3  # kept, gone, Python (this project)
    (projects / "gone" / "shell.nix").unlink()
    (projects / "gone").rmdir()

    rows = json.loads(cli(env, "list", "--json", str(projects)).stdout)
    (flagged,) = [r for r in rows if r.get("problem")]
    assert flagged["project"] == str(projects / "gone")
    assert "project is gone" in flagged["problem"]
    assert "`jupyter nixkernel uninstall --missing`" in flagged["problem"]
    table = cli(env, "list", str(projects)).stdout
    assert "(project gone)" in table and "uninstall --missing" in table

    removed = cli(env, "uninstall", "--missing")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.count("Removed") == 1 and flagged["name"] in removed.stdout
    assert sorted(p.name for p in kernels.iterdir()) == sorted(set(installed) - {flagged["name"]})
    assert not [r for r in json.loads(cli(env, "list", "--json", str(projects)).stdout)
                if r.get("problem")]  # fmt: skip
    assert "No kernels of projects that are gone" in cli(env, "uninstall", "--missing").stdout


# -- commands to copy ------------------------------------------------------------------------------


def test_commands_to_enter_a_shell_work_when_pasted_with_spaces_in_the_path(nix, tmp_path):
    """``nix-shell FILE`` for a shell.nix (the command its users know), ``nix develop REF#ATTR``
    for a flake, both shell-quoted: run through bash exactly as printed, they enter the shell."""
    legacy = write_shell_nix(tmp_path / "my projects" / "legacy app")
    source = NixSource("file", str(legacy / "shell.nix"))
    command = source.shell_command()
    assert command == f"nix-shell {shlex.quote(str(legacy / 'shell.nix'))}"
    environ = {**os.environ, "NIX_BUILD_SHELL": "bash"}  # no <nixpkgs> here for its bash
    result = subprocess.run(["bash", "-c", command + " --run 'echo $GREETING'"],
                            capture_output=True, text=True, env=environ, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == DEFAULT_SHELL["GREETING"]

    flake = write_flake(tmp_path / "flakes" / "api")
    command = NixSource.flake_shell(str(flake), "default").shell_command()
    assert command.startswith("nix develop ")
    result = subprocess.run(["bash", "-c", command + " -c bash -c 'echo $GREETING'"],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == DEFAULT_SHELL["GREETING"]


def test_fixes_that_name_a_path_work_when_pasted(tmp_path):
    project = write_flake(tmp_path / "a project's dir", git=False)
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    check = doctor.check_flake_tracked(str(project))
    assert check.status == doctor.FAIL
    command = check.fix.split("`")[1]
    subprocess.run(["bash", "-c", command], check=True, cwd=tmp_path)
    assert doctor.check_flake_tracked(str(project)).status == doctor.OK

    venv_target = KernelTarget("n", "d", "venv", str(project), venv=str(project / ".venv"))
    hint = ipykernel_hint(venv_target)
    assert f"cd {shlex.quote(str(project))} && uv add --dev ipykernel" in hint
