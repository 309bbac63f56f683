"""Describing projects: what environments a project offers, and what each kernel is called.

Turns a discovered :class:`~nixkernel.discovery.Project` into :class:`KernelTarget` objects,
one per environment (each devShell of a flake, a ``shell.nix``, a plain virtualenv), each with a
stable kernel name that depends only on the project's path and shell, never on the order of
discovery. A target also says which Nix expression to evaluate (:class:`NixSource`,
:func:`target_source`), which Python runs it (:func:`find_python`) and how to add ipykernel to
it (:func:`ipykernel_hint`): the launcher, the manager, ``doctor`` and the CLI all ask here.

Standard library only: the launcher imports this module on every kernel start.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import unicodedata
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from .discovery import Project
from .environment import which
from .errors import NixKernelError

if TYPE_CHECKING:
    from .kernels import FoundKernel

KIND_FLAKE = "flake"
KIND_SHELL_NIX = "shell.nix"
KIND_VENV = "venv"
KIND_AUTO = "auto"
KINDS = (KIND_FLAKE, KIND_SHELL_NIX, KIND_VENV, KIND_AUTO)

#: A Python with ipykernel, as a Nix expression: the fix texts below all suggest it.
PYTHON_WITH_IPYKERNEL = "python3.withPackages (ps: [ ps.ipykernel ])"
#: How to fix a shell without Python (``doctor``, the listing, the fallback kernel).
NO_PYTHON_HINT = (
    "add Python with ipykernel to the shell's packages, e.g. "
    f"`packages = [ (pkgs.{PYTHON_WITH_IPYKERNEL}) ];`"
)

NAME_PREFIX = "nix-"
PROJECT_KERNEL_NAME = "nix-this-project"
_SLUG_MAX = 32


def current_system() -> str:
    """This machine's Nix system (``x86_64-linux``...), like ``builtins.currentSystem``."""
    uname = os.uname()  # not the platform module: it costs the launcher ~10 ms to import
    machine = uname.machine.lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return f"{machine}-{uname.sysname.lower()}"


class NixSource(NamedTuple):
    """A Nix expression that yields a dev shell: a flake output or a Nix file."""

    kind: str
    """``"flake"`` or ``"file"``."""
    location: str
    """A flake reference without fragment (a local directory for discovered projects), or the
    absolute path of a Nix file."""
    attr: str | None = None
    """Attribute path inside the flake or file, as Nix reads it after ``#`` (optional). For a
    flake, None is the flake's default dev shell and a bare name (``docs``) a named one: Nix
    looks them up in its own order (:meth:`flake_shell`)."""
    args: tuple[str, ...] = ()
    """Further flags for Nix (``--impure``, ``--arg x y``...), declared by the project
    (``.envrc``, ``c.NixKernelSpecManager.nix_args``): see :mod:`nixkernel.projectargs`."""

    @property
    def is_flake(self) -> bool:
        return self.kind == "flake"

    @property
    def local_dir(self) -> str | None:
        """The directory whose files are this source's inputs, if it is a local one."""
        loc = self.location
        if self.is_flake:
            if loc.startswith("path:"):
                loc = loc[len("path:") :]
            if loc.startswith("/"):
                return loc
            return None
        return os.path.dirname(loc)

    def installable_args(self) -> list[str]:
        """The arguments naming this source to ``nix develop`` / ``nix print-dev-env``."""
        if self.is_flake:
            return [f"{self.location}#{self.attr}" if self.attr else self.location]
        return ["--file", self.location, *([self.attr] if self.attr else [])]

    def describe(self) -> str:
        return " ".join([*self.installable_args(), *self.args]).replace("--file ", "")

    def shell_command(self) -> str:
        """The command its users know for entering this shell, quoted so that it works when
        pasted: ``nix develop REF#ATTR`` for a flake, ``nix-shell FILE [-A ATTR]`` for a file."""
        from shlex import quote  # only on the way to a message

        if self.is_flake:
            return "nix develop " + quote(self.installable_args()[0])
        attr = f" -A {quote(self.attr)}" if self.attr else ""
        return f"nix-shell {quote(self.location)}{attr}"

    @classmethod
    def flake_shell(cls, directory: str, shell: str, system: str | None = None) -> NixSource:
        """The dev shell ``shell`` of the flake in ``directory``, named as ``nix develop`` is
        given it: the bare reference for ``default`` (Nix tries ``devShells.<system>.default``,
        ``devShell.<system>``, ``packages.<system>.default``, ``defaultPackage.<system>``),
        ``ref#name`` for the others (``devShells.<system>.name``, then ``packages`` and
        ``legacyPackages``): src/nix/develop.cc, getDefaultFlakeAttrPaths and
        getDefaultFlakeAttrPathPrefixes, the same from Nix 2.8 to 2.34. ``system`` is unused:
        Nix applies its own."""
        return cls("flake", directory, None if shell == "default" else flake_attr_name(shell))

    @classmethod
    def parse(cls, text: str, system: str | None = None) -> NixSource:
        """A user-written reference: ``/etc/nixos#devShells.x86_64-linux.pylibs``,
        ``/etc/nixos#pylibs`` (a name Nix looks up as for ``nix develop``), a flake directory
        (its default dev shell), or a ``.nix`` file. ``system`` is unused (see
        :meth:`flake_shell`)."""
        text = text.strip()
        if "#" in text:
            ref, attr = text.split("#", 1)
            return cls("flake", _absolute_if_path(ref), attr or None)
        if text.endswith(".nix"):
            return cls("file", os.path.abspath(os.path.expanduser(text)))
        path = _absolute_if_path(text)
        if path.startswith("/") and os.path.isfile(os.path.join(path, "flake.nix")):
            return cls.flake_shell(path, "default", system)
        if path.startswith("/") and os.path.isfile(os.path.join(path, "shell.nix")):
            return cls("file", os.path.join(path, "shell.nix"))
        return cls.flake_shell(path, "default", system)


class KernelTarget(NamedTuple):
    """One kernel: an environment of one project."""

    name: str
    """Kernel name: stable, unique, matching ``^[a-z0-9._-]+$``."""
    display_name: str
    kind: str
    """``"flake"``, ``"shell.nix"``, ``"venv"`` or ``"auto"`` (the project-following kernel)."""
    project: str
    shell: str | None = None
    """devShell name for flakes, else None."""
    venv: str | None = None
    """The virtualenv whose Python the kernel runs, if any."""
    problem: str | None = None
    """Why this environment cannot start as it is (shown in the listing and the fallback kernel)."""
    kernel: FoundKernel | None = None
    """A kernel of another language that the shell carries (R, Julia...: see kernels.py), or
    None for the environment's Python kernel."""

    def nix_source(self, library_shell: str | None = None) -> NixSource | None:
        """The Nix expression of this environment as its files name it: the flake's shell, the
        ``shell.nix``, or for a plain venv ``library_shell`` (None without one). The basis of
        :func:`target_source`, which adds the flags the project declares."""
        if self.kind == KIND_FLAKE:
            return NixSource.flake_shell(self.project, self.shell or "default")
        if self.kind == KIND_SHELL_NIX:
            return NixSource("file", os.path.join(self.project, "shell.nix"))
        if self.kind == KIND_VENV and library_shell:
            return NixSource.parse(library_shell)
        return None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "display_name": self.display_name,
            "kind": self.kind,
            "shell": self.shell,
            "project": self.project,
            "venv": self.venv,
            "language": self.kernel.language if self.kernel else "python",
            "spec": self.kernel.name if self.kernel else None,
        }


def flake_attr_name(name: str) -> str:
    """``name`` as one element of an attribute path after ``#``: quoted when it has a dot (Nix
    would split it there), with ``%`` escaped (Nix percent-decodes the fragment)."""
    name = name.replace("%", "%25")
    return f'"{name}"' if "." in name else name


def slugify(text: str) -> str:
    """A kernel-name-safe, readable form of ``text`` (ASCII, lowercase, ``[a-z0-9._-]``)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9._-]+", "-", ascii_text.lower()).strip("-._")
    return slug[:_SLUG_MAX].rstrip("-._") or "project"


def kernel_name(project: str, kind: str, shell: str | None = None, spec: str | None = None) -> str:
    """The kernel name of ``project``'s environment: a readable slug and a hash of the path.

    The hash makes two projects with the same directory name (``~/a/api``, ``~/b/api``) distinct,
    and the name independent of the order projects are found in. ``spec`` names a kernel of
    another language the shell carries (``ir``); the Python kernel has none, and its name is the
    one it always had.
    """
    key = f"{kind}\0{project}\0{shell or ''}" + (f"\0{spec}" if spec else "")
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    parts = [slugify(os.path.basename(project.rstrip(os.sep)) or "root"), slugify(kind)]
    if shell and shell != "default":
        parts.append(slugify(shell))
    if spec:
        parts.append(slugify(spec))
    return NAME_PREFIX + "-".join(parts) + "-" + digest


def pyvenv_cfg(venv: str) -> dict[str, str]:
    """The ``key = value`` settings of a virtualenv's ``pyvenv.cfg`` (empty if unreadable)."""
    settings: dict[str, str] = {}
    try:
        with open(os.path.join(venv, "pyvenv.cfg"), encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition("=")
                if sep:
                    settings[key.strip()] = value.strip()
    except OSError:
        pass
    return settings


def venv_flavor(venv: str) -> str:
    """Who made the virtualenv: ``"uv"``, ``"poetry"`` or ``""`` (plain venv / virtualenv)."""
    if "uv" in pyvenv_cfg(venv):
        return "uv"
    project = os.path.dirname(venv)
    if os.path.exists(os.path.join(project, "poetry.lock")):
        return "poetry"
    return ""


def venv_label(venv: str) -> str:
    flavor = venv_flavor(venv)
    return f"{flavor} .venv" if flavor else ".venv"


def venv_python(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


def venv_problem(venv: str) -> str | None:
    """Why the virtualenv's interpreter cannot run, or None if it looks usable."""
    python = venv_python(venv)
    if os.path.exists(python):
        return _loader_problem(python)
    if os.path.islink(python):
        from shlex import quote  # only on the way to an error message

        target = os.readlink(python)
        project = quote(os.path.dirname(venv))
        return (
            f"{python} points to {target}, which does not exist (the interpreter the venv was "
            f"made with is gone). Recreate it: `cd {project} && uv venv --allow-existing` or "
            f"`python3 -m venv --clear {quote(venv)}`, then reinstall its packages (`uv sync`)."
        )
    return f"{venv} has no bin/python. Recreate the virtualenv (`uv venv` or `python3 -m venv`)."


def elf_interpreter(path: str) -> str | None:
    """The program loader (``PT_INTERP``) an ELF executable asks for, or None (not ELF, static,
    unreadable). Reads a few hundred bytes: cheap enough for every listing."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] not in (1, 2):
                return None
            wide, order = head[4] == 2, "<" if head[5] == 1 else ">"
            phoff = struct.unpack_from(order + ("Q" if wide else "I"), head, 32 if wide else 28)[0]
            entsize, count = struct.unpack_from(order + "HH", head, 54 if wide else 42)
            for i in range(min(count, 64)):
                f.seek(phoff + i * entsize)
                header = f.read(entsize)
                if len(header) < (56 if wide else 32):
                    return None
                if struct.unpack_from(order + "I", header, 0)[0] != 3:  # PT_INTERP
                    continue
                fmt, at = (order + "QQQQ", 8) if wide else (order + "IIII", 4)
                offset, _vaddr, _paddr, size = struct.unpack_from(fmt, header, at)
                f.seek(offset)
                return f.read(min(size, 4096)).split(b"\0", 1)[0].decode(errors="replace")
    except (OSError, struct.error):
        return None
    return None


def _loader_problem(python: str) -> str | None:
    """Why an existing interpreter cannot start: the loader it needs is not on this system.

    That is a downloaded Python (uv's python-build-standalone builds) on NixOS without nix-ld:
    execve fails with "No such file or directory" although the file is there."""
    loader = elf_interpreter(os.path.realpath(python))
    if not loader or os.path.exists(loader):
        return None
    return (
        f"{python} cannot run here: it needs the program loader {loader}, which this system "
        "does not have. It is probably a Python downloaded for other Linux systems (uv's "
        "managed Pythons). On NixOS, make the venv on a Nix Python instead (in a shell that "
        "provides one: `UV_PYTHON_DOWNLOADS=never uv venv --clear --python $(which python3)`, "
        "then `uv sync`), or enable nix-ld (`programs.nix-ld.enable = true;`), which provides "
        "that loader."
    )


def describe(
    project: Project,
    flake_shells: list[str] | None = None,
    include_venvs: bool = True,
    library_shell: str | None = None,
) -> list[KernelTarget]:
    """The kernels ``project`` offers.

    ``flake_shells`` are the devShell names of the flake for this system, when a cached
    evaluation knows them; until then the flake offers its ``default`` shell. A virtualenv inside
    a Nix project is run inside that project's shells; a virtualenv alone is a kernel of its own
    (with ``library_shell`` applied, if one is configured).
    """
    venv = project.venv if include_venvs else None
    problem = venv_problem(venv) if venv else None
    suffix = f" + {venv_label(venv)}" if venv else ""

    def target(kind: str, label: str, shell: str | None = None) -> KernelTarget:
        return KernelTarget(
            name=kernel_name(project.path, kind, shell),
            display_name=f"{project.name} ({label})",
            kind=kind,
            project=project.path,
            shell=shell,
            venv=venv,
            problem=problem,
        )

    targets: list[KernelTarget] = []
    if project.flake:
        for shell in sorted(flake_shells or ["default"], key=lambda s: (s != "default", s)):
            label = "flake" if shell == "default" else f"flake: {shell}"
            targets.append(target(KIND_FLAKE, label + suffix, shell))
    if project.shell_nix:
        targets.append(target(KIND_SHELL_NIX, "shell.nix" + suffix))
    if venv and not project.has_nix:
        label = venv_label(venv) + (" + library shell" if library_shell else "")
        targets.append(target(KIND_VENV, label))
    return targets


def target_source(
    target: KernelTarget,
    library_shell: str | None,
    nix_args: Mapping[str, Sequence[str]] | None = None,
) -> NixSource | None:
    """The Nix environment ``target`` starts in, with the flags its project declares
    (``.envrc``, ``nix_args``: see :mod:`nixkernel.projectargs`), or None (a plain venv)."""
    from .projectargs import with_project_args  # it builds on NixSource, defined here

    source = target.nix_source(library_shell)
    return with_project_args(source, nix_args) if source is not None else None


def ipykernel_hint(target: KernelTarget) -> str:
    """How to add ipykernel, in the words of the tool that made the environment (commands that
    work when pasted: paths are shell-quoted)."""
    if target.venv:
        from shlex import quote  # only on the way to an error message

        python = quote(venv_python(target.venv))
        in_project = f"cd {quote(target.project)} && " if target.project else ""
        flavor = venv_flavor(target.venv)
        if flavor == "poetry":
            return f"install it in the virtualenv: `{in_project}poetry add --group dev ipykernel`"
        if flavor == "uv":
            # uv venvs have no pip; without a pyproject.toml `uv add` has nothing to add to.
            return (
                f"install it in the virtualenv: `{in_project}uv add --dev ipykernel` "
                f"(a venv without a pyproject.toml: `uv pip install --python {python} ipykernel`)"
            )
        return (
            f"install it in the virtualenv: `{python} -m pip install ipykernel` "
            f"(in a uv project: `{in_project}uv add --dev ipykernel`)"
        )
    return f"add ipykernel to the shell's Python, e.g. `({PYTHON_WITH_IPYKERNEL})` in its packages"


def find_python(target: KernelTarget, env: Mapping[str, str], shell_path: str | None = None) -> str:
    """The kernel's Python: the venv's, else the first python3 on ``shell_path``, the shell's
    own PATH entries. Never one from the server's PATH, which ``env`` appends: a shell without
    Python (Go, Rust, a library shell) must say so, not run whatever python3 the server has.
    (Without ``shell_path``, ``env``'s whole PATH: for environments that are not a shell.)"""
    if target.venv:
        return venv_python(target.venv)
    python = which("python3", env.get("PATH") if shell_path is None else shell_path)
    if python is None:
        raise no_python_error(target.project)
    return python


def no_python_error(project: str | None) -> NixKernelError:
    """The error of an environment without Python (cached mode raises it; direct mode hands
    its text to the fallback kernel, as the shell's PATH is only known inside the shell)."""
    where = f"{project}'s environment" if project else "this environment"
    return NixKernelError(
        f"There is no Python in {where}: no python3 on the shell's PATH, so there is no "
        "Python kernel to start (the Jupyter server's own Python is not the shell's).",
        hint=NO_PYTHON_HINT + ", then restart the kernel",
    )


def _absolute_if_path(ref: str) -> str:
    if ref.startswith(("/", "./", "../", "~")) or ref in (".", ".."):
        return os.path.abspath(os.path.expanduser(ref))
    return ref
