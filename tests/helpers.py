"""Plain helpers the tests share (fixtures are in conftest.py): CI rules, real kernels run
through jupyter_client, a counting ``nix`` wrapper, and a private Nix daemon."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from jupyter_client import BlockingKernelClient, KernelManager

from nixkernel.describe import KernelTarget
from nixkernel.kernelspec import NixKernelSpecManager

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(tool: str) -> str:
    """The tool's path; under CI a missing tool fails the run instead of skipping it."""
    path = shutil.which(tool)
    if path is None:
        if IN_CI:
            pytest.fail(f"{tool} is required under CI=true but is not installed")
        pytest.skip(f"{tool} is not installed")
    return path


def nix_version_tuple(nix: str) -> tuple[int, ...]:
    """The running Nix's version, for tests whose expectation follows a version's rule."""
    from nixkernel.nix import nix_version, parse_version

    return tuple(int(p) for p in re.findall(r"\d+", parse_version(nix_version(nix)))[:3])


@dataclass
class CountingNix:
    """A ``nix`` that records each invocation, then runs the real one."""

    path: str
    log: Path

    def calls(self) -> list[str]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [line.rstrip() for line in lines]

    def evaluations(self) -> int:
        return sum(1 for c in self.calls() if " print-dev-env " in f" {c} ")


@dataclass
class KernelRun:
    """What a cell printed in a real kernel."""

    stdout: str = ""
    stderr: str = ""
    errors: list[dict] = field(default_factory=list)
    implementation: str = ""

    @property
    def error_text(self) -> str:
        return "\n".join(
            "\n".join(e.get("traceback", [])) + e.get("evalue", "") for e in self.errors
        )


@contextlib.contextmanager
def running_kernel(
    manager: NixKernelSpecManager, name: str, cwd: str | os.PathLike, timeout: float = 120
) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    """Kernel ``name`` started from ``manager``'s spec with jupyter_client, and a client whose
    channels are ready (iopub included, so no output is missed); both stopped afterwards."""
    km = KernelManager(kernel_spec_manager=manager, kernel_name=name)
    km.start_kernel(cwd=str(cwd))
    kc = km.client()
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=timeout)
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@contextlib.contextmanager
def logged(logger_name: str) -> Iterator[list[str]]:
    """Every message ``logger_name`` logs meanwhile. A filter, which runs even when the logger
    has no handlers and does not propagate (as pytest-jupyter and jupyter_server leave
    ServerApp's)."""
    lines: list[str] = []

    def record(entry: logging.LogRecord) -> bool:
        lines.append(entry.getMessage())
        return True

    logger = logging.getLogger(logger_name)
    logger.addFilter(record)
    try:
        yield lines
    finally:
        logger.removeFilter(record)


def interrupt_when_it_prints(km: KernelManager, kc: BlockingKernelClient, msg_id: str) -> dict:
    """Interrupt the kernel once cell ``msg_id`` has printed "running" (not at its busy status:
    a kernel publishes busy before it runs the cell, and a SIGINT in that window is swallowed
    with no reply); the cell's own reply (other replies may be queued before it)."""
    while True:
        msg = kc.get_iopub_msg(timeout=30)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "stream"
            and "running" in msg["content"]["text"]
        ):
            break
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=30)
    return reply


def run_in_kernel(
    manager: NixKernelSpecManager,
    name: str,
    code: str,
    cwd: str | os.PathLike,
    timeout: float = 120,
    ask_after: bool = False,
) -> KernelRun:
    """Start kernel ``name`` from ``manager``'s spec, run ``code``, stop it. ``implementation``
    is asked before the cell, or with ``ask_after`` after it: on a cold start the first
    ``kernel_info`` reply comes from nixkernel's building kernel, while the cell runs in the
    kernel it becomes (the project's, or the fallback)."""
    run = KernelRun()
    with running_kernel(manager, name, cwd, timeout) as (_km, kc):
        if not ask_after:
            reply = kc.kernel_info(reply=True, timeout=timeout)
            run.implementation = reply["content"].get("implementation", "")

        def hook(msg: dict) -> None:
            if msg["msg_type"] == "stream":
                name_ = msg["content"]["name"]
                setattr(run, name_, getattr(run, name_) + msg["content"]["text"])
            elif msg["msg_type"] == "error":
                run.errors.append(msg["content"])

        kc.execute_interactive(code, output_hook=hook, timeout=timeout)
        if ask_after:
            reply = kc.kernel_info(reply=True, timeout=timeout)
            run.implementation = reply["content"].get("implementation", "")
    return run


def run_in_settled_kernel(
    manager: NixKernelSpecManager,
    name: str,
    code: str,
    cwd: str | os.PathLike,
    timeout: float = 120,
) -> KernelRun:
    """:func:`run_in_kernel`, asking which kernel answers after the cell."""
    return run_in_kernel(manager, name, code, cwd, timeout, ask_after=True)


def wait_for(condition: Callable[[], object], what: str, timeout: float = 120) -> object:
    """Poll ``condition`` until it is truthy (returns it), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # poll interval, not synchronisation


def ws_request(msg_type: str, content: dict, msg_id: str | None = None) -> dict:
    """A shell request as jupyter_server's websocket takes it (JSON protocol)."""
    return {
        "channel": "shell",
        "header": {
            "msg_id": msg_id or uuid.uuid4().hex,
            "msg_type": msg_type,
            "username": "test",
            "session": uuid.uuid4().hex,
            "date": "",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "buffers": [],
        "content": content,
    }


# -- a Nix daemon on a private socket, and ordinary users to reach it as -------------------------


@dataclass
class NixDaemon:
    """A ``nix-daemon`` (of the version the ``nix`` fixture runs) on a private socket, as on a
    multi-user install (/work/shared/nix/README.md), with two ordinary users: ``member`` (in the
    socket's group ``nix-users``) and ``outsider`` (not). Builds run with the daemon's offline
    settings; clients reach it with ``NIX_REMOTE=daemon`` and ``NIX_DAEMON_SOCKET_PATH``."""

    socket: str
    nix_bin: str
    """The directory of the nix binaries (the daemon's version): first on the users' PATH."""
    base: Path
    """A world-readable directory for files the users need (see :meth:`give`)."""
    member: str
    outsider: str
    python: str
    """A Python the users may run, with this test run's packages and nixkernel importable
    through ``PYTHONPATH`` (in :meth:`client_env`): the test venv's own interpreter may live
    under root's home (pyenv), which other users cannot enter."""
    pythonpath: str

    def client_env(self, user: str, socket: str | None = None, **extra: str) -> dict[str, str]:
        """The environment of a Nix client run as ``user`` against this daemon (or ``socket``)."""
        import pwd

        home = pwd.getpwnam(user).pw_dir
        env = {
            "HOME": home,
            "USER": user,
            "LOGNAME": user,
            "PATH": f"{self.nix_bin}:/usr/local/bin:/usr/bin:/bin",
            "NIX_REMOTE": "daemon",
            "NIX_DAEMON_SOCKET_PATH": socket or self.socket,
            # Client-side settings only: builds follow the daemon's.
            "NIX_CONFIG": "experimental-features = nix-command flakes\n"
            f"flake-registry = {self.base / 'empty-registry.json'}\n"
            "warn-dirty = false\n",
            "NIX_BUILD_SHELL": "bash",
            "JUPYTER_PLATFORM_DIRS": "1",
            "NIXKERNEL_CACHE_DIR": os.path.join(home, ".cache", "nixkernel"),
            "PYTHONPATH": self.pythonpath,
        }
        return {**env, **extra}

    def run_as(
        self, user: str, argv: list[str], env: dict[str, str] | None = None, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as ``user`` (uid, gid and supplementary groups, as after a login)."""
        import pwd
        import subprocess

        entry = pwd.getpwnam(user)
        return subprocess.run(
            argv,
            user=entry.pw_uid,
            group=entry.pw_gid,
            extra_groups=os.getgrouplist(user, entry.pw_gid),
            env=env if env is not None else self.client_env(user),
            capture_output=True,
            text=True,
            timeout=300,
            **kwargs,  # type: ignore[arg-type]
        )

    def give(self, path: Path, user: str) -> Path:
        """Make ``path`` (a tree under :attr:`base`) ``user``'s."""
        import pwd

        entry = pwd.getpwnam(user)
        for current, dirs, files in os.walk(path):
            for name in [current, *(os.path.join(current, n) for n in dirs + files)]:
                os.lchown(name, entry.pw_uid, entry.pw_gid)
        return path


@contextlib.contextmanager
def nix_daemon_process(nix_bin: str, directory: Path, config: str) -> Iterator[str]:
    """A ``nix-daemon`` from ``nix_bin`` listening on ``directory/socket`` (``directory`` made
    ``root:nix-users 0770``, as the default socket's), with ``config`` as its NIX_CONFIG;
    yields the socket path and stops the daemon (and the children it forked) afterwards."""
    import grp
    import signal
    import subprocess
    import time

    directory.mkdir(parents=True)
    os.chown(directory, 0, grp.getgrnam("nix-users").gr_gid)
    directory.chmod(0o770)
    socket = str(directory / "socket")
    log = open(directory.parent / f"{directory.name}.log", "w")  # noqa: SIM115
    env = {**os.environ, "NIX_CONFIG": config, "NIX_DAEMON_SOCKET_PATH": socket}
    daemon = subprocess.Popen(
        [os.path.join(nix_bin, "nix-daemon")],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: teardown stops its children too
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(socket):  # readiness: the daemon creates it when listening
            if daemon.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"nix-daemon did not start: {Path(log.name).read_text()}")
            time.sleep(0.02)
        yield socket
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        log.close()


def daemon_config(registry: Path, extra: str = "") -> str:
    """The daemon's settings: offline (no substituters, no sandbox, builds as root)."""
    return (
        "experimental-features = nix-command flakes\n"
        "sandbox = false\n"
        "substituters =\n"
        "build-users-group =\n"
        f"flake-registry = {registry}\n" + extra
    )


def _python_for_users() -> tuple[str | None, str]:
    """(interpreter, PYTHONPATH) for running this test run's code as another user: this
    interpreter if everyone may run it, else the system's python3.X of the same version."""
    import site
    import sysconfig

    def runnable(path: str) -> bool:
        real = os.path.realpath(path)
        parents = [os.path.dirname(real)]
        while parents[-1] != "/":
            parents.append(os.path.dirname(parents[-1]))
        return os.stat(real).st_mode & 0o001 != 0 and all(
            os.stat(d).st_mode & 0o001 for d in parents
        )

    repo = str(Path(__file__).resolve().parent.parent)
    paths = [repo, *site.getsitepackages(), sysconfig.get_paths()["platlib"]]
    pythonpath = ":".join(dict.fromkeys(paths))
    if runnable(sys.executable):
        return sys.executable, pythonpath
    name = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    system = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")
    return (system if system and runnable(system) else None), pythonpath


# -- finding kernels and running the command line -------------------------------------------------


def find_target(
    manager: NixKernelSpecManager,
    kind: str | None = None,
    shell: str | None = None,
    project: str | os.PathLike | None = None,
    only: bool = False,
) -> KernelTarget:
    """The first of ``manager``'s kernels of ``kind`` (and ``shell``, ``project`` if given);
    with ``only``, the one such kernel, asserting there is exactly one."""
    targets = manager.targets()
    found = [
        t
        for t in targets
        if (kind is None or t.kind == kind)
        and (shell is None or t.shell == shell)
        and (project is None or t.project == str(project))
    ]
    wanted = f"{kind or 'any'} {shell or ''} kernel{f' for {project}' if project else ''}"
    if only:
        assert len(found) == 1, f"not one {wanted} in {[t.name for t in targets]}"
    if not found:
        raise AssertionError(f"no {wanted} in {[t.name for t in targets]}")
    return found[0]


def run_cli(
    *args: str, env: dict[str, str], cwd: str | os.PathLike | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``jupyter nixkernel ARGS`` (as ``python -m nixkernel.cli``), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "nixkernel.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=None if cwd is None else str(cwd),
        timeout=timeout,
    )
