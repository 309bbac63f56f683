"""NixKernelSpecManager's threads and settings, in a real jupyter_server (pytest-jupyter): a
kernel started before the first scan ends, a flake whose evaluation hangs, the threads stopped
with the server, and settings checked where they are set.

Slow scans and hanging evaluations are gated (an Event, a FIFO), never slept through."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import stat
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import logged
from jupyter_client.kernelspec import NoSuchKernel
from jupyter_server.serverapp import ServerApp
from nixprojects import DEFAULT_SHELL, write_flake, write_shell_nix
from test_reliability import Gate, wait_for
from test_server import PROBE, START_TIMEOUT, execute, get_json, probed, spec_of, start_session
from traitlets import TraitError
from traitlets.config import Config

from nixkernel.cache import EnvironmentCache
from nixkernel.describe import PROJECT_KERNEL_NAME, kernel_name
from nixkernel.extension import MANAGER_CLASS
from nixkernel.kernelspec import NixKernelSpecManager


@dataclass
class Projects:
    root: Path
    alpha: Path  # a flake
    beta: Path  # a shell.nix


@pytest.fixture
def root_projects(nix: str, jp_root_dir: Path) -> Projects:
    alpha = write_flake(jp_root_dir / "alpha", {"default": {**DEFAULT_SHELL, "GREETING": "alpha"}})
    beta = write_shell_nix(jp_root_dir / "beta", {**DEFAULT_SHELL, "GREETING": "beta"})
    return Projects(jp_root_dir, alpha, beta)


@pytest.fixture
def nix_traits() -> dict:
    """Extra c.NixKernelSpecManager settings (tests override this)."""
    return {}


@pytest.fixture
def server_log() -> Iterator[list[str]]:
    """Every message the ServerApp logs (its logger does not propagate: a filter sees them)."""
    with logged("ServerApp") as lines:
        yield lines


@pytest.fixture
def server_traits() -> dict:
    """c.ServerApp settings (tests override this): by default, just the extension enabled."""
    return {"jpserver_extensions": {"nixkernel": True}}


@pytest.fixture
def jp_server_config(
    root_projects: Projects,
    tmp_path: Path,
    nix_traits: dict,
    server_traits: dict,
    server_log: list[str],
) -> Config:
    return Config(
        {
            "ServerApp": server_traits,
            "NixKernelSpecManager": {
                "cache_dir": str(tmp_path / "cache"),
                "discover_flake_shells": False,
                **nix_traits,
            },
        }
    )


@dataclass
class GatedNix:
    """A ``nix`` whose ``eval`` calls wait at a gate (a FIFO) before running the real one:
    the devShell names of a flake take as long as the test says."""

    path: str
    gate: Gate
    log: Path

    def evals(self) -> list[int]:
        """The process ids of the devShell-name ``nix eval`` calls so far."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [
            int(line.split()[0])
            for line in lines
            if "eval" in line.split()[1:] and "#devShells." in line
        ]


@pytest.fixture
def gated_nix(nix: str, tmp_path: Path) -> Iterator[GatedNix]:
    """Pure flake evaluation cannot read a FIFO outside the flake ("access to absolute path
    ... is forbidden in pure eval mode", checked with Nix 2.8, 2.26 and 2.34), so the gate is
    in front of Nix: the evaluating process is the one that hangs, as a Nix stuck on a lock or
    a download does."""
    gate = Gate(tmp_path / "eval-gate")
    log = tmp_path / "nix-calls.log"
    wrapper = tmp_path / "gated-bin" / "nix"
    wrapper.parent.mkdir()
    wrapper.write_text(
        "#!/bin/sh\n"
        f'echo "$$ $*" >> "{log}"\n'
        # Only the devShell-name evaluation (nixkernel's other `nix eval`s, e.g. the server's
        # start-up check, go through); its `eval` is not $1 (experimental features come first).
        f'case " $* " in *" eval "*"#devShells."*) if [ ! -e "{gate.open_file}" ]; then '
        f'read -r _ < "{gate.started}"; read -r _ < "{gate.held}"; fi ;; esac\n'
        f'exec "{nix}" "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    yield GatedNix(str(wrapper), gate, log)
    gate.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- 1. a kernel start never waits for the whole first scan ----------------------------------------


async def test_a_known_kernel_starts_while_the_first_scan_is_held(
    jp_serverapp, jp_fetch, jp_ws_fetch, root_projects
):
    """The server asks for a kernel's spec synchronously, on its event loop. Before its first
    scan ends, a name the last listing had (kept in the cache directory) is answered by
    describing that one project afresh; the project-following kernel needs no scan; any other
    name waits at most first_scan_wait. Meanwhile the server answers other requests."""
    first = jp_serverapp.kernel_spec_manager
    listing = await get_json(jp_fetch, "api", "kernelspecs")
    name = spec_of(listing, root_projects.beta, "shell.nix")["name"]
    # Stopping ends the refresh thread's turn, which keeps the names for the next server.
    await asyncio.to_thread(first.stop_background_refresh, 30)
    assert name in first.cache.last_listing(first.project_dirs)

    # A server starting again over a tree whose walk is slow: its first scan is held.
    release = threading.Event()
    slow = NixKernelSpecManager(
        parent=jp_serverapp,
        project_dirs=first.project_dirs,
        cache_dir=first.cache_dir,
        first_scan_wait=0.2,
        discover_flake_shells=False,
    )
    real_scan = slow.scan
    slow.scan = lambda: (release.wait(), real_scan())[1]  # type: ignore[method-assign]
    # A safety net only: with a blocked event loop, nothing else could release the scan.
    safety = threading.Timer(120, release.set)
    safety.start()
    jp_serverapp.web_app.settings["kernel_spec_manager"] = slow
    jp_serverapp.kernel_manager.kernel_spec_manager = slow
    try:
        spec = slow.get_kernel_spec(name)  # on the event loop, as the server calls it
        assert not release.is_set()  # the first scan cannot have ended
        assert spec.display_name == "beta (shell.nix)"
        assert spec.metadata["nixkernel"]["project"] == str(root_projects.beta)
        this_project = slow.get_kernel_spec(PROJECT_KERNEL_NAME)
        assert this_project.display_name == "Python (this project)"
        assert "python3" in slow.find_kernel_specs()  # the ordinary kernelspecs too
        # A name the last listing did not have: NoSuchKernel after first_scan_wait, not never.
        unknown = kernel_name(str(root_projects.root / "gamma"), "shell.nix")
        with pytest.raises(NoSuchKernel):
            slow.get_kernel_spec(unknown)

        # A session with that kernel starts in the project's shell, and the server answers
        # other requests meanwhile, all while the scan is still held.
        notebook = root_projects.beta / "early.ipynb"
        session = asyncio.ensure_future(start_session(jp_fetch, root_projects.root, notebook, name))
        status = await asyncio.wait_for(jp_fetch("api", "status"), timeout=30)
        assert status.code == 200
        kernel_id = await asyncio.wait_for(session, START_TIMEOUT)
        assert probed(await execute(jp_ws_fetch, kernel_id, PROBE))["GREETING"] == "beta"
        assert not release.is_set()
    finally:
        release.set()
        safety.cancel()
        slow.stop_background_refresh(30)


def test_the_last_listing_selects_only_what_discovery_would_find(jp_serverapp, tmp_path):
    """The last listing is a hint, never trusted: a name recorded for a project outside
    project_dirs (a tampered file, or a project_dirs that changed), too deep, or gone, is not
    answered before the first scan, even though its project offers a kernel of that name."""
    projects = tmp_path / "projects"
    inside = write_shell_nix(projects / "inside")
    outside = write_shell_nix(tmp_path / "elsewhere" / "outside")
    deep = write_shell_nix(projects / "a" / "b" / "deep")
    gone = projects / "gone"
    names = {str(p): kernel_name(str(p), "shell.nix") for p in (inside, outside, deep, gone)}
    cache = tmp_path / "cache"
    EnvironmentCache(str(cache)).store_listing([str(projects)], {n: p for p, n in names.items()})

    release = threading.Event()
    manager = NixKernelSpecManager(
        parent=jp_serverapp,
        project_dirs=[str(projects)],
        cache_dir=str(cache),
        max_depth=2,
        first_scan_wait=0,
        discover_flake_shells=False,
    )
    manager.scan = lambda: (release.wait(), [])[1]  # type: ignore[method-assign]
    try:
        assert manager.get_kernel_spec(names[str(inside)]).display_name == "inside (shell.nix)"
        for project in (outside, deep, gone):
            with pytest.raises(NoSuchKernel):
                manager.get_kernel_spec(names[str(project)])
        assert not release.is_set()
    finally:
        release.set()
        manager.stop_background_refresh(30)


# -- 2. devShell names are learnt apart, bounded ---------------------------------------------------


@pytest.fixture
def server_manager(jp_serverapp: ServerApp) -> NixKernelSpecManager:
    manager = jp_serverapp.kernel_spec_manager
    assert isinstance(manager, NixKernelSpecManager), type(manager)
    return manager


class TestHangingFlake:
    """A flake whose devShell names never come: re-scans go on publishing, the server's stop
    kills the evaluation, and flake_shells_timeout bounds it."""

    @pytest.fixture
    def nix_traits(self, gated_nix: GatedNix) -> dict:
        return {
            "discover_flake_shells": True,
            "nix_executable": gated_nix.path,
            "refresh_interval": 0.1,
            "flake_shells_timeout": 3600,
        }

    async def test_re_scans_publish_new_projects_while_it_hangs_and_stop_kills_it(
        self, jp_serverapp, jp_fetch, server_manager, root_projects, gated_nix
    ):
        await asyncio.to_thread(gated_nix.gate.wait_started)  # alpha's `nix eval` hangs now
        (pid,) = gated_nix.evals()
        delta = write_shell_nix(root_projects.root / "delta")

        async def delta_listed() -> bool:
            try:
                spec_of(await get_json(jp_fetch, "api", "kernelspecs"), delta, "shell.nix")
            except AssertionError:
                return False
            return True

        deadline = asyncio.get_running_loop().time() + 60
        while not await delta_listed():
            assert asyncio.get_running_loop().time() < deadline, "delta never listed"
            await asyncio.sleep(0.05)  # poll interval, not synchronisation
        assert alive(pid)  # still held at the gate: the re-scans did not wait for it
        assert gated_nix.evals() == [pid]  # one evaluation, not one per re-scan

        refresh, learner = server_manager._thread, server_manager._learner
        await jp_serverapp._cleanup()  # what ServerApp.stop() runs (pytest-jupyter's teardown too)
        assert not refresh.is_alive() and not learner.is_alive()
        assert not alive(pid)  # killed (its process group), not left hanging
        # Stopped, not failed: nothing is remembered about the flake's shells.
        assert server_manager.cache.flake_shells(str(root_projects.alpha)) is None


class TestFlakeShellsTimeout:
    @pytest.fixture
    def nix_traits(self, gated_nix: GatedNix) -> dict:
        return {
            "discover_flake_shells": True,
            "nix_executable": gated_nix.path,
            "flake_shells_timeout": 0.5,
        }

    async def test_an_evaluation_over_the_timeout_is_killed_and_not_retried(
        self, server_manager, root_projects, gated_nix, server_log
    ):
        """flake_shells_timeout is the bound under test, so real time passes here (0.5 s)."""
        await asyncio.to_thread(gated_nix.gate.wait_started)
        (pid,) = gated_nix.evals()
        learner = server_manager._learner
        await asyncio.to_thread(learner.join, 60)
        assert not learner.is_alive() and not alive(pid)
        said = [line for line in server_log if "took longer than 0.5 s" in line]
        assert len(said) == 1 and str(root_projects.alpha) in said[0], said
        assert "flake_shells_timeout" in said[0]  # the fix
        # A slow machine is no verdict on the flake: nothing is stored on disk...
        assert server_manager.cache.flake_shells(str(root_projects.alpha)) is None
        # ...but this server does not try again until the flake's files change.
        assert not await asyncio.to_thread(server_manager.learn_flake_shells)
        assert gated_nix.evals() == [pid]
        (root_projects.alpha / "flake.nix").write_text(
            (root_projects.alpha / "flake.nix").read_text() + "\n"
        )
        gated_nix.gate.open()
        assert await asyncio.to_thread(server_manager.learn_flake_shells)
        assert server_manager.cache.flake_shells(str(root_projects.alpha)) == ["default"]


# -- 3. the threads end with the server ------------------------------------------------------------


@pytest.mark.parametrize(
    "server_traits",
    [
        pytest.param({"jpserver_extensions": {"nixkernel": True}}, id="selected-by-the-extension"),
        pytest.param(
            {
                "jpserver_extensions": {"nixkernel": False},
                "kernel_spec_manager_class": MANAGER_CLASS,
            },
            id="configured-without-the-extension",
        ),
    ],
)
async def test_the_refresh_thread_ends_when_the_server_stops(jp_serverapp, jp_fetch, root_projects):
    manager = jp_serverapp.kernel_spec_manager
    assert isinstance(manager, NixKernelSpecManager)
    await get_json(jp_fetch, "api", "kernelspecs")
    thread = manager._thread
    assert thread.name == "nixkernel-refresh" and thread.is_alive()
    await jp_serverapp._cleanup()  # what ServerApp.stop() runs
    assert not thread.is_alive()
    assert thread not in threading.enumerate()


def test_a_dropped_manager_does_not_keep_its_thread(tmp_path):
    """An application that drops a manager without stopping it: the refresh thread holds it
    only weakly and ends instead of re-scanning for ever."""
    manager = NixKernelSpecManager(
        project_dirs=[str(tmp_path)], cache_dir=str(tmp_path / "cache"), refresh_interval=0.05
    )
    manager.start_background_refresh()
    manager.targets()  # the first scan ran
    thread = manager._thread
    del manager

    def ended() -> bool:
        gc.collect()  # traitlets objects live in reference cycles
        return not thread.is_alive()

    wait_for(ended, "the refresh thread of a dropped manager to end", timeout=60)


def test_a_deleted_project_dir_is_reported_once(tmp_path, caplog):
    """A project directory that goes away costs a stat per scan, is reported once (not every
    refresh_interval) and is listed again when it comes back."""
    projects = tmp_path / "projects"
    write_shell_nix(projects / "p")
    manager = NixKernelSpecManager(
        project_dirs=[str(projects)], cache_dir=str(tmp_path / "cache"), refresh_interval=0.01
    )
    scans = []
    real_scan = manager.scan
    manager.scan = lambda: scans.append(1) or real_scan()  # type: ignore[method-assign]
    manager.start_background_refresh()
    try:
        assert manager.targets()
        hidden = tmp_path / "hidden"
        projects.rename(hidden)
        seen = len(scans)
        wait_for(lambda: len(scans) >= seen + 5, "five scans without the directory")
        gone = [r for r in caplog.records if "does not exist (any more)" in r.getMessage()]
        assert len(gone) == 1 and str(projects) in gone[0].getMessage()
        hidden.rename(projects)
        wait_for(manager.targets, "the project listed again")
    finally:
        manager.stop_background_refresh(30)


# -- 4. settings are checked where they are set ----------------------------------------------------


@pytest.mark.parametrize(
    ("trait", "value", "says"),
    [
        ("refresh_interval", 0, "refresh_interval must be a number of seconds above 0"),
        (
            "refresh_interval",
            -5.0,
            "refresh_interval must be a number of seconds above 0, not -5.0",
        ),
        (
            "refresh_interval",
            float("nan"),
            "refresh_interval must be a number of seconds above 0, not nan",
        ),
        ("flake_shells_timeout", 0, "flake_shells_timeout must be a number of seconds above 0"),
        ("first_scan_wait", -1, "first_scan_wait must be 0 or more seconds"),
        ("max_depth", -1, "max_depth must be 0 (the project_dirs themselves) or more, not -1"),
        ("flake_shells_jobs", 0, "flake_shells_jobs must be 1 or more, not 0"),
    ],
)
def test_invalid_settings_are_refused_with_what_is_allowed(trait, value, says, tmp_path):
    config = Config({"NixKernelSpecManager": {trait: value}})
    with pytest.raises(TraitError, match=re.escape(f"c.NixKernelSpecManager.{says}")):
        NixKernelSpecManager(config=config, cache_dir=str(tmp_path))
    manager = NixKernelSpecManager(cache_dir=str(tmp_path))
    with pytest.raises(TraitError, match=re.escape(f"c.NixKernelSpecManager.{says}")):
        setattr(manager, trait, value)


def test_project_dirs_must_be_directories_and_a_missing_one_is_a_warning(tmp_path, caplog):
    afile = tmp_path / "notes.txt"
    afile.write_text("")
    for bad in (str(afile), ""):
        with pytest.raises(TraitError, match=r"project_dirs: .* is not a directory"):
            NixKernelSpecManager(project_dirs=[bad], cache_dir=str(tmp_path / "cache"))
    with pytest.raises(TraitError, match=r"cache_dir: .* exists and is not a directory"):
        NixKernelSpecManager(cache_dir=str(afile))

    later = tmp_path / "later"
    manager = NixKernelSpecManager(project_dirs=[str(later)], cache_dir=str(tmp_path / "cache"))
    said = [r.getMessage() for r in caplog.records if "does not exist (yet)" in r.getMessage()]
    assert len(said) == 1 and str(later) in said[0] and "project_dirs" in said[0], said
    assert manager.refresh() == []
    write_shell_nix(later / "p")
    assert [t.display_name for t in manager.refresh()] == ["p (shell.nix)"]


def test_settings_errors_reach_the_command_line_as_one_clear_line(tmp_path):
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "nixkernel.cli", "list", "--depth", "-1", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config")},
    )
    assert result.returncode != 0
    assert "max_depth must be 0 (the project_dirs themselves) or more" in result.stderr
