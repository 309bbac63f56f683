"""Per-project Nix flags: a project's ``.envrc`` (nix-direnv's ``use flake`` / ``use nix``
lines, read and never run) and ``c.NixKernelSpecManager.nix_args``.

nix-direnv passes ``use flake REF FLAGS...`` to ``nix print-dev-env --profile P REF FLAGS...``,
and ``use nix ARGS...`` (parsed: ``-A``, ``--arg``, ``--argstr``, ``-I``, ``--option``, a file,
``-p``) to ``nix print-dev-env --file FILE --arg inNixShell true ...`` (nix-community/nix-direnv,
direnvrc ``use_flake`` / ``use_nix``). People declare devenv's ``--impure`` and their
``--arg``s there; a kernel of the same project evaluates with the same flags.

Rules (docs/nix-semantics.md): the first ``use flake`` line whose reference names the project's
own flake (``.``, ``./.``, ``.#name``, the directory itself) gives its flags to every flake
kernel of the project (the ``#name`` part is not used: each kernel is its own shell); the first
``use nix`` line without ``-p`` whose file is absent or the project's ``shell.nix`` gives its
flags (and ``-A``) to the shell.nix kernel. Lines with shell expansions (``$``, backquotes) or
continuations cannot be read without running ``.envrc`` and are skipped. Flags that would
change what nixkernel runs (``--command``, ``--run``, ``--profile``) are dropped.

Read at every kernel start (a small file; ``shlex`` only when there is a ``use`` line): the
flags are part of the environment's cache key, so changing them re-evaluates.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from .describe import NixSource

ENVRC = ".envrc"

#: ``use nix`` options nix-direnv drops, with how many values follow each.
_USE_NIX_DROPPED = {"--command": 1, "--run": 1, "--exclude": 1, "--pure": 0, "-i": 0, "--keep": 0}
#: ``use nix`` options that take values and are kept, with how many values follow each.
_USE_NIX_KEPT = {"-I": 1, "--include": 1, "--option": 2, "-o": 2, "--arg": 2, "--argstr": 2}
#: Options that would change what nixkernel itself asks of Nix: never passed on.
_NEVER = {"--profile": 1, "--command": None, "-c": None, "--run": 1}


class EnvrcFlags(NamedTuple):
    """What a project's ``.envrc`` asks of Nix."""

    flake: tuple[str, ...] = ()
    """Flags of the ``use flake`` line naming the project's flake."""
    nix: tuple[str, ...] = ()
    """Flags of the ``use nix`` line for the project's ``shell.nix``."""
    nix_attr: str | None = None
    """``-A`` of that ``use nix`` line."""
    nix_file: str | None = None
    """The file that ``use nix`` line evaluates (its argument, else ``shell.nix`` or
    ``default.nix`` as nix-direnv picks): its flags are for that file only."""


def read_envrc(directory: str) -> EnvrcFlags:
    """The ``use flake`` / ``use nix`` flags in ``directory``'s ``.envrc`` (none if absent)."""
    try:
        with open(os.path.join(directory, ENVRC), encoding="utf-8", errors="replace") as f:
            text = f.read(256 * 1024)
    except OSError:
        return EnvrcFlags()
    if "use" not in text:
        return EnvrcFlags()
    return parse_envrc(text, directory)


def parse_envrc(text: str, directory: str) -> EnvrcFlags:
    import shlex

    flake: tuple[str, ...] | None = None
    nix: tuple[str, ...] | None = None
    nix_attr = nix_file = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith(("use flake", "use_flake", "use nix", "use_nix")):
            continue
        if any(c in line for c in "$`") or line.endswith("\\"):
            continue  # needs a shell to read
        # A comment starts with a word that starts with '#' (not `.#name`, as shlex would).
        line = re.sub(r"(?:^|\s)#.*$", "", line)
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        if words[:2] in (["use", "flake"], ["use", "nix"]):
            verb, args = words[1], words[2:]
        elif words and words[0] in ("use_flake", "use_nix"):
            verb, args = words[0][4:], words[1:]
        else:
            continue
        if verb == "flake" and flake is None:
            flake = _use_flake(args, directory)
        elif verb == "nix" and nix is None:
            parsed = _use_nix(args, directory)
            if parsed is not None:
                nix, nix_attr, nix_file = parsed
    return EnvrcFlags(flake or (), nix or (), nix_attr, nix_file)


def _use_flake(args: list[str], directory: str) -> tuple[str, ...] | None:
    """The flags of ``use flake REF FLAGS...`` if REF is the project's flake, else None."""
    ref = "."
    if args and not args[0].startswith("-"):
        ref, args = args[0], args[1:]
    elif args:
        return None  # nix-direnv: "the first argument must be a flake expression"
    location = ref.split("#", 1)[0] or "."
    if location.startswith("path:"):
        return None  # another kind of reference (a store copy of the directory)
    if os.path.normpath(os.path.join(directory, os.path.expanduser(location))) != os.path.normpath(
        directory
    ):
        return None
    return tuple(safe_flags(args))


def _use_nix(args: list[str], directory: str) -> tuple[tuple[str, ...], str | None, str] | None:
    """The flags, ``-A`` and file of ``use nix ARGS...`` (None for ``-p`` packages)."""
    kept: list[str] = []
    attr = None
    nix_file = None
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("-p", "--packages"):
            return None  # a shell of packages, not a file of the project
        if arg in _USE_NIX_DROPPED:
            i += _USE_NIX_DROPPED[arg]
        elif arg in ("-A", "--attr"):
            attr = args[i] if i < len(args) else None
            i += 1
        elif arg in _USE_NIX_KEPT:
            kept += args[i - 1 : i + _USE_NIX_KEPT[arg]]
            i += _USE_NIX_KEPT[arg]
        elif arg.startswith("-"):
            kept.append(arg)
        else:
            nix_file = arg
    if nix_file is None:
        shell = os.path.join(directory, "shell.nix")
        path = shell if os.path.exists(shell) else os.path.join(directory, "default.nix")
    else:
        path = os.path.normpath(os.path.join(directory, os.path.expanduser(nix_file)))
        if os.path.isdir(path):
            path = os.path.join(path, "default.nix")
    return tuple(safe_flags(kept)), attr, os.path.normpath(path)


def safe_flags(args: Sequence[str]) -> list[str]:
    """``args`` without the options that would change what nixkernel runs or where Nix
    registers its GC root (``--command``/``-c`` and all after it, ``--run``, ``--profile``)."""
    result: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _NEVER:
            skip = _NEVER[arg]
            if skip is None:
                break
            i += 1 + skip
            continue
        result.append(arg)
        i += 1
    return result


def configured_args(configured: Mapping[str, Sequence[str]] | None, directory: str) -> list[str]:
    """The flags ``c.NixKernelSpecManager.nix_args`` gives ``directory``: every entry whose key
    (a directory, ``~`` allowed, or a glob such as ``~/work/*``) matches it, in order."""
    if not configured:
        return []
    found: list[str] = []
    here = os.path.normpath(directory)
    for pattern, flags in configured.items():
        if matches(pattern, here):
            found += list(flags)
    return found


def matches(pattern: str, directory: str) -> bool:
    """Whether a ``nix_args`` key names ``directory`` (a normalised absolute path)."""
    pattern = os.path.expanduser(pattern)
    if any(c in pattern for c in "*?["):
        from fnmatch import fnmatchcase

        return fnmatchcase(directory, pattern.rstrip("/") or "/")
    return os.path.normpath(os.path.abspath(pattern)) == directory


def with_project_args(
    source: NixSource, configured: Mapping[str, Sequence[str]] | None = None
) -> NixSource:
    """``source`` with the flags its project declares (``.envrc``, then ``nix_args``)."""
    directory = source.local_dir
    if directory is None:
        return source
    envrc = read_envrc(directory)
    extra = configured_args(configured, directory)
    if source.is_flake:
        flags = (*envrc.flake, *extra)
        attr = source.attr
    elif envrc.nix_file == os.path.normpath(source.location):
        flags = (*envrc.nix, *extra)
        attr = source.attr or envrc.nix_attr
    else:
        flags = tuple(extra)
        attr = source.attr
    if not flags and attr == source.attr:
        return source
    return source._replace(attr=attr, args=(*source.args, *flags))
