"""Shared fixtures: real Nix configured for offline use, test projects, and real kernels."""

from __future__ import annotations

import contextlib
import os
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


@pytest.fixture(scope="session")
def nix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real nix, configured through NIX_CONFIG for offline use (no substituters, no
    registry, no sandbox), as every process the tests start inherits it."""
    path = require("nix")
    registry = tmp_path_factory.mktemp("nix") / "empty-registry.json"
    registry.write_text('{"flakes": [], "version": 2}')
    saved = os.environ.get("NIX_CONFIG")
    os.environ["NIX_CONFIG"] = (
        "experimental-features = nix-command flakes\n"
        "sandbox = false\n"
        "substituters =\n"
        f"flake-registry = {registry}\n"
        "warn-dirty = false\n"
    )
    yield path
    if saved is None:
        os.environ.pop("NIX_CONFIG", None)
    else:
        os.environ["NIX_CONFIG"] = saved


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


__all__ = ["IN_CI", "KernelRun", "require", "run_in_kernel", "sys"]


# -- nixkernel's building kernel (tests/test_building.py) -----------------------------------------


def run_in_settled_kernel(
    manager: NixKernelSpecManager,
    name: str,
    code: str,
    cwd: str | os.PathLike,
    timeout: float = 120,
) -> KernelRun:
    """:func:`run_in_kernel`, asking which kernel answers (``implementation``) *after* the cell:
    on a cold start the first ``kernel_info`` reply comes from nixkernel's building kernel,
    while the cell runs in the kernel it becomes (the project's, or the fallback)."""
    run = KernelRun()
    with running_kernel(manager, name, cwd, timeout) as (_km, kc):

        def hook(msg: dict) -> None:
            if msg["msg_type"] == "stream":
                name_ = msg["content"]["name"]
                setattr(run, name_, getattr(run, name_) + msg["content"]["text"])
            elif msg["msg_type"] == "error":
                run.errors.append(msg["content"])

        kc.execute_interactive(code, output_hook=hook, timeout=timeout)
        reply = kc.kernel_info(reply=True, timeout=timeout)
        run.implementation = reply["content"].get("implementation", "")
    return run


@pytest.fixture
def kernel_runner():  # noqa: F811 (replaces the fixture above: see run_in_settled_kernel)
    return run_in_settled_kernel
