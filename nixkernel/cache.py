"""The environment cache: evaluated dev shells, kept valid and GC-rooted.

Each Nix source (a flake devShell, a Nix file) has a *slot* directory under the cache root::

    <root>/envs/<slug>-<hash>/
        entry.json          what the kernel needs to start: variables, the rules of the Nix
                            that made them (nixkernel.devshell), and the key it was made under
                            (inputs, system, Nix, NIX_PATH)
        kernels.json        the kernels the environment carries (R, Julia...: kernels.py), a
                            copy of entry.json's "kernels" that listings read
        rc-<hash>.sh        the shellHook script (bash sources it: no argv size limit)
        attrs-<hash>.sh/.json, attr-<hash>   structured-attrs and passAsFile files
        profile -> profile-N-link -> /nix/store/...-env     the GC root (nix --profile)
        bash -> /nix/store/...-bash-interactive   nix-shell's bash (shell.nix, with <nixpkgs>)
        lock                held while one launcher evaluates; the others wait and reuse
        flake-input, flake-input-N -> /nix/store/...-source    GC roots of a flake's inputs
    <root>/flake-shells/    the devShell names of each flake, for its flake.nix and flake.lock
    <root>/listings/        the kernel names the server's last scan found (per project_dirs),
                            so a kernel can start before the next server's first scan ends

An entry is *fresh* when its key still matches: the content of every input file (``flake.nix``,
``flake.lock``, ``shell.nix``, ``default.nix``, every ``*.nix`` in the project, its manifests,
and every file or tree the evaluation read, see :mod:`nixkernel.inputs`), the system, the Nix
binary, ``NIX_PATH`` and the resolved search path. Inputs are hashed before Nix runs; a warm
check reads only inputs whose ``stat`` stamp changed. It is *stale* when the
key differs, and *gone* when the garbage collector took its store paths (a miss). Entries are
written atomically (temp file + rename) and never trusted blindly: anything that does not parse
or has the wrong shape is a miss. Like nix-direnv, freshness is decided without running Nix, so
a warm start costs a few ``stat`` calls and one small JSON read.

Standard library only: the launcher imports this module on every kernel start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from . import inputs, nix
from .describe import NixSource, current_system, slugify
from .discovery import walk_dirs

if TYPE_CHECKING:
    from . import devshell

SCHEMA = 2
ENTRY_FILE = "entry.json"
PROFILE = "profile"

FRESH, STALE, NONE = "fresh", "stale", "none"
#: The entry field listing the kernels the environment carries (written by nixkernel/kernels.py),
#: and the small file beside the entry holding a copy for listings: a real shell's entry is tens
#: of KB (its rc script), too much to parse for each of a thousand projects in every scan.
KERNELS_FIELD = "kernels"
KERNELS_FILE = "kernels.json"

#: Files that are inputs of every project even before they exist: creating one invalidates.
FIXED_INPUTS = ("flake.nix", "flake.lock", "shell.nix", "default.nix")
#: How deep below a project ``*.nix`` files are watched.
NIX_FILES_DEPTH = 4
#: Cap on the store paths checked for liveness (each is one stat).
MAX_LIVENESS_CHECKS = 256

_STORE_PATH = re.compile(r"/nix/store/[0-9a-z]{32}-[^/:\s'\"]+")


class Resolved(NamedTuple):
    """An environment ready to launch."""

    entry: dict
    state: str
    """``"fresh"`` (cache hit or new evaluation) or ``"stale"`` (re-evaluation failed)."""
    evaluated: bool = False
    """Nix ran for this launch."""
    seconds: float = 0.0
    """How long the evaluation took, when Nix ran."""
    warning: str = ""


def file_digest(path: str) -> str:
    """What a watched input is now: ``sha256:...``, ``store:<path>`` (a link into the immutable
    store, e.g. a channel), ``absent``, or ``unreadable``."""
    try:
        real = os.path.realpath(path)
        if real.startswith("/nix/store/") and real != path:
            return f"store:{real}"
        with open(path, "rb") as f:
            return "sha256:" + hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return "absent"
    except IsADirectoryError:
        return inputs.tree_digest(path)
    except OSError:
        return "unreadable"


def project_nix_files(directory: str) -> list[str]:
    """Every ``*.nix`` file in a project, bounded in depth, outside pruned directories."""
    found = []
    for current, _depth, entries in walk_dirs(directory, NIX_FILES_DEPTH):
        for entry in entries:
            if entry.name.endswith(".nix") and entry.is_file():
                found.append(os.path.join(current, entry.name))
    return found


def watched_inputs(source: NixSource) -> list[str]:
    """The files whose content decides whether ``source``'s cached environment is still valid."""
    directory = source.local_dir
    if directory is None:
        return []
    files = {os.path.join(directory, name) for name in FIXED_INPUTS}
    if not source.is_flake:
        files.add(source.location)
    files.update(project_nix_files(directory))
    try:
        names = os.listdir(directory)
    except OSError:
        names = []
    files.update(inputs.manifest_inputs(directory, names))
    return sorted(files)


def _evaluated_inputs(evaluated_files: Iterable[str]) -> list[str]:
    """Files a non-flake evaluation read, outside the store. A file reached through a link into
    the store (a channel's nixpkgs) is represented by that link, once: its target is immutable."""
    result: set[str] = set()
    for path in evaluated_files:
        if path.startswith("/nix/store/"):
            continue
        if os.path.realpath(path).startswith("/nix/store/"):
            link = path
            parent = os.path.dirname(link)
            while parent != link and os.path.realpath(parent).startswith("/nix/store/"):
                link, parent = parent, os.path.dirname(parent)
            result.add(link)
        else:
            result.add(path)
    return sorted(result)


def store_paths(variables: Mapping[str, str], profile_target: str | None) -> list[str]:
    """Store paths the environment refers to: if one is gone, the entry is unusable."""
    found: dict[str, None] = {}
    if profile_target:
        found[profile_target] = None
    for value in variables.values():
        for match in _STORE_PATH.findall(value):
            found[match] = None
            if len(found) >= MAX_LIVENESS_CHECKS:
                return list(found)
    return list(found)


class CacheEntry(NamedTuple):
    """What a slot holds, as ``show`` reports it: typed facts of its entry (None/False for a
    slot with no entry yet)."""

    slot: str
    state: str
    """The cache state of the source (``"fresh"``, ``"stale"``, ``"missing"``...)."""
    created: float | None = None
    """When the entry was evaluated (seconds since the epoch)."""
    nix_version: str | None = None
    gc_root: str | None = None
    """The slot's GC root, the profile link ``nix print-dev-env --profile`` wrote."""
    gc_root_target: str | None = None
    """The store path that link pointed to when the entry was written."""
    has_shell_hook: bool = False

    @classmethod
    def of(cls, slot: str, state: str, entry: Mapping[str, Any] | None) -> CacheEntry:
        if not entry:
            return cls(slot, state)
        created = entry.get("created")
        return cls(
            slot=slot,
            state=state,
            created=created if isinstance(created, int | float) else None,
            nix_version=entry.get("nix_version"),
            gc_root=os.path.join(slot, PROFILE),
            gc_root_target=entry.get("profile"),
            has_shell_hook=bool(entry.get("rc")),
        )


class SlotSource(NamedTuple):
    """The source a slot was made for, read loosely from its entry (an old schema still names
    it): what ``clean`` needs to describe a slot and to tell whether its project is gone."""

    source: NixSource | None
    """None when the slot has no readable entry."""

    @classmethod
    def read(cls, slot: str) -> SlotSource:
        try:
            with open(os.path.join(slot, ENTRY_FILE), encoding="utf-8") as f:
                raw = json.load(f)["key"]["source"]
        except (OSError, ValueError, KeyError, TypeError):
            return cls(None)
        if not isinstance(raw, dict):
            return cls(None)
        args = raw.get("args")
        return cls(
            NixSource(
                str(raw.get("kind")),
                str(raw.get("location")),
                raw.get("attr"),
                tuple(str(a) for a in args) if isinstance(args, list) else (),
            )
        )

    @property
    def project_missing(self) -> bool:
        """Whether the project the slot was made for is gone (False when it cannot tell)."""
        directory = self.source.local_dir if self.source is not None else None
        return directory is not None and not os.path.isdir(directory)

    def describe(self) -> str:
        return self.source.describe() if self.source is not None else "no readable entry"


class EnvironmentCache:
    """Evaluated environments under ``root``; see the module docstring for the layout."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))

    # -- layout -----------------------------------------------------------------------------

    def slot(self, source: NixSource) -> str:
        ident = json.dumps([source.kind, source.location, source.attr, current_system()])
        digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
        base = os.path.basename((source.local_dir or source.location).rstrip("/")) or "root"
        return os.path.join(self.root, "envs", f"{slugify(base)}-{digest}")

    def slots(self) -> list[str]:
        envs = os.path.join(self.root, "envs")
        try:
            return sorted(os.path.join(envs, n) for n in os.listdir(envs))
        except OSError:
            return []

    def _make_private_dir(self, path: str) -> None:
        # The cache decides what runs in kernels: nobody else may write to it.
        for directory in (self.root, os.path.join(self.root, "envs"), path):
            os.makedirs(directory, mode=0o700, exist_ok=True)
            if os.stat(directory).st_mode & 0o077:
                os.chmod(directory, 0o700)

    # -- reading ----------------------------------------------------------------------------

    def load(self, slot: str) -> dict | None:
        """The slot's entry, or None when there is none or it is unreadable or malformed."""
        try:
            with open(os.path.join(slot, ENTRY_FILE), encoding="utf-8") as f:
                entry = json.load(f)
        except (OSError, ValueError):
            return None
        return entry if _well_formed(entry) and _files_in(entry, slot) else None

    def key(
        self,
        source: NixSource,
        nix_path: str | None,
        inputs: list[str],
        digests: Mapping[str, str] | None = None,
    ) -> dict:
        """The key an entry for ``source`` must carry to be fresh now (hashes ``inputs``, but
        for those whose digest ``digests`` already gives)."""
        digests = digests or {}
        return {
            "source": {
                "kind": source.kind,
                "location": source.location,
                "attr": source.attr,
                # The project's Nix flags (.envrc, nix_args): changing them re-evaluates.
                **({"args": list(source.args)} if source.args else {}),
            },
            "system": current_system(),
            "nix": nix.nix_identity(nix_path) if nix_path else None,
            "nix_path": None if source.is_flake else os.environ.get("NIX_PATH", ""),
            "inputs": {path: digests.get(path) or file_digest(path) for path in inputs},
        }

    def state(self, entry: dict | None, source: NixSource, nix_path: str | None) -> str:
        """``fresh``, ``stale`` or ``none`` (no entry, or its store paths were collected)."""
        if entry is None or not all(os.path.exists(p) for p in entry["store_paths"]):
            return NONE
        if not all(os.path.exists(p) for p in entry["files"]):
            return NONE  # a file the kernel needs was removed from the slot
        recorded = entry["key"]
        recorded_inputs = recorded["inputs"]
        paths = sorted(set(recorded_inputs) | set(watched_inputs(source)))
        now = self.key(source, nix_path, paths, _unchanged(recorded_inputs, entry, paths))
        if now["nix"] is None:
            # No Nix to re-evaluate with: the environment it made is still the best we have.
            now["nix"] = recorded.get("nix")
        same_inputs = all(recorded_inputs.get(p, "absent") == d for p, d in now["inputs"].items())
        same_rest = all(now[k] == recorded.get(k) for k in ("source", "system", "nix", "nix_path"))
        same_search_path = not inputs.search_path_changed(recorded.get("search_path", {}))
        return FRESH if same_inputs and same_rest and same_search_path else STALE

    def inspect(
        self, source: NixSource, nix_executable: str | None = None
    ) -> tuple[str, dict | None]:
        """The state and entry of ``source``'s slot, without evaluating anything."""
        nix_path = _nix_or_none(nix_executable)
        entry = self.load(self.slot(source))
        return self.state(entry, source, nix_path), entry

    # -- writing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, slot: str) -> Iterator[None]:
        """Exclusive per-slot lock; released by the kernel if the holder dies."""
        self._make_private_dir(slot)
        fd = os.open(os.path.join(slot, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def store(self, slot: str, entry: dict) -> None:
        """Write ``entry`` atomically: a reader sees the old entry or the new one, never half."""
        self._make_private_dir(slot)
        write_json_atomically(os.path.join(slot, ENTRY_FILE), entry)
        if KERNELS_FIELD in entry:
            write_json_atomically(os.path.join(slot, KERNELS_FILE), entry[KERNELS_FIELD])
        else:  # the copy must never outlive what it copies
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(slot, KERNELS_FILE))

    def evaluate(
        self,
        source: NixSource,
        nix_path: str,
        on_line: Callable[[str], None] | None = None,
    ) -> dict:
        """Run Nix for ``source`` and store the result as its slot's entry (under the lock)."""
        from . import devshell  # only on a miss

        slot = self.slot(source)
        self._make_private_dir(slot)
        version_line = devshell.version_line(nix_path)
        version = nix.parse_version(version_line) if version_line else nix.nix_version(nix_path)
        # Everything is hashed before Nix reads it: an edit made while Nix runs must leave the
        # entry stale, not fresh beside an environment made from the older content.
        started_ns = time.time_ns()
        previous = self.load(slot)
        search = None if source.is_flake else _SearchPathQuery(nix_path)
        config = [] if source.is_flake else inputs.nix_config_files(os.environ)
        known = set(watched_inputs(source)) | set(config)
        known |= set(previous["key"]["inputs"]) if previous else set()
        before = {path: file_digest(path) for path in known}
        try:
            dev_env = nix.print_dev_env(
                nix_path, source, profile=os.path.join(slot, PROFILE), on_line=on_line
            )
        finally:
            search_path = search.result() if search else {}
        if source.is_flake:
            _root_flake_inputs(nix_path, source, slot)
        profile_target = _profile_target(slot)
        prepared, bash = _prepare(source, nix_path, slot, dev_env, version, version_line)
        paths = {name: os.path.join(slot, name) for name in prepared.files}
        for name, content in prepared.files.items():
            _write_file(slot, name, content)
        rc = ""
        if prepared.hook:
            rc = os.path.join(slot, devshell._file_name("rc", prepared.hook, ".sh"))
            _write_file(slot, os.path.basename(rc), prepared.hook)
        watched = set(watched_inputs(source)) | set(config)
        watched |= set(_evaluated_inputs(dev_env.evaluated_files))
        watched |= set(
            inputs.evaluation_inputs(dev_env.evaluated_files, dev_env.copied, _roots(source))
        )
        if any(p.startswith("flake:") for p in search_path):
            watched |= set(inputs.registry_files(os.environ))
        digests, stamps = _settle(sorted(watched), before, started_ns)
        key = self.key(source, nix_path, sorted(watched), digests)
        key["search_path"] = search_path
        variables = prepared.variables
        entry = {
            "schema": SCHEMA,
            "key": key,
            "stamps": stamps,
            "nix_version": version,
            "nix_version_line": version_line,
            "created": time.time(),
            "profile": profile_target,
            "store_paths": [
                p for p in store_paths(variables, profile_target) if p not in prepared.unbuilt
            ]
            + ([bash] if bash else []),
            "variables": variables,
            "shell": prepared.model,
            "rc": rc,
            "files": sorted(paths.values()) + ([rc] if rc else []),
        }
        entry.update(_detect_kernels(source, variables))
        self.store(slot, entry)
        _drop_old_generations(slot)
        _drop_unused_files(slot, entry["files"])
        return entry

    def ensure(
        self,
        source: NixSource,
        nix_executable: str | None = None,
        allow_stale: bool = True,
        on_line: Callable[[str], None] | None = None,
        on_miss: Callable[[str], None] | None = None,
        failure_since: float | None = None,
    ) -> Resolved:
        """A usable environment for ``source``: the cached one if fresh, else a new evaluation
        (once, under the slot's lock, however many launchers ask at the same time). If the
        evaluation fails and ``allow_stale``, the previous environment, with a warning.

        ``on_miss(state)`` runs before anything waits on Nix or on the lock (the launcher execs
        its building kernel there). An evaluation that failed under the same inputs while this
        call waited for the lock (or since ``failure_since``) is not run again: its error is
        taken as this call's own."""
        slot = self.slot(source)
        nix_path = _nix_or_none(nix_executable)
        entry = self.load(slot)
        state = self.state(entry, source, nix_path)
        if state == FRESH:
            return Resolved(self.with_kernels(slot, source, entry), FRESH)  # type: ignore[arg-type]
        if on_miss is not None and nix_path is not None:
            on_miss(state)
        since = time.time() if failure_since is None else failure_since
        with self.lock(slot):
            # Another launcher may have evaluated while we waited for the lock.
            entry = self.load(slot)
            state = self.state(entry, source, nix_path)
            if state == FRESH:
                return Resolved(entry, FRESH)  # type: ignore[arg-type]
            try:
                if nix_path is None:
                    nix.find_nix(nix_executable)  # raises the actionable "not found" error
                assert nix_path is not None
                started = time.monotonic()
                entry = self._evaluate_once(source, nix_path, on_line, entry, since)
                return Resolved(entry, FRESH, True, time.monotonic() - started)
            except nix.NixKernelError as exc:
                if state == STALE and allow_stale and entry is not None:
                    return Resolved(entry, STALE, warning=_stale_warning(source, entry, exc))
                raise

    def with_kernels(self, slot: str, source: NixSource, entry: dict) -> dict:
        """``entry``, with the kernels its environment carries (nixkernel/kernels.py) added and
        stored if it was written before nixkernel looked for them: found once, without
        evaluating again."""
        if KERNELS_FIELD in entry:
            return entry
        with self.lock(slot):
            entry = self.load(slot) or entry  # another launcher may have done it meanwhile
            if KERNELS_FIELD not in entry:
                entry.update(_detect_kernels(source, entry["variables"]))
                self.store(slot, entry)
        return entry

    def _evaluate_once(
        self,
        source: NixSource,
        nix_path: str,
        on_line: Callable[[str], None] | None,
        previous: dict | None,
        since: float,
    ) -> dict:
        """:meth:`evaluate` under the lock, with its output in the slot's build log; or the
        error of the same evaluation that failed at or after ``since`` (waiters take the
        holder's failure instead of running it again, unless an input changed meanwhile)."""
        from . import buildlog  # a miss: the warm path never imports it

        slot = self.slot(source)
        watched = set(watched_inputs(source))
        if previous is not None:
            watched.update(previous["key"].get("inputs", {}))
        key = self.key(source, nix_path, sorted(watched))
        failure = buildlog.recorded_failure(slot, key, since)
        if failure is not None:
            raise failure
        try:
            with buildlog.writing(slot, source.describe(), on_line) as tee:
                entry = self.evaluate(source, nix_path, tee)
        except nix.NixKernelError as exc:
            buildlog.record_failure(slot, key, exc)
            raise
        buildlog.clear_failure(slot)
        return entry

    def ensure_all(
        self,
        sources: list[NixSource],
        nix_executable: str | None = None,
        jobs: int = 2,
        allow_stale: bool = True,
        on_line: Callable[[NixSource, str], None] | None = None,
    ) -> Iterator[tuple[NixSource, Resolved | Exception]]:
        """:meth:`ensure` each of ``sources``, ``jobs`` at a time (warming the cache ahead of
        kernel starts), yielding each as it completes with its result or the error that stopped
        it: one failure does not stop the others."""
        from concurrent.futures import ThreadPoolExecutor, as_completed

        def one(source: NixSource) -> Resolved:
            relay = (lambda line: on_line(source, line)) if on_line else None
            return self.ensure(source, nix_executable, allow_stale, relay)

        with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="nixkernel-warm") as pool:
            futures = {pool.submit(one, source): source for source in sources}
            for future in as_completed(futures):
                try:
                    yield futures[future], future.result()
                except Exception as exc:  # reported to the caller, with the others going on
                    yield futures[future], exc

    def clean(self, slot: str) -> None:
        """Remove a slot: its entry and its GC roots (the store paths become collectable)."""
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(slot):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(slot, name))
            os.rmdir(slot)

    # -- flake shell names --------------------------------------------------------------------

    def _shells_file(self, project: str) -> str:
        digest = hashlib.sha256(f"{project}\0{current_system()}".encode()).hexdigest()[:16]
        return os.path.join(self.root, "flake-shells", f"{digest}.json")

    @staticmethod
    def _shells_watched(project: str) -> list[str]:
        """Inputs of a flake's devShell names before any evaluation said more."""
        fixed = [os.path.join(project, n) for n in ("flake.nix", "flake.lock")]
        return fixed + inputs.manifest_inputs(project)

    def flake_shells(self, project: str) -> list[str] | None:
        """The devShell names of the flake in ``project``, if known for its current files: those
        the evaluation that listed them read (checked as an environment's inputs are)."""
        try:
            with open(self._shells_file(project), encoding="utf-8") as f:
                data = json.load(f)
            recorded, names = data["key"]["inputs"], data["names"]
            if data["key"]["system"] != current_system() or not all(
                isinstance(n, str) for n in names
            ):
                return None
            paths = sorted(set(recorded) | set(self._shells_watched(project)))
            unchanged = _unchanged(recorded, data, paths)
            if all(
                recorded.get(p, "absent") == (unchanged.get(p) or file_digest(p)) for p in paths
            ):
                return list(names)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        return None

    def evaluate_flake_shells(
        self,
        project: str,
        nix_path: str,
        extra_args: Sequence[str] = (),
        timeout: float = 600.0,
        started: Callable[[Any], None] | None = None,
        remember_failure: Callable[[], bool] = lambda: True,
    ) -> list[str]:
        """Ask Nix for the flake's devShell names and remember them with the files the
        evaluation read (hashed before it ran). A failure is remembered as no names, until the
        flake's files change, and raised."""
        started_ns = time.time_ns()
        known = self._shells_watched(project) + project_nix_files(project)
        before = {path: file_digest(path) for path in known}
        try:
            names, log = nix.flake_shell_names_logged(
                nix_path, project, current_system(), None, extra_args, timeout, started
            )
        except nix.NixTimeoutError:
            raise  # no verdict on the flake: its caller decides when to ask again
        except nix.NixKernelError:
            if remember_failure():
                self.store_flake_shells(project, [], known, before, started_ns)
            raise
        read = inputs.evaluation_inputs(
            log.evaluated_files, log.copied, _roots(NixSource("flake", project))
        )
        paths = set(self._shells_watched(project)) | set(_evaluated_inputs(log.evaluated_files))
        self.store_flake_shells(project, names, sorted(paths | set(read)), before, started_ns)
        return names

    def store_flake_shells(
        self,
        project: str,
        names: list[str],
        paths: list[str] | None = None,
        before: Mapping[str, str] | None = None,
        started_ns: int | None = None,
    ) -> None:
        if paths is None:
            paths = self._shells_watched(project) + project_nix_files(project)
        digests, stamps = _settle(
            sorted(paths), before or {}, started_ns if started_ns is not None else time.time_ns()
        )
        data = {
            "key": {"system": current_system(), "inputs": digests},
            "stamps": stamps,
            "names": names,
        }
        path = self._shells_file(project)
        self._make_private_dir(os.path.dirname(path))
        write_json_atomically(path, data)

    # -- the last listing ------------------------------------------------------------------------

    def _listing_file(self, roots: list[str]) -> str:
        absolute = sorted(os.path.abspath(os.path.expanduser(r)) for r in roots)
        digest = hashlib.sha256(json.dumps(absolute).encode()).hexdigest()[:16]
        return os.path.join(self.root, "listings", f"{digest}.json")

    def last_listing(self, roots: list[str]) -> dict[str, str]:
        """What the last scan of ``roots`` found: kernel name -> project directory ({} if
        unknown). A hint only: the manager describes a project afresh before trusting it."""
        try:
            with open(self._listing_file(roots), encoding="utf-8") as f:
                kernels = json.load(f)["kernels"]
        except (OSError, ValueError, KeyError, TypeError):
            return {}
        if not isinstance(kernels, dict):
            return {}
        return {k: v for k, v in kernels.items() if isinstance(k, str) and isinstance(v, str)}

    def store_listing(self, roots: list[str], kernels: Mapping[str, str]) -> None:
        path = self._listing_file(roots)
        self._make_private_dir(os.path.dirname(path))
        write_json_atomically(path, {"kernels": dict(kernels)})


def write_json_atomically(
    path: str, data: object, indent: int | None = None, mode: int | None = None
) -> None:
    """Replace ``path`` with ``data`` as JSON: a reader sees the old file or the new one, never
    half of one, even after a crash (the data reaches the disk before the rename).

    The temporary file (``.<name>-*.tmp``, in the same directory so the rename is atomic) is
    removed if anything fails. It is created private (0600); ``mode`` sets other permissions.
    Compact unless ``indent`` is given. The directory must exist.
    """
    import tempfile  # writes happen on a miss only: keep the warm path's imports small

    directory, name = os.path.split(path)
    stem = name.rsplit(".", 1)[0]
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}-", suffix=".tmp", dir=directory or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if indent is None:
                json.dump(data, f, separators=(",", ":"))
            else:
                json.dump(data, f, indent=indent)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _prepare(
    source: NixSource, nix_path: str, slot: str, dev_env: nix.DevEnv, version: str, line: str
) -> tuple[devshell.Prepared, str | None]:
    """The kernel's environment by the rules of ``nix develop`` (flakes) or ``nix-shell`` (Nix
    files) of this Nix version; and nix-shell's bashInteractive, when there is one."""
    from . import devshell

    data = dev_env.data
    bash = None
    derivation = None
    if source.is_flake:
        semantics = devshell.DEVELOP
    else:
        semantics = devshell.NIX_SHELL
        bash = devshell.nix_shell_bash(nix_path, os.path.join(slot, "bash"))
        name = (data.get("variables", {}).get("name") or {}).get("value")
        if isinstance(name, str):
            drv = devshell.shell_derivation(dev_env.derivations, name) or (
                devshell.shell_derivation(dev_env.derivations, name[: -len("-env")])
                if name.endswith("-env")
                else None
            )
            derivation = devshell.read_derivation(drv) if drv else None
    prepared = devshell.prepare(
        data,
        semantics=semantics,
        version=version,
        impl=devshell.implementation(line),
        # Where nix develop would put outputs/: the flake's directory (the project's, as the
        # kernel's hook runs there); one cached environment serves every kernel of the source.
        project=source.local_dir or slot,
        slot=slot,
        derivation=derivation,
        gcroot=_profile_target(slot),
        bash=bash,
    )
    return prepared, os.path.dirname(os.path.dirname(bash)) if bash else None


def _write_file(slot: str, name: str, content: str) -> None:
    """Write a content-addressed file of the slot atomically (an existing one is the same)."""
    import tempfile

    path = os.path.join(slot, name)
    if os.path.exists(path):
        return
    fd, tmp = tempfile.mkstemp(prefix=".file-", suffix=".tmp", dir=slot)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _drop_unused_files(slot: str, keep: list[str]) -> None:
    """Remove the files of earlier evaluations that the current entry no longer names."""
    wanted = {os.path.basename(p) for p in keep}
    for name in os.listdir(slot):
        if re.fullmatch(r"(rc|attrs|attr)-[0-9a-f]{16}(\.sh|\.json)?", name) and name not in wanted:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(slot, name))


def _files_in(entry: dict, slot: str) -> bool:
    """The entry's files are the slot's own (bash sources the rc: never one from elsewhere)."""
    return all(os.path.dirname(p) == slot for p in entry["files"]) and (
        not entry["rc"] or entry["rc"] in entry["files"]
    )


def _detect_kernels(source: NixSource, variables: Mapping[str, str]) -> dict:
    """The entry's ``kernels`` field (R, Julia... that the environment carries), found in the
    project's directory, as a kernel would start there."""
    from . import kernels  # on an evaluation only: the warm path never imports it

    return {KERNELS_FIELD: kernels.detect(variables, cwd=source.local_dir)}


def _nix_or_none(nix_executable: str | None) -> str | None:
    """The nix to use, or None: a cached environment can be checked and used without Nix."""
    try:
        return nix.find_nix(nix_executable)
    except nix.NixNotFoundError:
        return None


def _unchanged(recorded: Mapping[str, str], entry: Mapping, paths: Iterable[str]) -> dict:
    """The recorded digests of the ``paths`` whose stamp shows them untouched since, and of
    those still absent (one ``lstat``; most watched names never exist)."""
    stamps = entry.get("stamps")
    stamps = stamps if isinstance(stamps, dict) else {}
    unchanged = {}
    for p in paths:
        digest = recorded.get(p, "absent")
        if digest == "absent":
            if not os.path.lexists(p):
                unchanged[p] = digest
        elif p in stamps and inputs.stamp_matches(p, stamps[p]):
            unchanged[p] = digest
    return unchanged


def _settle(
    paths: list[str], before: Mapping[str, str], started_ns: int
) -> tuple[dict[str, str], dict[str, list[int]]]:
    """The digests to record for ``paths`` after an evaluation that started at ``started_ns``,
    and the stamps that let a warm start skip reading them.

    A path hashed before Nix ran keeps that digest (if it changed since, the next start sees the
    difference). A path first learnt from Nix's log that changed since the evaluation started
    is recorded as changed: Nix may have read the older content. A flake.lock is what Nix
    wrote, if it wrote one (a new input): the evaluation used that content."""
    digests: dict[str, str] = {}
    stamps: dict[str, list[int]] = {}
    for path in paths:
        after = file_digest(path)
        if os.path.basename(path) == "flake.lock":
            digest = after
        elif path in before:
            digest = before[path]
        elif inputs.newest_change_ns(path) >= started_ns:
            digest = inputs.CHANGED_DURING_EVALUATION
        else:
            digest = after
        digests[path] = digest
        if digest == after and digest.startswith("sha256:"):
            stamped = inputs.stamp(path)  # after the read: a change in between is racy, unstamped
            if stamped:
                stamps[path] = stamped
    return digests, stamps


class _SearchPathQuery:
    """``builtins.nixPath`` asked of Nix on a thread while the evaluation runs (a miss only),
    then each entry resolved: the search path that decided ``<nixpkgs>``."""

    def __init__(self, nix_path: str) -> None:
        import threading

        # Resolved now too: a channel switched while Nix runs must not look current.
        named = os.environ.get("NIX_PATH", "").split(":")
        self._before = inputs.search_path_targets([e.split("=", 1)[-1] for e in named], os.environ)
        self._entries: list[str] = []
        self._thread = threading.Thread(
            target=lambda: self._entries.extend(nix.search_path(nix_path)), daemon=True
        )
        self._thread.start()

    def result(self) -> dict[str, str]:
        self._thread.join()
        now = inputs.search_path_targets(self._entries, os.environ)
        return {p: self._before.get(p, target) for p, target in now.items()}


INPUT_ROOT = "flake-input"


def _root_flake_inputs(nix_path: str, source: NixSource, slot: str) -> None:
    """GC-root the store paths of the flake's inputs next to its environment, as nix-direnv does
    (``direnvrc``: ``nix flake archive --json``, then a root per path), so that evaluating again
    after a garbage collection needs no network. Best effort: a failure costs only that."""
    if source.local_dir is not None and not _has_locked_inputs(source.local_dir):
        return  # nothing to fetch, nothing to keep
    paths = nix.flake_input_paths(nix_path, source.location)
    if paths and not nix.add_gc_roots(nix_path, paths, os.path.join(slot, INPUT_ROOT)):
        return
    # Roots of inputs the flake no longer has: links numbered past the current ones.
    keep = {INPUT_ROOT} | {f"{INPUT_ROOT}-{i}" for i in range(1, len(paths))} if paths else set()
    for name in os.listdir(slot):
        if re.fullmatch(rf"{INPUT_ROOT}(-\d+)?", name) and name not in keep:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(slot, name))


def _has_locked_inputs(directory: str) -> bool:
    try:
        with open(os.path.join(directory, "flake.lock"), encoding="utf-8") as f:
            nodes = json.load(f).get("nodes", {})
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(nodes, dict) and len(nodes) > 1


def _roots(source: NixSource) -> list[str]:
    """Where the source's own files live: store copies of them map back here."""
    directory = source.local_dir
    if directory is None:
        return []
    top = nix.git_toplevel(directory) if source.is_flake else None
    return [directory, top] if top and top != directory else [directory]


def _profile_target(slot: str) -> str | None:
    try:
        return os.path.realpath(os.path.join(slot, PROFILE))
    except OSError:
        return None


def _drop_old_generations(slot: str) -> None:
    """Remove GC roots of older evaluations: only the current environment stays protected."""
    current = (
        os.readlink(os.path.join(slot, PROFILE))
        if os.path.islink(os.path.join(slot, PROFILE))
        else None
    )
    for name in os.listdir(slot):
        if re.fullmatch(rf"{PROFILE}-\d+-link", name) and name != current:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(slot, name))
        elif name.startswith(".") and name.endswith(".tmp"):
            # Left by a launcher killed while writing (write_json_atomically); never read.
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(slot, name))


def _stale_warning(source: NixSource, entry: dict, exc: Exception) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.get("created", 0)))
    return (
        f"WARNING: re-evaluating {source.describe()} failed, so this kernel runs in the "
        f"environment cached on {when}, which does not match the project's current Nix files.\n"
        f"{exc}\n"
        "Fix the Nix file and restart the kernel to get the current environment (set "
        "c.NixKernelSpecManager.stale_fallback = False to get an error instead)."
    )


def _well_formed(entry: object) -> bool:
    if not isinstance(entry, dict) or entry.get("schema") != SCHEMA:
        return False
    key = entry.get("key")
    variables = entry.get("variables")
    search_path = key.get("search_path", {}) if isinstance(key, dict) else None
    return (
        isinstance(key, dict)
        and isinstance(key.get("inputs"), dict)
        and isinstance(search_path, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in search_path.items())
        and isinstance(variables, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in variables.items())
        and isinstance(entry.get("rc"), str)
        and isinstance(entry.get("shell"), dict)
        and isinstance(entry.get("store_paths"), list)
        and all(isinstance(p, str) for p in entry["store_paths"])
        and isinstance(entry.get("files"), list)
        and all(isinstance(p, str) for p in entry["files"])
    )
