"""The KernelSpecManager: nixkernel's kernels, as jupyter_server and JupyterLab see them.

:class:`NixKernelSpecManager` discovers projects under :attr:`~NixKernelSpecManager.project_dirs`
on a background thread, keeps the resulting kernelspecs in memory and answers every listing and
``get_kernel_spec`` from there: the server's event loop never waits on a directory walk or on
Nix. The ordinary kernelspecs (``python3``...) stay available unless turned off.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path
from typing import Any

import platformdirs
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from traitlets import Bool, Enum, Float, Int, List, Unicode, default

from . import nix
from .cache import EnvironmentCache
from .describe import (
    KIND_AUTO,
    KIND_FLAKE,
    PROJECT_KERNEL_NAME,
    KernelTarget,
    current_system,
    describe,
)
from .discovery import discover
from .launch import MODE_CACHED, target_source

RESOURCES = str(Path(__file__).parent / "resources")
#: The launcher's entry script, run with ``python -S`` (see nixkernel/boot/launcher.py).
LAUNCHER = str(Path(__file__).parent / "boot" / "launcher.py")
LOGOS = sorted(p.name for p in Path(RESOURCES).glob("logo-*"))

#: Fields KernelSpec.to_dict() has beyond the ones nixkernel sets (they vary by jupyter_client).
_SPEC_DEFAULTS = {k: v for k, v in KernelSpec().to_dict().items() if k != "argv"}


class NixKernelSpecManager(KernelSpecManager):
    """Offers every Nix dev shell, ``shell.nix`` and virtualenv under :attr:`project_dirs` as a
    kernel that starts inside that environment."""

    project_dirs = List(
        Unicode(),
        help="""Directories searched for projects (flake.nix, shell.nix, .venv).
        Default: the Jupyter server's root directory (outside the server: c.ServerApp.root_dir
        if configured, else the current directory).""",
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

    warm_on_start = Bool(
        False,
        help="""When the server starts, evaluate the environments whose cache is stale or
        missing, two at a time on a background thread (never on the event loop), so the first
        kernel start of the day does not wait for Nix. What it did goes to the server's log.""",
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

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._targets: dict[str, KernelTarget] = {}
        self._own: dict[str, KernelTarget] = {}
        self._listing: dict[str, dict[str, Any]] = {}
        self._scanned = threading.Event()
        self._scan_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
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
        return targets

    def refresh(self) -> list[KernelTarget]:
        """Re-scan synchronously and replace the in-memory listing."""
        with self._scan_lock:
            targets = self.scan()
            own = {t.name: t for t in targets}
            if self.project_kernel:
                own[PROJECT_KERNEL_NAME] = self.project_kernel_target()
            # Built once per scan: JupyterLab polls the listing every minute per tab.
            listing = {name: self._listing_entry(name, t) for name, t in own.items()}
            self._targets, self._own, self._listing = dict(own), own, listing
            self._targets.pop(PROJECT_KERNEL_NAME, None)
            self._scanned.set()
        return targets

    def _listing_entry(self, name: str, target: KernelTarget) -> dict[str, Any]:
        """A get_all_specs() entry. Under a server it is also the REST model itself (``name``,
        ``spec``, ``resources``): jupyter_server then uses it as is, instead of building each
        model on a worker thread with a glob of the resource directory (a thread hop and a glob
        per kernel, ~0.3 ms each: a third of a second on every poll of 1,000 kernels). The
        model has no ``resource_dir``, as a gateway's have none: it would only send a server
        path to every client, in every poll."""
        spec = self.spec_dict(target)
        base_url = getattr(self.parent, "base_url", None)
        if not isinstance(base_url, str):
            return {"resource_dir": RESOURCES, "spec": spec}
        from jupyter_server.utils import url_path_join

        resources = {
            os.path.splitext(logo)[0]: url_path_join(base_url, "kernelspecs", name, logo)
            for logo in LOGOS
        }
        return {"name": name, "spec": spec, "resources": resources}

    def targets(self) -> list[KernelTarget]:
        """The discovered kernels (scanning first if nothing was scanned yet)."""
        self._wait_for_scan()
        return list(self._targets.values())

    def learn_flake_shells(self) -> bool:
        """Evaluate the devShell names of flakes whose names are not cached. Slow (runs Nix):
        only for the background thread and the command line. Returns whether any were learnt."""
        try:
            nix_path = nix.find_nix(self.nix_executable or None)
        except nix.NixNotFoundError:
            return False
        cache, learnt = self.cache, False
        projects = {t.project for t in self._targets.values() if t.kind == KIND_FLAKE}
        for project in sorted(projects):
            if self._stop.is_set():
                break
            if cache.flake_shells(project) is not None:
                continue
            try:
                names = nix.flake_shell_names(nix_path, project, current_system())
            except nix.NixKernelError as exc:
                self.log.warning(
                    "nixkernel: cannot list the devShells of %s: %s", project, exc.message
                )
                names = []  # remembered for these flake files: no retry until they change
            cache.store_flake_shells(project, names)
            learnt = True
        return learnt

    def start_background_refresh(self) -> None:
        """Scan now and every refresh_interval seconds on a daemon thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._refresh_loop, name="nixkernel-refresh", daemon=True
        )
        self._thread.start()

    def stop_background_refresh(self) -> None:
        self._stop.set()

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
                if self.discover_flake_shells and self.learn_flake_shells():
                    self.refresh()
            except Exception:  # keep serving the last good listing
                self.log.exception("nixkernel: scanning %s failed", self.project_dirs)
                self._scanned.set()
            self._stop.wait(self.refresh_interval)

    def _wait_for_scan(self) -> None:
        if self._scanned.is_set():
            return
        if not self._thread_allowed():
            self.refresh()
            return
        self.start_background_refresh()
        self._scanned.wait()

    def _thread_allowed(self) -> bool:
        # Under a server, listings are served from memory and refreshed in the background;
        # elsewhere (the command line, a script) a synchronous scan is what the caller wants.
        return self.parent is not None and hasattr(self.parent, "web_app")

    # -- kernelspecs -----------------------------------------------------------------------

    def launcher_argv(self, target: KernelTarget) -> list[str]:
        """The kernel command: the server's own Python running nixkernel's launcher."""
        argv = [sys.executable, "-S", LAUNCHER, "--kind", target.kind]
        if target.kind != KIND_AUTO:
            argv += ["--project", target.project]
        if target.shell:
            argv += ["--shell", target.shell]
        if target.venv:
            argv += ["--venv", target.venv]
        if self.venv_library_shell:
            argv += ["--library-shell", self.venv_library_shell]
        argv += ["--cache-dir", os.path.abspath(os.path.expanduser(self.cache_dir))]
        if self.nix_executable:
            argv += ["--nix", self.nix_executable]
        if self.launch_mode != MODE_CACHED:
            argv += ["--mode", self.launch_mode]
        if not self.stale_fallback:
            argv.append("--no-stale")
        if target.kind == KIND_AUTO and not self.include_venvs:
            argv.append("--no-venvs")
        return [*argv, "-f", "{connection_file}"]

    def spec_dict(self, target: KernelTarget) -> dict[str, Any]:
        """The kernel.json content for ``target`` (a plain dict: listings build a thousand)."""
        return {
            **_SPEC_DEFAULTS,
            "argv": self.launcher_argv(target),
            "env": {},
            "display_name": target.display_name,
            "language": "python",
            "interrupt_mode": "signal",
            "metadata": {"debugger": True, "nixkernel": self._metadata(target)},
        }

    @staticmethod
    def _metadata(target: KernelTarget) -> dict[str, str]:
        """What the spec says about its environment: kind, project, and the shell, venv and
        problem when there are any. (Name and display name are the spec's own; every byte here
        is repeated for each kernel in every listing JupyterLab polls.)"""
        info = {"kind": target.kind, "project": target.project, "shell": target.shell,
                "venv": target.venv, "problem": target.problem}  # fmt: skip
        return {key: value for key, value in info.items() if value}

    def kernel_spec_for(self, target: KernelTarget) -> KernelSpec:
        return KernelSpec(resource_dir=RESOURCES, **self.spec_dict(target))

    def project_kernel_target(self) -> KernelTarget:
        return KernelTarget(
            name=PROJECT_KERNEL_NAME,
            display_name="Python (this project)",
            kind=KIND_AUTO,
            project="",
        )

    def _own_targets(self) -> dict[str, KernelTarget]:
        self._wait_for_scan()
        return self._own

    def find_kernel_specs(self) -> dict[str, str]:
        specs = super().find_kernel_specs() if self.keep_native_kernels else {}
        specs.update(dict.fromkeys(self._own_targets(), RESOURCES))
        return specs

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        """Answered from memory: the server calls this synchronously when a kernel starts.

        Only a name of a discovered environment (or a native kernelspec) is ever accepted: kernel
        names come from notebook metadata and must never choose what runs.
        """
        target = self._own_targets().get(kernel_name.lower())
        if target is not None:
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
        if not self._scanned.is_set() and self._thread_allowed():
            self.start_background_refresh()
            return self._all_specs_after_first_scan()  # type: ignore[return-value]
        self._wait_for_scan()
        return self._all_specs()

    async def _all_specs_after_first_scan(self) -> dict[str, dict[str, Any]]:
        await asyncio.to_thread(self._scanned.wait)
        return self._all_specs()

    def _all_specs(self) -> dict[str, dict[str, Any]]:
        specs: dict[str, dict[str, Any]] = {}
        if self.keep_native_kernels:
            for name, resource_dir in super().find_kernel_specs().items():
                try:
                    spec = super().get_kernel_spec(name)
                except Exception:  # a broken kernel.json on disk must not hide the others
                    self.log.warning("Error loading kernelspec %r", name, exc_info=True)
                    continue
                specs[name] = {"resource_dir": resource_dir, "spec": spec.to_dict()}
        specs.update(self._listing)
        return specs

    def remove_kernel_spec(self, name: str) -> str:
        if name.lower() in self._own_targets():
            raise ValueError(
                f"{name} is discovered by nixkernel, not installed: remove its project."
            )
        return super().remove_kernel_spec(name)
