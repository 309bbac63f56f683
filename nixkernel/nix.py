"""Nix: talking to the ``nix`` command line.

Finds the ``nix`` executable, runs ``nix print-dev-env --json`` (registering a GC root with
``--profile``) and ``nix eval`` for a flake's devShell names, and turns Nix's failures into
:class:`NixError` messages that name the project and the fix.

Standard library only: the launcher imports this module on every kernel start, so
``subprocess`` is imported in the functions that run Nix or git (a cache hit runs neither).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from .describe import NixSource
from .environment import which

# The package's error types, defined in errors.py, stay importable from here as they always were.
from .errors import (  # noqa: F401
    NixEvaluationError,
    NixKernelError,
    NixNotFoundError,
    NixTimeoutError,
)

#: Where Nix lives when it is not on PATH (multi-user and single-user installs).
FALLBACK_LOCATIONS = ("/nix/var/nix/profiles/default/bin/nix", "~/.nix-profile/bin/nix")

_EVALUATING = re.compile(r"^evaluating file '(.+)'$")
_INSTANTIATED = re.compile(r"^instantiated '(.*)' -> '(/.+\.drv)'$")

#: Given to every ``nix`` call, as nix-direnv does: ``nix print-dev-env``, ``nix eval`` and flakes
#: then work on a stock Nix or NixOS that has not enabled these features in nix.conf.
EXPERIMENTAL_FEATURES = ("--extra-experimental-features", "nix-command flakes")


def nix_command(nix: str, *args: str) -> list[str]:
    """The argv of ``nix ARGS...``, with the experimental features nixkernel relies on enabled."""
    return [nix, *EXPERIMENTAL_FEATURES, *args]


#: ``copied source 'PATH' -> 'STORE'`` (a path coerced to a string: ``"${./dir}"``), all versions.
_COPIED_SOURCE = re.compile(r"^copied source '(.+)' -> '(/nix/store/[^']+)'$")
#: A local tree copied for a fetcher or ``builtins.path``: ``copying 'P'...`` (2.8, a path
#: flake), ``copying '"P"' to the store...`` (2.26), ``copying "P" to the store...`` (2.34).
_COPYING = re.compile(r"^copying (['\"].+['\"])(?: to the store)?\.\.\.$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class DevEnv(NamedTuple):
    """The result of ``nix print-dev-env --json``."""

    data: dict
    """The JSON document: ``variables`` and ``bashFunctions``."""
    evaluated_files: tuple[str, ...] = ()
    """Files the evaluation read, from ``-vv`` (``evaluating file '...'``)."""
    derivations: tuple[tuple[str, str], ...] = ()
    """``(name, .drv path)`` of each derivation the evaluation wrote, in order, from ``-vv``
    (``instantiated 'NAME' -> '/nix/store/...drv'``): the shell's own is the last of its name."""
    copied: tuple[tuple[str, str], ...] = ()
    """Local paths the evaluation copied into the store, each with its store path when Nix
    names it (``copied source``) or ``""`` (``copying '...'``)."""


class EvaluationLog(NamedTuple):
    """What an evaluation's verbose log says it read (see :func:`read_evaluation_log`)."""

    evaluated_files: tuple[str, ...]
    copied: tuple[tuple[str, str], ...]
    derivations: tuple[tuple[str, str], ...] = ()


def read_evaluation_log(lines: list[str]) -> EvaluationLog:
    """The files and trees an evaluation read, from Nix's verbose stderr.

    ``evaluating file 'P'`` names each Nix file parsed (Nix: talkative, shown by ``-vv``; Lix
    >= 2.90: debug, see :func:`evaluation_log_flags`). P is a store copy for a flake's files on
    Nix 2.8 / 2.26 and Lix, the repository's own path on 2.34. ``copied source`` and
    ``copying`` name local paths copied into the store (``"${./dir}"``, ``builtins.path``,
    ``getFlake``/``fetchTree`` of a local directory). Internal files (``<nix/...>``,
    ``«nix-internal»/...``) are left out: only absolute paths are kept.
    """
    evaluated: dict[str, None] = {}
    copied: dict[tuple[str, str], None] = {}
    derivations: list[tuple[str, str]] = []
    for raw in lines:
        line = _ANSI.sub("", raw).strip()
        match = _EVALUATING.match(line)
        if match:
            if match.group(1).startswith("/"):
                evaluated[match.group(1)] = None
            continue
        match = _INSTANTIATED.match(line)
        if match:
            derivations.append((match.group(1), match.group(2)))
            continue
        match = _COPIED_SOURCE.match(line)
        if match:
            copied[(match.group(1), match.group(2))] = None
            continue
        match = _COPYING.match(line)
        if match:
            path = match.group(1)
            while len(path) >= 2 and path[0] == path[-1] and path[0] in "'\"":
                path = path[1:-1]
            if path.startswith("/") and not path.startswith("/nix/store/"):
                copied[(path.rstrip("/") or "/", "")] = None
    return EvaluationLog(tuple(evaluated), tuple(copied), tuple(derivations))


def find_nix(configured: str | None = None) -> str:
    """The absolute path of the ``nix`` executable to use, or :class:`NixNotFoundError`."""
    if configured:
        path = which(os.path.expanduser(configured))
        if path:
            return os.path.abspath(path)
        raise NixNotFoundError(
            f"The configured Nix executable {configured!r} does not exist or is not executable.",
            hint="Fix c.NixKernelSpecManager.nix_executable (or --nix), or leave it empty to "
            "find nix on PATH.",
        )
    path = which("nix")
    if path:
        return os.path.abspath(path)
    for candidate in FALLBACK_LOCATIONS:
        candidate = os.path.expanduser(candidate)
        if os.access(candidate, os.X_OK):
            return candidate
    raise NixNotFoundError(
        "Nix was not found: no `nix` on PATH, nor at " + " or ".join(FALLBACK_LOCATIONS) + ".",
        hint="Install Nix (https://nixos.org/download), make sure the Jupyter server's PATH "
        "includes it, or set c.NixKernelSpecManager.nix_executable to its absolute path.",
    )


def nix_identity(nix: str) -> str:
    """A cheap fingerprint of the Nix installation, without running it.

    An upgrade replaces the binary (a new store path on NixOS, a new file elsewhere), which
    changes this value and so invalidates cached environments, as a change of Nix version must.
    """
    real = os.path.realpath(nix)
    try:
        st = os.stat(real)
    except OSError:
        return real
    return f"{real}|{st.st_size}|{st.st_mtime_ns}"


class NixRelease(NamedTuple):
    """What ``nix --version`` says: which implementation, and the Nix version it reports."""

    implementation: str
    """``"Nix"``, ``"Lix"`` or ``"Determinate Nix"`` (with its own version, e.g. ``3.6.2``)."""
    version: str
    """The Nix version (Lix: its own 2.9x numbering, forked from Nix 2.18)."""

    @property
    def numbers(self) -> tuple[int, ...]:
        """``version`` as numbers to compare (``2.90.0-lix`` -> ``(2, 90, 0)``)."""
        return version_numbers(self.version)

    @property
    def is_lix(self) -> bool:
        return self.implementation.startswith("Lix")


#: ``nix (Nix) 2.8.0``; ``nix (Determinate Nix 3.6.2) 2.29.0`` (DeterminateSystems/nix-src,
#: src/libmain/shared.cc: ``"(Determinate Nix %s) %s"``); ``nix (Lix, like Nix) 2.91.1``
#: (lix-project/lix, lix/libmain/shared.cc: ``"%1% (Lix, like Nix) %2%"``).
_VERSION_LINE = re.compile(r"^\S+ \((?P<impl>[^)]*)\) (?P<version>\d+\.\d+\S*)")
_VERSION = re.compile(r"\d+\.\d+(?:\.\d+)?[\w.+-]*")


def parse_release(text: str) -> NixRelease:
    """The implementation and Nix version in ``nix --version`` output."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    match = _VERSION_LINE.match(first)
    if match:
        implementation = match.group("impl")
        implementation = "Lix" if implementation.startswith("Lix") else implementation
        return NixRelease(implementation, match.group("version"))
    # Another layout: the last version-like word is the version (a prefix may carry its own).
    versions = _VERSION.findall(first)
    return NixRelease("Nix", versions[-1] if versions else first.strip())


def parse_version(text: str) -> str:
    """The Nix version in ``nix --version`` output (``nix (Nix) 2.8.0``, Lix's and Determinate
    Nix's variants: see :func:`parse_release`)."""
    return parse_release(text).version


def version_numbers(version: str) -> tuple[int, ...]:
    """The leading numbers of a version (``2.90.0-lix`` -> ``(2, 90, 0)``)."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(n) for n in match.group(0).split(".")) if match else ()


#: ``nix --version``'s output per installation (:func:`nix_identity`): an evaluation asks more
#: than once (the cache entry, nix-shell's rules, the log flags).
_VERSION_TEXTS: dict[str, str] = {}


def nix_version_text(nix: str) -> str:
    """``nix --version``'s line (``nix (Nix) 2.8.0``, ``nix (Lix, like Nix) 2.91.1``), run once
    per installation in this process (misses only: a cached environment is used without asking);
    ``""`` if it cannot run (its caller then fails clearly)."""
    identity = nix_identity(nix)
    if identity not in _VERSION_TEXTS:
        import subprocess

        try:
            out = subprocess.run(
                [nix, "--version"], capture_output=True, text=True, timeout=30, check=True
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
        _VERSION_TEXTS[identity] = out.strip()
    return _VERSION_TEXTS[identity]


def nix_release(nix: str) -> NixRelease:
    """What ``nix --version`` says (see :func:`nix_version_text`)."""
    text = nix_version_text(nix)
    if not text:
        raise NixNotFoundError(
            f"{nix} could not report its version (`{nix} --version` failed).",
            hint="Check that this Nix installation works: run `nix --version` in a terminal.",
        )
    return parse_release(text)


def nix_version(nix: str) -> str:
    return nix_release(nix).version


def is_lix(version_text: str) -> bool:
    return parse_release(version_text).is_lix


def evaluation_log_flags(version_text: str) -> list[str]:
    """The flags that make Nix name every file an evaluation reads.

    Nix logs ``evaluating file`` at talkative level (2.8 ``src/libexpr/eval.cc`` and 2.34
    ``printTalkative``): ``-vv`` shows it. Lix moved it to debug level (commit 076c19e0d,
    "change 'evaluating file' logs to debug", first in 2.90.0): there ``--debug``. And a flake
    attribute served by Nix's evaluation cache (setting ``eval-cache``: 2.8 uses it on a dirty
    tree too, 2.26 and 2.34 on a clean one) evaluates no file, so logs none: it is turned off
    for the miss that records them.
    """
    verbosity = ["--debug"] if is_lix(version_text) else ["-vv"]
    return [*verbosity, "--option", "eval-cache", "false"]


def git_toplevel(directory: str) -> str | None:
    """The root of the git work tree holding ``directory``, found without running git."""
    current = os.path.abspath(directory)
    while True:
        if os.path.exists(os.path.join(current, ".git")):
            return current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def untracked_flake_files(directory: str) -> list[str]:
    """Files of the flake in ``directory`` that git does not track, so Nix cannot see them."""
    import subprocess

    top = git_toplevel(directory)
    if top is None or which("git") is None:
        return []
    candidates = [
        n for n in ("flake.nix", "flake.lock") if os.path.exists(os.path.join(directory, n))
    ]
    if not candidates:
        return []
    try:
        out = subprocess.run(
            ["git", "-C", directory, "ls-files", "--", *candidates],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    tracked = {os.path.basename(line) for line in out.stdout.splitlines()}
    return [os.path.join(directory, n) for n in candidates if n not in tracked]


#: A path flake reference before Nix 2.19 (and in Lix, forked from 2.18): each component matches
#: ``fnRegex`` of flakeref.cc's parseFlakeRefWithFragment, ``[0-9a-zA-Z-._~!$&'"()*+,;=]+`` (no
#: space, ``:``, ``@``, ``%`` or non-ASCII), as Nix does not percent-decode the path.
_FLAKE_PATH_OK = re.compile(
    r"^/?[0-9A-Za-z\-._~!$&'\"()*+,;=]+(?:/[0-9A-Za-z\-._~!$&'\"()*+,;=]+)*/?$"
)
#: What no Nix takes in a path flake reference: ``?`` and ``#`` start its query and fragment
#: (parsePathFlakeRefWithFragment since 2.19: ``([^?#]*)...``), and ``^`` its outputs
#: (ExtendedOutputsSpec::parse, since 2.13, splits at the last ``^``).
_FLAKE_PATH_NEVER = "?#^"
#: Nix 2.19 parses a path flake reference as everything up to ``?`` or ``#`` (flakeref.cc).
ANY_FLAKE_PATH_SINCE = (2, 19)


def flake_path_problem(directory: str, release: NixRelease | None) -> str | None:
    """Which characters of ``directory`` the given Nix cannot name in a flake reference (None
    if it can). ``release`` may be None when the path is fine for every Nix."""
    never = sorted({c for c in directory if c in _FLAKE_PATH_NEVER})
    if never:
        return ", ".join(repr(c) for c in never)
    if _FLAKE_PATH_OK.match(directory):
        return None
    if release is not None and not release.is_lix and release.numbers >= ANY_FLAKE_PATH_SINCE:
        return None
    bad = sorted({c for c in directory if c != "/" and not _FLAKE_PATH_OK.match(c)})
    return ", ".join(repr(c) for c in bad)


def check_flake_path(directory: str, nix: str) -> None:
    """Raise if the running Nix cannot name a flake in ``directory``: ``?``, ``#`` or ``^``
    anywhere; before Nix 2.19 (and in Lix) also spaces, ``:``, ``@``, ``%``, non-ASCII...
    Asks ``nix --version`` only for a path that only some versions accept."""
    if _FLAKE_PATH_OK.match(directory):
        return
    release = None
    if not any(c in _FLAKE_PATH_NEVER for c in directory):
        release = nix_release(nix)
    bad = flake_path_problem(directory, release)
    if bad is None:
        return
    rename = (
        "rename the directory (and its parents) to use only letters, digits and -._~, or give "
        "the project a shell.nix (e.g. with flake-compat), which works at any path."
    )
    if release is not None:
        raise NixEvaluationError(
            f"{release.implementation} {release.version} cannot use the flake in {directory!r}: "
            f"its path contains {bad}, which flake references before Nix 2.19 cannot express "
            "(a symlink does not help).",
            hint=f"Upgrade to Nix 2.19 or newer (it takes any character but ? # ^), or {rename}",
        )
    raise NixEvaluationError(
        f"Nix cannot use the flake in {directory!r}: its path contains {bad}, which no Nix "
        "flake reference can express (a symlink does not help).",
        hint=rename[0].upper() + rename[1:],
    )


def _run_streaming(
    argv: list[str], env: dict[str, str] | None, on_line: Callable[[str], None] | None
) -> tuple[int, str, list[str]]:
    """Run ``argv``; return (exit status, stdout, stderr lines), passing stderr to ``on_line``."""
    import subprocess

    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
        errors="replace",
    )
    assert proc.stdout is not None and proc.stderr is not None
    # stdout is one JSON document; read it on a thread so neither pipe can fill up and block Nix.
    import threading

    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    lines: list[str] = []
    for line in proc.stderr:
        line = line.rstrip("\n")
        lines.append(line)
        if on_line is not None:
            on_line(line)
    reader.join()
    return proc.wait(), "".join(chunks), lines


def print_dev_env(
    nix: str,
    source: NixSource,
    profile: str | None = None,
    on_line: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
) -> DevEnv:
    """Evaluate and build ``source``'s dev shell with ``nix print-dev-env --json``.

    ``profile`` makes Nix register the environment as a GC root there. Nix's own progress
    (stderr) goes to ``on_line``, minus the ``-vv`` chatter we use to learn which files the
    evaluation read. Raises :class:`NixEvaluationError` with an actionable message.
    """
    if source.is_flake and source.local_dir:
        check_flake_path(source.local_dir, nix)
        untracked = untracked_flake_files(source.local_dir)
        if untracked:
            raise NixEvaluationError(
                f"{' and '.join(os.path.basename(u) for u in untracked)} "
                f"{'are' if len(untracked) > 1 else 'is'} not tracked by git, so Nix cannot see "
                f"{'them' if len(untracked) > 1 else 'it'} (the flake "
                f"{source.local_dir} is in a git repository: Nix reads only tracked files).",
                hint="Run `git add --intent-to-add "
                + " ".join(os.path.basename(u) for u in untracked)
                + f"` in {source.local_dir} (no commit needed).",
            )
    argv = nix_command(nix, "print-dev-env", "--json")
    if profile:
        argv += ["--profile", profile]
    log_flags = evaluation_log_flags(nix_version_text(nix))
    argv += log_flags
    argv += nix_shell_semantics(nix, source)
    argv += [*source.installable_args(), *source.args]
    env = _evaluation_environment(source, env)
    debug = "--debug" in log_flags

    status, stdout, lines = _run_streaming(argv, env, _without_chatter(on_line, debug))
    if status != 0:
        raise explain_failure(source, lines, status)
    try:
        data = json.loads(stdout)
        if not isinstance(data.get("variables"), dict):
            raise ValueError("no 'variables' object")
    except (ValueError, AttributeError) as exc:
        raise NixEvaluationError(
            f"`{' '.join(argv)}` printed output nixkernel cannot read ({exc}).",
            hint="Check that this Nix supports `nix print-dev-env --json` (Nix 2.4 or newer).",
        ) from exc
    log = read_evaluation_log(lines)
    return DevEnv(
        data=data,
        evaluated_files=log.evaluated_files,
        derivations=log.derivations,
        copied=log.copied,
    )


def nix_shell_semantics(nix: str, source: NixSource) -> list[str]:
    """The arguments that make ``nix print-dev-env --file`` evaluate a Nix file as nix-shell
    of this Nix does (see :mod:`nixkernel.nixshell`); none for a flake."""
    from . import nixshell  # an evaluation only: not on the warm path

    return nixshell.in_nix_shell_args(nix, source)


def _evaluation_environment(source: NixSource, env: dict[str, str] | None) -> dict[str, str] | None:
    from . import nixshell

    return nixshell.evaluation_environment(source, env)


def flake_shell_names(
    nix: str,
    directory: str,
    system: str,
    env: dict[str, str] | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 600.0,
    started: Callable[[Any], None] | None = None,
) -> list[str]:
    """The devShell names a flake defines for ``system`` (evaluates the flake's outputs); none
    when it has no ``devShells.<system>``."""
    return flake_shell_names_logged(nix, directory, system, env, extra_args, timeout, started)[0]


def flake_shell_names_logged(
    nix: str,
    directory: str,
    system: str,
    env: dict[str, str] | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 600.0,
    started: Callable[[Any], None] | None = None,
) -> tuple[list[str], EvaluationLog]:
    """:func:`flake_shell_names`, and what the evaluation read (to know when to ask again).

    Nix runs in a process group of its own, killed whole (SIGKILL: a Nix blocked in a download
    ignores SIGTERM) when ``timeout`` seconds pass, which raises :class:`NixTimeoutError`.
    ``started`` gets the ``Popen`` as soon as Nix runs, so a caller can kill its group sooner."""
    import subprocess

    check_flake_path(directory, nix)
    argv = nix_command(
        nix, "eval", "--json", f"{directory}#devShells.{system}",
        "--apply", "builtins.attrNames", *extra_args,
        *evaluation_log_flags(nix_version_text(nix)),
    )  # fmt: skip
    try:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except OSError as exc:
        raise NixEvaluationError(f"Could not run {argv[0]}: {exc}") from exc
    try:
        if started is not None:
            started(proc)
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_process_group(proc)
        raise NixTimeoutError(
            f"Listing the devShells of the flake {directory} took longer than {timeout:g} s, "
            "so nixkernel stopped it; until it succeeds, the flake offers its default shell.",
            hint=f"Check that `{' '.join(argv)}` finishes in a terminal, or raise "
            "c.NixKernelSpecManager.flake_shells_timeout. nixkernel tries again when the "
            "flake's files change or the server restarts.",
        ) from None
    except BaseException:
        kill_process_group(proc)
        raise
    log = read_evaluation_log(stderr.splitlines())
    if proc.returncode != 0:
        if "does not provide attribute" in stderr:
            # No devShells for this system (a legacy devShell.<system>, or only packages): the
            # flake's one kernel is its default, which `nix develop` finds on its own.
            return [], log
        raise explain_failure(
            NixSource("flake", directory, f"devShells.{system}"),
            stderr.splitlines(),
            proc.returncode,
        )
    names = json.loads(stdout)
    return ([str(n) for n in names] if isinstance(names, list) else []), log


def _ask(argv: list[str], env: dict[str, str] | None, timeout: float) -> tuple[int, str]:
    """Run a Nix query whose failure only means "Nix cannot say": ``(status, stdout)``, with
    status -1 if it could not run or timed out."""
    import subprocess

    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
            timeout=timeout,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return -1, ""
    return out.returncode, out.stdout


def _ask_json(argv: list[str], env: dict[str, str] | None, timeout: float) -> object:
    """The JSON a Nix query prints, or None if it fails or prints none."""
    status, stdout = _ask(argv, env, timeout)
    try:
        return json.loads(stdout) if status == 0 else None
    except ValueError:
        return None


def search_path(nix: str, env: dict[str, str] | None = None) -> list[str]:
    """The paths of Nix's search path for ``<name>`` lookups, as this Nix puts it together from
    ``NIX_PATH``, nix.conf's ``nix-path`` and its default channel links (``builtins.nixPath``);
    empty if Nix cannot say."""
    argv = [
        nix, "eval", "--extra-experimental-features", "nix-command", "--impure", "--json",
        "--expr", "map (e: e.path) builtins.nixPath",
    ]  # fmt: skip
    paths = _ask_json(argv, env, timeout=60)
    return [p for p in paths if isinstance(p, str)] if isinstance(paths, list) else []


def flake_input_paths(nix: str, ref: str, env: dict[str, str] | None = None) -> list[str]:
    """The store paths of a flake's inputs, fetched if need be (``nix flake archive --json``, as
    nix-direnv does; the flake's own source is left out). Empty if Nix cannot say."""
    argv = [
        nix, "flake", "archive", "--json", "--no-write-lock-file",
        "--extra-experimental-features", "nix-command flakes", ref,
    ]  # fmt: skip
    tree = _ask_json(argv, env, timeout=600)
    found: dict[str, None] = {}

    def walk(node: object) -> None:
        inputs = node.get("inputs") if isinstance(node, dict) else None
        for child in inputs.values() if isinstance(inputs, dict) else ():
            if isinstance(child, dict) and isinstance(child.get("path"), str):
                found[child["path"]] = None
            walk(child)

    walk(tree)
    return list(found)


def add_gc_roots(nix: str, paths: list[str], link: str, env: dict[str, str] | None = None) -> bool:
    """Make ``link``, ``link-1``, ... GC roots of ``paths`` (``nix build --out-link``: indirect
    roots, which an ordinary user can make through the daemon). Whether it worked."""
    argv = [
        nix, "build", "--extra-experimental-features", "nix-command", "--out-link", link, *paths,
    ]  # fmt: skip
    return _ask(argv, env, timeout=600)[0] == 0


def kill_process_group(proc: Any) -> None:
    """Kill ``proc`` (started with ``start_new_session``) and everything it started, then reap
    it. Killing only Nix could leave a child holding its pipes open."""
    import signal

    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.communicate()


def _without_chatter(
    on_line: Callable[[str], None] | None, notices_only: bool = False
) -> Callable[[str], None]:
    """``on_line`` minus the ``-vv`` chatter, all of it: ``using builder args '-c ...'`` spans
    the builder's whole script when it has several lines, up to the closing quote. With
    ``notices_only`` (``--debug`` output, Lix), only what Nix shows at its default verbosity."""
    continuing = False

    def relay(line: str) -> None:
        nonlocal continuing
        if continuing:
            continuing = not line.rstrip().endswith("'")
        elif _is_chatter(line):
            stripped = line.strip()
            continuing = stripped.startswith("using builder args '") and not stripped.endswith("'")
        elif on_line is not None and (not notices_only or _is_notice(line)):
            on_line(line)

    return relay


def _is_chatter(line: str) -> bool:
    stripped = line.strip()
    return stripped.startswith(
        ("evaluating file ", "instantiated ", "copied source ", "performing daemon")
    ) or (stripped.startswith(("executing builder", "using builder args", "added input ")))


#: What Nix shows at its default verbosity, told apart from ``--debug`` output (Lix): progress
#: lines relayed to the user. Debug lines (``acquiring write lock``, ``checking access``...) are
#: still kept for :func:`explain_failure`.
_NOTICE_PREFIXES = (
    "error", "warning", "trace:", "building ", "copying path ", "these ", "this ",
    "fetching ", "unpacking ", "downloading ", "evaluation warning", " ", "\t", "…",
)  # fmt: skip


def _is_notice(line: str) -> bool:
    return _ANSI.sub("", line).startswith(_NOTICE_PREFIXES)


def explain_failure(source: NixSource, stderr_lines: list[str], status: int) -> NixEvaluationError:
    """Turn a failed Nix run into an error that leads with its cause (Nix's real message and
    where it points), gives that cause's fix, and keeps Nix's text: see
    :mod:`nixkernel.nixerrors`."""
    from . import nixerrors  # a failure only

    errors = [ln for ln in stderr_lines if not _is_chatter(ln)]
    explained = nixerrors.explain(source, errors, status)
    error = NixEvaluationError(explained.summary, hint=explained.hint, details=explained.details)
    error.cause = explained.cause
    return error


def log(message: str) -> None:
    """A line in the kernel's log (the Jupyter server's terminal), prefixed so it can be found."""
    for line in message.splitlines() or [""]:
        print(f"[nixkernel] {line}", file=sys.stderr, flush=True)
