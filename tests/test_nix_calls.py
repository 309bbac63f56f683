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
from nixkernel.nix import nix_release, nix_version, parse_release, parse_version


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


# -- nix --version ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "implementation", "version", "numbers"),
    [
        # NixOS/nix src/libmain/shared.cc printVersion: "%1% (Nix) %2%".
        ("nix (Nix) 2.8.0\n", "Nix", "2.8.0", (2, 8, 0)),
        ("nix (Nix) 2.34.8\n", "Nix", "2.34.8", (2, 34, 8)),
        # DeterminateSystems/nix-src src/libmain/shared.cc: version() is
        # fmt("(Determinate Nix %s) %s", determinateNixVersion, nixVersion), printed after the
        # program name: the Nix version is the second number, not Determinate's 3.x.
        ("nix (Determinate Nix 3.6.2) 2.29.0\n", "Determinate Nix 3.6.2", "2.29.0", (2, 29, 0)),
        ("nix (Determinate Nix 3.20.0) 2.34.6\n", "Determinate Nix 3.20.0", "2.34.6", (2, 34, 6)),
        # lix-project/lix lix/libmain/shared.cc printVersion: fmt("%1% (Lix, like Nix) %2%",
        # programName, nixVersion), followed by "System type: ..." lines; Lix numbers itself
        # 2.90 and up (forked from Nix 2.18), and its first release printed a -lix suffix.
        ("nix (Lix, like Nix) 2.91.1\nSystem type: x86_64-linux\n", "Lix", "2.91.1", (2, 91, 1)),
        ("nix (Lix, like Nix) 2.90.0-lix\n", "Lix", "2.90.0-lix", (2, 90, 0)),
    ],
)
def test_nix_version_of_nix_lix_and_determinate_nix(text, implementation, version, numbers):
    """`nix --version` parses to the Nix version (never Determinate's own 3.x) and the
    implementation, whose rules differ (Lix keeps Nix 2.18's flake-path rule)."""
    release = parse_release(text)
    assert (release.implementation, release.version, release.numbers) == (
        implementation,
        version,
        numbers,
    )
    assert parse_version(text) == version
    assert release.is_lix == (implementation == "Lix")


def test_nix_version_is_asked_once_per_installation(counting_nix):
    """An evaluation needs the version several times (cache entry, nix-shell rules): Nix runs
    once per installation and process."""
    first = nix_release(counting_nix.path)
    assert nix_version(counting_nix.path) == first.version
    assert [c for c in counting_nix.calls() if c == "--version"] == ["--version"]
