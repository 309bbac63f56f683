"""``jupyter nixkernel doctor``: what on this machine or in a project keeps kernels from starting.

Each check is a function that returns :class:`Check` data (status, what it found, the fix), so
tests can call them one by one; :func:`format_report` turns them into the lines users read.
Machine checks: Nix found and recent enough, ``nix-command`` and ``flakes`` enabled, ``<nixpkgs>``
resolvable (for ``shell.nix`` files that import it), nix-ld on NixOS. Project checks: flake files
tracked by git, a virtualenv whose downloaded interpreter cannot run on NixOS, ipykernel present
in each environment that is evaluated (or needs no evaluation).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from . import kernels, nix
from .describe import KIND_AUTO, KIND_FLAKE, KIND_SHELL_NIX, KernelTarget, pyvenv_cfg
from .environment import kernel_environment
from .launch import find_python, ipykernel_hint, target_source

if TYPE_CHECKING:
    from .kernelspec import NixKernelSpecManager

OK, WARN, FAIL = "OK", "WARN", "FAIL"

#: The oldest Nix with ``nix print-dev-env --json``.
MIN_NIX_VERSION = (2, 4)
#: The program loader downloaded Linux binaries ask for, by machine; NixOS has none without
#: nix-ld.
FHS_LOADERS = {
    "x86_64": "/lib64/ld-linux-x86-64.so.2",
    "aarch64": "/lib/ld-linux-aarch64.so.1",
    "i686": "/lib/ld-linux.so.2",
    "riscv64": "/lib/ld-linux-riscv64-lp64d.so.1",
}
NIX_LD_FIX = (
    "Enable nix-ld in your NixOS configuration (`programs.nix-ld.enable = true;`, then "
    "`sudo nixos-rebuild switch` and log in again)"
)
TIMEOUT = 60


@dataclass
class Check:
    """One finding: ``status`` is OK, WARN or FAIL; ``fix`` says what to do about it."""

    status: str
    message: str
    fix: str = ""
    subject: str = ""
    """The project directory the check is about, or "" for the machine."""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Machine:
    """Facts about the operating system that decide which binaries can run."""

    nixos: bool
    nix_ld: bool
    """A loader for foreign (FHS) binaries is present: nix-ld's NIX_LD, or the FHS loader."""

    @classmethod
    def detect(
        cls, environ: Mapping[str, str] | None = None, root: str = "/", arch: str | None = None
    ) -> Machine:
        environ = os.environ if environ is None else environ
        nixos = os.path.exists(os.path.join(root, "etc/NIXOS"))
        loader = os.path.exists(os.path.join(root, fhs_loader(arch).lstrip("/")))
        return cls(nixos=nixos, nix_ld=bool(environ.get("NIX_LD")) or loader)


def fhs_loader(arch: str | None = None) -> str:
    """The loader a downloaded binary for ``arch`` (default: this machine's) asks for."""
    arch = arch or os.uname().machine
    return FHS_LOADERS.get(arch, FHS_LOADERS["x86_64"])


def _run(argv: list[str], env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        errors="replace",
        env=None if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
    )


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# -- the machine ------------------------------------------------------------------------------


def check_nix(configured: str | None = None) -> tuple[Check, str | None]:
    """Nix is found and new enough; returns the check and the nix path (None if unusable)."""
    try:
        path = nix.find_nix(configured)
        version = nix.nix_version(path)
    except nix.NixKernelError as exc:
        return Check(FAIL, exc.message, exc.hint), None
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    if numbers and numbers < MIN_NIX_VERSION:
        return (
            Check(
                FAIL,
                f"Nix {version} at {path} is too old: nixkernel needs `nix print-dev-env --json` "
                "(Nix 2.4 or newer).",
                "Upgrade Nix (https://nixos.org/download).",
            ),
            None,
        )
    return Check(OK, f"Nix {version} at {path}"), path


def nix_settings(nix_path: str) -> tuple[dict[str, str] | None, str]:
    """Nix's effective settings (``nix show-config``; ``nix config show`` on newer Nix), or
    None and Nix's complaint. Run without extra flags, so a disabled nix-command shows."""
    output = ""
    for argv in ([nix_path, "show-config"], [nix_path, "config", "show"]):
        try:
            result = _run(argv)
        except (OSError, subprocess.SubprocessError) as exc:
            return None, str(exc)
        if result.returncode == 0:
            settings = {}
            for line in result.stdout.splitlines():
                key, sep, value = line.partition(" = ")
                if sep:
                    settings[key.strip()] = value.strip()
            return settings, ""
        output = result.stderr
        if "experimental Nix feature" in output:
            break
    return None, _last_line(output)


def check_experimental_features(nix_path: str, need_flakes: bool = True) -> Check:
    """``nix-command`` (for ``nix print-dev-env``) and ``flakes`` are enabled."""
    fix = (
        "Add `experimental-features = nix-command flakes` to ~/.config/nix/nix.conf (or "
        '/etc/nix/nix.conf; on NixOS: `nix.settings.experimental-features = [ "nix-command" '
        '"flakes" ];`), or set it in NIX_CONFIG for the Jupyter server.'
    )
    settings, complaint = nix_settings(nix_path)
    if settings is None:
        if "experimental Nix feature" in complaint:
            return Check(FAIL, "Nix's `nix-command` feature is disabled.", fix)
        return Check(WARN, f"Could not read Nix's settings: {complaint}", fix)
    features = settings.get("experimental-features", "").split()
    missing = [f for f in ("nix-command", "flakes") if f not in features]
    if "flakes" in missing and not need_flakes:
        missing.remove("flakes")
    if missing:
        return Check(FAIL, f"Nix experimental features not enabled: {', '.join(missing)}.", fix)
    return Check(OK, f"Nix experimental features: {' '.join(features)}")


def check_nixpkgs(nix_path: str, needed_by: list[str]) -> Check:
    """``<nixpkgs>`` resolves on the server's NIX_PATH, for the ``shell.nix`` files importing it."""
    instantiate = os.path.join(os.path.dirname(nix_path), "nix-instantiate")
    argv = (
        [instantiate, "--find-file", "nixpkgs"]
        if os.access(instantiate, os.X_OK)
        else [nix_path, "eval", "--impure", "--expr", "<nixpkgs>"]
    )
    try:
        result = _run(argv)
    except (OSError, subprocess.SubprocessError) as exc:
        return Check(WARN, f"Could not ask Nix where <nixpkgs> is: {exc}")
    if result.returncode == 0:
        return Check(OK, f"<nixpkgs> is {result.stdout.strip()}")
    if needed_by:
        status, users = FAIL, f"imported by {', '.join(needed_by)}"
    else:
        # A shell.nix may still reach it through another file: worth a warning, not a failure.
        status, users = WARN, "no shell.nix here names it directly"
    return Check(
        status,
        f"<nixpkgs> is not on the Nix search path (NIX_PATH={os.environ.get('NIX_PATH', '')!r}); "
        f"{users}.",
        "Add a channel (`nix-channel --add https://nixos.org/channels/nixos-unstable nixpkgs && "
        "nix-channel --update`), start Jupyter with NIX_PATH=nixpkgs=/path/to/nixpkgs, or pin "
        "nixpkgs in the file (`import (fetchTarball ...) {}`).",
    )


def check_nix_ld(machine: Machine) -> Check | None:
    """On NixOS: whether downloaded binaries (uv's Pythons, some wheels) can find a loader."""
    if not machine.nixos:
        return None
    if machine.nix_ld:
        return Check(OK, "NixOS with nix-ld: downloaded binaries can run.")
    return Check(
        WARN,
        "NixOS without nix-ld (NIX_LD is unset and there is no "
        f"{fhs_loader()}): downloaded Pythons and binary wheels cannot run.",
        NIX_LD_FIX + ", or use only Nix-provided Pythons.",
    )


# -- projects ---------------------------------------------------------------------------------


def check_venv_interpreter(venv: str, machine: Machine, project: str = "") -> Check | None:
    """A virtualenv made with a downloaded interpreter (uv's python-build-standalone builds),
    which NixOS can only run with nix-ld."""
    home = pyvenv_cfg(venv).get("home")
    if home is None:
        return None
    real = os.path.realpath(home)
    if real.startswith("/nix/store/"):
        return Check(OK, f"{venv} uses a Nix-provided Python ({home})", subject=project)
    if not machine.nixos:
        return None
    downloaded = "python-build-standalone" if "/uv/python/" in real + "/" else "non-Nix"
    if machine.nix_ld:
        return Check(
            OK, f"{venv} uses a {downloaded} Python ({home}); nix-ld lets it run", subject=project
        )
    return Check(
        FAIL,
        f"{venv} was made with a {downloaded} Python ({home}), which cannot run on NixOS "
        "without nix-ld.",
        f"{NIX_LD_FIX}; or recreate the venv with a Nix-provided Python: in the project's shell, "
        "`UV_PYTHON_DOWNLOADS=never uv venv --clear --python $(which python3)` then `uv sync` "
        "(set UV_PYTHON_DOWNLOADS=never for good, e.g. in the shell's environment).",
        subject=project,
    )


def check_flake_tracked(project: str) -> Check:
    """A flake inside a git repository: Nix sees only the files git tracks."""
    untracked = nix.untracked_flake_files(project)
    if untracked:
        names = " ".join(os.path.basename(u) for u in untracked)
        return Check(
            FAIL,
            f"{', '.join(untracked)} not tracked by git, so Nix cannot see it.",
            f"Run `git add --intent-to-add {names}` in {project} (no commit needed).",
            subject=project,
        )
    return Check(OK, "flake files are visible to Nix (tracked by git, or no git)", subject=project)


def imports_nixpkgs(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "<nixpkgs>" in f.read()
    except OSError:
        return False


def check_ipykernel(target: KernelTarget, manager: NixKernelSpecManager) -> Check | None:
    """ipykernel imports in the Python the kernel would run: in the cached environment, or in
    a virtualenv that needs no Nix. Environments not evaluated yet are reported, not evaluated."""
    if target.kind == KIND_AUTO or target.problem:
        return None
    if target.kernel is not None:
        return check_shell_kernel(target, manager)
    label = target.display_name
    source = target_source(target, manager.venv_library_shell or None)
    variables: Mapping[str, str] = {}
    if source is not None:
        state, entry = manager.cache.inspect(source, manager.nix_executable or None)
        if entry is None or state == "none":
            return Check(
                WARN,
                f"{label}: not evaluated yet, so ipykernel was not checked.",
                f"Run `jupyter nixkernel warm {target.name}`, then doctor again.",
                subject=target.project,
            )
        variables = entry["variables"]
    env = kernel_environment(variables, os.environ, target.venv)
    try:
        python = find_python(target, env)
        result = _run([python, "-c", "import ipykernel"], env=env)
    except nix.NixKernelError as exc:
        return Check(FAIL, f"{label}: {exc.message}", exc.hint, subject=target.project)
    except (OSError, subprocess.SubprocessError) as exc:
        return Check(FAIL, f"{label}: its Python does not run: {exc}", subject=target.project)
    if result.returncode != 0:
        return Check(
            FAIL,
            f"{label}: `{python} -c 'import ipykernel'` failed: {_last_line(result.stderr)}",
            "To fix it, " + ipykernel_hint(target) + ".",
            subject=target.project,
        )
    return Check(OK, f"{label}: ipykernel found ({python})", subject=target.project)


def check_shell_kernel(target: KernelTarget, manager: NixKernelSpecManager) -> Check:
    """A kernel of another language the shell carries (R...): its program is on the PATH of
    the cached environment (after the spec's env), as the launcher will look for it."""
    assert target.kernel is not None
    label = target.display_name
    source = target_source(target, manager.venv_library_shell or None)
    _state, entry = manager.cache.inspect(source, manager.nix_executable or None)
    env = kernel_environment(entry["variables"] if entry else {}, os.environ)
    try:
        executable, _argv = kernels.command(target.kernel, env, "{connection_file}", False)
    except nix.NixKernelError as exc:
        return Check(FAIL, f"{label}: {exc.message}", exc.hint, subject=target.project)
    return Check(OK, f"{label}: runs {executable}", subject=target.project)


# -- all of it ----------------------------------------------------------------------------------


def run_checks(manager: NixKernelSpecManager, machine: Machine | None = None) -> list[Check]:
    """Every check, for the machine and for each project under ``manager.project_dirs``."""
    machine = machine or Machine.detect()
    targets = manager.refresh()
    checks: list[Check] = []
    nix_check, nix_path = check_nix(manager.nix_executable or None)
    checks.append(nix_check)
    has_flakes = any(t.kind == KIND_FLAKE for t in targets)
    importing = sorted(
        {
            os.path.join(t.project, "shell.nix")
            for t in targets
            if t.kind == KIND_SHELL_NIX and imports_nixpkgs(os.path.join(t.project, "shell.nix"))
        }
    )
    if nix_path is not None:
        checks.append(check_experimental_features(nix_path, need_flakes=has_flakes))
        if importing or any(t.kind == KIND_SHELL_NIX for t in targets):
            checks.append(check_nixpkgs(nix_path, importing))
    nix_ld = check_nix_ld(machine)
    if nix_ld is not None:
        checks.append(nix_ld)

    for project in sorted({t.project for t in targets}):
        mine = [t for t in targets if t.project == project]
        if any(t.kind == KIND_FLAKE for t in mine):
            checks.append(check_flake_tracked(project))
        venvs = sorted({t.venv for t in mine if t.venv})
        for venv in venvs:
            problem = next((t.problem for t in mine if t.venv == venv and t.problem), None)
            if problem:
                checks.append(Check(FAIL, f"{venv} cannot run.", problem, subject=project))
                continue
            venv_check = check_venv_interpreter(venv, machine, project)
            if venv_check is not None:
                checks.append(venv_check)
        for target in mine:
            ipykernel = check_ipykernel(target, manager)
            if ipykernel is not None:
                checks.append(ipykernel)
    return checks


def failed(checks: list[Check]) -> bool:
    return any(c.status == FAIL for c in checks)


def format_report(checks: list[Check]) -> str:
    """One line per check (``OK``/``WARN``/``FAIL``), the fix indented below, grouped by project."""
    lines: list[str] = []
    subject: str | None = None
    for check in checks:
        if check.subject != subject:
            subject = check.subject
            if lines:
                lines.append("")
            lines.append(subject or "This machine")
        lines.append(f"  {check.status:<4}  {check.message}")
        if check.fix:
            lines.append(f"        fix: {check.fix}")
    fails = sum(c.status == FAIL for c in checks)
    warns = sum(c.status == WARN for c in checks)
    lines.append("")
    lines.append(f"{fails} problem(s), {warns} warning(s).")
    return "\n".join(lines)
