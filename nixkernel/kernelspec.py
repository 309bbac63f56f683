"""The KernelSpecManager: nixkernel's kernels, as jupyter_server and JupyterLab see them.

:class:`NixKernelSpecManager` discovers projects under :attr:`~NixKernelSpecManager.project_dirs`
on a background thread (``nixkernel-refresh``), publishes each scan's kernelspecs as one
immutable snapshot and answers every listing and ``get_kernel_spec`` from it: the server's event
loop never waits on a directory walk or on Nix. Before the first scan ends, a kernel start is
answered from the last listing (kept in the cache directory), its project described afresh;
other names wait at most ``first_scan_wait``. Flakes' devShell names are learnt apart
(``nixkernel-shells``: ``nix eval``, a few at a time, each bounded by ``flake_shells_timeout``),
so a slow flake never holds up a re-scan. The server extension stops both threads when the
server stops. The ordinary kernelspecs (``python3``...) stay available unless turned off.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import platformdirs
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from traitlets import Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, default, validate

from . import interpreter, kernels, nix, projectargs
from .cache import EnvironmentCache
from .describe import (
    KIND_AUTO,
    KIND_FLAKE,
    KIND_SHELL_NIX,
    KIND_VENV,
    PROJECT_KERNEL_NAME,
    KernelTarget,
    NixSource,
    describe,
    target_source,
)
from .discovery import discover, project_at, within_reach
from .launch import LAUNCHER, MODE_CACHED, launcher_argv  # noqa: F401 (LAUNCHER: read from here too)

RESOURCES = str(Path(__file__).parent / "resources")
#: A plain virtualenv's kernel has Python's logo; the others, the Nix mark with Python's.
VENV_RESOURCES = str(Path(RESOURCES) / "venv")
LOGOS = sorted(p.name for p in Path(RESOURCES).glob("logo-*"))

#: Fields KernelSpec.to_dict() has beyond the ones nixkernel sets (they vary by jupyter_client).
_SPEC_DEFAULTS = {k: v for k, v in KernelSpec().to_dict().items() if k != "argv"}


#: Where a Jupyter configuration sets the kernels' transport encryption policy.
ENCRYPTION_CONFIG_SECTIONS = (
    "MappingKernelManager", "AsyncMappingKernelManager", "ServerKernelManager", "KernelManager",
)  # fmt: skip


def encryption_metadata(curve: bool) -> dict[str, list[str]]:
    """The kernelspec metadata jupyter_client (8.10+) reads to hand a kernel CurveZMQ keys."""
    return {"supported_encryption": [interpreter.CURVE]} if curve else {}


def resources_for(target: KernelTarget) -> str:
    """The directory of ``target``'s logos: Python's for a plain virtualenv, the Nix mark with
    Python's for the others."""
    return VENV_RESOURCES if target.kind == KIND_VENV else RESOURCES


_slots: dict[tuple[str, NixSource], str] = {}


def shell_facts(cache_root: str, source: NixSource) -> interpreter.ShellFacts | None:
    """What the cached environment of ``source`` offers (None: not evaluated): a ``stat`` per
    call once its slot's path is known (a slot's path never changes)."""
    slot = _slots.get((cache_root, source))
    if slot is None:
        slot = _slots[(cache_root, source)] = EnvironmentCache(cache_root).slot(source)
    return interpreter.cached_shell_facts(slot)


def without_python_problem(target: KernelTarget, cache: EnvironmentCache) -> KernelTarget:
    """``target``, with a problem if its shell was evaluated and has no python3 on its own
    PATH (a Go, Rust or library-only shell): such a kernel cannot start Python."""
    if (
        target.venv
        or target.problem
        or target.kernel is not None  # another language's kernel: not a Python one
        or target.kind not in (KIND_FLAKE, KIND_SHELL_NIX)
    ):
        return target
    source = target.nix_source()
    facts = shell_facts(cache.root, source) if source else None
    if facts is None or facts.python is not None:
        return target
    return target._replace(problem=NO_PYTHON_PROBLEM)


def flake_files_stamp(project: str) -> list:
    """flake.nix's and flake.lock's size and mtime: whether a flake changed since a timeout."""
    stamp: list = []
    for name in ("flake.nix", "flake.lock"):
        try:
            st = os.stat(os.path.join(project, name))
            stamp.append([st.st_size, st.st_mtime_ns])
        except OSError:
            stamp.append(None)
    return stamp


NO_PYTHON_PROBLEM = (
    "The shell has no Python: no python3 on its PATH (as last evaluated), so it cannot run a "
    f"Python kernel. To fix it, {interpreter.NO_PYTHON_HINT}."
)


class Snapshot(NamedTuple):
    """One scan's result, published whole by a single assignment and never changed after:
    a reader takes ``manager._snapshot`` once and sees one consistent listing, with no lock."""

    discovered: tuple[KernelTarget, ...]
    """The kernels the scan found (the project-following kernel is not one of them)."""
    kernels: Mapping[str, KernelTarget]
    """nixkernel's kernels by name, the project-following kernel included."""
    listing: Mapping[str, dict[str, Any]]
    """Their get_all_specs() entries, built once per scan."""


EMPTY = Snapshot((), MappingProxyType({}), MappingProxyType({}))


class NixKernelSpecManager(KernelSpecManager):
    """Offers every Nix dev shell, ``shell.nix`` and virtualenv under :attr:`project_dirs` as a
    kernel that starts inside that environment."""

    project_dirs = List(
        Unicode(),
        help="""Directories searched for projects (flake.nix, shell.nix, .venv).
        Default: the Jupyter server's root directory (outside the server: c.ServerApp.root_dir
        if configured, else the current directory). A path that is not a directory is an error;
        a directory that does not exist only a warning (it is searched once it exists).""",
    ).tag(config=True)

    max_depth = Int(
        3,
        help="How many directory levels below each of project_dirs are searched for projects.",
    ).tag(config=True)

    cache_dir = Unicode(
        help="""Where evaluated environments are cached (and GC-rooted).
        Default: $NIXKERNEL_CACHE_DIR, else the user's cache directory (~/.cache/nixkernel).""",
    ).tag(config=True)

    nix_executable = Unicode(
        "",
        help="""The nix command to use. Default: `nix` on the server's PATH, else
        /nix/var/nix/profiles/default/bin/nix or ~/.nix-profile/bin/nix.""",
    ).tag(config=True)

    nix_args = Dict(
        key_trait=Unicode(),
        value_trait=List(Unicode()),
        help="""Extra Nix flags per project: {directory or glob: [flags]}, e.g.
        {"~/work/devenv-app": ["--impure"], "~/work/*": ["--option", "allow-import-from-derivation",
        "false"]}. They are given to every evaluation of the matching project's environments
        (`nix print-dev-env`, and `nix develop` / `nix-shell` in direct mode), after the flags of
        the project's .envrc (`use flake . --impure`, `use nix --arg x y`, read as nix-direnv
        does, never run). A key is a project directory (~ allowed) or a glob on its absolute
        path; for venv_library_shell, the directory of that shell. Changing them re-evaluates.""",
    ).tag(config=True)

    launch_mode = Enum(
        ["cached", "direct"],
        default_value="cached",
        help="""How kernels enter their environment. 'cached': from nixkernel's cache of
        `nix print-dev-env` (fast; re-evaluates when a Nix file changes). 'direct': through
        `nix develop -c` / `nix-shell --run` at every start (exact Nix semantics, slower).""",
    ).tag(config=True)

    stale_fallback = Bool(
        True,
        help="""When re-evaluating a changed Nix file fails, start the kernel in the last good
        environment (with a warning in the kernel's log) instead of the error kernel.""",
    ).tag(config=True)

    include_venvs = Bool(
        True,
        help="""Offer virtualenvs (.venv with pyvenv.cfg): alone as their own kernels, and inside
        a Nix project as the Python that runs in the project's shell.""",
    ).tag(config=True)

    venv_library_shell = Unicode(
        "",
        help="""A Nix environment applied to kernels of projects that have a .venv but no Nix
        file, to provide the libraries wheels need on NixOS (libstdc++, zlib...). A flake
        reference with an attribute (`/etc/nixos#devShells.x86_64-linux.pylibs`, or
        `/etc/nixos#pylibs` for a devShell), a flake directory, or a .nix file.""",
    ).tag(config=True)

    keep_native_kernels = Bool(
        True,
        help="""Also offer the ordinary kernelspecs (python3 and those installed with
        `jupyter kernelspec install`), so notebooks that name them still open.""",
    ).tag(config=True)

    project_kernel = Bool(
        True,
        help="""Offer 'Python (this project)', a kernel that starts in the environment of the
        project enclosing the notebook's folder, so one kernel name works in every project.""",
    ).tag(config=True)

    discover_flake_shells = Bool(
        True,
        help="""Learn each flake's devShell names (`nix eval`, in the background, cached) so
        every devShell gets a kernel; until then a flake offers its default shell.""",
    ).tag(config=True)

    refresh_interval = Float(
        30.0,
        help="""Seconds between background re-scans of project_dirs: a project added or removed
        shows up in the next listing after that, without restarting the server.""",
    ).tag(config=True)

    first_scan_wait = Float(
        2.0,
        help="""Seconds a kernel start may wait for the server's first scan of project_dirs,
        for a kernel name the last listing (kept in cache_dir) does not have. The server asks
        for a kernel's spec on its event loop, which stops everything else while it waits;
        known names, the project-following kernel and the ordinary kernelspecs never wait.""",
    ).tag(config=True)

    flake_shells_timeout = Float(
        60.0,
        help="""Seconds `nix eval` may take to list one flake's devShells; then it is stopped
        and the flake offers its default shell until its files change or the server restarts.
        The listing never waits for it: JupyterLab polls it about once a minute.""",
    ).tag(config=True)

    flake_shells_jobs = Int(
        2,
        help="How many flakes' devShell names are evaluated at the same time, in the background.",
    ).tag(config=True)

    warm_on_start = Bool(
        False,
        help="""When the server starts, evaluate the environments whose cache is stale or
        missing, two at a time on a background thread (never on the event loop), so the first
        kernel start of the day does not wait for Nix. What it did goes to the server's log.""",
    ).tag(config=True)

    offer_languages = List(
        Unicode(),
        help="""Languages whose kernels are offered from each shell, case-insensitive (e.g.
        ["python", "R"]); empty (the default): every language. Besides its Python kernel, an
        evaluated shell offers every kernel it carries: kernelspecs in the share/jupyter/kernels
        of its packages (XDG_DATA_DIRS, and beside each bin/ on its PATH), R with IRkernel,
        Julia with IJulia, evcxr for Rust. "python" covers each shell's Python kernel.""",
    ).tag(config=True)

    hide_languages = List(
        Unicode(),
        help="""Languages whose kernels are never offered from shells, case-insensitive (e.g.
        ["julia"]). "python" hides each shell's Python kernel ('Python (this project)' is
        project_kernel's).""",
    ).tag(config=True)

    hide_kernelspecs = List(
        Unicode(),
        help="""Names of kernelspecs found in shells that are not offered (e.g. ["ir"]; see the
        'spec' of `jupyter nixkernel list --json`). ipykernel's own spec (python3), which a
        Python with ipykernel ships, is never offered apart: it is the shell's Python kernel.""",
    ).tag(config=True)

    keep_fresh = Bool(
        True,
        help="""Under a server: re-evaluate in the background, one at a time, the environments of
        kernels started in the last keep_fresh_hours hours once their Nix files change (and then
        stay unchanged for keep_fresh_interval seconds), so the next start is warm. What it does
        goes to the server's log.""",
    ).tag(config=True)

    keep_fresh_interval = Float(
        10.0, help="Seconds between two looks at the recently used environments (keep_fresh)."
    ).tag(config=True)

    keep_fresh_hours = Float(
        12.0, help="How long after its last start an environment is kept fresh (keep_fresh)."
    ).tag(config=True)

    @default("project_dirs")
    def _default_project_dirs(self) -> list[str]:
        # The server's root directory: the ServerApp's own, or (for the command line, which
        # reads the same configuration files) c.ServerApp.root_dir; else the current directory.
        root = getattr(self.parent, "root_dir", None) or self.config.get("ServerApp", {}).get(
            "root_dir"
        )
        return [os.path.expanduser(str(root)) if root else os.getcwd()]

    @default("cache_dir")
    def _default_cache_dir(self) -> str:
        return os.environ.get("NIXKERNEL_CACHE_DIR") or platformdirs.user_cache_dir("nixkernel")

    # -- validation: a wrong setting fails (or warns) where it is set, saying how to fix it -------

    @validate("refresh_interval", "flake_shells_timeout")
    def _positive_seconds(self, proposal: dict[str, Any]) -> float:
        value, name = proposal["value"], proposal["trait"].name
        if not value > 0:  # also refuses NaN
            raise TraitError(
                f"c.NixKernelSpecManager.{name} must be a number of seconds above 0, not {value!r}."
            )
        return value

    @validate("first_scan_wait")
    def _non_negative_seconds(self, proposal: dict[str, Any]) -> float:
        value = proposal["value"]
        if not value >= 0:
            raise TraitError(
                f"c.NixKernelSpecManager.first_scan_wait must be 0 or more seconds, not {value!r}."
            )
        return value

    @validate("max_depth")
    def _valid_depth(self, proposal: dict[str, Any]) -> int:
        if proposal["value"] < 0:
            raise TraitError(
                f"c.NixKernelSpecManager.max_depth must be 0 (the project_dirs themselves) or "
                f"more, not {proposal['value']}."
            )
        return proposal["value"]

    @validate("flake_shells_jobs")
    def _valid_jobs(self, proposal: dict[str, Any]) -> int:
        if proposal["value"] < 1:
            raise TraitError(
                f"c.NixKernelSpecManager.flake_shells_jobs must be 1 or more, not "
                f"{proposal['value']}."
            )
        return proposal["value"]

    @validate("project_dirs")
    def _valid_project_dirs(self, proposal: dict[str, Any]) -> list[str]:
        """A path that is not a directory is an error. A missing directory is only a warning
        (unlike nb_conda_kernels' kernelspec_path): one configuration often serves several
        machines, and a directory on a removable or network drive comes back; the listing
        picks it up when it does."""
        for directory in proposal["value"]:
            path = os.path.abspath(os.path.expanduser(directory)) if directory else ""
            if not path or (os.path.exists(path) and not os.path.isdir(path)):
                raise TraitError(
                    f"c.NixKernelSpecManager.project_dirs: {directory!r} is not a directory. "
                    "List directories that hold projects (e.g. ['~/projects'])."
                )
            if not os.path.exists(path):
                self.log.warning(
                    "nixkernel: project directory %s does not exist (yet): it offers no "
                    "kernels until it does. Fix: create it, or remove it from "
                    "c.NixKernelSpecManager.project_dirs.",
                    path,
                )
        return proposal["value"]

    @validate("cache_dir")
    def _valid_cache_dir(self, proposal: dict[str, Any]) -> str:
        path = os.path.expanduser(proposal["value"])
        if os.path.exists(path) and not os.path.isdir(path):
            raise TraitError(
                f"c.NixKernelSpecManager.cache_dir: {path} exists and is not a directory. "
                "Point cache_dir at a directory (it is created if missing)."
            )
        return proposal["value"]

    @validate("nix_executable")
    def _valid_nix_executable(self, proposal: dict[str, Any]) -> str:
        if proposal["value"]:
            try:
                nix.find_nix(proposal["value"])
            except nix.NixNotFoundError as exc:
                # Only a warning: Nix may be installed after the server starts, and every
                # kernel of a missing Nix says the same in the notebook.
                self.log.warning("nixkernel: %s %s", exc.message, exc.hint)
        return proposal["value"]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._snapshot = EMPTY
        self._scanned = threading.Event()
        self._scan_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._entry_kernels = kernels.EntryIndex()
        self._learner: threading.Thread | None = None
        self._nix_running: set[Any] = set()  # `nix eval` processes, killed on stop
        self._nix_lock = threading.Lock()
        self._shells_timed_out: dict[str, list] = {}  # flake -> its files' stamp then
        self._last_listing: dict[str, str] | None = None  # as in the cache directory
        # The validator has warned about these already.
        self._missing_dirs = [
            d for d in self.project_dirs if not os.path.isdir(os.path.expanduser(d))
        ]
        self._freshener: Any = None

    # -- discovery -------------------------------------------------------------------------

    @property
    def cache(self) -> EnvironmentCache:
        return EnvironmentCache(self.cache_dir)

    def scan(self) -> list[KernelTarget]:
        """Walk project_dirs now and describe every project: no Nix runs here."""
        cache = self.cache
        library_shell = self.venv_library_shell or None
        targets: list[KernelTarget] = []
        for project in discover(self.project_dirs, self.max_depth):
            shells = cache.flake_shells(project.path) if project.flake else None
            targets.extend(describe(project, shells, self.include_venvs, library_shell))
        return [without_python_problem(t, cache) for t in self.with_shell_kernels(targets, cache)]

    def kernel_filter(self) -> kernels.KernelFilter:
        return kernels.KernelFilter.make(
            self.offer_languages, self.hide_languages, self.hide_kernelspecs
        )

    def with_shell_kernels(
        self, targets: list[KernelTarget], cache: EnvironmentCache
    ) -> list[KernelTarget]:
        """Each Nix environment's kernels, from its cached entry (a stat; never Nix): its
        Python kernel where it has one, and the kernels of other languages it carries."""
        kernel_filter = self.kernel_filter()
        try:  # one listing of the cache instead of a digest and a stat per unevaluated shell
            evaluated = set(os.listdir(os.path.join(cache.root, "envs")))
        except OSError:
            evaluated = set()
        result: list[KernelTarget] = []
        for target in targets:
            source = target.nix_source() if evaluated else None
            slot = self._entry_kernels.slot(cache, source) if source else None
            shell = None
            if slot is not None and os.path.basename(slot) in evaluated:
                shell = self._entry_kernels.kernels(slot)
            result.extend(self._entry_kernels.offered(target, shell, kernel_filter))
        return result

    def resource_dir_for(self, target: KernelTarget) -> str:
        """Where the kernel's logos are: its own spec's directory, else nixkernel's."""
        if target.kernel is not None and target.kernel.resource_dir and target.kernel.logos:
            return target.kernel.resource_dir
        return resources_for(target)

    def refresh(self) -> list[KernelTarget]:
        """Re-scan synchronously and publish the new listing."""
        with self._scan_lock:
            targets = self.scan()
            self._snapshot = self._make_snapshot(targets)  # one assignment: old or new, whole
            self._scanned.set()
        return targets

    def _make_snapshot(self, targets: list[KernelTarget]) -> Snapshot:
        own = {t.name: t for t in targets}
        if self.project_kernel:
            own[PROJECT_KERNEL_NAME] = self.project_kernel_target()
        # Built once per scan: JupyterLab polls the listing every minute per tab.
        listing = {name: self._listing_entry(name, t) for name, t in own.items()}
        discovered = tuple(t for name, t in own.items() if name != PROJECT_KERNEL_NAME)
        return Snapshot(discovered, MappingProxyType(own), MappingProxyType(listing))

    def _listing_entry(self, name: str, target: KernelTarget) -> dict[str, Any]:
        """A get_all_specs() entry. Under a server it is also the REST model itself (``name``,
        ``spec``, ``resources``): jupyter_server then uses it as is, instead of building each
        model on a worker thread with a glob of the resource directory (a thread hop and a glob
        per kernel: see "Warm /api/kernelspecs" in docs/benchmarks.md). The
        model has no ``resource_dir``, as a gateway's have none: it would only send a server
        path to every client, in every poll."""
        spec = self.spec_dict(target)
        base_url = getattr(self.parent, "base_url", None)
        if not isinstance(base_url, str):
            return {"resource_dir": self.resource_dir_for(target), "spec": spec}
        from jupyter_server.utils import url_path_join

        kernel = target.kernel
        own = kernel is not None and self.resource_dir_for(target) == kernel.resource_dir
        resources = {
            os.path.splitext(logo)[0]: url_path_join(base_url, "kernelspecs", name, logo)
            for logo in (kernel.logos if own and kernel else LOGOS)
        }
        return {"name": name, "spec": spec, "resources": resources}

    def targets(self) -> list[KernelTarget]:
        """The discovered kernels (waiting for the first scan: never call it on the event loop)."""
        return list(self._wait_for_scan().discovered)

    def learn_flake_shells(self) -> bool:
        """Evaluate the devShell names of flakes whose names are not cached, at most
        ``flake_shells_jobs`` at a time, each for at most ``flake_shells_timeout`` seconds.
        Slow (runs Nix): only for the background thread and the command line. Returns whether
        any were learnt."""
        try:
            nix_path = nix.find_nix(self.nix_executable or None)
        except nix.NixNotFoundError:
            return False
        cache = self.cache
        projects = {t.project for t in self._snapshot.discovered if t.kind == KIND_FLAKE}
        todo = [
            project
            for project in sorted(projects)
            if cache.flake_shells(project) is None
            and self._shells_timed_out.get(project) != flake_files_stamp(project)
        ]
        learnt: list[str] = []
        lock = threading.Lock()

        def work() -> None:
            while not self._stop.is_set():
                with lock:
                    if not todo:
                        return
                    project = todo.pop(0)
                if self._learn_flake(nix_path, project):
                    learnt.append(project)

        workers = [
            threading.Thread(target=work, name="nixkernel-shells", daemon=True)
            for _ in range(min(self.flake_shells_jobs, len(todo)))
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return bool(learnt)

    def _learn_flake(self, nix_path: str, project: str) -> bool:
        """Learn one flake's devShell names and cache them (with the files the evaluation read,
        and the project's Nix flags). Returns whether it did."""
        stamp = flake_files_stamp(project)
        flags = projectargs.with_project_args(
            NixSource.flake_shell(project, "default"), self.nix_args
        ).args
        try:
            self.cache.evaluate_flake_shells(
                project,
                nix_path,
                flags,
                timeout=self.flake_shells_timeout,
                started=self._track_nix,
                # A failure is remembered (no names until the flake's files change), unless
                # stop_background_refresh killed Nix: that is not the flake's fault.
                remember_failure=lambda: not self._stop.is_set(),
            )
        except nix.NixTimeoutError as exc:
            if not self._stop.is_set():
                self.log.warning("nixkernel: %s", exc)
                # Remembered in memory only: a busy machine is no verdict on the flake.
                self._shells_timed_out[project] = stamp
            return False
        except nix.NixKernelError as exc:
            if self._stop.is_set():
                return False
            self.log.warning("nixkernel: cannot list the devShells of %s: %s", project, exc.message)
        finally:
            with self._nix_lock:
                self._nix_running = {p for p in self._nix_running if p.returncode is None}
        return True

    def _track_nix(self, proc: Any) -> None:
        with self._nix_lock:
            self._nix_running.add(proc)
        if self._stop.is_set():
            self._kill_nix()

    def _kill_nix(self) -> None:
        with self._nix_lock:
            for proc in self._nix_running:
                if proc.returncode is None:  # not reaped yet: its pid is still its own
                    with contextlib.suppress(OSError):  # its own group: Nix and its children
                        os.killpg(proc.pid, signal.SIGKILL)

    def start_background_refresh(self) -> None:
        """Scan now and every refresh_interval seconds on a daemon thread, until
        :meth:`stop_background_refresh` (the server extension calls it when the server stops).
        """
        if self._thread is not None or self._stop.is_set():
            return
        self._thread = threading.Thread(
            target=_refresh_loop,
            args=(weakref.ref(self), self._stop),
            name="nixkernel-refresh",
            daemon=True,
        )
        self._thread.start()
        if self._thread_allowed() and hasattr(self.parent, "cleanup_extensions"):
            from .extension import stop_with_server

            stop_with_server(self.parent, self)

    def stop_background_refresh(self, timeout: float | None = None) -> None:
        """Stop re-scanning and learning devShell names, killing any `nix eval` under way.
        With ``timeout``, wait up to that many seconds for the threads to end."""
        self._stop.set()
        self._kill_nix()
        if timeout is None:
            return
        for thread in (self._thread, self._learner):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)

    def _refresh_in_background(self) -> None:
        """One turn of the refresh thread: scan and publish, remember the listing, and set
        devShell names learning (apart: a slow flake never holds up the next scan)."""
        self._warn_about_missing_dirs()
        try:
            self.refresh()
        except Exception:  # keep serving the last good listing
            self.log.exception("nixkernel: scanning %s failed", self.project_dirs)
            self._scanned.set()
        else:
            self._remember_listing(self._snapshot)
        if self.discover_flake_shells and not self._stop.is_set():
            learner = self._learner
            if learner is None or not learner.is_alive():
                self._learner = threading.Thread(
                    target=self._learn_in_background, name="nixkernel-shells", daemon=True
                )
                self._learner.start()

    def _learn_in_background(self) -> None:
        try:
            if self.learn_flake_shells() and not self._stop.is_set():
                self.refresh()  # publish the new shells now, not at the next interval
        except Exception:  # the listing goes on without them
            self.log.exception("nixkernel: learning the devShells of flakes failed")

    def _warn_about_missing_dirs(self) -> None:
        """Say once (not at every scan) that a project directory is gone, and when it is back.
        A missing directory costs one stat per scan."""
        missing = [d for d in self.project_dirs if not os.path.isdir(os.path.expanduser(d))]
        for directory in sorted(set(missing) - set(self._missing_dirs)):
            self.log.warning(
                "nixkernel: project directory %s does not exist (any more): no kernels from it "
                "until it is back.",
                directory,
            )
        self._missing_dirs = missing

    def _remember_listing(self, snapshot: Snapshot) -> None:
        """Keep the names the scan found in the cache directory, so that the next server can
        start a kernel of a known name before its own first scan ends."""
        kernels = {t.name: t.project for t in snapshot.discovered}
        if kernels == self._recalled_listing():
            return
        try:
            self.cache.store_listing(self.project_dirs, kernels)
        except OSError as exc:  # a read-only cache costs only the early answer
            self.log.warning(
                "nixkernel: cannot remember the listing in %s: %s", self.cache_dir, exc
            )
        self._last_listing = kernels

    def _recalled_listing(self) -> dict[str, str]:
        if self._last_listing is None:
            self._last_listing = self.cache.last_listing(self.project_dirs)
        return self._last_listing

    def _recall(self, name: str) -> KernelTarget | None:
        """Kernel ``name`` as the last listing knew it, described afresh from its project's own
        files (a few stats, not the walk): only if that project still offers it, where the
        walk would find it. Kernel names come from notebooks; this one selects nothing that
        discovery would not."""
        project_dir = self._recalled_listing().get(name)
        if project_dir is None or not within_reach(project_dir, self.project_dirs, self.max_depth):
            return None
        project = project_at(project_dir)
        if project is None:
            return None
        shells = self.cache.flake_shells(project.path) if project.flake else None
        library_shell = self.venv_library_shell or None
        for target in describe(project, shells, self.include_venvs, library_shell):
            if target.name == name:
                return target
        return None

    def _wait_for_scan(self) -> Snapshot:
        """The current snapshot, after the first scan (which this may wait for, unbounded)."""
        if not self._scanned.is_set():
            if self._thread_allowed() and not self._stop.is_set():
                self.start_background_refresh()
                self._scanned.wait()
            else:
                self.refresh()
        return self._snapshot

    def _first_scan_pending(self) -> bool:
        """Whether a caller on the server's event loop would wait for the first scan now."""
        return not self._scanned.is_set() and self._thread_allowed() and not self._stop.is_set()

    def _thread_allowed(self) -> bool:
        # Under a server, listings are served from memory and refreshed in the background;
        # elsewhere (the command line, a script) a synchronous scan is what the caller wants.
        return self.parent is not None and hasattr(self.parent, "web_app")

    # -- kernelspecs -----------------------------------------------------------------------

    def launcher_argv(self, target: KernelTarget) -> list[str]:
        """The kernel command: the server's own Python running nixkernel's launcher, with
        this manager's settings (built beside the launcher's parser: launch.launcher_argv)."""
        return launcher_argv(
            target,
            cache_dir=os.path.abspath(os.path.expanduser(self.cache_dir)),
            library_shell=self.venv_library_shell,
            nix=self.nix_executable,
            nix_args=self.nix_args_for(target),
            mode=self.launch_mode,
            stale=self.stale_fallback,
            venvs=self.include_venvs,
        )

    def source_of(self, target: KernelTarget) -> NixSource | None:
        """The Nix environment ``target`` starts in under this manager's settings (its library
        shell, ``nix_args`` and the project's ``.envrc``), or None (a plain venv)."""
        return target_source(target, self.venv_library_shell or None, self.nix_args)

    def warm_plan(self, targets: Iterable[KernelTarget]) -> list[tuple[str, NixSource]]:
        """What warming ``targets`` evaluates: (kernel name, source) for each distinct Nix
        environment (one per cache slot), named by the first kernel that uses it. Used by
        `jupyter nixkernel warm` and by ``warm_on_start``."""
        seen: set[str] = set()
        jobs = []
        for target in targets:
            source = self.source_of(target)
            if source is None:
                continue
            slot = self.cache.slot(source)
            if slot not in seen:
                seen.add(slot)
                jobs.append((target.name, source))
        return jobs

    def nix_args_for(self, target: KernelTarget) -> dict[str, list[str]]:
        """The entries of :attr:`nix_args` that may apply to ``target``'s environment: those
        matching its directory, or all for the project-following kernel (which finds its
        project when it starts)."""
        if not self.nix_args or target.kind == KIND_AUTO:
            return dict(self.nix_args)
        source = target.nix_source(self.venv_library_shell or None)
        directory = source.local_dir if source is not None else None
        if directory is None:
            return {}
        here = os.path.normpath(directory)
        return {k: list(v) for k, v in self.nix_args.items() if projectargs.matches(k, here)}

    def spec_dict(self, target: KernelTarget) -> dict[str, Any]:
        """The kernel.json content for ``target`` (a plain dict: listings build a thousand)."""
        if target.kernel is not None:
            return self._shell_kernel_spec_dict(target, target.kernel)
        return {
            **_SPEC_DEFAULTS,
            "argv": self.launcher_argv(target),
            "env": {},
            "display_name": target.display_name,
            "language": "python",
            "interrupt_mode": "signal",
            "metadata": {
                "debugger": True,
                **encryption_metadata(self.declares_curve(target)),
                "nixkernel": self._metadata(target),
            },
        }

    def transport_encryption_policy(self) -> str:
        """The server's ``transport_encryption`` ("disabled", "auto", "required"): its kernel
        manager's, else what the configuration (the same files for the command line) says."""
        value = getattr(getattr(self.parent, "kernel_manager", None), "transport_encryption", None)
        if value is None:
            for section in ENCRYPTION_CONFIG_SECTIONS:
                if section in self.config and "transport_encryption" in self.config[section]:
                    value = self.config[section]["transport_encryption"]
                    break
        return str(value or "disabled").lower()

    def declares_curve(self, target: KernelTarget) -> bool:
        """Whether ``target``'s spec offers CurveZMQ encryption: when its environment's ipykernel
        is known to support it, so that under "auto" a kernel that cannot is never handed keys
        (it would not answer). Under "required" every spec declares it: a kernel that cannot
        encrypt then explains why in the notebook, instead of jupyter_client refusing with
        "kernelspec does not declare 'curve'"."""
        if self.transport_encryption_policy() == "required":
            return True
        if target.venv:
            return interpreter.supports_curve(interpreter.venv_ipykernel(target.venv))
        source = target_source(target, self.venv_library_shell or None)
        if source is None:
            return False
        facts = shell_facts(os.path.abspath(os.path.expanduser(self.cache_dir)), source)
        return facts is not None and interpreter.supports_curve(facts.ipykernel)

    def _shell_kernel_spec_dict(
        self, target: KernelTarget, kernel: kernels.FoundKernel
    ) -> dict[str, Any]:
        """The spec of a kernel the shell carries: its language, interrupt mode and metadata,
        nixkernel's launcher (the spec's own env is applied by it, over the shell's)."""
        metadata = dict(kernel.spec.get("metadata") or {})
        metadata.pop("nixkernel", None)
        return {
            **_SPEC_DEFAULTS,
            "argv": self.launcher_argv(target),
            "env": {},
            "display_name": target.display_name,
            "language": kernel.language,
            "interrupt_mode": kernel.interrupt_mode,
            "metadata": {**metadata, "nixkernel": self._metadata(target)},
        }

    @staticmethod
    def _metadata(target: KernelTarget) -> dict[str, str]:
        """What the spec says about its environment: kind, project, and the shell, venv and
        problem when there are any. (Name and display name are the spec's own; every byte here
        is repeated for each kernel in every listing JupyterLab polls.)"""
        info = {"kind": target.kind, "project": target.project, "shell": target.shell,
                "venv": target.venv, "problem": target.problem,
                "spec": target.kernel.name if target.kernel else None}  # fmt: skip
        return {key: value for key, value in info.items() if value}

    def kernel_spec_for(self, target: KernelTarget) -> KernelSpec:
        return self.kernel_spec_class(
            resource_dir=self.resource_dir_for(target), **self.spec_dict(target)
        )

    def project_kernel_target(self) -> KernelTarget:
        return KernelTarget(
            name=PROJECT_KERNEL_NAME,
            display_name="Python (this project)",
            kind=KIND_AUTO,
            project="",
        )

    def _own_kernel(self, name: str) -> KernelTarget | None:
        """nixkernel's kernel called ``name`` (lowercase), if any. Under a server, before the
        first scan ends, it comes from the last listing, or waits at most first_scan_wait."""
        if not self._first_scan_pending():
            return self._wait_for_scan().kernels.get(name)
        self.start_background_refresh()
        if name == PROJECT_KERNEL_NAME:
            return self.project_kernel_target() if self.project_kernel else None
        target = self._recall(name)
        if target is not None:
            return target
        if self.keep_native_kernels and name in super().find_kernel_specs():
            return None  # an ordinary kernelspec: nothing to wait for
        if self._scanned.wait(self.first_scan_wait):
            return self._snapshot.kernels.get(name)
        self.log.warning(
            "nixkernel: no kernel %r in the last listing, and the first scan of %s has not "
            "finished within %g s (c.NixKernelSpecManager.first_scan_wait): try again once the "
            "kernel list shows it.",
            name,
            ", ".join(self.project_dirs),
            self.first_scan_wait,
        )
        return None

    def _own_names(self) -> list[str]:
        """The names of nixkernel's kernels (before the first scan: at most first_scan_wait
        later, else those of the last listing)."""
        if not self._first_scan_pending():
            return list(self._wait_for_scan().kernels)
        self.start_background_refresh()
        if self._scanned.wait(self.first_scan_wait):
            return list(self._snapshot.kernels)
        names = list(self._recalled_listing())
        return [*names, PROJECT_KERNEL_NAME] if self.project_kernel else names

    def allowed(self, name: str) -> bool:
        """Whether ``allowed_kernelspecs`` (or the older ``whitelist``, which jupyter_client
        copies into it) lets a kernel through: an administrator's allow list hides nixkernel's
        kernels as it hides installed ones."""
        return not self.allowed_kernelspecs or name in self.allowed_kernelspecs

    def find_kernel_specs(self) -> dict[str, str]:
        specs = super().find_kernel_specs() if self.keep_native_kernels else {}
        own = {n: self._own_kernel(n) for n in self._own_names() if self.allowed(n)}
        specs.update({n: self.resource_dir_for(t) for n, t in own.items() if t is not None})
        return specs

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        """Answered from memory: the server calls this synchronously when a kernel starts.

        Only a name of a discovered environment (or a native kernelspec) is ever accepted: kernel
        names come from notebook metadata and must never choose what runs.
        """
        target = self._own_kernel(kernel_name.lower())
        if target is not None:
            if not self.allowed(target.name):
                raise NoSuchKernel(kernel_name)
            self._note_started(target)
            return self.kernel_spec_for(target)
        if self.keep_native_kernels:
            return super().get_kernel_spec(kernel_name)
        raise NoSuchKernel(kernel_name)

    def _note_started(self, target: KernelTarget) -> None:
        """A kernel of ``target`` starts: keep its environment fresh from now on (keep_fresh)."""
        if not self.keep_fresh or self.launch_mode != MODE_CACHED or not self._thread_allowed():
            return
        source = target_source(target, self.venv_library_shell or None)
        if source is None:
            return
        if self._freshener is None:
            from .freshen import Freshener

            self._freshener = Freshener(self)
        self._freshener.note(source)

    def get_all_specs(self) -> dict[str, dict[str, Any]]:
        """Every kernelspec, from memory (nixkernel's are built once per scan).

        Under a server, before the first scan has finished, this returns an awaitable of the
        listing instead (the server awaits it through ``ensure_async``), so that even the very
        first request waits on a worker thread, never on the event loop.
        """
        if self._first_scan_pending():
            self.start_background_refresh()
            return self._all_specs_after_first_scan()  # type: ignore[return-value]
        return self._all_specs(self._wait_for_scan())

    async def _all_specs_after_first_scan(self) -> dict[str, dict[str, Any]]:
        await asyncio.to_thread(self._scanned.wait)
        return self._all_specs(self._snapshot)

    def _all_specs(self, snapshot: Snapshot) -> dict[str, dict[str, Any]]:
        if self._spec_methods_overridden():
            # As the stock manager does for subclasses: their own find_kernel_specs and
            # get_kernel_spec (and kernel_spec_class) decide what is listed.
            return KernelSpecManager.get_all_specs(self)
        specs: dict[str, dict[str, Any]] = {}
        if self.keep_native_kernels:
            for name, resource_dir in super().find_kernel_specs().items():
                try:
                    spec = super().get_kernel_spec(name)
                except Exception:  # a broken kernel.json on disk must not hide the others
                    self.log.warning("Error loading kernelspec %r", name, exc_info=True)
                    continue
                specs[name] = {"resource_dir": resource_dir, "spec": spec.to_dict()}
        specs.update({k: v for k, v in snapshot.listing.items() if self.allowed(k)})
        return specs

    def _spec_methods_overridden(self) -> bool:
        """Whether a subclass overrides find_kernel_specs or get_kernel_spec (but not
        get_all_specs), or uses its own kernel_spec_class: then the in-memory listing, built
        from nixkernel's own specs, would bypass them."""
        cls = type(self)
        if cls.get_all_specs is not NixKernelSpecManager.get_all_specs:
            return False
        return (
            cls.find_kernel_specs is not NixKernelSpecManager.find_kernel_specs
            or cls.get_kernel_spec is not NixKernelSpecManager.get_kernel_spec
            or self.kernel_spec_class is not KernelSpec
        )

    def remove_kernel_spec(self, name: str) -> str:
        if name.lower() in self._own_names():
            raise ValueError(
                f"{name} is discovered by nixkernel, not installed: remove its project."
            )
        return super().remove_kernel_spec(name)


def _refresh_loop(ref: weakref.ReferenceType[NixKernelSpecManager], stop: threading.Event) -> None:
    """The ``nixkernel-refresh`` thread. Between scans it holds its manager only weakly, so a
    manager dropped without being stopped (by an application that embeds a server) does not
    keep a thread re-scanning for ever."""
    while not stop.is_set():
        manager = ref()
        if manager is None:
            return
        manager._refresh_in_background()
        interval = manager.refresh_interval
        del manager
        stop.wait(interval)
