"""`jupyter nixkernel list`, run as users run it: what it lists, the JSON it prints, the cache
state it reports, and the configuration file it shares with the server."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from helpers import run_cli
from nixprojects import DEFAULT_SHELL, write_flake, write_shell_nix


def nixkernel(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return run_cli(*args, env=env, cwd=cwd, timeout=120)


def list_without_dirs(tmp_path: Path, server_config: str) -> list[dict]:
    """`list --json` with no DIR, run from an empty directory, with ``server_config`` as the
    user's jupyter_server_config.py."""
    config = tmp_path / "config"
    config.mkdir()
    (config / "jupyter_server_config.py").write_text(server_config)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(config),
        "NIXKERNEL_CACHE_DIR": str(tmp_path / "c"),
    }
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    rows = json.loads(nixkernel("list", "--json", env=env, cwd=cwd).stdout)
    return [r for r in rows if r["kind"] != "auto"]  # Python (this project) is always there


def test_list_json_reports_projects_and_cache_state(nix, projects, tmp_path, kernel_runner):
    flake = write_flake(projects / "api")
    legacy = write_shell_nix(projects / "nested" / "legacy")
    env = {**os.environ, "NIXKERNEL_CACHE_DIR": str(tmp_path / "cache"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}  # fmt: skip

    out = nixkernel("list", "--json", str(projects), env=env)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["kind"], r["project"], r["cache"]) for r in rows] == [
        ("flake", str(flake), "none"),
        ("shell.nix", str(legacy), "none"),
        ("auto", None, "none"),
    ]
    assert set(rows[0]) >= {"name", "display_name", "kind", "shell", "project", "venv", "cache"}
    assert rows[0]["display_name"] == "api (flake)" and rows[0]["shell"] == "default"
    assert rows[1]["shell"] is None and rows[1]["venv"] is None

    # Start the flake's kernel once: its environment is now cached and fresh.
    from nixkernel.kernelspec import NixKernelSpecManager

    manager = NixKernelSpecManager(project_dirs=[str(projects)], cache_dir=str(tmp_path / "cache"))
    kernel_runner(manager, rows[0]["name"], "1", flake)
    states = {
        r["kind"]: r["cache"]
        for r in json.loads(nixkernel("list", "--json", str(projects), env=env).stdout)
    }
    assert states == {"flake": "fresh", "shell.nix": "none", "auto": "none"}

    # Edit the flake: the cached environment is stale until the next start re-evaluates it.
    write_flake(flake, {"default": {**DEFAULT_SHELL, "GREETING": "edited"}})
    table = nixkernel("list", str(projects), env=env).stdout
    assert (
        "stale" in table
        and "api (flake)" in table
        and table.splitlines()[0].split()[:2] == ["NAME", "DISPLAY"]
    )


def test_list_reads_project_dirs_from_jupyter_server_config(tmp_path):
    """With no DIR, the command uses c.NixKernelSpecManager.project_dirs, as the server does."""
    (tmp_path / "elsewhere" / "tool" / ".venv").mkdir(parents=True)
    (tmp_path / "elsewhere" / "tool" / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    rows = list_without_dirs(
        tmp_path, f"c.NixKernelSpecManager.project_dirs = [{str(tmp_path / 'elsewhere')!r}]\n"
    )
    assert [(r["kind"], Path(r["project"]).name, r["cache"]) for r in rows] == [
        ("venv", "tool", "none")
    ]


def test_list_defaults_to_the_servers_root_dir(tmp_path):
    """With neither DIR nor project_dirs, the command searches c.ServerApp.root_dir, as the
    server does, not the current directory."""
    root = tmp_path / "notebooks"
    (root / "api").mkdir(parents=True)
    (root / "api" / "shell.nix").write_text("{}\n")
    rows = list_without_dirs(tmp_path, f"c.ServerApp.root_dir = {str(root)!r}\n")
    assert [r["project"] for r in rows] == [str(root / "api")]
