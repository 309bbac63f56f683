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
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from . import environment, nix
from .cache import STALE, EnvironmentCache
from .describe import (
    KIND_AUTO,
    KINDS,
    KernelTarget,
    NixSource,
    describe,
    find_python,
    ipykernel_hint,
    no_python_error,
    target_source,
    venv_problem,
    venv_python,
)
from .discovery import find_enclosing_project
from .errors import NixKernelError
from .nix import log

MODE_CACHED, MODE_DIRECT = "cached", "direct"

_BOOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "boot")
BOOT_SCRIPT = os.path.join(_BOOT, "ipykernel_launcher.py")
FALLBACK_SCRIPT = os.path.join(_BOOT, "fallback.py")
#: The launcher's entry script, run with ``python -S`` (see nixkernel/boot/launcher.py).
LAUNCHER = os.path.join(_BOOT, "launcher.py")

#: Set by the building kernel when it execs the launcher again (see nixkernel/building.py): the
#: time its build started. That launcher does not hand over again, and takes that build's failure.
BUILT_VARIABLE = "NIXKERNEL_BUILT"
#: The stale environment's warning, for the kernel to show in the first cell (boot/handover.py).
STALE_WARNING_VARIABLE = "NIXKERNEL_STALE_WARNING"


class Launch(NamedTuple):
    """What to exec: ``executable`` with ``argv`` in ``env`` (in directory ``cwd``, if given)."""

    executable: str
    argv: list[str]
    env: dict[str, str]
    cwd: str | None = None


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
    parser.add_argument(
        "--nix-args",
        type=json.loads,
        default=None,
        help="JSON {directory or glob: [flags]}: NixKernelSpecManager.nix_args for this kernel",
    )
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
    parser.add_argument(
        "--spec", help="a kernelspec the shell carries (R's ir...) to start instead of Python"
    )
    parser.add_argument("--language", help="the kernel's language, for the fallback kernel")
    parser.add_argument("-f", dest="connection_file", required=True)
    return parser


def launcher_argv(
    target: KernelTarget,
    *,
    cache_dir: str,
    library_shell: str | None = None,
    nix: str | None = None,
    nix_args: Mapping[str, Sequence[str]] | None = None,
    mode: str = MODE_CACHED,
    stale: bool = True,
    venvs: bool = True,
) -> list[str]:
    """The kernelspec's argv that starts ``target``: the server's own Python running the
    launcher, with the arguments :func:`build_parser` reads (keep the two in step)."""
    argv = [sys.executable, "-S", LAUNCHER, "--kind", target.kind]
    if target.kind != KIND_AUTO:
        argv += ["--project", target.project]
    if target.shell:
        argv += ["--shell", target.shell]
    if target.venv:
        argv += ["--venv", target.venv]
    if target.kernel is not None:
        argv += ["--spec", target.kernel.name, "--language", target.kernel.language]
    if library_shell:
        argv += ["--library-shell", library_shell]
    argv += ["--cache-dir", cache_dir]
    if nix:
        argv += ["--nix", nix]
    if nix_args:
        argv.append("--nix-args=" + json.dumps(nix_args, separators=(",", ":")))
    if mode != MODE_CACHED:
        argv += ["--mode", mode]
    if not stale:
        argv.append("--no-stale")
    if target.kind == KIND_AUTO and not venvs:
        argv.append("--no-venvs")
    return [*argv, "-f", "{connection_file}"]


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


def plan_cached(
    target: KernelTarget, args: argparse.Namespace, server_env: Mapping[str, str]
) -> Launch:
    """Exec plan from the cache (evaluating on a miss)."""
    source = target_source(target, args.library_shell, args.nix_args)
    shell_vars: Mapping[str, str] = {}
    rc = ""
    model: Mapping | None = None
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
        model = resolved.entry["shell"]
    cwd = os.getcwd()
    env = environment.kernel_environment(shell_vars, server_env, target.venv, model, cwd)
    env.pop(BUILT_VARIABLE, None)
    if model is not None:
        try:
            env.update(environment.temporary_directory(model, server_env))
        except OSError as exc:
            raise NixKernelError(
                f"Cannot create the shell's temporary directory: {exc}.",
                hint="Set TMPDIR (in the Jupyter server's environment) to a writable directory.",
            ) from exc
    if args.spec:  # a kernel of another language the shell carries
        entry = resolved.entry if source is not None else None
        python, kernel = shell_kernel_command(target, args, entry, env, through_shell=bool(rc))
    else:
        # Only the shell's own PATH entries: never the server's python3 (see find_python).
        shell_path = shell_vars.get("PATH", "") if source is not None else None
        python = find_python(target, env, shell_path)
        env["NIXKERNEL_FALLBACK_PYTHON"] = sys.executable
        env["NIXKERNEL_IPYKERNEL_HINT"] = ipykernel_hint(target)
        kernel = [python, BOOT_SCRIPT, "-f", args.connection_file]
        if stale_notice:  # the boot script shows it in the first cell's output
            env[STALE_WARNING_VARIABLE] = stale_notice
    if not rc:
        return Launch(python, kernel, env)
    if not target.venv and not args.spec:
        # The boot script switches to the python3 the shellHook leaves first on PATH, if other.
        env["NIXKERNEL_PYTHON_BEFORE_HOOK"] = python
    bash = environment.which("bash", env.get("PATH")) or environment.which("bash")
    if bash is None:
        raise NixKernelError(
            "The shell has a shellHook, but there is no bash on its PATH or the server's.",
            hint="Add bash to the shell's packages (pkgs.bashInteractive).",
        )
    # The hook runs in the project's root (as for nix-direnv and a terminal user), with no
    # positional parameters; then `exec` replaces bash with the kernel, in the notebook's folder.
    argv = environment.hook_argv(bash, rc, target.project, cwd, kernel, model, server_env)
    return Launch(bash, argv, env)


def shell_kernel_command(
    target: KernelTarget,
    args: argparse.Namespace,
    entry: dict | None,
    env: dict[str, str],
    through_shell: bool,
) -> tuple[str, list[str]]:
    """The command of ``args.spec``, a kernel the cached environment carries (kernels.py)."""
    from . import kernels

    kernel = kernels.find(entry, args.spec)
    if kernel is None:
        raise missing_kernel(target, args.spec, entry)
    return kernels.command(kernel, env, args.connection_file, through_shell)


def missing_kernel(target: KernelTarget, spec: str, entry: dict | None) -> NixKernelError:
    """The error for a kernel the listing named but the environment does not carry now."""
    from . import kernels

    shell = kernels.from_entry(entry)
    now = ", ".join(k.name for k in shell.kernels) if shell else ""
    return NixKernelError(
        f"The environment of {target.project} does not carry the kernel {spec!r} "
        f"(any more){f': its kernels now are {now}' if now else ''}.",
        hint="Pick one of the project's kernels that `jupyter nixkernel list` shows now "
        "(after `jupyter nixkernel warm` if its Nix files changed).",
    )


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


def plan_direct(
    target: KernelTarget, args: argparse.Namespace, server_env: Mapping[str, str]
) -> Launch:
    """Exec plan that enters the shell with ``nix develop`` / ``nix-shell`` every time, started
    in the project's root (where the shellHook runs); the command then moves to the kernel's own
    directory, leaving ``OLDPWD`` as it was."""
    source = target_source(target, args.library_shell, args.nix_args)
    if source is None:
        return plan_cached(target, args, server_env)
    nix_path = nix.find_nix(args.nix or None)
    env = {k: v for k, v in server_env.items() if k not in environment.SERVER_ONLY_VARIABLES}
    env["NIXKERNEL_FALLBACK_PYTHON"] = sys.executable
    env["NIXKERNEL_IPYKERNEL_HINT"] = ipykernel_hint(target)
    import shlex

    connection = shlex.quote(args.connection_file)
    if args.spec:
        script = direct_shell_kernel_script(target, args, source)
    elif target.venv:
        python = shlex.quote(venv_python(target.venv))
        script = f"exec {python} {shlex.quote(BOOT_SCRIPT)} -f {connection}"
    else:
        script = _direct_shell_python_script(connection)
        env["NIXKERNEL_SERVER_PATH"] = server_env.get("PATH", "")
        no_python = no_python_error(target.project)
        env["NIXKERNEL_NO_PYTHON"] = f"{no_python.message}\n\nHow to fix it: {no_python.hint}."
    if target.venv:
        venv = shlex.quote(target.venv)
        script = f'export VIRTUAL_ENV={venv} PATH={venv}/bin:"$PATH"; unset PYTHONHOME; {script}'
    cwd = shlex.quote(os.getcwd())
    script = (
        f'if [ -n "${{OLDPWD+set}}" ]; then o=$OLDPWD; cd -- {cwd} || exit 1; OLDPWD=$o; unset o; '
        f"else cd -- {cwd} || exit 1; unset OLDPWD; fi; {script}"
    )
    if source.is_flake:
        if source.local_dir:
            nix.check_flake_path(source.local_dir, nix_path)
        argv = nix.nix_command(
            nix_path, "develop", *source.installable_args(), *source.args,
            "-c", "bash", "-c", script,
        )  # fmt: skip
        return Launch(nix_path, argv, env, cwd=target.project)
    nix_shell = os.path.join(os.path.dirname(nix_path), "nix-shell")
    argv = [
        nix_shell,
        source.location,
        *(["-A", source.attr] if source.attr else []),
        *source.args,
        "--run",
        script,
    ]
    return Launch(nix_shell, argv, env, cwd=target.project)


def _direct_shell_python_script(connection: str) -> str:
    """Bash that execs the python3 on the shell's own PATH entries: ``nix develop`` and
    ``nix-shell`` append the server's PATH (``$NIXKERNEL_SERVER_PATH``), whose python3 is not the
    shell's. Without one, the fallback kernel says so (``$NIXKERNEL_NO_PYTHON``)."""
    import shlex

    return (
        'shell_path=${PATH%"$NIXKERNEL_SERVER_PATH"}; shell_path=${shell_path%:}; '
        "unset NIXKERNEL_SERVER_PATH; "
        'if p=$(PATH="$shell_path" command -v python3); then unset NIXKERNEL_NO_PYTHON; '
        f'exec "$p" {shlex.quote(BOOT_SCRIPT)} -f {connection}; fi; '
        f'exec "$NIXKERNEL_FALLBACK_PYTHON" -E {shlex.quote(FALLBACK_SCRIPT)} '
        f'--message "$NIXKERNEL_NO_PYTHON" -f {connection}'
    )


def kernel_message(exc: NixKernelError, project: str) -> str:
    """The fallback kernel's text: the cause first (its first line is the error's ``evalue``,
    all that clients showing ``ename: evalue`` print), then the project, the fix (and, as
    there is a kernel, to restart it), and Nix's own text."""
    parts = [exc.message, f"Project: {project}"]
    if exc.hint:
        hint = exc.hint.rstrip()
        stop = "" if hint.endswith((".", "!", "?")) else "."
        parts.append(f"How to fix it: {hint}{stop} Then restart the kernel.")
    if exc.details:
        parts.append(exc.details)
    return "\n\n".join(parts)


def direct_shell_kernel_script(
    target: KernelTarget, args: argparse.Namespace, source: NixSource
) -> str:
    """``launch_mode = "direct"``: the bash command that starts ``args.spec`` inside ``nix
    develop`` / ``nix-shell``, its spec read from the cache (a listing only offers such kernels
    for shells evaluated once, by a kernel start or `warm`). Bash finds its program on the
    shell's PATH, after the shellHook."""
    import shlex

    from . import kernels

    _state, entry = EnvironmentCache(args.cache_dir).inspect(source, args.nix or None)
    kernel = kernels.find(entry, args.spec)
    if kernel is None:
        raise missing_kernel(target, args.spec, entry)
    namespace = {
        "connection_file": args.connection_file,
        "resource_dir": kernel.resource_dir,
        "prefix": sys.prefix,
        "cwd": os.getcwd(),
    }
    argv = kernels.format_argv(kernel.spec["argv"], namespace)
    # The spec's env goes over the shell's: exported inside the shell, with ${VAR} expanded there.
    exports = "".join(
        f'export {k}="{_double_quoted(v)}"; '
        for k, v in (kernel.spec.get("env") or {}).items()
        if environment.is_variable_name(k)
    )
    return exports + "exec " + " ".join(shlex.quote(a) for a in argv)


def _double_quoted(value: str) -> str:
    """``value`` inside bash double quotes: only ``${VAR}`` / ``$VAR`` stay live, as
    string.Template substitutes them for the cached mode."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")
    return escaped.replace("$(", "\\$(")


def fallback(message: str, connection_file: str, language: str | None = None) -> Launch:
    """Exec plan for the fallback kernel, in the server's own Python and environment."""
    argv = [sys.executable, FALLBACK_SCRIPT, "--message", message, "-f", connection_file]
    if language:
        argv[2:2] = ["--language", language]
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
        message = kernel_message(exc, args.project or os.getcwd())
        log(message)
        return fallback(message, args.connection_file, args.language)
    except Exception as exc:  # a bug of ours: still explain it in the notebook, not in a loop
        message = f"nixkernel failed unexpectedly ({type(exc).__name__}: {exc}). Please report it."
        log(message)
        return fallback(message, args.connection_file, args.language)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # Only the launcher process itself may hand a miss over to the building kernel (an exec).
    args.launcher_argv = list(sys.argv[1:] if argv is None else argv)
    launch = plan(args, os.environ)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        if launch.cwd:
            os.chdir(launch.cwd)
        os.execve(launch.executable, launch.argv, launch.env)
    except OSError as exc:
        # E.g. an interpreter whose program loader is missing (a downloaded Python on NixOS):
        # explain it in the notebook rather than die and be restarted by the server.
        message = (
            f"Cannot run {launch.executable}: {exc}.\n\nProject: {args.project or os.getcwd()}"
            "\n\nHow to fix it: if it is a virtualenv's Python, recreate the venv on a Python "
            "that runs here (on NixOS: a Nix Python, or enable nix-ld). Then restart the kernel."
        )
        log(message)
        launch = fallback(message, args.connection_file, args.language)
        os.execve(launch.executable, launch.argv, launch.env)


if __name__ == "__main__":
    main()
