"""Test projects for real Nix, offline: flakes and shell.nix files built on tests/fixtures/mini.nix.

``mini.nix`` is a tiny stdenv + mkShell that needs no nixpkgs; ``python`` in these shells is a
store wrapper around the test run's own interpreter (which has ipykernel), the way nixpkgs
wraps Python.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
MINI_NIX = FIXTURES / "mini.nix"


@dataclass(frozen=True)
class Raw:
    """A Nix expression written as is."""

    expr: str


def nix_value(value: object) -> str:
    """Python -> Nix literal (strings, numbers, bools, lists, dicts, Raw)."""
    if isinstance(value, Raw):
        return value.expr
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
        return '"' + escaped.replace("\n", "\\n") + '"'
    if isinstance(value, list | tuple):
        return "[ " + " ".join(nix_value(v) for v in value) + " ]"
    if isinstance(value, dict):
        return (
            "{ " + " ".join(f"{json.dumps(k)} = {nix_value(v)};" for k, v in value.items()) + " }"
        )
    raise TypeError(value)


def python_package(interpreter: str) -> Raw:
    """A store package whose bin/python3 runs ``interpreter``, as nixpkgs wraps Python."""
    return Raw(
        '(mini.hostWrapper "python" [ { name = "python3"; target = '
        + nix_value(interpreter)
        + "; } ])"
    )


#: A store package whose bin/python3 runs this test run's Python (which has ipykernel).
PYTHON = python_package(sys.executable)

DEFAULT_SHELL = {
    "GREETING": "hello from the dev shell",
    "packages": [PYTHON],
    "shellHook": 'export HOOK_RAN_IN="$PWD"',
}


def shell_expr(attrs: dict) -> str:
    return "mini.mkShell " + nix_value(attrs)


def write_flake(
    directory: Path,
    shells: dict[str, dict] | None = None,
    git: bool = True,
    let: str = "",
) -> Path:
    """A flake with ``devShells.x86_64-linux.<name>`` for each of ``shells``, inside a git
    repository (tracked) unless ``git`` is False."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(MINI_NIX, directory / "mini.nix")
    shells = shells if shells is not None else {"default": DEFAULT_SHELL}
    body = " ".join(f"{json.dumps(n)} = {shell_expr(a)};" for n, a in shells.items())
    (directory / "flake.nix").write_text(
        "{\n  outputs = { self }:\n"
        '    let mini = import ./mini.nix { system = "x86_64-linux"; };\n'
        f"    {let}\n"
        f"    in {{ devShells.x86_64-linux = {{ {body} }}; }};\n}}\n"
    )
    if git:
        git_track(directory)
    return directory


def write_shell_nix(directory: Path, attrs: dict | None = None, let: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(MINI_NIX, directory / "mini.nix")
    attrs = attrs if attrs is not None else DEFAULT_SHELL
    (directory / "shell.nix").write_text(
        f"let mini = import ./mini.nix {{}};\n{let}\nin {shell_expr(attrs)}\n"
    )
    return directory


def git_track(directory: Path) -> None:
    """Put the project's files in git's index: a flake in a git repository sees only those."""
    if not (directory / ".git").exists():
        subprocess.run(["git", "init", "-q", str(directory)], check=True)
    subprocess.run(["git", "-C", str(directory), "add", "-A"], check=True)


def r_package(directory: Path, label: str = "the shell's R") -> Raw:
    """A store package with bin/R and bin/Rscript that run the host's R (Debian's r-base-core,
    whose library has IRkernel), the way nixpkgs' rWrapper wraps R: through scripts in
    ``directory`` that export ``R_WRAPPED_BY=<label>``, so a kernel that prints it ran the
    shell's wrapped R, not the /usr/bin/R on the server's PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    programs = []
    for name in ("R", "Rscript"):
        script = directory / name
        host = shutil.which(name) or f"/usr/bin/{name}"
        script.write_text(f'#!/bin/sh\nexport R_WRAPPED_BY="{label}"\nexec {host} "$@"\n')
        script.chmod(0o755)
        programs.append(f"{{ name = {nix_value(name)}; target = {nix_value(str(script))}; }}")
    return Raw(f'(mini.hostWrapper "R" [ {" ".join(programs)} ])')


def with_kernelspecs(package: Raw, specs: dict[str, dict], logos: str | None = None) -> Raw:
    """``package`` (its bin/) plus ``share/jupyter/kernels/<name>/kernel.json`` for each of
    ``specs`` (and the ``logo-*`` files of ``logos``, a Nix path inside the project such as
    ``./logos``: builders cannot read the test's temporary directories), built by
    mini.withKernelspecs."""
    return Raw(f"(mini.withKernelspecs {package.expr} {nix_value(specs)} {logos or 'null'})")
