"""pytest plugin: puts NixKernelSpecManager in place of jupyter_client's KernelSpecManager.

Loaded with ``-p upstream_ksm_plugin`` by tools/upstream_kernelspec_tests.py, which runs
jupyter_client's and jupyter_server's own kernelspec tests (from their sdists) with it. Every
``kernelspec.KernelSpecManager()`` those tests make, every subclass they define, and the Jupyter
server's default manager class become a NixKernelSpecManager that finds two projects (a flake and
a shell.nix: discovery runs no Nix), so nixkernel's kernels are there for the tests' contracts
(allow lists, subclasses, listings) to apply to.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import jupyter_client.kernelspec as kernelspec
import pytest
from traitlets import default

from nixkernel.kernelspec import NixKernelSpecManager

_ROOT = tempfile.mkdtemp(prefix="nixkernel-upstream-")
atexit.register(shutil.rmtree, _ROOT, True)
PROJECTS = os.path.join(_ROOT, "projects")
for _project, _file in (("api", "flake.nix"), ("legacy", "shell.nix")):
    os.makedirs(os.path.join(PROJECTS, _project))
    with open(os.path.join(PROJECTS, _project, _file), "w", encoding="utf-8") as _f:
        _f.write("{ }\n")


class UpstreamNixKernelSpecManager(NixKernelSpecManager):
    """NixKernelSpecManager with test projects and a private cache."""

    @default("project_dirs")
    def _test_project_dirs(self) -> list[str]:
        return [PROJECTS]

    @default("cache_dir")
    def _test_cache_dir(self) -> str:
        return os.path.join(_ROOT, "cache")


STOCK = kernelspec.KernelSpecManager
kernelspec.KernelSpecManager = UpstreamNixKernelSpecManager  # type: ignore[misc]
try:  # the server's default manager class is the name it imported from jupyter_client
    import jupyter_server.serverapp as _serverapp

    _serverapp.KernelSpecManager = UpstreamNixKernelSpecManager  # type: ignore[misc]
except ImportError:
    pass


@pytest.fixture(autouse=True)
def _nixkernel_is_in_place(request: pytest.FixtureRequest) -> None:
    """Fail, rather than pass vacuously, if a test would run against the stock manager."""
    assert kernelspec.KernelSpecManager is UpstreamNixKernelSpecManager
    if "jp_serverapp" in request.fixturenames:
        manager = request.getfixturevalue("jp_serverapp").kernel_spec_manager
        assert isinstance(manager, NixKernelSpecManager), type(manager)


def pytest_report_header(config: pytest.Config) -> str:
    return f"kernelspec manager: {UpstreamNixKernelSpecManager.__mro__[1].__module__}"
