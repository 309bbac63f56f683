"""What kernels an evaluated environment carries: R, Julia, Rust... beside (or instead of) Python.

Nix users keep more than Python in their dev shells. When an environment is evaluated (never
during a listing), :func:`detect` looks for the Jupyter kernels it carries and the result is
cached with the environment, in its entry's ``kernels`` field:

- **kernelspecs**: ``jupyter/kernels/*/kernel.json`` under each directory of the shell's own
  ``XDG_DATA_DIRS``, and in the ``share/`` beside each ``bin/`` on the shell's own ``PATH`` (a
  package's ``bin/`` and ``share/`` sit side by side, as a conda environment's do). The machine's
  own data directories (``/usr/share``...) are left out: their kernels are the machine's, which
  the server offers anyway;
- **known kernels whose package ships no kernelspec in share/**, each found by a cheap probe of
  a program on the shell's own PATH (:data:`PROBES`), run in the shell's environment: R whose
  library has IRkernel (the spec IRkernel keeps in R's library), Julia with IJulia, evcxr (Rust);
- **the Python kernel**: whether the shell's ``python3`` can import ipykernel.

Listings read that field from the cached entry (:class:`EntryIndex`: one ``stat`` per
environment, the entry parsed again only when it changes) and :func:`offered` turns it into
the project's kernels: the Python one where the shell has a Python with ipykernel (or a venv, or
no other kernel at all, so that its fallback kernel can say what is missing), and one per kernel
found. The launcher starts a found kernel exactly as a Python one, inside the environment and
after the ``shellHook``, with the spec's argv (:func:`command`).

Standard library only: the launcher imports this module for such kernels (and on an
evaluation); the probes import subprocess when they run.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from .cache import KERNELS_FIELD as FIELD
from .cache import KERNELS_FILE, EnvironmentCache
from .describe import KIND_FLAKE, KernelTarget, NixSource, kernel_name
from .environment import kernel_environment, which

#: What the real kernels of these languages report as ``language_info`` (the front end picks
#: highlighting and the file extension from it): IRkernel, IJulia, evcxr, ipykernel.
LANGUAGE_INFO: dict[str, dict[str, Any]] = {
    "python": {
        "name": "python",
        "mimetype": "text/x-python",
        "file_extension": ".py",
        "codemirror_mode": {"name": "ipython", "version": 3},
        "pygments_lexer": "ipython3",
        "nbconvert_exporter": "python",
    },
    "r": {
        "name": "R",
        "codemirror_mode": "r",
        "pygments_lexer": "r",
        "mimetype": "text/x-r-source",
        "file_extension": ".r",
    },
    "julia": {"name": "julia", "mimetype": "application/julia", "file_extension": ".jl"},
    "rust": {
        "name": "Rust",
        "codemirror_mode": "rust",
        "mimetype": "text/rust",
        "file_extension": ".rs",
    },
}


def language_info(language: str) -> dict[str, Any]:
    """``language_info`` for a stand-in (the fallback or the building kernel) for a kernel of
    ``language``."""
    return dict(LANGUAGE_INFO.get(language.lower(), {"name": language}))


#: The layout of that field; an entry with another one is treated as not knowing its kernels.
FORMAT = 1

#: Data directories that belong to the machine, not to a shell (jupyter_core's system path).
SYSTEM_DATA_DIRS = frozenset({"/usr/share", "/usr/local/share", "/share"})
SYSTEM_PREFIXES = frozenset({"/usr", "/usr/local", "/"})

#: Kernelspec names Jupyter accepts.
_SPEC_NAME = re.compile(r"^[a-z0-9._\-]+$")
_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_]+)\}")
#: Printed before a probe's answer, so a shell's chatter on stdout (an .Rprofile) is ignored.
MARK = "NIXKERNEL-KERNELSPEC:"
PROBE_TIMEOUT = 60.0


class FoundKernel(NamedTuple):
    """A kernel a shell carries, other than its Python kernel."""

    name: str
    """The kernelspec's name (its directory's name; for a probe, the name its tool installs)."""
    spec: dict
    """kernel.json: ``argv``, ``display_name``, ``language``, and ``env``, ``interrupt_mode``,
    ``metadata`` when the spec has them."""
    resource_dir: str
    """The spec's directory (its logos), or "" when there is none."""
    logos: tuple[str, ...] = ()
    """The ``logo-*`` files in ``resource_dir``."""
    origin: str = ""
    """Where it was found (``XDG_DATA_DIRS``, ``PATH``, or the probe that found it)."""

    @property
    def language(self) -> str:
        return str(self.spec.get("language") or "")

    @property
    def display_name(self) -> str:
        return str(self.spec.get("display_name") or self.name)

    @property
    def interrupt_mode(self) -> str:
        return "message" if self.spec.get("interrupt_mode") == "message" else "signal"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "spec": self.spec,
            "resource_dir": self.resource_dir,
            "logos": list(self.logos),
            "origin": self.origin,
        }


class ShellKernels(NamedTuple):
    """What :func:`detect` found in one environment."""

    python3: str | None
    """The shell's own ``python3`` (on its PATH before any shellHook), if it has one."""
    ipykernel: bool
    """That ``python3`` can import ipykernel."""
    kernels: tuple[FoundKernel, ...]
    notes: tuple[str, ...] = ()
    """What was found but not offered, and probes that failed (for ``show`` and ``doctor``)."""


class KernelFilter(NamedTuple):
    """Which of a shell's kernels are offered (c.NixKernelSpecManager.offer_languages...)."""

    languages: frozenset[str] = frozenset()
    """Languages to offer (lowercase); empty: every language."""
    hidden_languages: frozenset[str] = frozenset()
    hidden_specs: frozenset[str] = frozenset()

    @classmethod
    def make(
        cls, languages: Iterable[str], hidden_languages: Iterable[str], hidden_specs: Iterable[str]
    ) -> KernelFilter:
        def lower(items: Iterable[str]) -> frozenset[str]:
            return frozenset(i.strip().lower() for i in items if i.strip())

        return cls(lower(languages), lower(hidden_languages), lower(hidden_specs))

    def allows(self, language: str, spec: str | None = None) -> bool:
        language = language.lower()
        if self.languages and language not in self.languages:
            return False
        if language in self.hidden_languages:
            return False
        return spec is None or spec.lower() not in self.hidden_specs


class ProbeError(Exception):
    """A probe's program did not run or answer."""


# -- detection (at evaluation time) -----------------------------------------------------------


def detect(
    variables: Mapping[str, str],
    server_env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> dict[str, Any]:
    """The kernels the shell whose exported variables are ``variables`` carries, as the entry's
    ``kernels`` field. Runs each probe's program in the shell's environment (without its
    shellHook, which runs at every kernel start, not at evaluation), in ``cwd``."""
    env = kernel_environment(variables, os.environ if server_env is None else server_env)
    shell_path = variables.get("PATH", "")
    found: dict[str, FoundKernel] = {}
    notes: list[str] = []
    for directory, origin in kernel_dirs(variables):
        for kernel in read_kernels_dir(directory, origin, notes):
            if is_ipykernel_spec(kernel.spec):
                notes.append(
                    f"{kernel.name} ({directory}) is ipykernel's own spec: the shell's Python "
                    "kernel is offered in its place"
                )
            elif kernel.name in found:
                hidden_by = found[kernel.name].origin
                notes.append(f"{kernel.name} in {directory} is hidden by {hidden_by}")
            else:
                found[kernel.name] = kernel
    languages = {k.language.lower() for k in found.values()}
    for program, language, probe in PROBES:
        executable = which(program, shell_path)
        if executable is None or language in languages:
            continue  # a spec found in share/ for that language wins over a probe
        try:
            kernel = probe(executable, env, cwd)
        except ProbeError as exc:
            notes.append(str(exc))
            continue
        if kernel is not None and kernel.name not in found:
            found[kernel.name] = kernel
    python3 = which("python3", shell_path)
    ipykernel = python3 is not None and has_ipykernel(python3, env)
    return {
        "format": FORMAT,
        "python3": python3,
        "ipykernel": ipykernel,
        "specs": [k.as_json() for k in found.values()],
        "notes": notes,
    }


def kernel_dirs(variables: Mapping[str, str]) -> list[tuple[str, str]]:
    """The ``.../jupyter/kernels`` directories a shell's own ``XDG_DATA_DIRS`` and ``PATH`` name,
    in that order, once each, with the variable that named them."""
    result: dict[str, str] = {}
    for directory in variables.get("XDG_DATA_DIRS", "").split(":"):
        directory = os.path.normpath(directory) if directory else ""
        if directory.startswith("/") and directory not in SYSTEM_DATA_DIRS:
            result.setdefault(os.path.join(directory, "jupyter", "kernels"), "XDG_DATA_DIRS")
    for directory in variables.get("PATH", "").split(":"):
        directory = os.path.normpath(directory) if directory else ""
        if not directory.startswith("/") or os.path.basename(directory) != "bin":
            continue
        prefix = os.path.dirname(directory)
        if prefix not in SYSTEM_PREFIXES:
            result.setdefault(os.path.join(prefix, "share", "jupyter", "kernels"), "PATH")
    return list(result.items())


def read_kernels_dir(directory: str, origin: str, notes: list[str]) -> list[FoundKernel]:
    """Every valid kernelspec in ``directory`` (``NAME/kernel.json``), sorted by name."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    kernels = []
    for name in names:
        spec_dir = os.path.join(directory, name)
        if not os.path.isfile(os.path.join(spec_dir, "kernel.json")):
            continue
        kernel = read_spec_dir(spec_dir, name, f"{origin}: {spec_dir}", notes)
        if kernel is not None:
            kernels.append(kernel)
    return kernels


def read_spec_dir(
    spec_dir: str, name: str, origin: str, notes: list[str] | None = None
) -> FoundKernel | None:
    """The kernelspec in ``spec_dir`` under ``name``, or None (with the reason in ``notes``)."""
    name = name.lower()
    path = os.path.join(spec_dir, "kernel.json")
    problem = None
    spec = None
    if not _SPEC_NAME.match(name):
        problem = f"{spec_dir}: {name!r} is not a valid kernel name ([a-z0-9._-])"
    else:
        try:
            with open(path, encoding="utf-8") as f:
                spec, problem = clean_spec(json.load(f))
        except (OSError, ValueError) as exc:
            problem = f"{path} cannot be read: {exc}"
    if spec is None:
        if notes is not None:
            notes.append(problem or f"{path} is not a kernelspec")
        return None
    return FoundKernel(name, spec, spec_dir, logos_in(spec_dir), origin)


def clean_spec(raw: object) -> tuple[dict | None, str | None]:
    """The fields of a kernel.json nixkernel uses, checked: (spec, None) or (None, why not)."""
    if not isinstance(raw, dict):
        return None, "kernel.json is not a JSON object"
    argv = raw.get("argv")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        return None, "kernel.json has no argv (a non-empty list of strings)"
    spec: dict[str, Any] = {
        "argv": list(argv),
        "display_name": str(raw.get("display_name") or ""),
        "language": str(raw.get("language") or ""),
    }
    env = raw.get("env")
    if isinstance(env, dict):
        spec["env"] = {str(k): str(v) for k, v in env.items()}
    if raw.get("interrupt_mode") in ("signal", "message"):
        spec["interrupt_mode"] = raw["interrupt_mode"]
    metadata = raw.get("metadata")
    if isinstance(metadata, dict):
        # Another provisioner would replace nixkernel's launcher: not taken from a shell.
        spec["metadata"] = {k: v for k, v in metadata.items() if k != "kernel_provisioner"}
    return spec, None


def logos_in(directory: str) -> tuple[str, ...]:
    try:
        return tuple(sorted(n for n in os.listdir(directory) if n.startswith("logo-")))
    except OSError:
        return ()


def is_ipykernel_spec(spec: Mapping[str, Any]) -> bool:
    """Whether the spec runs ipykernel (ipykernel's own ``python3`` spec, which a Python
    environment with ipykernel ships in share/): that kernel is the shell's Python kernel."""
    argv = spec.get("argv") or []
    modules = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-m"]
    return any(m.split(".")[0] in ("ipykernel_launcher", "ipykernel") for m in modules)


def has_ipykernel(python3: str, env: Mapping[str, str]) -> bool:
    """Whether ``python3`` finds ipykernel, with the shell's variables (its PYTHONPATH, for
    nixpkgs' Python packages), without importing it (about 20 ms)."""
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('ipykernel') is None)"
    try:
        # From /: a project directory holding an `ipykernel` folder must not answer for it.
        result = _run([python3, "-c", code], env, "/")
    except ProbeError:
        return False
    return result.returncode == 0


def _run(argv: list[str], env: Mapping[str, str], cwd: str | None) -> Any:
    import subprocess

    try:
        return subprocess.run(
            argv,
            env=dict(env),
            cwd=cwd if cwd and os.path.isdir(cwd) else None,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=PROBE_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ProbeError(f"{argv[0]} did not run: {exc}") from None


def _answer(argv: list[str], env: Mapping[str, str], cwd: str | None) -> str | None:
    """What a probe printed after :data:`MARK`; None when it printed nothing there."""
    result = _run(argv, env, cwd)
    for line in result.stdout.splitlines():
        if line.startswith(MARK):
            return line[len(MARK) :].strip() or None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ProbeError(f"{argv[0]} failed (exit status {result.returncode}): {last}")
    return None


R_PROBE = f'cat("\\n{MARK}", system.file("kernelspec", package = "IRkernel"), "\\n", sep = "")'


def probe_irkernel(r: str, env: Mapping[str, str], cwd: str | None) -> FoundKernel | None:
    """R whose library has IRkernel: IRkernel's own spec, which it keeps in the R library
    (``system.file("kernelspec", package = "IRkernel")``; about 0.25 s). Its argv runs a bare
    ``R``, resolved on the shell's PATH at start: the shell's wrapped R, which sees the shell's
    R packages (not the unwrapped one a spec generated inside a shell would name)."""
    spec_dir = _answer([r, "--slave", "--no-restore", "--no-save", "-e", R_PROBE], env, cwd)
    if spec_dir is None:
        return None
    # IRkernel::installspec() names it "ir" by default.
    return read_spec_dir(spec_dir, "ir", f"{r}'s library (IRkernel)")


JULIA_PROBE = (
    'p = Base.find_package("IJulia"); p === nothing || '
    f'print("\\n{MARK}", VERSION.major, ".", VERSION.minor, " ", p, "\\n")'
)


def probe_ijulia(julia: str, env: Mapping[str, str], cwd: str | None) -> FoundKernel | None:
    """Julia that finds IJulia (``Base.find_package``: no package is loaded). The spec is the
    one ``IJulia.installkernel`` writes: ``julia -i --color=yes`` on IJulia's kernel (its
    ``src/kernel.jl`` in older releases, ``IJulia.run_kernel()`` in newer ones)."""
    argv = [julia, "--startup-file=no", "--history-file=no", "-e", JULIA_PROBE]
    answer = _answer(argv, env, cwd)
    if answer is None or " " not in answer:
        return None
    version, source = answer.split(" ", 1)
    kernel_jl = os.path.join(os.path.dirname(source), "kernel.jl")
    start = ["-e", "import IJulia; IJulia.run_kernel()"]
    if os.path.isfile(kernel_jl):
        start = [kernel_jl]
    spec = {
        "argv": ["julia", "-i", "--color=yes", *start, "{connection_file}"],
        "display_name": f"Julia {version}",
        "language": "julia",
        "env": {},
        "interrupt_mode": "signal",
    }
    deps = os.path.join(os.path.dirname(os.path.dirname(source)), "deps")
    return FoundKernel(f"julia-{version}", spec, deps, logos_in(deps), f"{julia} (IJulia)")


def probe_evcxr(evcxr: str, env: Mapping[str, str], cwd: str | None) -> FoundKernel | None:
    """evcxr_jupyter (Rust) on the shell's PATH: the spec ``evcxr_jupyter --install`` writes
    (its logos are inside the binary: none here)."""
    spec = {
        "argv": ["evcxr_jupyter", "--control_file", "{connection_file}"],
        "display_name": "Rust",
        "language": "rust",
        "env": {},
        "interrupt_mode": "message",
    }
    return FoundKernel("rust", spec, "", (), f"{evcxr} (evcxr)")


Probe = Callable[[str, Mapping[str, str], "str | None"], "FoundKernel | None"]

#: (program on the shell's own PATH, language of the kernel it finds, probe).
PROBES: tuple[tuple[str, str, Probe], ...] = (
    ("R", "r", probe_irkernel),
    ("julia", "julia", probe_ijulia),
    ("evcxr_jupyter", "rust", probe_evcxr),
)


# -- reading the cached result ---------------------------------------------------------------


def from_entry(entry: Mapping[str, Any] | None) -> ShellKernels | None:
    """What a cached entry says its environment carries; None when it does not say (an entry
    written before nixkernel looked for kernels) or says it in a shape this version can't read."""
    raw = entry.get(FIELD) if isinstance(entry, Mapping) else None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        return None
    python3 = raw.get("python3")
    specs = raw.get("specs")
    if not isinstance(specs, list) or not (python3 is None or isinstance(python3, str)):
        return None
    kernels = []
    for item in specs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        spec, _problem = clean_spec(item.get("spec"))
        resource_dir = item.get("resource_dir")
        logos = item.get("logos")
        if spec is None or not isinstance(resource_dir, str) or not isinstance(logos, list):
            return None
        kernels.append(
            FoundKernel(
                item["name"],
                spec,
                resource_dir,
                tuple(str(logo) for logo in logos),
                str(item.get("origin") or ""),
            )
        )
    notes = raw.get("notes")
    return ShellKernels(
        python3,
        raw.get("ipykernel") is True,
        tuple(kernels),
        tuple(str(n) for n in notes) if isinstance(notes, list) else (),
    )


def find(entry: Mapping[str, Any] | None, name: str) -> FoundKernel | None:
    """The kernel called ``name`` that the entry's environment carries, if any."""
    shell = from_entry(entry)
    if shell is None:
        return None
    return next((k for k in shell.kernels if k.name == name.lower()), None)


class EntryIndex:
    """The kernels of cached entries, for listings: read from the small copy beside each entry
    (``kernels.json``; the entry itself is tens of KB for a real shell), and read again only when
    that file changes: a ``stat`` per evaluated environment per scan."""

    def __init__(self) -> None:
        self._memo: dict[str, tuple[tuple[int, int, int], ShellKernels | None]] = {}
        self._slots: dict[tuple[str, NixSource], str] = {}
        self._offered: dict[tuple[KernelTarget, KernelFilter], tuple[object, list]] = {}

    def slot(self, cache: EnvironmentCache, source: NixSource) -> str:
        """``cache.slot(source)``, remembered (a digest per environment per scan otherwise)."""
        key = (cache.root, source)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = cache.slot(source)
        return slot

    def offered(
        self, target: KernelTarget, shell: ShellKernels | None, kernel_filter: KernelFilter
    ) -> list[KernelTarget]:
        """:func:`offered`, remembered while the shell's kernels stay the same object."""
        key = (target, kernel_filter)
        memo = self._offered.get(key)
        if memo is not None and memo[0] is shell:
            return memo[1]
        result = offered(target, shell, kernel_filter)
        self._offered[key] = (shell, result)
        return result

    def kernels(self, slot: str) -> ShellKernels | None:
        path = os.path.join(slot, KERNELS_FILE)
        try:
            st = os.stat(path)
        except OSError:
            self._memo.pop(slot, None)
            return None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        memo = self._memo.get(slot)
        if memo is not None and memo[0] == stamp:
            return memo[1]
        try:
            with open(path, encoding="utf-8") as f:
                shell = from_entry({FIELD: json.load(f)})
        except (OSError, ValueError):
            shell = None
        self._memo[slot] = (stamp, shell)
        return shell


# -- offering ----------------------------------------------------------------------------------


def shell_label(target: KernelTarget) -> str:
    """``flake``, ``flake: docs`` or ``shell.nix``: the environment part of a display name."""
    if target.kind == KIND_FLAKE:
        shell = target.shell or "default"
        return "flake" if shell == "default" else f"flake: {shell}"
    return target.kind


def offers_python(target: KernelTarget, shell: ShellKernels | None) -> bool:
    """Whether ``target``'s environment gets its Python kernel: before its first evaluation
    (nothing is known yet), with a virtualenv (its Python runs the kernel), with a ``python3``
    that has ipykernel, or when the shell carries no other kernel (then the Python kernel's
    fallback says what to add)."""
    return shell is None or bool(target.venv) or shell.ipykernel or not shell.kernels


def offered(
    target: KernelTarget, shell: ShellKernels | None, kernel_filter: KernelFilter
) -> list[KernelTarget]:
    """The kernels of ``target``'s environment: its Python kernel (``target`` itself, unchanged)
    where :func:`offers_python`, then one per kernel the shell carries, each with a stable name
    (the Python kernel's, plus the spec's name) and a display name like ``api (flake: R)``."""
    result = []
    if offers_python(target, shell) and kernel_filter.allows("python"):
        result.append(target)
    if shell is None:
        return result
    project = os.path.basename(target.project.rstrip(os.sep)) or target.project
    label = shell_label(target)
    for kernel in shell.kernels:
        if not kernel_filter.allows(kernel.language, kernel.name):
            continue
        sep = ", " if ":" in label else ": "
        result.append(
            KernelTarget(
                name=kernel_name(target.project, target.kind, target.shell, kernel.name),
                display_name=f"{project} ({label}{sep}{kernel.display_name})",
                kind=target.kind,
                project=target.project,
                shell=target.shell,
                kernel=kernel,
            )
        )
    return result


# -- starting ----------------------------------------------------------------------------------


def format_argv(argv: list[str], namespace: Mapping[str, str]) -> list[str]:
    """``{name}`` placeholders replaced as jupyter_client does: known ones substituted, others
    left as they are."""
    return [_PLACEHOLDER.sub(lambda m: namespace.get(m.group(1), m.group(0)), a) for a in argv]


def command(
    kernel: FoundKernel, env: dict[str, str], connection_file: str, through_shell: bool
) -> tuple[str, list[str]]:
    """``(executable, argv)`` that start ``kernel``; puts the spec's ``env`` over ``env`` (its
    ``${VAR}`` substituted from it, as jupyter_client does).

    A bare ``argv[0]`` (``R``) is looked for on the environment's PATH, the shell's first: the
    shell's wrapped program. When the kernel goes ``through_shell`` (bash running the
    shellHook, then ``exec "$@"``), it stays bare so that bash finds it after the hook, as
    ``nix develop -c R`` would."""
    from string import Template

    for key, value in (kernel.spec.get("env") or {}).items():
        env[key] = Template(value).safe_substitute(env)
    namespace = {
        "connection_file": connection_file,
        "resource_dir": kernel.resource_dir,
        "prefix": sys.prefix,
        "cwd": os.getcwd(),
    }
    argv = format_argv(kernel.spec["argv"], namespace)
    executable = which(argv[0], env.get("PATH", ""))
    if executable is None:
        from .errors import NixKernelError

        where = "" if os.sep in argv[0] else " on the PATH of the shell's environment"
        raise NixKernelError(
            f"The kernel {kernel.display_name!r} ({kernel.name}, found in {kernel.origin}) runs "
            f"{argv[0]}, which is not there{where}.",
            hint="Add the package that provides it to the shell, or restart after `jupyter "
            "nixkernel warm` if the shell changed.",
        )
    if through_shell:
        return executable, argv
    return executable, [executable, *argv[1:]]
