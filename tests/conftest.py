"""Shared fixtures: real Nix configured for offline use, test projects, and real kernels."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    IN_CI,
    CountingNix,
    NixDaemon,
    _python_for_users,
    daemon_config,
    nix_daemon_process,
    run_in_settled_kernel,
)

from nixkernel.kernelspec import NixKernelSpecManager

pytest_plugins = ["jupyter_server.pytest_plugin"]

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


@pytest.fixture
def counting_nix(nix: str, tmp_path: Path) -> CountingNix:
    log = tmp_path / "nix-calls.log"
    wrapper = tmp_path / "bin" / "nix"
    wrapper.parent.mkdir()
    # One line per call, whatever newlines its arguments hold (direct mode's bash -c script).
    wrapper.write_text(
        # One write per call (O_APPEND): concurrent calls never share a line.
        f"#!/bin/sh\nline=$(printf '%s ' \"$@\" | tr '\\n' ' ')\n"
        f'printf \'%s\\n\' "$line" >> "{log}"\n'
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


@pytest.fixture
def kernel_runner():
    # Asks which kernel answered after the cell: a cold start's first kernel_info reply comes
    # from nixkernel's building kernel (tests/test_building.py).
    return run_in_settled_kernel


# -- a Nix daemon on a private socket, and ordinary users to reach it as -------------------------


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
