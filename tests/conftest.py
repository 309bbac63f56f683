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
    version = request.param
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
        return self.log.read_text().splitlines() if self.log.exists() else []

    def evaluations(self) -> int:
        return sum(1 for c in self.calls() if " print-dev-env " in f" {c} ")


@pytest.fixture
def counting_nix(nix: str, tmp_path: Path) -> CountingNix:
    log = tmp_path / "nix-calls.log"
    wrapper = tmp_path / "bin" / "nix"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec "{nix}" "$@"\n')
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


# -- a NixOS-like multi-user set-up: nix-daemon and ordinary users --------------------------------


@dataclass
class NixDaemon:
    """A running ``nix-daemon`` of the version under test on a private socket, and how to run a
    command as an ordinary user through it (``NIX_REMOTE=daemon``), as on NixOS."""

    socket: Path
    bin_dir: str
    nix_config: str
    home: Path
    """A directory every test user can read (``/tmp/pytest-of-root`` is root's alone)."""
    python: str
    """A Python the users can run, with this test run's packages (nixkernel, ipykernel...)."""

    def user_env(self, user: str, **extra: str) -> dict[str, str]:
        home = self.home / user
        return {
            "HOME": str(home),
            "USER": user,
            "LOGNAME": user,
            "PATH": f"{self.bin_dir}:/usr/bin:/bin",
            "NIX_REMOTE": "daemon",
            "NIX_DAEMON_SOCKET_PATH": str(self.socket),
            "NIX_CONFIG": self.nix_config,
            "LANG": "C.UTF-8",
            **extra,
        }

    def run_as(self, user: str, argv: list[str], timeout: float = 300, **extra: str):
        import subprocess

        env = self.user_env(user, **extra)
        assignments = [f"{k}={v}" for k, v in env.items()]
        return subprocess.run(
            ["runuser", "-u", user, "--", "env", "-i", *assignments, *argv],
            capture_output=True,
            text=True,
            cwd=env["HOME"],
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


#: Test users: one in nix-users (may use the daemon), one outside it (the socket refuses it).
DAEMON_USER, OUTSIDER = "nixkernel-tester", "nixkernel-outsider"


def _ensure_user(name: str, groups: list[str], home: Path) -> None:
    import pwd
    import subprocess

    home.mkdir(parents=True, exist_ok=True)
    try:
        pwd.getpwnam(name)
    except KeyError:
        cmd = ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh"]
        subprocess.run([*cmd, *(["-G", ",".join(groups)] if groups else []), name], check=True)
    shutil.chown(home, name, name)


@pytest.fixture(scope="session")
def nix_daemon(nix: str, nix_install: str) -> Iterator[NixDaemon]:
    """This Nix version's ``nix-daemon`` on a private socket (never the machine's default one),
    with the offline settings, and two ordinary users; all removed at the end."""
    import grp
    import subprocess
    import tempfile

    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("the daemon tests need root (to start nix-daemon and create users)")
        pytest.skip("the daemon tests need root")
    require("runuser")
    try:
        nix_users = grp.getgrnam("nix-users").gr_gid
    except KeyError:
        pytest.fail("the group nix-users is missing: Debian's nix-bin creates it")
    # Under /tmp, not pytest's root-only directory: the users must reach their homes.
    base = Path(tempfile.mkdtemp(prefix="nixkernel-daemon-", dir="/tmp"))
    base.chmod(0o755)
    socket_dir = base / "socket"
    socket_dir.mkdir()
    os.chown(socket_dir, 0, nix_users)
    socket_dir.chmod(0o770)
    homes = base / "home"
    homes.mkdir()
    homes.chmod(0o755)
    _ensure_user(DAEMON_USER, ["nix-users"], homes / DAEMON_USER)
    _ensure_user(OUTSIDER, [], homes / OUTSIDER)
    socket = socket_dir / "socket"
    env = {**os.environ, "NIX_DAEMON_SOCKET_PATH": str(socket)}
    env.pop("NIX_REMOTE", None)
    daemon = subprocess.Popen(
        [os.path.join(nix_install, "nix-daemon")],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(base / "daemon.log", "w"),  # noqa: SIM115 (closed with the process)
    )
    try:
        _wait_for_socket(socket, daemon, base / "daemon.log")
        yield NixDaemon(socket, nix_install, os.environ["NIX_CONFIG"], homes, _user_python(base))
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        for user in (DAEMON_USER, OUTSIDER):
            subprocess.run(["userdel", user], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _wait_for_socket(path: Path, daemon, log: Path, timeout: float = 60) -> None:
    """Until the daemon accepts connections (it has no readiness signal of its own)."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while True:
        if daemon.poll() is not None:
            pytest.fail(f"nix-daemon exited: {log.read_text()}")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"nix-daemon did not listen on {path}: {log.read_text()}")
        time.sleep(0.02)


def _user_python(base: Path) -> str:
    """A venv of the system's Python 3.11 that sees this run's site-packages. The run's own
    interpreter may live where other users cannot reach it (pyenv under /root)."""
    import subprocess
    import sysconfig

    system_python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not os.access(system_python, os.X_OK):
        pytest.skip(f"{system_python} is needed to run Python as another user")
    venv = base / "python"
    subprocess.run([system_python, "-m", "venv", "--without-pip", str(venv)], check=True)
    ask = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = subprocess.run(
        [str(venv / "bin" / "python"), "-c", ask],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    Path(site, "nixkernel-tests.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return str(venv / "bin" / "python")
