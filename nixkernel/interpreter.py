"""The Python a kernel would run, read from files only: no interpreter is started.

- :func:`shell_python`: the ``python3`` a dev shell offers on *its own* ``PATH``: never the one
  the server's ``PATH`` (which ``nix develop`` appends) would supply, so a Go or Rust shell is
  not silently run on the server's Python.
- :func:`ipykernel_version`: the ipykernel release installed next to an interpreter (its
  ``site-packages``, or the shell's ``PYTHONPATH``), from the ``.dist-info`` directory name.
  It decides whether the kernel can encrypt its connection (CurveZMQ: ipykernel 7.3 and newer).
- :func:`cached_shell_facts`: both, for an evaluated environment in the cache, remembered per
  entry file so that a listing of thousands of kernels costs one ``stat`` each.

Standard library only: the launcher imports this module on every kernel start.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from typing import NamedTuple

from .describe import NO_PYTHON_HINT  # noqa: F401 (defined with the other fix texts)
from .environment import which

#: The first ipykernel that reads CurveZMQ keys from its connection file (checked in the
#: 7.2.0 and 7.3.0 wheels: ``IPKernelApp.curve_secretkey`` appears in 7.3.0).
CURVE_IPYKERNEL = (7, 3)
CURVE = "curve"


_DIST_INFO = re.compile(r"^ipykernel-(\d+)\.(\d+)(?:\.(\d+))?[^-]*\.(?:dist|egg)-info$", re.I)
_PYTHON_LIB = re.compile(r"^python3(\.\d+)?$")


class ShellFacts(NamedTuple):
    """What an evaluated environment offers a kernel."""

    python: str | None
    """The ``python3`` on the shell's own PATH, or None."""
    ipykernel: tuple[int, ...] | None
    """The ipykernel version found beside it (or on the shell's PYTHONPATH), if any."""


def shell_python(shell_path: str | None) -> str | None:
    """The first ``python3`` on ``shell_path`` (the shell's own PATH: may be empty)."""
    return which("python3", shell_path or "")


def site_packages(python: str, pythonpath: str = "", resolve: bool = True) -> list[str]:
    """Where ``python`` finds packages, as far as files tell: ``PREFIX/lib/python3.X/
    site-packages`` of the interpreter (the path given, e.g. a ``python3.withPackages`` env or a
    virtualenv, and, with ``resolve``, the file it links to), then ``pythonpath``'s entries."""
    dirs: list[str] = []
    for exe in (python, os.path.realpath(python)) if resolve else (python,):
        lib = os.path.join(os.path.dirname(os.path.dirname(exe)), "lib")
        try:
            names = sorted(n for n in os.listdir(lib) if _PYTHON_LIB.match(n))
        except OSError:
            names = []
        for name in names:
            candidate = os.path.join(lib, name, "site-packages")
            if candidate not in dirs and os.path.isdir(candidate):
                dirs.append(candidate)
    dirs.extend(d for d in pythonpath.split(":") if d and d not in dirs)
    return dirs


def ipykernel_version(directories: list[str]) -> tuple[int, ...] | None:
    """The version of the first ipykernel distribution found in ``directories``."""
    for directory in directories:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            match = _DIST_INFO.match(name)
            if match:
                return tuple(int(n) for n in match.groups() if n is not None)
    return None


def supports_curve(version: tuple[int, ...] | None) -> bool:
    """Whether an ipykernel of ``version`` can encrypt its connection (unknown: no)."""
    return version is not None and version[:2] >= CURVE_IPYKERNEL


def version_text(version: tuple[int, ...] | None) -> str:
    return ".".join(map(str, version)) if version else "unknown"


#: slot -> (entry file stamp, facts). Read and replaced whole (atomic under the GIL): the
#: listing thread and the event loop may both ask.
_memo: dict[str, tuple[object, ShellFacts | None]] = {}


def cached_shell_facts(slot: str) -> ShellFacts | None:
    """The facts of the environment cached in ``slot`` (None: nothing evaluated there yet).

    Remembered per entry file (its mtime and size): entries are replaced atomically on each
    evaluation, and store paths never change, so only a new entry is read again."""
    entry_file = os.path.join(slot, "entry.json")
    try:
        st = os.stat(entry_file)
    except OSError:
        return None
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    known = _memo.get(slot)
    if known is not None and known[0] == stamp:
        return known[1]
    try:
        with open(entry_file, encoding="utf-8") as f:
            variables = json.load(f)["variables"]
        facts = environment_facts(variables)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        facts = None
    _memo[slot] = (stamp, facts)
    return facts


def environment_facts(variables: dict[str, str]) -> ShellFacts:
    """The python3 and ipykernel of an evaluated shell's exported ``variables``."""
    python = shell_python(variables.get("PATH"))
    if python is None:
        return ShellFacts(None, None)
    found = site_packages(python, variables.get("PYTHONPATH", ""))
    return ShellFacts(python, ipykernel_version(found))


_venv_memo: dict[str, tuple[str, int, tuple[int, ...] | None]] = {}


def venv_ipykernel(venv: str) -> tuple[int, ...] | None:
    """The ipykernel version installed in a virtualenv (remembered until its site-packages
    directory changes: one ``stat`` per listing)."""
    known = _venv_memo.get(venv)
    if known is not None:
        with contextlib.suppress(OSError):
            if os.stat(known[0]).st_mtime_ns == known[1]:
                return known[2]
    # Not the base interpreter's packages: a virtualenv does not see them (by default).
    dirs = site_packages(os.path.join(venv, "bin", "python"), resolve=False)
    version = ipykernel_version(dirs)
    if dirs:
        with contextlib.suppress(OSError):
            _venv_memo[venv] = (dirs[0], os.stat(dirs[0]).st_mtime_ns, version)
    return version
