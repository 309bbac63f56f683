"""The launcher: ``python -m nixkernel.launch ... -f CONNECTION_FILE``, run on every kernel start.

It finds the kernel's environment (from the cache, evaluating with Nix on a miss), then *execs*
the project's Python on ipykernel in the server-given working directory, through bash only
when the shell has a ``shellHook`` to run. No process stays between the server and the
kernel, so interrupts and restarts reach the kernel itself. When the environment cannot be made,
it execs the fallback kernel, which shows the reason in the notebook.

Imports: the standard library and nixkernel's own light modules only. This runs on every start.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from typing import NamedTuple

from . import environment, nix
from .cache import STALE, EnvironmentCache
from .describe import (
    KIND_AUTO,
    KIND_VENV,
    KINDS,
    KernelTarget,
    NixSource,
    describe,
    venv_flavor,
    venv_problem,
    venv_python,
)
from .discovery import find_enclosing_project
from .nix import NixKernelError, log

MODE_CACHED, MODE_DIRECT = "cached", "direct"

_BOOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "boot")
BOOT_SCRIPT = os.path.join(_BOOT, "ipykernel_launcher.py")
FALLBACK_SCRIPT = os.path.join(_BOOT, "fallback.py")

#: Set by the building kernel when it execs the launcher again (see nixkernel/building.py): the
#: time its build started. That launcher does not hand over again, and takes that build's failure.
BUILT_VARIABLE = "NIXKERNEL_BUILT"
#: The stale environment's warning, for the kernel to show in the first cell (boot/handover.py).
STALE_WARNING_VARIABLE = "NIXKERNEL_STALE_WARNING"


class Launch(NamedTuple):
    """What to exec: ``executable`` with ``argv`` in ``env``."""

    executable: str
    argv: list[str]
    env: dict[str, str]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nixkernel.launch",
        description="Start an ipykernel inside a project's Nix / virtualenv environment.",
        # A fixed width: argparse otherwise imports shutil to ask the terminal's, on every
        # kernel start, for help text that is almost never printed.
        formatter_class=lambda prog: argparse.HelpFormatter(prog, width=100),
    )
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--project", help="project directory (not needed for --kind auto)")
    parser.add_argument("--shell", help="flake devShell name (default: default)")
    parser.add_argument("--venv", help="virtualenv whose Python runs the kernel")
    parser.add_argument("--library-shell", help="Nix environment applied to venv-only kernels")
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--nix", default="", help="nix executable (default: found on PATH)")
    parser.add_argument("--mode", choices=(MODE_CACHED, MODE_DIRECT), default=MODE_CACHED)
    parser.add_argument(
        "--no-stale",
        dest="stale",
        action="store_false",
        help="fail instead of using an outdated environment when Nix fails",
    )
    parser.add_argument(
        "--no-venvs", dest="venvs", action="store_false", help="(--kind auto) ignore virtualenvs"
    )
    parser.add_argument("-f", dest="connection_file", required=True)
    return parser


def resolve_target(args: argparse.Namespace) -> KernelTarget:
    """The environment to start: given on the command line, or (``--kind auto``) the project
    that encloses the kernel's working directory, which the server sets to the notebook's."""
    if args.kind != KIND_AUTO:
        if not args.project:
            raise NixKernelError("The kernelspec has no --project.", hint="Reinstall the kernel.")
        venv = args.venv or None
        return KernelTarget(
            name="", display_name="", kind=args.kind, project=args.project,
            shell=args.shell, venv=venv, problem=venv_problem(venv) if venv else None,
        )  # fmt: skip
    cwd = os.getcwd()
    project = find_enclosing_project(cwd)
    if project is None:
        raise NixKernelError(
            f"No project found at or above {cwd}: no flake.nix, shell.nix or .venv there.",
            hint="Open the notebook inside a project folder, or pick that project's own kernel.",
        )
    targets = describe(project, include_venvs=args.venvs, library_shell=args.library_shell)
    if not targets:
        raise NixKernelError(f"{project.path} offers no environment nixkernel can start.")
    log(f"following the notebook to {targets[0].display_name}")
    return targets[0]


def target_source(target: KernelTarget, library_shell: str | None) -> NixSource | None:
    source = target.nix_source()
    if source is None and target.kind == KIND_VENV and library_shell:
        return NixSource.parse(library_shell)
    return source


def ipykernel_hint(target: KernelTarget) -> str:
    """How to add ipykernel, in the words of the tool that made the environment."""
    if target.venv:
        python = venv_python(target.venv)
        flavor = venv_flavor(target.venv)
        if flavor == "poetry":
            return (
                f"install it in the virtualenv: `poetry add --group dev ipykernel` in "
                f"{target.project}"
            )
        if flavor == "uv":
            # uv venvs have no pip; without a pyproject.toml `uv add` has nothing to add to.
            return (
                f"install it in the virtualenv: `uv add --dev ipykernel` in {target.project} "
                f"(a venv without a pyproject.toml: `uv pip install --python {python} ipykernel`)"
            )
        return (
            f"install it in the virtualenv: `{python} -m pip install ipykernel` "
            f"(in a uv project: `uv add --dev ipykernel` in {target.project})"
        )
    return (
        "add ipykernel to the shell's Python, e.g. "
        "`(python3.withPackages (ps: [ ps.ipykernel ]))` in its packages"
    )


def plan_cached(
    target: KernelTarget, args: argparse.Namespace, server_env: Mapping[str, str]
) -> Launch:
    """Exec plan from the cache (evaluating on a miss)."""
    source = target_source(target, args.library_shell)
    shell_vars: Mapping[str, str] = {}
    rc = ""
    stale_notice = ""
    if source is not None:
        cache = EnvironmentCache(args.cache_dir)
        on_miss, failure_since = building_hooks(args, server_env)
        resolved = cache.ensure(
            source, args.nix or None, allow_stale=args.stale, on_line=log,
            on_miss=on_miss, failure_since=failure_since,
        )  # fmt: skip
        if resolved.state == STALE:
            log(resolved.warning)
            from .building import stale_notice as notice  # not on the warm path

            stale_notice = notice(resolved.warning, target)
        elif resolved.evaluated:
            log(f"evaluated {source.describe()} and cached it")
        shell_vars, rc = resolved.entry["variables"], resolved.entry["rc"]
    env = environment.kernel_environment(shell_vars, server_env, target.venv)
    env.pop(BUILT_VARIABLE, None)
    if stale_notice:
        env[STALE_WARNING_VARIABLE] = stale_notice
    python = find_python(target, env)
    env["NIXKERNEL_FALLBACK_PYTHON"] = sys.executable
    env["NIXKERNEL_IPYKERNEL_HINT"] = ipykernel_hint(target)
    kernel = [python, BOOT_SCRIPT, "-f", args.connection_file]
    if not rc:
        return Launch(python, kernel, env)
    if not target.venv:
        # The boot script switches to the python3 the shellHook leaves first on PATH, if other.
        env["NIXKERNEL_PYTHON_BEFORE_HOOK"] = python
    bash = environment.which("bash", env.get("PATH")) or environment.which("bash")
    if bash is None:
        raise NixKernelError(
            "The shell has a shellHook, but there is no bash on its PATH or the server's.",
            hint="Add bash to the shell's packages (pkgs.bashInteractive).",
        )
    # bash -c RC NAME ARGS...: the rc script runs the hook, then `exec "$@"` replaces bash.
    return Launch(bash, [bash, "--noprofile", "--norc", "-c", rc, "nixkernel-shell", *kernel], env)


def building_hooks(
    args: argparse.Namespace, server_env: Mapping[str, str]
) -> tuple[Callable[[str], None] | None, float | None]:
    """``(on_miss, failure_since)`` for :meth:`EnvironmentCache.ensure`.

    The launcher the server started (``main``) hands a miss over to the building kernel, which
    answers the client at once and shows Nix's progress. The launcher that kernel execs when the
    build ended does not hand over again, and takes that build's failure as its own."""
    built = server_env.get(BUILT_VARIABLE)
    if built is not None:
        try:
            return None, float(built)
        except ValueError:
            return None, None
    launcher_argv = getattr(args, "launcher_argv", None)
    if launcher_argv is None:
        return None, None

    def on_miss(state: str) -> None:
        from .building import exec_building_kernel

        exec_building_kernel(launcher_argv, state)  # returns only if it cannot

    return on_miss, None


def find_python(target: KernelTarget, env: Mapping[str, str]) -> str:
    if target.venv:
        return venv_python(target.venv)
    python = environment.which("python3", env.get("PATH"))
    if python is None:
        raise NixKernelError(
            f"There is no python3 on the PATH of {target.project}'s environment.",
            hint="Add Python with ipykernel to the shell, e.g. "
            "`packages = [ (pkgs.python3.withPackages (ps: [ ps.ipykernel ])) ];`.",
        )
    return python


def plan_direct(
    target: KernelTarget, args: argparse.Namespace, server_env: Mapping[str, str]
) -> Launch:
    """Exec plan that enters the shell with ``nix develop`` / ``nix-shell`` every time."""
    source = target_source(target, args.library_shell)
    if source is None:
        return plan_cached(target, args, server_env)
    nix_path = nix.find_nix(args.nix or None)
    env = {k: v for k, v in server_env.items() if k not in environment.SERVER_ONLY_VARIABLES}
    env["NIXKERNEL_FALLBACK_PYTHON"] = sys.executable
    env["NIXKERNEL_IPYKERNEL_HINT"] = ipykernel_hint(target)
    import shlex

    python = shlex.quote(venv_python(target.venv)) if target.venv else "python3"
    script = f"exec {python} {shlex.quote(BOOT_SCRIPT)} -f {shlex.quote(args.connection_file)}"
    if target.venv:
        venv = shlex.quote(target.venv)
        script = f'export VIRTUAL_ENV={venv} PATH={venv}/bin:"$PATH"; unset PYTHONHOME; {script}'
    if source.is_flake:
        if source.local_dir:
            nix.check_flake_path(source.local_dir)
        argv = [nix_path, "develop", *source.installable_args(), "-c", "bash", "-c", script]
        return Launch(nix_path, argv, env)
    nix_shell = os.path.join(os.path.dirname(nix_path), "nix-shell")
    argv = [
        nix_shell,
        source.location,
        *(["-A", source.attr] if source.attr else []),
        "--run",
        script,
    ]
    return Launch(nix_shell, argv, env)


def fallback(message: str, connection_file: str) -> Launch:
    """Exec plan for the fallback kernel, in the server's own Python and environment."""
    argv = [sys.executable, FALLBACK_SCRIPT, "--message", message, "-f", connection_file]
    env = dict(os.environ)
    env.pop(BUILT_VARIABLE, None)
    return Launch(sys.executable, argv, env)


def plan(args: argparse.Namespace, server_env: Mapping[str, str]) -> Launch:
    try:
        target = resolve_target(args)
        if target.problem:
            raise NixKernelError(f"The virtualenv of {target.project} cannot run: {target.problem}")
        if args.mode == MODE_DIRECT:
            return plan_direct(target, args, server_env)
        return plan_cached(target, args, server_env)
    except NixKernelError as exc:
        where = args.project or os.getcwd()
        message = f"Project: {where}\n\n{exc}"
        log(message)
        return fallback(message, args.connection_file)
    except Exception as exc:  # a bug of ours: still explain it in the notebook, not in a loop
        message = f"nixkernel failed unexpectedly ({type(exc).__name__}: {exc}). Please report it."
        log(message)
        return fallback(message, args.connection_file)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # Only the launcher process itself may hand a miss over to the building kernel (an exec).
    args.launcher_argv = list(sys.argv[1:] if argv is None else argv)
    launch = plan(args, os.environ)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(launch.executable, launch.argv, launch.env)
    except OSError as exc:
        # E.g. an interpreter whose program loader is missing (a downloaded Python on NixOS):
        # explain it in the notebook rather than die and be restarted by the server.
        message = (
            f"Project: {args.project or os.getcwd()}\n\nCannot run {launch.executable}: {exc}. "
            "If it is a virtualenv's Python, recreate the venv on a Python that runs here "
            "(on NixOS: a Nix Python, or enable nix-ld)."
        )
        log(message)
        launch = fallback(message, args.connection_file)
        os.execve(launch.executable, launch.argv, launch.env)


if __name__ == "__main__":
    main()
