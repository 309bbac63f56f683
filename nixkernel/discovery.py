"""Discovery: finding projects on the file system.

A project is a directory holding a ``flake.nix``, a ``shell.nix`` or a virtualenv ``.venv/``
(a directory with ``pyvenv.cfg``). Discovery only reads the file system: it never runs Nix, so
it is safe to call from a listing. The walk is bounded in depth, prunes the directories that
never hold projects (VCS data, build results, virtualenv internals), survives unreadable
directories and never loops on symlinks.

Standard library only: the launcher imports this module on every kernel start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NamedTuple

#: Directory names never descended into.
PRUNED_NAMES = frozenset({".git", ".hg", ".svn", "node_modules", ".direnv", "__pycache__"})

VENV_DIR = ".venv"


class Project(NamedTuple):
    """A directory that offers at least one environment."""

    path: str
    """Absolute path of the project directory, as reached from the configured root."""
    flake: bool = False
    """The directory has a ``flake.nix``."""
    shell_nix: bool = False
    """The directory has a ``shell.nix``."""
    venv: str | None = None
    """Absolute path of the project's ``.venv`` (a directory with ``pyvenv.cfg``), if any."""

    @property
    def name(self) -> str:
        return os.path.basename(self.path.rstrip(os.sep)) or self.path

    @property
    def has_nix(self) -> bool:
        return self.flake or self.shell_nix


def is_pruned(name: str) -> bool:
    """Whether a directory called ``name`` is never searched for projects or inputs."""
    return name in PRUNED_NAMES or name.startswith((".", "result"))


def is_virtualenv(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "pyvenv.cfg"))


def walk_dirs(root: str, max_depth: int) -> Iterator[tuple[str, int, list[os.DirEntry[str]]]]:
    """Yield ``(directory, depth, entries)`` below ``root`` (depth 0), breadth first.

    Pruned names and virtualenvs are not descended into; a directory whose listing fails is
    skipped; a directory already seen (same device and inode, e.g. through a symlink loop) is
    visited once.
    """
    seen: set[tuple[int, int]] = set()
    queue: list[tuple[str, int]] = [(root, 0)]
    while queue:
        next_queue: list[tuple[str, int]] = []
        for directory, depth in queue:
            try:
                st = os.stat(directory)
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                with os.scandir(directory) as it:
                    entries = list(it)
            except OSError:
                # Unreadable, vanished or a dangling link: not a project, not fatal.
                continue
            yield directory, depth, entries
            if depth >= max_depth:
                continue
            # Real directories before links, so a project reachable both ways is listed under
            # its own path, whatever order the file system returns entries in.
            for entry in sorted(entries, key=_links_last):
                if is_pruned(entry.name):
                    continue
                try:
                    if not entry.is_dir():
                        continue
                except OSError:
                    continue
                child = entry.path
                if is_virtualenv(child):
                    continue
                next_queue.append((child, depth + 1))
        queue = next_queue


def project_at(directory: str, names: set[str] | None = None) -> Project | None:
    """The project rooted exactly at ``directory``, or None if it is not one."""
    if names is None:
        try:
            names = set(os.listdir(directory))
        except OSError:
            return None
    flake = "flake.nix" in names
    shell_nix = "shell.nix" in names
    venv = None
    if VENV_DIR in names:
        candidate = os.path.join(directory, VENV_DIR)
        if is_virtualenv(candidate):
            venv = candidate
    if not (flake or shell_nix or venv):
        return None
    return Project(path=directory, flake=flake, shell_nix=shell_nix, venv=venv)


def discover(roots: list[str], max_depth: int = 3) -> list[Project]:
    """All projects under ``roots``, at most ``max_depth`` levels below each, sorted by path.

    A project reached twice (overlapping roots, symlinks) is listed once.
    """
    found: dict[str, Project] = {}
    for root in roots:
        root = os.path.abspath(os.path.expanduser(root))
        for directory, _depth, entries in walk_dirs(root, max_depth):
            project = project_at(directory, {e.name for e in entries})
            if project is None:
                continue
            key = _identity(directory)
            if key not in found:
                found[key] = project
    return sorted(found.values(), key=lambda p: p.path)


def within_reach(path: str, roots: list[str], max_depth: int) -> bool:
    """Whether :func:`discover` can find a project at ``path`` (named as it names projects):
    at most ``max_depth`` levels below one of ``roots``, through no pruned directory and no
    virtualenv. Costs a stat per level, not a walk."""
    path = os.path.abspath(path)
    for root in roots:
        root = os.path.abspath(os.path.expanduser(root))
        relative = os.path.relpath(path, root)
        parts = [] if relative == os.curdir else relative.split(os.sep)
        if os.pardir in parts[:1] or len(parts) > max_depth:
            continue
        if any(is_pruned(part) for part in parts):
            continue
        below = [os.path.join(root, *parts[: i + 1]) for i in range(len(parts))]
        if not any(is_virtualenv(directory) for directory in below):
            return True
    return False


def find_enclosing_project(start: str, stop_at: str | None = None) -> Project | None:
    """The nearest project at or above ``start``: used by the project-following kernel.

    The search stops where ``nix develop``'s search for an enclosing ``flake.nix`` does
    (flakeref.cc ``parsePathFlakeRefWithFragment``, Nix 2.4 to 2.34): after a directory that
    holds ``.git`` (the repository's root) and at a file-system boundary, and ``/`` itself is
    never looked at. A notebook in a repository is not given the project of whatever directory
    happens to hold the repository.
    """
    current = os.path.abspath(start)
    try:
        device = os.lstat(current).st_dev
    except OSError:
        return None
    while current != "/":
        project = project_at(current)
        if project is not None:
            return project
        try:
            if os.path.lexists(os.path.join(current, ".git")):
                return None
            if os.lstat(current).st_dev != device:
                return None
        except OSError:
            return None
        if stop_at is not None and current == os.path.abspath(stop_at):
            return None
        current = os.path.dirname(current)
    return None


def _links_last(entry: os.DirEntry[str]) -> tuple[bool, str]:
    try:
        return entry.is_symlink(), entry.name
    except OSError:
        return True, entry.name


def _identity(path: str) -> str:
    try:
        return os.path.realpath(path)
    except OSError:
        return path
