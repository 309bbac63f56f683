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
) -> dict[str, str]:
    """The environment a kernel starts with.

    The server's environment, less the variables that belong to the server's own Python, under
    the shell's exported variables; ``PATH`` and ``XDG_DATA_DIRS`` are the shell's followed by the
    server's, as in ``nix develop``. A virtualenv comes first on ``PATH`` with ``VIRTUAL_ENV`` set.
    """
    env = {k: v for k, v in server_env.items() if k not in SERVER_ONLY_VARIABLES}
    for name, value in shell_vars.items():
        if name in PREPENDED_VARIABLES:
            env[name] = join_paths(value, server_env.get(name))
        else:
            env[name] = value
    if venv:
        env["VIRTUAL_ENV"] = venv
        env["PATH"] = join_paths(os.path.join(venv, "bin"), env.get("PATH"))
        env.pop("PYTHONHOME", None)
    return env


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
