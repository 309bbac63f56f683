"""The environment cache: evaluated dev shells, kept valid and GC-rooted.

Each Nix source (a flake devShell, a Nix file) has a *slot* directory under the cache root::

    <root>/envs/<slug>-<hash>/
        entry.json          what the kernel needs to start: variables, the shellHook script,
                            and the key it was made under (inputs, system, Nix, NIX_PATH)
        profile -> profile-N-link -> /nix/store/...-env     the GC root (nix --profile)
        lock                held while one launcher evaluates; the others wait and reuse

An entry is *fresh* when its key still matches: the content of every input file (``flake.nix``,
``flake.lock``, ``shell.nix``, ``default.nix``, every ``*.nix`` in the project, and every file a
non-flake evaluation read), the system, the Nix binary and ``NIX_PATH``. It is *stale* when the
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
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import NamedTuple

from . import environment, nix
from .describe import NixSource, current_system, slugify
from .discovery import walk_dirs

SCHEMA = 1
ENTRY_FILE = "entry.json"
PROFILE = "profile"

FRESH, STALE, NONE = "fresh", "stale", "none"

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
        return "directory"
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


class EnvironmentCache:
    """Evaluated environments under ``root``; see the module docstring for the layout."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))

    # -- layout -----------------------------------------------------------------------------

    def slot(self, source: NixSource, system: str | None = None) -> str:
        system = system or current_system()
        ident = json.dumps([source.kind, source.location, source.attr, system])
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
        return entry if _well_formed(entry) else None

    def key(self, source: NixSource, nix_path: str | None, inputs: list[str]) -> dict:
        """The key an entry for ``source`` must carry to be fresh now (hashes ``inputs``)."""
        return {
            "source": {"kind": source.kind, "location": source.location, "attr": source.attr},
            "system": current_system(),
            "nix": nix.nix_identity(nix_path) if nix_path else None,
            "nix_path": None if source.is_flake else os.environ.get("NIX_PATH", ""),
            "inputs": {path: file_digest(path) for path in inputs},
        }

    def state(self, entry: dict | None, source: NixSource, nix_path: str | None) -> str:
        """``fresh``, ``stale`` or ``none`` (no entry, or its store paths were collected)."""
        if entry is None or not all(os.path.exists(p) for p in entry["store_paths"]):
            return NONE
        recorded = entry["key"]
        inputs = sorted(set(recorded["inputs"]) | set(watched_inputs(source)))
        now = self.key(source, nix_path, inputs)
        if now["nix"] is None:
            # No Nix to re-evaluate with: the environment it made is still the best we have.
            now["nix"] = recorded.get("nix")
        recorded_inputs = recorded.get("inputs", {})
        same_inputs = all(recorded_inputs.get(p, "absent") == d for p, d in now["inputs"].items())
        same_rest = all(now[k] == recorded.get(k) for k in ("source", "system", "nix", "nix_path"))
        return FRESH if same_inputs and same_rest else STALE

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
        import tempfile  # writes happen on a miss only: keep the warm path's imports small

        self._make_private_dir(slot)
        fd, tmp = tempfile.mkstemp(prefix=".entry-", suffix=".tmp", dir=slot)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entry, f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, os.path.join(slot, ENTRY_FILE))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def evaluate(
        self,
        source: NixSource,
        nix_path: str,
        on_line: Callable[[str], None] | None = None,
    ) -> dict:
        """Run Nix for ``source`` and store the result as its slot's entry (under the lock)."""
        slot = self.slot(source)
        self._make_private_dir(slot)
        version = nix.nix_version(nix_path)
        dev_env = nix.print_dev_env(
            nix_path, source, profile=os.path.join(slot, PROFILE), on_line=on_line
        )
        variables = environment.exported_variables(dev_env.data)
        hook = environment.shell_hook(dev_env.data)
        profile_target = _profile_target(slot)
        inputs = sorted(
            set(watched_inputs(source)) | set(_evaluated_inputs(dev_env.evaluated_files))
        )
        entry = {
            "schema": SCHEMA,
            "key": self.key(source, nix_path, inputs),
            "nix_version": version,
            "created": time.time(),
            "profile": profile_target,
            "store_paths": store_paths(variables, profile_target),
            "variables": variables,
            "rc": environment.rc_script(dev_env.data) if hook.strip() else "",
        }
        self.store(slot, entry)
        _drop_old_generations(slot, profile_target)
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
            return Resolved(entry, FRESH)  # type: ignore[arg-type]
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
        inputs = set(watched_inputs(source))
        if previous is not None:
            inputs.update(previous["key"].get("inputs", {}))
        key = self.key(source, nix_path, sorted(inputs))
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
    def _flake_stamp(project: str) -> list:
        stamp = []
        for name in ("flake.nix", "flake.lock"):
            try:
                st = os.stat(os.path.join(project, name))
                stamp.append([st.st_size, st.st_mtime_ns])
            except OSError:
                stamp.append(None)
        return stamp

    def flake_shells(self, project: str) -> list[str] | None:
        """The devShell names of the flake in ``project``, if known for its current files."""
        try:
            with open(self._shells_file(project), encoding="utf-8") as f:
                data = json.load(f)
            if data["stamp"] == self._flake_stamp(project) and all(
                isinstance(n, str) for n in data["names"]
            ):
                return list(data["names"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def store_flake_shells(self, project: str, names: list[str]) -> None:
        import tempfile

        path = self._shells_file(project)
        self._make_private_dir(os.path.dirname(path))
        fd, tmp = tempfile.mkstemp(prefix=".shells-", dir=os.path.dirname(path))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"stamp": self._flake_stamp(project), "names": names}, f)
        os.replace(tmp, path)


def _nix_or_none(nix_executable: str | None) -> str | None:
    """The nix to use, or None: a cached environment can be checked and used without Nix."""
    try:
        return nix.find_nix(nix_executable)
    except nix.NixNotFoundError:
        return None


def _profile_target(slot: str) -> str | None:
    try:
        return os.path.realpath(os.path.join(slot, PROFILE))
    except OSError:
        return None


def _drop_old_generations(slot: str, keep: str | None) -> None:
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
        elif name.startswith(".entry-") and name.endswith(".tmp"):
            # Left by a launcher killed while writing; it was never read.
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
    return (
        isinstance(key, dict)
        and isinstance(key.get("inputs"), dict)
        and isinstance(variables, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in variables.items())
        and isinstance(entry.get("rc"), str)
        and isinstance(entry.get("store_paths"), list)
        and all(isinstance(p, str) for p in entry["store_paths"])
    )
