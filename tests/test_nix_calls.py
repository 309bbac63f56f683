"""How nixkernel calls Nix: the flags, environment and references it gives each ``nix`` call,
checked against what ``nix develop`` / ``nix-shell`` of the running Nix version do.

Each test names the Nix rule it follows and the Nix source file that states it (NixOS/nix,
tags 2.8.0 to 2.34.0); see docs/nix-semantics.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from nixprojects import write_flake, write_shell_nix

from nixkernel.describe import KIND_FLAKE, KIND_SHELL_NIX


def stock_nix_config(registry: Path) -> str:
    """The shared README's "Stock settings": the offline configuration without
    ``experimental-features``, as on a stock Nix or NixOS."""
    return f"sandbox = false\nsubstituters =\nflake-registry = {registry}\nwarn-dirty = false\n"


def kernel_of(manager, kind: str, project: Path, shell: str | None = None) -> str:
    (target,) = [
        t
        for t in manager.targets()
        if t.kind == kind and t.project == str(project) and (shell is None or t.shell == shell)
    ]
    return target.name


def test_kernels_start_without_experimental_features_in_nix_settings(
    nix, projects, manager_factory, kernel_runner, monkeypatch: pytest.MonkeyPatch, tmp_path
):
    """With no `experimental-features` in Nix's settings, a flake kernel and a shell.nix kernel
    start: nixkernel passes `--extra-experimental-features 'nix-command flakes'` on every nix
    call, as nix-direnv does (without it: "experimental Nix feature 'nix-command' is
    disabled")."""
    registry = tmp_path / "registry.json"
    registry.write_text('{"flakes": [], "version": 2}')
    monkeypatch.setenv("NIX_CONFIG", stock_nix_config(registry))
    flake = write_flake(projects / "flk")
    classic = write_shell_nix(projects / "classic")
    manager = manager_factory(project_dirs=[str(projects)])
    for kind, project in ((KIND_FLAKE, flake), (KIND_SHELL_NIX, classic)):
        run = kernel_runner(
            manager,
            kernel_of(manager, kind, project),
            "import os; print(os.environ['GREETING'])",
            project,
        )
        assert run.stdout.strip() == "hello from the dev shell", (kind, run.error_text)
