"""Nix: talking to the ``nix`` command line.

Finds the ``nix`` executable, runs ``nix print-dev-env --json`` (registering a GC root with
``--profile``) and ``nix eval`` for a flake's devShell names, and turns Nix's failures into
:class:`NixError` messages that name the project and the fix.

Standard library only: the launcher imports this module on every kernel start, so
``subprocess`` is imported in the functions that run Nix or git (a cache hit runs neither).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from typing import NamedTuple

from .describe import NixSource
from .environment import which

#: Where Nix lives when it is not on PATH (multi-user and single-user installs).
FALLBACK_LOCATIONS = ("/nix/var/nix/profiles/default/bin/nix", "~/.nix-profile/bin/nix")

_EVALUATING = re.compile(r"^evaluating file '(.+)'$")


class NixKernelError(Exception):
    """An error a user can act on: what failed, where, and how to fix it."""

    def __init__(self, message: str, hint: str = "", details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text += f"\n\nHow to fix it: {self.hint}"
        if self.details:
            text += f"\n\n{self.details}"
        return text


class NixNotFoundError(NixKernelError):
    pass


class NixEvaluationError(NixKernelError):
    pass


class DevEnv(NamedTuple):
    """The result of ``nix print-dev-env --json``."""

    data: dict
    """The JSON document: ``variables`` and ``bashFunctions``."""
    evaluated_files: tuple[str, ...] = ()
    """Files the evaluation read, from ``-vv`` (``evaluating file '...'``)."""


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


def parse_version(text: str) -> str:
    """The version number in ``nix --version`` output (``nix (Nix) 2.8.0``, Lix's variant...)."""
    match = re.search(r"(\d+\.\d+(?:\.\d+)?(?:[\w.+-]*)?)", text)
    return match.group(1) if match else text.strip()


def nix_version(nix: str) -> str:
    import subprocess

    try:
        out = subprocess.run(
            [nix, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise NixNotFoundError(
            f"{nix} could not report its version: {exc}",
            hint="Check that this Nix installation works: run `nix --version` in a terminal.",
        ) from exc
    return parse_version(out)


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


#: Characters a flake reference's path may hold (RFC 3986 pchar): Nix parses flake references as
#: URLs and does not percent-decode their paths, so other characters cannot be expressed.
_FLAKE_PATH_OK = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@/]+$")


def check_flake_path(directory: str) -> None:
    """Raise if Nix cannot name a flake in ``directory`` (spaces, non-ASCII, ``#``, ``?``...)."""
    if _FLAKE_PATH_OK.match(directory):
        return
    bad = sorted({c for c in directory if not _FLAKE_PATH_OK.match(c)})
    raise NixEvaluationError(
        f"Nix cannot use the flake in {directory!r}: its path contains "
        + ", ".join(repr(c) for c in bad)
        + ", which Nix's flake references cannot express (a symlink does not help).",
        hint="Rename the directory (and its parents) to use only letters, digits and -._~, or give "
        "the project a shell.nix (e.g. with flake-compat), which works at any path.",
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
        check_flake_path(source.local_dir)
        untracked = untracked_flake_files(source.local_dir)
        if untracked:
            raise NixEvaluationError(
                f"Nix cannot see {', '.join(untracked)}: the flake is in a git repository, and "
                "Nix only reads files that git tracks.",
                hint="Run `git add --intent-to-add "
                + " ".join(os.path.basename(u) for u in untracked)
                + f"` in {source.local_dir} (no commit needed).",
            )
    argv = [nix, "print-dev-env", "--json"]
    if profile:
        argv += ["--profile", profile]
    if not source.is_flake:
        # Like nix-shell and nix-direnv: shell.nix functions may ask whether they run in a shell.
        argv += ["-vv", "--arg", "inNixShell", "true"]
    argv += source.installable_args()

    status, stdout, lines = _run_streaming(argv, env, _without_chatter(on_line))
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
    evaluated = []
    for line in lines:
        match = _EVALUATING.match(line.strip())
        if match:
            evaluated.append(match.group(1))
    return DevEnv(data=data, evaluated_files=tuple(evaluated))


def flake_shell_names(
    nix: str, directory: str, system: str, env: dict[str, str] | None = None
) -> list[str]:
    """The devShell names a flake defines for ``system`` (evaluates the flake's outputs)."""
    import subprocess

    check_flake_path(directory)
    argv = [
        nix, "eval", "--json", f"{directory}#devShells.{system}",
        "--apply", "builtins.attrNames",
    ]  # fmt: skip
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=600
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise NixEvaluationError(f"Could not run {argv[0]}: {exc}") from exc
    if out.returncode != 0:
        raise explain_failure(
            NixSource("flake", directory, f"devShells.{system}"),
            out.stderr.splitlines(),
            out.returncode,
        )
    names = json.loads(out.stdout)
    return [str(n) for n in names] if isinstance(names, list) else []


def _without_chatter(on_line: Callable[[str], None] | None) -> Callable[[str], None]:
    """``on_line`` minus the ``-vv`` chatter, all of it: ``using builder args '-c ...'`` spans
    the builder's whole script when it has several lines, up to the closing quote."""
    continuing = False

    def relay(line: str) -> None:
        nonlocal continuing
        if continuing:
            continuing = not line.rstrip().endswith("'")
        elif _is_chatter(line):
            stripped = line.strip()
            continuing = stripped.startswith("using builder args '") and not stripped.endswith("'")
        elif on_line is not None:
            on_line(line)

    return relay


def _is_chatter(line: str) -> bool:
    stripped = line.strip()
    return stripped.startswith(
        ("evaluating file ", "instantiated ", "copied source ", "performing daemon")
    ) or (stripped.startswith(("executing builder", "using builder args", "added input ")))


def explain_failure(source: NixSource, stderr_lines: list[str], status: int) -> NixEvaluationError:
    """Turn a failed Nix run into a message that names the project and the fix."""
    errors = [ln for ln in stderr_lines if not _is_chatter(ln)]
    text = "\n".join(errors).strip()
    # Nix's message starts at the first "error:" line; keep it, and a bounded amount after it.
    start = next((i for i, ln in enumerate(errors) if ln.lstrip().startswith("error")), 0)
    excerpt = "\n".join(errors[start : start + 40]).strip() or f"(nix exited with status {status})"
    what = source.describe()
    if "was not found in the Nix search path" in text:
        missing = re.search(r"file '([^']+)' was not found", text)
        name = missing.group(1) if missing else "nixpkgs"
        return NixEvaluationError(
            f"{what} imports <{name}>, but the Jupyter server's NIX_PATH has no entry for it "
            f"(NIX_PATH={os.environ.get('NIX_PATH', '')!r}).",
            hint=f"Add a channel (`nix-channel --add https://nixos.org/channels/nixos-unstable "
            f"{name} && nix-channel --update`), or start Jupyter with "
            f"NIX_PATH={name}=/path/to/{name}, "
            f"or pin it in the file (`import (fetchTarball ...)`).",
            details=f"Nix said:\n{excerpt}",
        )
    if "experimental Nix feature" in text:
        return NixEvaluationError(
            f"Nix refused to evaluate {what}: flakes / nix-command are not enabled.",
            hint="Add `experimental-features = nix-command flakes` to /etc/nix/nix.conf or "
            "~/.config/nix/nix.conf.",
            details=f"Nix said:\n{excerpt}",
        )
    if (
        source.is_flake
        and "getting status of" in text
        and "No such file or directory" in text
        and source.local_dir
    ):
        top = git_toplevel(source.local_dir)
        if top:
            return NixEvaluationError(
                f"Nix cannot find a file of the flake {source.local_dir}: in a git repository Nix "
                "only sees files git tracks.",
                hint=f"`git add --intent-to-add` the new files in {top} (no commit needed).",
                details=f"Nix said:\n{excerpt}",
            )
    if source.is_flake and "does not provide attribute" in text:
        return NixEvaluationError(
            f"The flake {source.location} has no {source.attr}.",
            hint="Define it in flake.nix (devShells.<system>.<name> = pkgs.mkShell { ... };), or "
            "refresh the kernel list so it shows the shells the flake has.",
            details=f"Nix said:\n{excerpt}",
        )
    return NixEvaluationError(
        f"Nix could not evaluate {what} (exit status {status}).",
        hint="Fix the error below in the Nix file, then restart the kernel. Try it in a terminal "
        f"with `nix develop {' '.join(source.installable_args())}`.",
        details=f"Nix said:\n{excerpt}",
    )


def log(message: str) -> None:
    """A line in the kernel's log (the Jupyter server's terminal), prefixed so it can be found."""
    for line in message.splitlines() or [""]:
        print(f"[nixkernel] {line}", file=sys.stderr, flush=True)
