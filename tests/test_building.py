"""A cold environment on real Nix: the building kernel answers at once, streams Nix's progress
into the cells run meanwhile, then becomes the project's kernel (same pid) and runs those cells
there; interrupt, restart and shutdown stop Nix; other kernels follow the same build; a failing
evaluation runs once for all its waiters; a stale environment warns in the first cell.

Slow builds are a derivation whose builder prints ``step I of MARKER`` and sleeps a second, N
times (it ends with ``exit 0``: see ../shared/nix/README.md). The marker, in its name and in its
builder's command line, makes its build and its processes this test's own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty

import pytest
from helpers import wait_for, ws_request
from jupyter_client import BlockingKernelClient, KernelManager
from nixprojects import DEFAULT_SHELL, Raw, write_shell_nix
from traitlets.config import Config, Configurable

from nixkernel import buildlog
from nixkernel.cache import ENTRY_FILE, EnvironmentCache
from nixkernel.describe import NixSource
from nixkernel.kernelspec import NixKernelSpecManager
from nixkernel.nix import NixEvaluationError

BUILDING = "nixkernel-building"
PROBE = (
    "import os, json; print(json.dumps({'GREETING': os.environ['GREETING'], 'pid': os.getpid()}))"
)
TIMEOUT = 180


def slow_build(marker: str, seconds: int, status: int = 0) -> Raw:
    """A derivation that takes ``seconds`` to build, printing a line each second."""
    script = f"for i in $(seq 1 {seconds}); do echo step $i of {marker}; sleep 1; done; " + (
        "mkdir -p $out; exit 0" if status == 0 else f"echo {marker} fails; exit {status}"
    )
    return Raw(
        '(derivation { system = builtins.currentSystem; builder = "/bin/bash"; '
        f'name = "{marker}"; PATH = "/usr/bin:/bin"; args = [ "-c" {json.dumps(script)} ]; }})'
    )


def slow_project(directory: Path, seconds: int, status: int = 0) -> tuple[Path, str]:
    """A shell.nix whose environment needs a slow build; its marker (also its GREETING)."""
    marker = f"slow-{uuid.uuid4().hex[:10]}"
    shell = {**DEFAULT_SHELL, "GREETING": marker, "SLOW": slow_build(marker, seconds, status)}
    return write_shell_nix(directory, shell), marker


def only_kernel(manager) -> str:
    (target,) = manager.targets()
    return target.name


def slot_of(manager, name: str) -> Path:
    target = next(t for t in manager.targets() if t.name == name)
    return Path(manager.cache.slot(target.nix_source()))


def processes(pattern: str) -> list[str]:
    """Command lines of the running processes that match ``pattern`` (a regex), this one aside."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if not zombie and re.search(pattern, cmdline):
            found.append(cmdline)
    return found


def nix_of(project: Path, marker: str) -> str:
    """The processes of one start's build: its nix, and the builder of its slow derivation."""
    return rf"print-dev-env.*{re.escape(str(project))}|of {re.escape(marker)}"


@dataclass
class Cell:
    """What one execute_request got: streams (with whether the environment was cached when each
    arrived), errors, and its replies."""

    msg_id: str
    stdout: str = ""
    stderr: str = ""
    stderr_before_cached: str = ""
    errors: list[dict] = field(default_factory=list)
    replies: list[dict] = field(default_factory=list)
    idle: bool = False
    """iopub said idle for it: all its output has arrived."""


def follow(kc: BlockingKernelClient, cells: list[Cell], slot: Path, until: Callable[[], bool]):
    """Read iopub and shell into ``cells`` until ``until()``."""
    by_id = {c.msg_id: c for c in cells}
    deadline = time.monotonic() + TIMEOUT
    while not until():
        assert time.monotonic() < deadline, f"timed out: {cells}"
        for channel in (kc.iopub_channel, kc.shell_channel):
            try:
                msg = channel.get_msg(timeout=0.05)
            except Empty:
                continue
            cell = by_id.get(msg["parent_header"].get("msg_id"))
            if cell is None:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                setattr(cell, content["name"], getattr(cell, content["name"]) + content["text"])
                if content["name"] == "stderr" and not (slot / ENTRY_FILE).exists():
                    cell.stderr_before_cached += content["text"]
            elif kind == "error":
                cell.errors.append(content)
            elif kind == "execute_reply":
                cell.replies.append(content)
            elif kind == "status" and content["execution_state"] == "idle":
                cell.idle = True


def replied(*cells: Cell) -> Callable[[], bool]:
    """All ``cells`` have their reply and all their output."""
    return lambda: all(c.replies and c.idle for c in cells)


@pytest.fixture
def start(nix, projects, manager_factory):
    """Start the only kernel of ``projects`` (a KernelManager and a client with channels)."""
    started: list[tuple[KernelManager, BlockingKernelClient]] = []

    def run(wait: bool = True, **traits) -> tuple[KernelManager, BlockingKernelClient, str]:
        manager = traits.pop("manager", None) or manager_factory(
            project_dirs=[str(projects)], **traits
        )
        name = only_kernel(manager)
        km = KernelManager(kernel_spec_manager=manager, kernel_name=name)
        km.start_kernel(cwd=str(manager.targets()[0].project))
        kc = km.client()
        kc.start_channels()
        started.append((km, kc))
        if wait:
            kc.wait_for_ready(timeout=60)  # iopub subscribed too: no output is missed
        return km, kc, name

    yield run
    for km, kc in started:
        kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=True)


def test_cold_start_answers_at_once_streams_the_build_then_runs_the_cells_in_the_environment(
    projects, manager_factory, start
):
    """kernel_info within 2 s of the start; a cell run at once gets stderr lines naming the build
    (and a "still building" line while Nix is quiet) before the environment is cached, then its
    own output from the project's environment, in the same process; one reply per request, in
    order, and the cell queued behind it runs too."""
    _, marker = slow_project(projects / "slow", seconds=12)
    manager = manager_factory(project_dirs=[str(projects)])
    began = time.monotonic()
    km, kc, name = start(manager=manager, wait=False)
    info = kc.kernel_info(reply=True, timeout=10)
    answered = time.monotonic() - began
    assert info["content"]["implementation"] == BUILDING
    assert answered < 2.0, f"kernel_info took {answered:.2f} s"
    kc.wait_for_ready(timeout=60)

    first, second = Cell(kc.execute(PROBE)), Cell(kc.execute("print('second cell ran')"))
    slot = slot_of(manager, name)
    follow(kc, [first, second], slot, replied(first, second))

    assert f"-{marker}.drv" in first.stderr_before_cached, first.stderr
    assert "still building" in first.stderr_before_cached, first.stderr
    assert "the environment is ready" in first.stderr
    probe = json.loads(first.stdout.strip().splitlines()[-1])
    assert probe["GREETING"] == marker  # the project's environment
    assert probe["pid"] == km.provisioner.pid  # the same process, exec'd
    assert second.stdout == "second cell ran\n"
    assert [r["status"] for r in first.replies + second.replies] == ["ok", "ok"]
    assert first.replies[0]["execution_count"] < second.replies[0]["execution_count"]
    # No reply is left over: the next request's is the next reply.
    third = Cell(kc.execute("print('third')"))
    reply = kc.get_shell_msg(timeout=60)
    assert reply["parent_header"]["msg_id"] == third.msg_id
    assert kc.kernel_info(reply=True, timeout=30)["content"]["implementation"] == "ipython"


def test_a_cell_run_just_after_the_hand_over_waits_for_its_client_on_iopub(
    projects, manager_factory, start
):
    """No cell ran during the build. A client's iopub subscription reaches the project's kernel
    only once the client next reads iopub (libzmq resends it in the client's own thread): the
    kernel holds the first cell until then, so its output and its "idle" are not published to
    nobody. Other requests are answered at once."""
    _, marker = slow_project(projects / "quiet", seconds=3)
    manager = manager_factory(project_dirs=[str(projects)])
    km, kc, _name = start(manager=manager)
    assert kc.kernel_info(reply=True, timeout=10)["content"]["implementation"] == BUILDING
    pid = km.provisioner.pid
    wait_for(lambda: "ipykernel_launcher" in Path(f"/proc/{pid}/cmdline").read_text(), "the exec")
    cell = Cell(kc.execute(PROBE))
    # Not reading iopub yet: the cell waits (ungated, it would run and reply at once).
    with pytest.raises(Empty):
        kc.get_shell_msg(timeout=2)
    follow(kc, [cell], Path(manager.cache_dir), replied(cell))
    assert cell.replies[0]["status"] == "ok"
    assert json.loads(cell.stdout.strip().splitlines()[-1])["GREETING"] == marker


def test_interrupt_during_the_build_stops_nix_caches_nothing_and_a_restart_builds_again(
    projects, manager_factory, start
):
    """Interrupting while Nix builds: the cell says the build was cancelled, no process of that
    build remains (its nix and its builder), no entry is cached; a restart builds and starts.
    Requests other than cells get plain answers meanwhile (the cell stays waiting)."""
    project, marker = slow_project(projects / "stopped", seconds=15)
    manager = manager_factory(project_dirs=[str(projects)])
    km, kc, name = start(manager=manager)
    slot = slot_of(manager, name)
    cell = Cell(kc.execute(PROBE))
    follow(kc, [cell], slot, lambda: f"-{marker}.drv" in cell.stderr)
    wait_for(lambda: processes(f"of {re.escape(marker)}"), "the slow builder to run")
    complete = kc.complete("import o", reply=True, timeout=30)["content"]
    assert complete["status"] == "ok" and complete["matches"] == []
    inspect = kc.inspect("os", reply=True, timeout=30)["content"]
    assert "still being built" in inspect["data"]["text/plain"]
    assert not cell.replies

    km.interrupt_kernel()
    follow(kc, [cell], slot, replied(cell))
    assert cell.replies[0]["status"] == "error"
    assert cell.replies[0]["ename"] == "BuildCancelled"
    assert "build cancelled" in cell.stderr and "Restart the kernel" in cell.stderr
    wait_for(lambda: not processes(nix_of(project, marker)), "Nix to stop", timeout=30)
    assert not (slot / ENTRY_FILE).exists()
    # The kernel stays, and says why cells do not run.
    later = Cell(kc.execute("1"))
    follow(kc, [later], slot, replied(later))
    assert later.replies[0]["ename"] == "BuildCancelled"

    km.restart_kernel()
    again = Cell(kc.execute(PROBE))
    follow(kc, [again], slot, replied(again))
    assert again.replies[0]["status"] == "ok", again
    assert json.loads(again.stdout.strip().splitlines()[-1])["GREETING"] == marker
    assert (slot / ENTRY_FILE).exists()


@pytest.mark.parametrize("now", [False, True], ids=["shutdown-request", "killed"])
def test_shutdown_during_the_build_leaves_no_nix_process(projects, manager_factory, start, now):
    """A kernel shut down (or killed: SIGKILL to its process group) while Nix builds leaves no
    process of that build and no cache entry."""
    project, marker = slow_project(projects / "shut", seconds=30)
    manager = manager_factory(project_dirs=[str(projects)])
    km, _kc, name = start(manager=manager)
    wait_for(lambda: processes(f"of {re.escape(marker)}"), "the slow builder to run")

    km.shutdown_kernel(now=now)
    wait_for(lambda: not processes(nix_of(project, marker)), "Nix to stop", timeout=30)
    assert not (slot_of(manager, name) / ENTRY_FILE).exists()


def test_a_second_kernel_follows_the_same_build_and_show_says_it_runs(
    projects, manager_factory, start, counting_nix, tmp_path
):
    """A second kernel of the environment waits for the first one's build instead of starting
    its own: its cell shows the same build's lines (the slot's build log), and `jupyter
    nixkernel show` says an evaluation is running. Nix evaluates once; both cells then run."""
    _, marker = slow_project(projects / "shared", seconds=10)
    manager = manager_factory(project_dirs=[str(projects)], nix_executable=counting_nix.path)
    _km1, kc1, name = start(manager=manager)
    slot = slot_of(manager, name)
    one = Cell(kc1.execute(PROBE))
    follow(kc1, [one], slot, lambda: f"-{marker}.drv" in one.stderr)

    _km2, kc2, _ = start(manager=manager)
    two = Cell(kc2.execute(PROBE))
    follow(kc2, [two], slot, lambda: f"-{marker}.drv" in two.stderr)
    assert "following the build that process" in two.stderr, two.stderr
    assert f"-{marker}.drv" in two.stderr_before_cached

    show = subprocess.run(
        [sys.executable, "-m", "nixkernel.cli", "show", name, f"--dir={projects}",
         f"--cache-dir={manager.cache_dir}", f"--nix={counting_nix.path}"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config")},
    )  # fmt: skip
    assert show.returncode == 0, show.stderr
    assert "evaluation  running now" in show.stdout, show.stdout
    assert str(slot / buildlog.LOG_FILE) in show.stdout

    follow(kc1, [one], slot, replied(one))
    follow(kc2, [two], slot, replied(two))
    for cell in (one, two):
        assert json.loads(cell.stdout.strip().splitlines()[-1])["GREETING"] == marker, cell
    assert counting_nix.evaluations() == 1, counting_nix.calls()


def _ensure_in_thread(cache, source, nix_path) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(cache.ensure(source, nix_path))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _blocked_on(lock_file: Path) -> int:
    """How many flock waiters ``lock_file`` has (from /proc/locks)."""
    inode = lock_file.stat().st_ino
    return sum(
        1
        for line in Path("/proc/locks").read_text().splitlines()
        if "->" in line.split() and line.split()[-3].endswith(f":{inode}")
    )


@pytest.mark.parametrize("change_input", [False, True], ids=["same-inputs", "input-changed"])
def test_a_failing_evaluation_runs_once_for_all_its_waiters(
    nix, counting_nix, projects, tmp_path, change_input
):
    """Starts that waited on the lock while the evaluation failed take its failure instead of
    running it again (the failure is recorded in the slot), unless an input changed meanwhile;
    a start after the failure (a restart) tries again."""
    project, marker = slow_project(projects / "failing", seconds=4, status=1)
    cache = EnvironmentCache(str(tmp_path / "cache"))
    source = NixSource("file", str(project / "shell.nix"))
    slot = Path(cache.slot(source))
    holder, held = _ensure_in_thread(cache, source, counting_nix.path)
    wait_for(lambda: processes(f"of {re.escape(marker)}"), "the failing build to run")
    waiter, waited = _ensure_in_thread(cache, source, counting_nix.path)
    wait_for(lambda: _blocked_on(slot / "lock") == 1, "the second start to wait on the lock")
    if change_input:
        with open(project / "shell.nix", "a") as f:
            f.write("# edited while it was evaluated\n")
    holder.join(TIMEOUT)
    waiter.join(TIMEOUT)

    assert isinstance(held[0], NixEvaluationError) and f"{marker} fails" in str(held[0])
    assert isinstance(waited[0], NixEvaluationError) and f"{marker} fails" in str(waited[0])
    assert counting_nix.evaluations() == (2 if change_input else 1), counting_nix.calls()
    assert buildlog.last_failure(str(slot)) is not None

    with pytest.raises(NixEvaluationError):
        cache.ensure(source, counting_nix.path)
    assert counting_nix.evaluations() == (3 if change_input else 2)


def test_a_kernel_started_on_the_last_good_environment_says_so_in_the_first_cell(
    projects, manager_factory, start, tmp_path
):
    """When the project's Nix files fail to evaluate and the kernel starts in the last good
    environment, the first cell (not the second) shows the warning on stderr with the error's
    first lines and how to see all of it; `show` prints all of it."""
    project = write_shell_nix(projects / "breaks", {**DEFAULT_SHELL, "GREETING": "last good"})
    manager = manager_factory(project_dirs=[str(projects)])
    name = only_kernel(manager)
    manager.cache.ensure(manager.targets()[0].nix_source())
    (project / "shell.nix").write_text('throw "broken on purpose 4711"\n')

    _km, kc, _ = start(manager=manager)
    slot = slot_of(manager, name)
    first = Cell(kc.execute("import os; print(os.environ['GREETING'])"))
    second = Cell(kc.execute("print('again')"))
    follow(kc, [first, second], slot, replied(first, second))

    assert first.stdout == "last good\n"
    assert "WARNING: re-evaluating" in first.stderr
    warning = first.stderr.split("WARNING: re-evaluating", 1)[1]
    # Nix's message itself, whatever the version's trace before it (2.8: one line; >= 2.2x an
    # "error:" line after a trace of what was being evaluated).
    assert "error: broken on purpose 4711" in warning
    assert f"jupyter nixkernel show {name}" in first.stderr
    assert "WARNING" not in second.stderr and second.stdout == "again\n"

    show = subprocess.run(
        [sys.executable, "-m", "nixkernel.cli", "show", name, f"--dir={projects}",
         f"--cache-dir={manager.cache_dir}"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config")},
    )  # fmt: skip
    assert "last evaluation failed" in show.stdout and "broken on purpose 4711" in show.stdout


# -- through a running jupyter_server --------------------------------------------------------


@pytest.fixture
def cold_project(nix: str, jp_root_dir: Path) -> tuple[Path, str]:
    return slow_project(jp_root_dir / "cold", seconds=12)


@pytest.fixture
def jp_server_config(cold_project, tmp_path: Path) -> Config:
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"nixkernel": True}},
            "NixKernelSpecManager": {
                "cache_dir": str(tmp_path / "cache"),
                "discover_flake_shells": False,
                "warm_on_start": False,
            },
        }
    )


def _execute(code: str) -> dict:
    return ws_request(
        "execute_request",
        {"code": code, "silent": False, "store_history": True, "user_expressions": {},
         "allow_stdin": False, "stop_on_error": True},
    )  # fmt: skip


async def test_server_session_on_a_cold_project_shows_the_build_then_runs_the_cells(
    jp_fetch, jp_ws_fetch, jp_serverapp, jp_root_dir, cold_project
):
    """Through jupyter_server's websocket, as JupyterLab talks to a kernel: the session's kernel
    answers kernel_info within 2 s, a cell run at once streams the build before the environment
    is cached, then prints the project's variable; one reply per cell, in order."""
    project, marker = cold_project
    manager = jp_serverapp.kernel_spec_manager
    try:
        (target,) = [t for t in manager.targets() if t.project == str(project)]
        slot = Path(manager.cache.slot(target.nix_source()))
        notebook = project / "cold.ipynb"
        notebook.write_text(
            json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
        )
        began = time.monotonic()
        body = {"path": "cold/cold.ipynb", "type": "notebook", "kernel": {"name": target.name}}
        response = await jp_fetch("api", "sessions", method="POST", body=json.dumps(body))
        kernel_id = json.loads(response.body)["kernel"]["id"]
        ws = await jp_ws_fetch("api", "kernels", kernel_id, "channels")
        info = ws_request("kernel_info_request", {})
        ws.write_message(json.dumps(info))
        while True:
            msg = json.loads(await asyncio.wait_for(ws.read_message(), 30))
            if (
                msg["parent_header"].get("msg_id") == info["header"]["msg_id"]
                and msg["msg_type"] == "kernel_info_reply"
            ):
                break
        answered = time.monotonic() - began
        assert msg["content"]["implementation"] == BUILDING
        assert answered < 2.0, f"kernel_info took {answered:.2f} s"

        requests = [_execute(PROBE), _execute("print('second cell ran')")]
        for request in requests:
            ws.write_message(json.dumps(request))
        cells = {r["header"]["msg_id"]: Cell(r["header"]["msg_id"]) for r in requests}
        order: list[str] = []
        deadline = time.monotonic() + TIMEOUT
        while not all(c.replies and c.idle for c in cells.values()):
            raw = await asyncio.wait_for(ws.read_message(), deadline - time.monotonic())
            assert raw is not None, "the websocket closed"
            msg = json.loads(raw)
            cell = cells.get(msg["parent_header"].get("msg_id"))
            if cell is None:
                continue
            if msg["msg_type"] == "stream":
                name, text = msg["content"]["name"], msg["content"]["text"]
                setattr(cell, name, getattr(cell, name) + text)
                if name == "stderr" and not (slot / ENTRY_FILE).exists():
                    cell.stderr_before_cached += text
            elif msg["msg_type"] == "execute_reply":
                cell.replies.append(msg["content"])
                order.append(cell.msg_id)
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                cell.idle = True
        ws.close()
        first, second = (cells[r["header"]["msg_id"]] for r in requests)
        assert order == [first.msg_id, second.msg_id]
        assert f"-{marker}.drv" in first.stderr_before_cached, first.stderr
        assert json.loads(first.stdout.strip().splitlines()[-1])["GREETING"] == marker
        assert second.stdout == "second cell ran\n"
        assert [len(first.replies), len(second.replies)] == [1, 1]
        assert first.replies[0]["status"] == second.replies[0]["status"] == "ok"
        await jp_fetch("api", "kernels", kernel_id, method="DELETE")
    finally:
        manager.stop_background_refresh()


# -- keeping recently used environments fresh ------------------------------------------------


class FakeServer(Configurable):
    """A parent that looks like a server to the manager (keep_fresh runs under one only)."""

    web_app = None


@pytest.fixture
def served_manager(projects, tmp_path):
    made = []

    def make(**traits) -> NixKernelSpecManager:
        traits.setdefault("cache_dir", str(tmp_path / "cache"))
        manager = NixKernelSpecManager(
            parent=FakeServer(), project_dirs=[str(projects)], refresh_interval=3600, **traits
        )
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.stop_background_refresh()


def test_a_recently_started_environment_is_re_evaluated_once_its_edit_settles(
    counting_nix, projects, served_manager, caplog
):
    """After a kernel of it started, an environment whose Nix file changes is re-evaluated in
    the background once the file stayed the same for an interval (debounced), one look at a
    time; a failing edit is tried once, not again until the next change."""
    project = write_shell_nix(projects / "fresh", {**DEFAULT_SHELL, "GREETING": "one"})
    manager = served_manager(nix_executable=counting_nix.path, keep_fresh_interval=3600)
    name = only_kernel(manager)
    source = manager.targets()[0].nix_source()
    manager.cache.ensure(source, counting_nix.path)
    manager.get_kernel_spec(name)  # what the server does as a kernel starts
    fresh = manager._freshener
    assert fresh.check_once() == []  # fresh: nothing to do

    write_shell_nix(project, {**DEFAULT_SHELL, "GREETING": "two"})
    assert fresh.check_once() == []  # just changed: let it settle
    with caplog.at_level(logging.INFO):
        assert fresh.check_once() == [source]
    state, entry = manager.cache.inspect(source, counting_nix.path)
    assert state == "fresh" and entry["variables"]["GREETING"] == "two"
    assert counting_nix.evaluations() == 2
    assert "re-evaluating it in the background" in caplog.text

    (project / "shell.nix").write_text('throw "broken in the background"\n')
    assert fresh.check_once() == []
    assert fresh.check_once() == [source]
    assert fresh.check_once() == []  # tried: not again for the same files
    assert counting_nix.evaluations() == 3


def test_keeping_fresh_runs_on_its_own_thread(counting_nix, projects, served_manager):
    """With a short interval the re-evaluation happens by itself after an edit."""
    project = write_shell_nix(projects / "bg", {**DEFAULT_SHELL, "GREETING": "one"})
    manager = served_manager(nix_executable=counting_nix.path, keep_fresh_interval=0.1)
    source = manager.targets()[0].nix_source()
    manager.cache.ensure(source, counting_nix.path)
    manager.get_kernel_spec(only_kernel(manager))
    write_shell_nix(project, {**DEFAULT_SHELL, "GREETING": "two"})
    wait_for(
        lambda: (
            manager.cache.inspect(source, counting_nix.path)[1]["variables"]["GREETING"] == "two"
        ),
        "the background re-evaluation",
        timeout=60,
    )


def test_a_warm_start_loads_none_of_the_cold_start_machinery(nix, projects, manager_factory):
    """A cache hit plans the exec exactly as before: the launcher imports neither the building
    kernel, its worker's module, the build log, nor pyzmq."""
    import nixkernel

    project = write_shell_nix(projects / "warm")
    manager = manager_factory(project_dirs=[str(projects)])
    name = only_kernel(manager)
    manager.cache.ensure(manager.targets()[0].nix_source())
    argv = manager.get_kernel_spec(name).argv
    launcher_args = [a.replace("{connection_file}", "/nonexistent/c.json") for a in argv[3:]]
    parent = os.path.dirname(os.path.dirname(nixkernel.__file__))
    code = (
        f"import os, sys; sys.path[0] = {parent!r}; from nixkernel import launch; "
        f"args = launch.build_parser().parse_args({launcher_args!r}); "
        f"args.launcher_argv = {launcher_args!r}; "
        "plan = launch.plan(args, dict(os.environ)); "
        "print(launch.FALLBACK_SCRIPT in plan.argv, ' '.join(sorted(m for m in sys.modules if m in "
        "('nixkernel.building', 'nixkernel.buildkernel', 'nixkernel.buildlog', 'zmq'))))"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True, cwd=project
    )
    assert out.stdout.strip() == "False", out
