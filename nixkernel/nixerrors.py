"""Nix's failures, read as a person would: the real message, its place, its cause and its fix.

Nix 2.8 prints ``error: boom``. Nix >= 2.13 prints ``error:``, then a short trace of
``… while ...`` frames (each with an ``at FILE:LINE:COL:`` and a code excerpt), and the message
last, indented: ``error: boom``, sometimes followed by hints. A build failure is two errors: the
builder's (with the last lines of its log), then "dependencies ... failed" for the shell. So
the summary is the final ``error:`` of the first error that is not a consequence, with the
innermost place in the project's files; the whole text stays in the details.

Each cause gets its own fix: a syntax or evaluation error in a file, ``<nixpkgs>`` missing from
``NIX_PATH``, a flake file git does not track, the network (a download, a flake input not in the
store offline), the daemon (socket permission, not running, user not allowed), a failed build,
an experimental feature, a flake without the asked-for output. The texts say nothing about
kernels: the launcher adds "then restart the kernel" where there is one.

Only on a failure: nothing here runs on a kernel start that works.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

from .describe import NixSource

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LOCATION = re.compile(r"^\s*at (?P<file>.+?):(?P<line>\d+):(?P<col>\d+):?\s*$")
_STORE_SOURCE = re.compile(r"^/nix/store/[0-9a-z]{32}-source(?:/(?P<rel>.*))?$")
_STORE_PATH_IN_TEXT = re.compile(r"/nix/store/[0-9a-z]{32}-source(?:/[^'\"\s:]*)?")
#: The second error of a failed build: the shell could not be built because a package was not.
_CONSEQUENCE = re.compile(
    r"dependencies of derivation .* failed to build|Reason: \d+ dependenc(?:y|ies) failed"
)
_DAEMON = re.compile(
    r"cannot connect to socket at|daemon-socket/socket|cannot open connection to remote store"
    r"|not allowed to connect to the Nix daemon"
)
_NETWORK = re.compile(
    r"unable to download|[Cc]ould(?: not|n't) resolve host|unable to fetch|Failed to connect"
    r"|Connection timed out|Timeout was reached|SSL connect error|HTTP error \d+"
)
_BUILD = re.compile(
    r"builder for '(?P<a>/nix/store/[^']+\.drv)' failed|Cannot build '(?P<b>/nix/store/[^']+\.drv)'"
)
_UNTRACKED_NEW = re.compile(
    r"Path '(?P<rel>[^']+)' in the repository \"(?P<top>[^\"]+)\" is not tracked"
)
_UNTRACKED_OLD = re.compile(
    r"(?:getting status of|path) '(?P<path>/nix/store/[0-9a-z]{32}-source/[^']+)'"
    r"(?:: No such file or directory| does not exist)"
)
_FEATURE = re.compile(r"experimental Nix feature '(?P<name>[^']+)' is disabled")
_MAX_DETAILS = 60
_MAX_SUMMARY = 300


class NixMessage(NamedTuple):
    """The parts of Nix's error output."""

    text: str
    """The final message, one line, without ``error:`` (``boom``)."""
    message: list[str]
    """The message's lines: that line and what follows it (a place, code, hints, a log)."""
    trace: list[str]
    """The ``… while ...`` frames before it, outermost first."""
    block: list[str]
    """The whole error (from its ``error:`` line), for the details."""
    others: list[str]
    """Nix's other errors (e.g. the shell's failed build after its package's)."""


class Explained(NamedTuple):
    """A failure, for a person: the cause in one line, what to do, and Nix's own text."""

    summary: str
    hint: str
    details: str
    cause: str
    """``syntax``, ``evaluation``, ``nix-path``, ``untracked``, ``network``, ``daemon``,
    ``build``, ``feature``, ``attribute`` or ``unknown``."""


def error_blocks(lines: list[str]) -> list[list[str]]:
    """Nix's errors: each starts with a line ``error:...`` and goes on with indented or blank
    lines (warnings, progress and ``(use '--show-trace' ...)`` lines end one)."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for raw in lines:
        line = _ANSI.sub("", raw.rstrip("\n"))
        if line.startswith("error:"):
            current = [line]
            blocks.append(current)
        elif current is not None and (not line.strip() or line[:1].isspace()):
            current.append(line)
        else:
            current = None
    for block in blocks:
        while block and not block[-1].strip():
            block.pop()
    return blocks


def parse(lines: list[str]) -> NixMessage | None:
    """The real message in Nix's stderr ``lines``, or None when Nix printed no error."""
    blocks = error_blocks(lines)
    if not blocks:
        return None
    primary = next((b for b in blocks if not _CONSEQUENCE.search("\n".join(b))), blocks[0])
    last = max(i for i, line in enumerate(primary) if line.lstrip().startswith("error:"))
    text = primary[last].strip()[len("error:") :].strip()
    message = primary[last:]
    if not text:  # "error:" alone, the message on the next lines
        rest = [m.strip() for m in message[1:] if m.strip()]
        text = rest[0] if rest else ""
    trace = primary[1:last] if last else []
    others = [line for b in blocks if b is not primary for line in b]
    return NixMessage(text, message, trace, primary, others)


def innermost_place(msg: NixMessage) -> tuple[str, int] | None:
    """The file and line Nix points at: in the message itself (a syntax error), else the
    innermost frame of the trace that is a file (not Nix's own ``<nix/...>`` code)."""
    for line in msg.message:
        found = _place(line)
        if found:
            return found
    for line in reversed(msg.trace):
        found = _place(line)
        if found:
            return found
    return None


def _place(line: str) -> tuple[str, int] | None:
    match = _LOCATION.match(line)
    if not match or not match.group("file").startswith("/"):
        return None  # «string», «nix-internal», <nix/derivation-internal.nix>
    return match.group("file"), int(match.group("line"))


def real_path(path: str, source: NixSource) -> str:
    """``path`` in the project: a flake's store copy (``/nix/store/...-source/sub/x.nix``, Nix
    < 2.3x) maps back to its git work tree (or its directory, outside git)."""
    match = _STORE_SOURCE.match(path)
    if match and source.is_flake and source.local_dir:
        from .nix import git_toplevel

        base = git_toplevel(source.local_dir) or source.local_dir
        return os.path.join(base, match.group("rel") or "")
    return path


def shown_path(path: str, source: NixSource) -> str:
    """``path`` as the summary shows it: relative to the project when inside it."""
    path = real_path(path, source)
    directory = source.local_dir
    if directory and (path == directory or path.startswith(directory.rstrip("/") + "/")):
        return os.path.relpath(path, directory)
    return path


def main_file(source: NixSource) -> str:
    """The file a failure without a place is about: flake.nix, or the Nix file."""
    if source.is_flake:
        return "flake.nix" if source.local_dir else source.location
    return shown_path(source.location, source)


def reproduce(source: NixSource) -> str:
    """The command that shows the same failure in a terminal (quoted: it works when pasted)."""
    import shlex

    if source.is_flake:
        words = ["nix", "--extra-experimental-features", "nix-command flakes", "develop"]
        words += [*source.installable_args(), *source.args]
    else:
        words = ["nix-shell", source.location, *(["-A", source.attr] if source.attr else [])]
        words += list(source.args)
    return " ".join(shlex.quote(w) for w in [*words, "--show-trace"])


def explain(source: NixSource, lines: list[str], status: int) -> Explained:
    """Classify a failed Nix run on ``source`` by its cause, with that cause's fix."""
    msg = parse(lines)
    if msg is None:
        tail = "\n".join(ln for ln in lines[-20:] if ln.strip())
        return Explained(
            f"Nix failed on {source.describe()} (exit status {status}) without an error message.",
            f"Run it in a terminal to see more: `{reproduce(source)}`.",
            f"Nix said:\n{tail}" if tail else "",
            "unknown",
        )
    text = "\n".join(msg.block + msg.others)
    details = _details(msg)
    for classify in (_daemon, _feature, _network, _nix_path, _untracked, _attribute, _build):
        found = classify(source, msg, text, details)
        if found is not None:
            return found
    return _evaluation(source, msg, details)


def _details(msg: NixMessage) -> str:
    lines = [*msg.block, *(["", *msg.others] if msg.others else [])]
    if len(lines) > _MAX_DETAILS:
        lines = [*lines[: _MAX_DETAILS - 1], f"... ({len(lines) - _MAX_DETAILS + 1} more lines)"]
    return "Nix said:\n" + "\n".join(lines)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_SUMMARY else text[: _MAX_SUMMARY - 3] + "..."


def _daemon(source: NixSource, msg: NixMessage, text: str, details: str) -> Explained | None:
    if not _DAEMON.search(text):
        return None
    if "Permission denied" in text:
        hint = (
            "This user may not use the Nix daemon's socket. Add it to the group that owns the "
            "socket (`nix-users` with Debian's nix and Nix's installer: `sudo usermod -aG "
            "nix-users $USER`, then log in again and restart Jupyter), and to `allowed-users` "
            "in /etc/nix/nix.conf if that is set (NixOS: `nix.settings.allowed-users`)."
        )
    elif "reset by peer" in text or "not allowed to connect" in text:
        hint = (
            "The Nix daemon refused this user. Add it to `allowed-users` (or `trusted-users`) "
            "in /etc/nix/nix.conf (NixOS: `nix.settings.allowed-users`), then restart the "
            "daemon (`sudo systemctl restart nix-daemon`)."
        )
    else:
        hint = (
            "The Nix daemon is not running (or not at that socket). Start it: `sudo systemctl "
            "start nix-daemon` (without systemd: run `nix-daemon` as root), then try again."
        )
    summary = f"Nix cannot use its daemon: {_short(msg.text)}"
    return Explained(summary, hint, details, "daemon")


def _feature(source: NixSource, msg: NixMessage, text: str, details: str) -> Explained | None:
    match = _FEATURE.search(text)
    if not match:
        return None
    name = match.group("name")
    return Explained(
        f"{main_file(source)} needs Nix's experimental feature '{name}', which is not enabled.",
        f"Enable it in Nix's settings (`extra-experimental-features = {name}` in "
        "/etc/nix/nix.conf or ~/.config/nix/nix.conf; NixOS: "
        "`nix.settings.experimental-features`), or for this project only: add "
        f"`--extra-experimental-features {name}` to its Nix flags (`use flake . "
        f"--extra-experimental-features {name}` in its .envrc, or "
        "c.NixKernelSpecManager.nix_args).",
        details,
        "feature",
    )


def _network(source: NixSource, msg: NixMessage, text: str, details: str) -> Explained | None:
    if not _NETWORK.search(text):
        return None
    fetching = re.search(r"while fetching the input '([^']+)'", text) or re.search(
        r"while updating the flake input '([^']+)'", text
    )
    what = f" for the flake input '{fetching.group(1)}'" if fetching else ""
    hint = (
        "Nix needs the network to fetch it: connect this machine (check proxies and the "
        "`substituters` setting), then try again. To work offline later, fetch a flake's inputs "
        "once while online (`nix flake archive` in the project)."
    )
    if "while updating the lock file" in text:
        hint += " flake.lock has no entry for this input: run `nix flake lock` there while online."
    summary = f"Nix needs the network{what}: {_short(msg.text)}"
    return Explained(summary, hint, details, "network")


def _nix_path(source: NixSource, msg: NixMessage, text: str, details: str) -> Explained | None:
    if "was not found in the Nix search path" not in text:
        return None
    missing = re.search(r"file '([^']+)' was not found", text)
    name = missing.group(1) if missing else "nixpkgs"
    return Explained(
        f"{main_file(source)} imports <{name}>, but the Jupyter server's NIX_PATH has no entry "
        f"for it (NIX_PATH={os.environ.get('NIX_PATH', '')!r}).",
        f"Add a channel (`nix-channel --add https://nixos.org/channels/nixos-unstable {name} && "
        f"nix-channel --update`), or start Jupyter with NIX_PATH={name}=/path/to/{name}, or pin "
        "it in the file (`import (fetchTarball ...)`).",
        details,
        "nix-path",
    )


def _untracked(source: NixSource, msg: NixMessage, text: str, details: str) -> Explained | None:
    if not (source.is_flake and source.local_dir):
        return None
    from .nix import git_toplevel

    top = git_toplevel(source.local_dir)
    rel = None
    new = _UNTRACKED_NEW.search(text)
    if new:
        top, rel = new.group("top"), new.group("rel")
    else:
        old = _UNTRACKED_OLD.search(text)
        if old and top:
            candidate = os.path.relpath(real_path(old.group("path"), source), top)
            if os.path.lexists(os.path.join(top, candidate)):
                rel = candidate  # there in the work tree, missing from Nix's copy: untracked
    if rel is None or top is None:
        return None
    import shlex

    command = f"git -C {shlex.quote(top)} add --intent-to-add {shlex.quote(rel)}"
    return Explained(
        f"{shown_path(os.path.join(top, rel), source)} is not tracked by git, so Nix cannot see "
        f"it (a flake in a git repository sees only tracked files).",
        f"Run `{command}` (no commit needed).",
        details,
        "untracked",
    )


def _attribute(source: NixSource, msg: NixMessage, text: str, details: str) -> Explained | None:
    if not (source.is_flake and "does not provide attribute" in text):
        return None
    wanted = source.attr or "default dev shell"
    return Explained(
        f"The flake {source.location} has no {wanted}.",
        "Define it in flake.nix (devShells.<system>.<name> = pkgs.mkShell { ... };), or "
        "refresh the kernel list so it shows the shells the flake has.",
        details,
        "attribute",
    )


def _build(source: NixSource, msg: NixMessage, text: str, details: str) -> Explained | None:
    match = _BUILD.search("\n".join(msg.block))
    if not match:
        return None
    drv = match.group("a") or match.group("b")
    name = re.sub(r"^[0-9a-z]{32}-", "", os.path.basename(drv)).removesuffix(".drv")
    code = re.search(r"exit code (\d+)", "\n".join(msg.block))
    log = [ln.strip()[1:].strip() for ln in msg.block if ln.strip().startswith(">")]
    summary = f"Building {name} failed" + (f" (exit code {code.group(1)})" if code else "")
    if log and log[-1]:
        summary += f": {_short(log[-1])}"
    return Explained(
        summary,
        f"A package of this environment failed to build; its log ends with the lines below "
        f"(the whole log: `nix log {drv}`). Fix that package's build, or use a version of it "
        "that builds.",
        details,
        "build",
    )


def _evaluation(source: NixSource, msg: NixMessage, details: str) -> Explained:
    place = innermost_place(msg)
    syntax = msg.text.startswith("syntax error")
    # Store copies of the flake's files, named as the user knows them.
    text = _STORE_PATH_IN_TEXT.sub(lambda m: shown_path(m.group(0), source), msg.text)
    if place is not None:
        text = text.rstrip(".")
        summary = f"{shown_path(place[0], source)}: {_short(text)} at line {place[1]}"
    else:
        summary = f"{main_file(source)}: {_short(text)}"
    what = "the syntax error" if syntax else "the error"
    return Explained(
        summary,
        f"Fix {what} in the Nix file (Nix's message and trace are below). To see every step "
        f"of Nix's evaluation, run `{reproduce(source)}`.",
        details,
        "syntax" if syntax else "evaluation",
    )
