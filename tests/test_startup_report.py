"""The server says what nixkernel found: one line at start-up (projects, kernels, directories,
the Nix it uses), and a warning when Nix is missing or cannot build for this user."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import logged
from nixprojects import write_flake, write_shell_nix
from traitlets.config import Config

from nixkernel import extension
from nixkernel.nix import nix_version


class Recorder:
    """A logger stand-in that keeps what it is told."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, msg: str, *args: object) -> None:
        self.lines.append(("info", msg % args))

    def warning(self, msg: str, *args: object) -> None:
        self.lines.append(("warning", msg % args))

    def of(self, level: str) -> list[str]:
        return [text for lvl, text in self.lines if lvl == level]


@pytest.fixture
def server_log() -> Iterator[list[str]]:
    with logged("ServerApp.nixkernel") as lines:
        yield lines


@pytest.fixture
def jp_server_config(nix: str, jp_root_dir: Path, tmp_path: Path, server_log) -> Config:
    write_flake(jp_root_dir / "api")
    write_shell_nix(jp_root_dir / "legacy")
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"nixkernel": True}},
            "NixKernelSpecManager": {
                "cache_dir": str(tmp_path / "cache"),
                "discover_flake_shells": False,
            },
        }
    )


def test_server_logs_what_it_found_and_the_nix_it_uses(jp_serverapp, jp_root_dir, nix, server_log):
    manager = jp_serverapp.kernel_spec_manager
    try:
        for thread in threading.enumerate():
            if thread.name == "nixkernel-report":
                thread.join(timeout=120)
    finally:
        manager.stop_background_refresh()
    # Only this server's: other tests' servers report from their own threads, maybe late.
    found = [line for line in server_log if f" under {jp_root_dir};" in line]
    assert found == [
        f"nixkernel: 2 project(s), 3 kernel(s) under {jp_root_dir}; Nix {nix_version(nix)} at {nix}"
    ], server_log


def test_missing_nix_is_a_warning(projects, manager_factory):
    write_shell_nix(projects / "legacy")
    manager = manager_factory(project_dirs=[str(projects)], nix_executable="/no/such/nix")
    log = Recorder()
    line = extension.report(manager, log)
    assert line.endswith("; no usable Nix") and "1 project(s), 2 kernel(s)" in line
    (warning,) = log.of("warning")
    assert "/no/such/nix" in warning and "nix_executable" in warning


def test_nix_that_cannot_build_for_this_user_is_a_warning(
    nix, projects, manager_factory, monkeypatch, tmp_path
):
    write_flake(projects / "api")
    monkeypatch.setenv("NIX_REMOTE", "daemon")
    monkeypatch.setenv("NIX_DAEMON_SOCKET_PATH", str(tmp_path / "nobody-listens"))
    log = Recorder()
    extension.report(manager_factory(project_dirs=[str(projects)]), log)
    (warning,) = log.of("warning")
    assert "the projects' kernels cannot start" in warning
    assert "the Nix daemon is not running" in warning and "jupyter nixkernel doctor" in warning


def test_no_nix_projects_no_nix_warning(projects, manager_factory):
    (projects / "tool" / ".venv").mkdir(parents=True)
    (projects / "tool" / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    log = Recorder()
    extension.report(manager_factory(project_dirs=[str(projects)], nix_executable="/no/nix"), log)
    assert log.of("warning") == []
