"""Turning an evaluated dev shell into a kernel's process environment.

``nix print-dev-env --json`` describes the shell as bash variables and functions, including
values that only make sense inside Nix's build sandbox. This module does what ``nix develop``
does with them: keep the exported variables, drop the sandbox ones, put the shell's ``PATH`` and
``XDG_DATA_DIRS`` in front of the caller's, and (when the shell has a ``shellHook``) write the
bash script that runs the hook and then execs the kernel.

Standard library only: the launcher imports this module on every kernel start.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

#: Variables ``nix develop`` drops from the build environment: they describe the sandbox.
SANDBOX_VARIABLES = frozenset(
    {
        "BASHOPTS", "HOME", "NIX_BUILD_TOP", "NIX_ENFORCE_PURITY", "NIX_LOG_FD", "NIX_REMOTE",
        "PPID", "SHELLOPTS", "SSL_CERT_FILE", "TEMP", "TEMPDIR", "TERM", "TMP", "TMPDIR", "TZ",
        "UID",
    }
)  # fmt: skip

#: Path-like variables the shell prepends to the caller's value instead of replacing it.
PREPENDED_VARIABLES = ("PATH", "XDG_DATA_DIRS")

#: Variables of the Jupyter server's own Python that would break a project's interpreter.
SERVER_ONLY_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH")

#: Bash's own variables: present in print-dev-env's dump, never to be assigned.
_BASH_INTERNALS = frozenset(
    {
        "BASH", "BASHPID", "BASH_ALIASES", "BASH_ARGC", "BASH_ARGV", "BASH_ARGV0", "BASH_CMDS",
        "BASH_COMMAND", "BASH_LINENO", "BASH_SOURCE", "BASH_SUBSHELL", "BASH_VERSINFO",
        "BASH_VERSION", "COLUMNS", "COMP_WORDBREAKS", "DIRSTACK", "EPOCHREALTIME",
        "EPOCHSECONDS", "EUID", "FUNCNAME", "GROUPS", "HISTCMD", "HOSTNAME", "HOSTTYPE", "IFS",
        "LINENO", "LINES", "MACHTYPE", "OLDPWD", "OPTERR", "OPTIND", "OSTYPE", "PIPESTATUS",
        "PS1", "PS2", "PS4", "PWD", "RANDOM", "SECONDS", "SHLVL", "SRANDOM", "_",
    }
)  # fmt: skip

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_:.\-]*$")


def exported_variables(dev_env: Mapping) -> dict[str, str]:
    """The variables a process in the shell inherits: exported strings, sandbox ones dropped."""
    result: dict[str, str] = {}
    variables = dev_env.get("variables")
    if not isinstance(variables, Mapping):
        return result
    for name, var in variables.items():
        if not isinstance(name, str) or not _NAME.match(name) or name in SANDBOX_VARIABLES:
            continue
        if not isinstance(var, Mapping) or var.get("type") != "exported":
            continue
        value = var.get("value")
        if not isinstance(value, str) or "\0" in value:
            continue
        result[name] = value
    return result


def is_variable_name(name: str) -> bool:
    """Whether ``name`` can be a shell variable (``export NAME=...``)."""
    return bool(_NAME.match(name))


def which(name: str, path: str | None = None) -> str | None:
    """The executable ``name`` on ``path`` (default: this process's PATH), like ``shutil.which``.

    Not shutil itself: importing it (and the compression modules it pulls in) is a noticeable
    part of the launcher's start-up, which every kernel start pays.
    """
    if os.sep in name:
        return name if _is_executable(name) else None
    for directory in (os.environ.get("PATH", os.defpath) if path is None else path).split(":"):
        # An empty entry would mean the current directory: never look for programs there.
        if directory and _is_executable(candidate := os.path.join(directory, name)):
            return candidate
    return None


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def join_paths(*parts: str | None) -> str:
    """``a:b`` from path lists, skipping empty ones (an empty entry would mean the cwd)."""
    return ":".join(p for part in parts if part for p in part.split(":") if p)


def kernel_environment(
    shell_vars: Mapping[str, str],
    server_env: Mapping[str, str],
    venv: str | None = None,
    shell: Mapping | None = None,
    cwd: str | None = None,
) -> dict[str, str]:
    """The environment a kernel starts with.

    The server's environment, less the variables that belong to the server's own Python, under
    the shell's exported variables; ``PATH`` and ``XDG_DATA_DIRS`` are the shell's followed by the
    server's, as in ``nix develop``. A virtualenv comes first on ``PATH`` with ``VIRTUAL_ENV`` set.

    ``shell`` is the model :mod:`nixkernel.devshell` made when the environment was evaluated:
    the rules of the ``nix develop`` / ``nix-shell`` of that Nix version (which variables are
    prepended, what a non-exported variable does to the caller's, ``SHELL``, ``SHLVL``,
    ``NIX_GCROOT``...). ``cwd`` is the directory the kernel starts in (its ``PWD``).
    """
    env = {k: v for k, v in server_env.items() if k not in SERVER_ONLY_VARIABLES}
    prepended = PREPENDED_VARIABLES if shell is None else _strings(shell.get("prepend"))
    if shell is not None:
        _apply_assignments(env, shell)
    for name, value in shell_vars.items():
        if name in prepended:
            env[name] = join_paths(value, server_env.get(name))
        else:
            env[name] = value
    if shell is not None:
        _apply_rules(env, shell, server_env)
    if cwd is not None:
        env["PWD"] = cwd  # as bash exports it for the command it runs
    if (
        shell is not None
        and "OLDPWD" not in shell_vars
        and not os.path.isdir(env.get("OLDPWD", "/"))
    ):
        del env["OLDPWD"]  # bash, which runs every nix develop / nix-shell command, drops it
    if venv:
        env["VIRTUAL_ENV"] = venv
        env["PATH"] = join_paths(os.path.join(venv, "bin"), env.get("PATH"))
        env.pop("PYTHONHOME", None)
    return env


def _strings(value: object) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _apply_assignments(env: dict[str, str], shell: Mapping) -> None:
    """What the rc script's assignments do to the caller's variables: a non-exported variable of
    the shell still replaces the value of one the caller exported (bash keeps the export), an
    array declared over one drops it (bash exports no arrays), and ``nix develop`` starts with
    ``unset shellHook``."""
    for name in _strings(shell.get("removed")):
        env.pop(name, None)
    assigned = shell.get("assigned")
    for name, value in assigned.items() if isinstance(assigned, Mapping) else ():
        if name in env and isinstance(value, str):
            env[name] = value


def _apply_rules(env: dict[str, str], shell: Mapping, server_env: Mapping[str, str]) -> None:
    """The variables ``nix develop`` / ``nix-shell`` set themselves (see nixkernel.devshell)."""
    if shell.get("semantics") == "nix-shell":
        # nix-build.cc: $NIX_BUILD_SHELL, else <nixpkgs>'s bashInteractive, else "bash"; its
        # directory first on PATH, and SHELL=<it> (exported when the caller exported SHELL).
        configured = server_env.get("NIX_BUILD_SHELL")
        program = configured or str(shell.get("shell") or "bash")
        head = os.path.dirname(configured) if configured else str(shell.get("path_head") or "")
        env["PATH"] = join_paths(head, env.get("PATH"))
        if "SHELL" in env:
            env["SHELL"] = program
    gcroot = shell.get("gcroot")
    if isinstance(gcroot, str) and gcroot:
        env["NIX_GCROOT"] = gcroot  # develop.cc: keeps the environment alive while it runs
    # bash exports SHLVL: nix develop's `exec` gives the command the caller's level, nix-shell
    # --run runs it as a child of its bash, one deeper.
    env["SHLVL"] = str(_level(server_env.get("SHLVL")) + (1 if shell.get("shlvl") else 0))
    if shell.get("shell_level"):
        env["NIX_SHELL_LEVEL"] = str(_level(server_env.get("NIX_SHELL_LEVEL")) + 1)
    if shell.get("log_fd"):
        env["NIX_LOG_FD"] = "2"


def _level(value: str | None) -> int:
    try:
        return max(int(value or 0), 0)
    except ValueError:
        return 0


def temporary_directory(shell: Mapping, server_env: Mapping[str, str]) -> dict[str, str]:
    """``NIX_BUILD_TOP``, ``TMPDIR``, ``TMP``, ``TEMP`` and ``TEMPDIR`` for one start, creating
    the directory where Nix creates one (``nix develop``: ``mktemp -d -t nix-shell.XXXXXX``;
    ``nix-shell`` >= 2.25 a ``nix-shell-*`` directory), else the caller's temporary directory
    by the version's rule. Like ``nix develop``'s, the directory outlives the kernel."""
    rule = shell.get("tmp")
    tmpdir = server_env.get("TMPDIR")
    base = tmpdir or "/tmp"
    if rule == "mktemp":
        path = _make_directory(base, "nix-shell.")
    elif rule == "dir":
        path = _make_directory(base, f"nix-shell-{os.getpid()}-")
    elif rule == "caller-nonempty":
        path = base
    elif rule == "caller-else-dir":
        path = tmpdir or _make_directory("/tmp", f"nix-shell-{os.getpid()}-")
    elif rule == "caller-nonempty-xdg":
        path = tmpdir or server_env.get("XDG_RUNTIME_DIR") or "/tmp"
    elif rule == "caller-xdg":
        path = tmpdir if tmpdir is not None else server_env.get("XDG_RUNTIME_DIR", "/tmp")
    else:
        return {}
    return dict.fromkeys(("NIX_BUILD_TOP", "TMPDIR", "TMP", "TEMP", "TEMPDIR"), path)


def _make_directory(base: str, prefix: str) -> str:
    """A new private directory ``base/prefix<random>`` (tempfile's import costs every start)."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    for _attempt in range(100):
        name = prefix + "".join(alphabet[b % len(alphabet)] for b in os.urandom(6))
        path = os.path.join(base, name)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"could not create a temporary directory in {base}")


#: Runs the hook script in the project's root, then execs the kernel in its own directory:
#: ``bash -c DRIVER nixkernel-shell RC ROOT CWD SHELL KERNEL...``. The hook sees no positional
#: parameters (as in ``nix develop``, whose rc runs as ``bash RCFILE``), and the two ``cd``\ s
#: leave ``OLDPWD`` as it was.
HOOK_DRIVER = """\
__nixkernel_cd() {
  if [ -n "${OLDPWD+set}" ]; then
    local __nixkernel_old=$OLDPWD; builtin cd -- "$1" || return; OLDPWD=$__nixkernel_old
  else
    builtin cd -- "$1" || return; unset OLDPWD
  fi
}
__nixkernel_rc=$1 __nixkernel_cwd=$3 __nixkernel_shell=$4
__nixkernel_cd "$2" || exit 1
shift 4; __nixkernel_argv=("$@"); set --
if [ -n "$__nixkernel_shell" ]; then
  SHELL=$__nixkernel_shell BASH=$__nixkernel_shell
  __nixkernel_tz=${TZ-} __nixkernel_tzset=${TZ+set}
fi
unset __nixkernel_shell
. "$__nixkernel_rc"
if [ -n "${__nixkernel_tzset+set}" ]; then
  unset TZ; if [ -n "$__nixkernel_tzset" ]; then export TZ=$__nixkernel_tz; fi
  unset __nixkernel_tz __nixkernel_tzset
fi
__nixkernel_cd "$__nixkernel_cwd" || exit 1
unset -f __nixkernel_cd; unset __nixkernel_rc __nixkernel_cwd
exec "${__nixkernel_argv[@]}"
"""


def hook_argv(
    bash: str,
    rc_file: str,
    root: str,
    cwd: str,
    kernel: list[str],
    shell: Mapping | None = None,
    server_env: Mapping[str, str] | None = None,
) -> list[str]:
    """The argv that runs ``rc_file`` (the shell's state and hook) in ``root``, then execs
    ``kernel`` in ``cwd``. For nix-shell semantics, ``SHELL``/``BASH`` are set for the hook and
    ``TZ`` restored after it, as nix-shell's rc does."""
    program = ""
    if shell is not None and shell.get("semantics") == "nix-shell":
        program = (server_env or {}).get("NIX_BUILD_SHELL") or str(shell.get("shell") or "bash")
    driver = HOOK_DRIVER
    return [bash, "--noprofile", "--norc", "-c", driver, "nixkernel-shell",
            rc_file, root, cwd, program, *kernel]  # fmt: skip


def shell_hook(dev_env: Mapping) -> str:
    var = (dev_env.get("variables") or {}).get("shellHook")
    if isinstance(var, Mapping) and isinstance(var.get("value"), str):
        return var["value"]
    return ""


def rc_script(dev_env: Mapping) -> str:
    """A bash script that recreates the shell's non-exported state, runs ``shellHook`` in the
    current directory, and then ``exec``\\ s its arguments (the kernel), as ``nix develop -c`` does.

    Exported variables are not in the script: they come with the process environment.
    """
    lines = ["# Written by nixkernel from `nix print-dev-env --json`."]
    variables = dev_env.get("variables") or {}
    for name, var in sorted(variables.items()) if isinstance(variables, Mapping) else []:
        if (
            not isinstance(name, str)
            or not _NAME.match(name)
            or name in SANDBOX_VARIABLES
            or name in _BASH_INTERNALS
            or name.startswith("BASH_")
            or not isinstance(var, Mapping)
        ):
            continue
        kind, value = var.get("type"), var.get("value")
        if kind == "var" and isinstance(value, str):
            lines.append(f"{name}={_quote(value)}")
        elif kind == "array" and isinstance(value, list):
            items = " ".join(_quote(str(v)) for v in value)
            lines.append(f"declare -a {name}=({items})")
        elif kind == "associative" and isinstance(value, Mapping):
            items = " ".join(f"[{_quote(str(k))}]={_quote(str(v))}" for k, v in value.items())
            lines.append(f"declare -A {name}=({items})")
    functions = dev_env.get("bashFunctions") or {}
    for name, body in sorted(functions.items()) if isinstance(functions, Mapping) else []:
        # A NUL cannot pass through execve: such a function is dropped, not a crash at exec.
        if (
            isinstance(name, str)
            and _FUNCTION_NAME.match(name)
            and isinstance(body, str)
            and "\0" not in body
        ):
            lines.append(f"{name} ()\n{{\n{body}\n}}")
    lines.append('eval "${shellHook:-}"')
    lines.append('exec "$@"')
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    import shlex  # only when an environment is evaluated, not on every start

    return shlex.quote(value.replace("\0", ""))
