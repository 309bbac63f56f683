"""What an evaluation depended on: the files, trees and search-path links a cached environment
is only valid with, and how to check them cheaply on a warm start.

On a miss, Nix's verbose log (:func:`nixkernel.nix.read_evaluation_log`) names the files it
parsed and the local paths it copied into the store; :func:`evaluation_inputs` turns that into
local paths to watch, mapping store copies of a flake's source back to the directory they were
copied from (Nix 2.8 / 2.26 and Lix evaluate a flake from its store copy; 2.34 names the
repository's own files). Files read without a log line (``readFile``, ``fromTOML``,
``importJSON`` of a manifest) are watched by name (:data:`MANIFESTS`).

A warm start compares each input's digest (content ``sha256``) with the recorded one, but skips
reading a file whose ``stat`` still matches a *stamp* recorded with it. A stamp is only recorded
for a file last changed well before it was taken (git's racy-clean rule): a change in the same
timestamp tick as the stamp could leave ``stat`` unchanged, so such a file is read every time.

Standard library only: the launcher imports this module on every kernel start.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat as statmod
import time
from collections.abc import Iterable, Mapping

STORE = "/nix/store/"

#: Read by uv2nix, poetry2nix, pyproject-nix, devshell and devenv with ``readFile`` /
#: ``fromTOML`` / ``importJSON`` / ``fromYAML``, which Nix never logs: watched by name, in the
#: project directory, even before they exist (as ``requirements*.txt`` that exist).
MANIFESTS = (
    "pyproject.toml", "uv.lock", "poetry.lock", "devshell.toml", "devenv.yaml", "devenv.lock",
)  # fmt: skip
REQUIREMENTS_PREFIX, REQUIREMENTS_SUFFIX = "requirements", ".txt"

#: A change this close to the moment a stamp is taken may not show in ``stat`` (timestamp
#: granularity: a kernel tick on ext4/xfs/btrfs/tmpfs, 1-2 s on some file systems).
RACY_NS = 2_000_000_000
#: Entries fingerprinted in a copied directory at most (each is one ``lstat``).
MAX_TREE_ENTRIES = 5000

#: Recorded for an input that changed while Nix ran: never equal to a digest, so the next start
#: evaluates again instead of trusting an environment made from the older content.
CHANGED_DURING_EVALUATION = "changed-during-evaluation"

#: Where Nix looks for ``<name>`` when neither NIX_PATH nor nix.conf's ``nix-path`` says
#: (``EvalSettings::getDefaultNixPath``: 2.8 ``src/libexpr/eval.cc``, 2.34
#: ``src/libexpr/eval-settings.cc``; the XDG one with ``use-xdg-base-directories``).
DEFAULT_SEARCH_PATH = (
    "~/.nix-defexpr/channels",
    "~/.local/state/nix/defexpr/channels",
    "/nix/var/nix/profiles/per-user/root/channels/nixpkgs",
    "/nix/var/nix/profiles/per-user/root/channels",
)


# -- digests and stamps ------------------------------------------------------------------------


def tree_digest(path: str) -> str:
    """A fingerprint of a directory Nix copies whole: every entry's name, type, size and times
    (``lstat``), bounded by :data:`MAX_TREE_ENTRIES`. Any edit, creation or removal changes it."""
    h = hashlib.sha256()
    count = 0
    stack = [path]
    while stack and count < MAX_TREE_ENTRIES:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            h.update(f"unreadable {directory}\0".encode())
            continue
        for entry in entries:
            count += 1
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            rel = os.path.relpath(entry.path, path)
            h.update(
                f"{rel}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0".encode()
            )
            if statmod.S_ISLNK(st.st_mode):
                with contextlib.suppress(OSError):
                    h.update(os.readlink(entry.path).encode(errors="surrogateescape") + b"\0")
            elif statmod.S_ISDIR(st.st_mode):
                stack.append(entry.path)
    if stack:
        h.update(b"truncated")
    return "tree:" + h.hexdigest()


def stamp(path: str, now_ns: int | None = None) -> list[int] | None:
    """``[size, mtime_ns, ctime_ns, inode]`` of a regular file that has not changed in the last
    :data:`RACY_NS` (else None: its content must be read at every check)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not statmod.S_ISREG(st.st_mode):
        return None
    now = time.time_ns() if now_ns is None else now_ns
    if max(st.st_mtime_ns, st.st_ctime_ns) >= now - RACY_NS:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def stamp_matches(path: str, recorded: object) -> bool:
    if not (isinstance(recorded, list) and len(recorded) == 4):
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino] == recorded


def newest_change_ns(path: str) -> int:
    """The latest mtime/ctime of a file, or of any entry of a directory tree (bounded)."""
    try:
        st = os.stat(path)
    except OSError:
        return 0
    newest = max(st.st_mtime_ns, st.st_ctime_ns)
    if statmod.S_ISDIR(st.st_mode):
        count, stack = 0, [path]
        while stack and count < MAX_TREE_ENTRIES:
            try:
                with os.scandir(stack.pop()) as it:
                    for entry in it:
                        count += 1
                        est = entry.stat(follow_symlinks=False)
                        newest = max(newest, est.st_mtime_ns, est.st_ctime_ns)
                        if statmod.S_ISDIR(est.st_mode):
                            stack.append(entry.path)
            except OSError:
                continue
    return newest


# -- what to watch -----------------------------------------------------------------------------


def manifest_inputs(directory: str, names: Iterable[str] = ()) -> list[str]:
    """The project's manifests and lock files: :data:`MANIFESTS` (present or not) and the
    ``requirements*.txt`` among ``names`` (the directory's entries)."""
    found = [os.path.join(directory, n) for n in MANIFESTS]
    found += [
        os.path.join(directory, n)
        for n in names
        if n.startswith(REQUIREMENTS_PREFIX) and n.endswith(REQUIREMENTS_SUFFIX)
    ]
    return found


def _store_root(path: str) -> str:
    return STORE + path[len(STORE) :].split("/", 1)[0]


def _same_bytes(a: str, b: str) -> bool:
    try:
        if os.path.getsize(a) != os.path.getsize(b):
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return fa.read() == fb.read()
    except OSError:
        return False


def evaluation_inputs(
    evaluated_files: Iterable[str],
    copied: Iterable[tuple[str, str]],
    roots: Iterable[str],
) -> list[str]:
    """The local paths an evaluation depended on, from its log, beyond the local files it
    evaluated (those are inputs as they are).

    ``roots`` are the directories the evaluated source itself comes from (the project, its git
    toplevel). A store copy ``/nix/store/<h>-source/<rel>`` of a local tree (the flake's own
    source; a ``getFlake`` or ``path:`` flake outside the project) is mapped back to the
    directory whose ``<rel>`` has the same bytes (or the one ``copied source`` names); other
    store files are immutable (nixpkgs and other locked inputs) and need no watching. Next to
    each flake.nix, its flake.lock (read, never logged). A copied directory that is not a source
    tree (``"${./data}"``, ``builtins.path``) is watched whole (:func:`tree_digest`).
    """
    evaluated = list(evaluated_files)
    copied = list(copied)
    roots = [r.rstrip("/") for r in roots if r]
    mapping = {_store_root(s): p.rstrip("/") for p, s in copied if s and os.path.isdir(p)}
    whole = set(mapping.values())  # copied as data: watched whole below
    candidates = roots + [p for p, s in copied if not s and os.path.isdir(p)]
    unmapped: set[str] = set()
    result: set[str] = set()
    for path in evaluated:
        if not path.startswith(STORE) and os.path.basename(path) == "flake.nix":
            result.add(path)  # read in place (2.34); its lock file is added below
    for path in evaluated:
        if not path.startswith(STORE):
            continue
        root = _store_root(path)
        rel = path[len(root) + 1 :]
        if root not in mapping and root not in unmapped:
            match = next((d for d in candidates if _same_bytes(path, os.path.join(d, rel))), None)
            if match is None:
                unmapped.add(root)
            else:
                mapping[root] = match
        if root in mapping and rel:
            result.add(os.path.join(mapping[root], rel))
    for path in list(result):
        if os.path.basename(path) == "flake.nix":
            result.add(os.path.join(os.path.dirname(path), "flake.lock"))
    sources = (set(mapping.values()) - whole) | set(roots)
    for local, _store in copied:
        local = local.rstrip("/") or "/"
        if local in sources or os.path.exists(os.path.join(local, "flake.nix")):
            continue  # a source tree: what the evaluation read of it is watched above
        if os.path.exists(local) and not os.path.realpath(local).startswith(STORE):
            result.add(local)
    return sorted(result)


# -- the search path (<nixpkgs>) ---------------------------------------------------------------


def search_path_targets(entries: Iterable[str], environ: Mapping[str, str]) -> dict[str, str]:
    """What each search-path entry resolves to now: ``realpath`` of local paths (a channel is a
    chain of links ending in the store: ``nix-channel --update`` or ``nixos-rebuild`` moves it).
    With no NIX_PATH, Nix's default channel links are included too (they decide ``<nixpkgs>``
    once they exist). URLs and ``flake:`` entries resolve elsewhere: kept as themselves."""
    paths = [e for e in entries if e]
    if "NIX_PATH" not in environ:
        paths += [os.path.expanduser(p) for p in DEFAULT_SEARCH_PATH]
    return {p: resolve_search_path_entry(p) for p in dict.fromkeys(paths)}


def resolve_search_path_entry(path: str) -> str:
    if not path.startswith("/"):
        return path
    try:
        real = os.path.realpath(path)
    except OSError:
        return "unresolvable"
    return real if os.path.exists(real) else "absent"


def search_path_changed(recorded: Mapping[str, str]) -> bool:
    return any(resolve_search_path_entry(p) != r for p, r in recorded.items())


def nix_config_files(environ: Mapping[str, str]) -> list[str]:
    """The nix.conf files that can set ``nix-path`` (and the flake registry): the system one
    (``$NIX_CONF_DIR``, default /etc/nix) and the user's (``$NIX_USER_CONF_FILES`` or
    ``$XDG_CONFIG_HOME/nix/nix.conf``)."""
    files = [os.path.join(environ.get("NIX_CONF_DIR") or "/etc/nix", "nix.conf")]
    if environ.get("NIX_USER_CONF_FILES"):
        files += [f for f in environ["NIX_USER_CONF_FILES"].split(":") if f]
    else:
        config = environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        files.append(os.path.join(config, "nix", "nix.conf"))
    return files


def registry_files(environ: Mapping[str, str]) -> list[str]:
    """The flake registries that resolve ``flake:`` search-path entries (user, then system)."""
    config = environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    system = environ.get("NIX_CONF_DIR") or "/etc/nix"
    return [os.path.join(config, "nix", "registry.json"), os.path.join(system, "registry.json")]
