"""Shared fixtures: real Nix configured for offline use, test projects, and real kernels."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from jupyter_client import BlockingKernelClient, KernelManager

from nixkernel.kernelspec import NixKernelSpecManager

pytest_plugins = ["jupyter_server.pytest_plugin"]

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(tool: str) -> str:
    """The tool's path; under CI a missing tool fails the run instead of skipping it."""
    path = shutil.which(tool)
    if path is None:
        if IN_CI:
            pytest.fail(f"{tool} is required under CI=true but is not installed")
        pytest.skip(f"{tool} is not installed")
    return path


#: The Nix versions the suite runs on, and where each one's programs live. The system's Nix
#: (Debian bookworm's 2.8) is found on PATH; newer ones are installed side by side under
#: /opt/nix-<version> by tools/newer-nix.sh (the README's test command runs it).
NIX_PREFIXES = {"2.26": "/opt/nix-2.26/bin", "2.34": "/opt/nix-2.34/bin"}
#: Versions that must be present under CI=true. Debian sid, where 2.34 comes from, moves: on a day
#: its nix-bin cannot be installed, tools/test.sh says so and the suite runs without it.
REQUIRED_IN_CI = ("2.8", "2.26")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--nix-version",
        action="append",
        default=[],
        metavar="X.Y",
        help="run the tests that use Nix on this version only (repeatable; default: every "
        "installed one of " + ", ".join(("2.8", *NIX_PREFIXES)) + ")",
    )


def _system_nix_bin() -> str | None:
    """The directory of the system's nix: the first on PATH that is not one of /opt's."""
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if (
            directory
            and directory not in NIX_PREFIXES.values()
            and os.access(os.path.join(directory, "nix"), os.X_OK)
        ):
            return directory
    return None


def _installed_nix_versions() -> dict[str, str]:
    """version -> bin directory of each Nix installed here (the system's under its version)."""
    found: dict[str, str] = {}
    system = _system_nix_bin()
    if system:
        found[_short_version(os.path.join(system, "nix"))] = system
    for version, directory in NIX_PREFIXES.items():
        if os.access(os.path.join(directory, "nix"), os.X_OK):
            found.setdefault(version, directory)
    return found


def _short_version(nix: str) -> str:
    import subprocess

    from nixkernel.nix import parse_version

    out = subprocess.run([nix, "--version"], capture_output=True, text=True).stdout
    return ".".join(parse_version(out).split(".")[:2])


def _selected_nix_versions(config: pytest.Config) -> list[str]:
    installed = getattr(config, "_nix_versions", None)
    if installed is None:
        installed = config._nix_versions = _installed_nix_versions()  # type: ignore[attr-defined]
    wanted = [v for arg in config.getoption("--nix-version") for v in arg.split(",") if v]
    if wanted:
        return wanted
    versions = sorted(installed, key=lambda v: tuple(int(p) for p in v.split(".")))
    return versions or ["none"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Every test that runs Nix (through the `nix` fixture) runs once per Nix version.
    if "nix_install" in metafunc.fixturenames:
        versions = _selected_nix_versions(metafunc.config)
        if metafunc.definition.get_closest_marker("system_nix"):
            # About the machine's own Nix (what the README's first command installs): once.
            system = [v for v in versions if v not in NIX_PREFIXES]
            versions = system or versions[:1]
        ids = [f"nix{v}" for v in versions]
        metafunc.parametrize("nix_install", versions, indirect=True, scope="session", ids=ids)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # `pytest -m "not nix"` is the fast tier: the tests that never start Nix.
    for item in items:
        if "nix_install" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.nix)


@pytest.fixture(scope="session")
def nix_install(request: pytest.FixtureRequest) -> str:
    """The bin directory of the Nix version this test runs on."""
    # unittest-style classes (jupyter_kernel_test's) are not parametrized: the first version.
    version = getattr(request, "param", None) or _selected_nix_versions(request.config)[0]
    installed = request.config._nix_versions  # type: ignore[attr-defined]
    if version not in installed:
        if IN_CI and (version in REQUIRED_IN_CI or version == "none"):
            pytest.fail(f"Nix {version} is required under CI=true but is not installed")
        pytest.skip(f"Nix {version} is not installed (tools/newer-nix.sh {version} installs it)")
    return installed[version]


@pytest.fixture(scope="session")
def nix(nix_install: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real nix of one version, first on PATH and configured through NIX_CONFIG for offline
    use (no substituters, no registry, no sandbox), as every process the tests start inherits."""
    registry = tmp_path_factory.mktemp("nix") / "empty-registry.json"
    registry.write_text('{"flakes": [], "version": 2}')
    saved = {k: os.environ.get(k) for k in ("NIX_CONFIG", "PATH")}
    os.environ["PATH"] = nix_install + os.pathsep + os.environ.get("PATH", "")
    os.environ["NIX_CONFIG"] = (
        "experimental-features = nix-command flakes\n"
        "sandbox = false\n"
        "substituters =\n"
        "build-users-group =\n"
        f"flake-registry = {registry}\n"
        "warn-dirty = false\n"
    )
    yield os.path.join(nix_install, "nix")
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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


@pytest.fixture
def counting_nix(nix: str, tmp_path: Path) -> CountingNix:
    log = tmp_path / "nix-calls.log"
    wrapper = tmp_path / "bin" / "nix"
    wrapper.parent.mkdir()
    # One line per call, whatever newlines its arguments hold (direct mode's bash -c script).
    wrapper.write_text(
        f"#!/bin/sh\n{{ printf '%s ' \"$@\" | tr '\\n' ' '; echo; }} >> \"{log}\"\n"
        f'exec "{nix}" "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return CountingNix(str(wrapper), log)


@pytest.fixture
def projects(tmp_path: Path) -> Path:
    root = tmp_path / "projects"
    root.mkdir()
    return root


@pytest.fixture
def manager_factory(tmp_path: Path):
    def make(**traits: object) -> NixKernelSpecManager:
        traits.setdefault("cache_dir", str(tmp_path / "cache"))
        return NixKernelSpecManager(**traits)

    return make


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


def run_in_kernel(
    manager: NixKernelSpecManager,
    name: str,
    code: str,
    cwd: str | os.PathLike,
    timeout: float = 120,
) -> KernelRun:
    """Start kernel ``name`` from ``manager``'s spec, run ``code``, stop it."""
    run = KernelRun()
    with running_kernel(manager, name, cwd, timeout) as (_km, kc):
        reply = kc.kernel_info(reply=True, timeout=timeout)
        run.implementation = reply["content"].get("implementation", "")

        def hook(msg: dict) -> None:
            if msg["msg_type"] == "stream":
                name_ = msg["content"]["name"]
                setattr(run, name_, getattr(run, name_) + msg["content"]["text"])
            elif msg["msg_type"] == "error":
                run.errors.append(msg["content"])

        kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    return run


@pytest.fixture
def kernel_runner():
    return run_in_kernel


__all__ = ["IN_CI", "KernelRun", "nix_version_tuple", "require", "run_in_kernel", "sys"]


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
    ) -> subprocess.CompletedProcess[str]:  # noqa: F821 (imported where it runs)
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


@pytest.fixture(scope="session")
def nix_daemon(nix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NixDaemon]:
    """A private nix-daemon and two users to reach it as (created for the session, removed at
    its end). Needs root (to add users and run the daemon) and Debian's ``nix-users`` group."""
    import grp
    import subprocess
    import tempfile

    nix_bin = os.path.dirname(nix)
    missing = [
        why
        for why, bad in (
            ("root", os.geteuid() != 0),
            ("useradd", shutil.which("useradd") is None),
            ("nix-daemon", not os.access(os.path.join(nix_bin, "nix-daemon"), os.X_OK)),
        )
        if bad
    ]
    try:
        grp.getgrnam("nix-users")
    except KeyError:
        missing.append("the nix-users group")
    python, pythonpath = _python_for_users()
    if python is None:
        missing.append(f"a python{sys.version_info[0]}.{sys.version_info[1]} other users can run")
    if missing:
        if IN_CI:
            pytest.fail(f"the daemon tests need {', '.join(missing)} under CI=true")
        pytest.skip(f"the daemon tests need {', '.join(missing)}")
    assert python is not None
    # Not under pytest's tmp_path: that is root's 0700, and the users must read what is here.
    base = Path(tempfile.mkdtemp(prefix="nixkernel-daemon-"))
    base.chmod(0o755)
    (base / "empty-registry.json").write_text('{"flakes": [], "version": 2}')
    tag = f"{os.getpid() % 100000}"
    member, outsider = f"nkmember{tag}", f"nkoutsider{tag}"
    try:
        subprocess.run(["useradd", "-m", "-G", "nix-users", member], check=True)
        subprocess.run(["useradd", "-m", outsider], check=True)
        config = daemon_config(base / "empty-registry.json")
        with nix_daemon_process(nix_bin, base / "daemon", config) as socket:
            yield NixDaemon(socket, nix_bin, base, member, outsider, python, pythonpath)
    finally:
        for user in (member, outsider):
            subprocess.run(["userdel", "-r", user], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


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


# -- kernel ports ---------------------------------------------------------------------------------

#: Below Linux's ephemeral range (32768-60999), where no bind(0) or outgoing connection lands.
KERNEL_PORTS_START, PORTS_PER_WORKER = 20000, 600


@pytest.fixture(scope="session", autouse=True)
def kernel_ports_of_this_worker() -> Iterator[None]:
    """Kernels started by this test process take their ports from a range of this xdist
    worker's own, below the ephemeral range. jupyter_client picks a kernel's ports (bind to port
    0, close) long before the kernel binds them (a cold start runs Nix first); with parallel
    workers another process's ephemeral port could land on one meanwhile ("Address already in
    use", a kernel that never answers). The ports are still real TCP ports the kernel binds."""
    import socket

    from jupyter_client.connect import LocalPortCache

    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    first = KERNEL_PORTS_START + index * PORTS_PER_WORKER
    cursor = [0]

    def find_available_port(self: LocalPortCache, ip: str) -> int:
        for _ in range(PORTS_PER_WORKER):
            port = first + cursor[0] % PORTS_PER_WORKER
            cursor[0] += 1
            if port in self.currently_used_ports:
                continue
            with socket.socket() as probe:
                try:
                    probe.bind((ip, port))
                except OSError:
                    continue  # in use (a kernel of this worker, or another program)
            self.currently_used_ports.add(port)
            return port
        raise RuntimeError(f"no free kernel port in {first}-{first + PORTS_PER_WORKER - 1}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LocalPortCache, "find_available_port", find_available_port)
        yield
