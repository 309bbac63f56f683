"""Jupyter's kernelspec contracts for nixkernel's own kernels: an administrator's
``allowed_kernelspecs`` hides them (in the server's listing and in ``jupyter nixkernel list``), and
``kernel_spec_class`` is the class of their specs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpec, NoSuchKernel
from nixprojects import write_flake
from traitlets import Unicode
from traitlets.config import Config

from nixkernel.describe import PROJECT_KERNEL_NAME


@pytest.fixture
def jp_server_config(jp_root_dir: Path, tmp_path: Path) -> Config:
    write_flake(jp_root_dir / "api")
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"nixkernel": True}},
            # Set on the stock class, as an administrator would: it applies to subclasses.
            "KernelSpecManager": {"allowed_kernelspecs": ["python3"]},
            "NixKernelSpecManager": {
                "cache_dir": str(tmp_path / "cache"),
                "discover_flake_shells": False,
            },
        }
    )


async def test_allowed_kernelspecs_hides_nixkernels_kernels_in_the_server(
    jp_fetch, jp_serverapp, jp_root_dir
):
    manager = jp_serverapp.kernel_spec_manager
    try:
        response = await jp_fetch("api", "kernelspecs")
        listing = json.loads(response.body)["kernelspecs"]
        assert sorted(listing) == ["python3"]
        # The project's kernel exists, but cannot be started by naming it either.
        (target,) = manager.targets()
        assert target.project == str(jp_root_dir / "api")
        with pytest.raises(NoSuchKernel):
            manager.get_kernel_spec(target.name)
        assert set(manager.find_kernel_specs()) == {"python3"}

        manager.allowed_kernelspecs = {"python3", target.name}
        assert set(manager.get_all_specs()) == {"python3", target.name}
        assert manager.get_kernel_spec(target.name).display_name == "api (flake)"
    finally:
        manager.stop_background_refresh()


def test_list_honours_allowed_kernelspecs(tmp_path):
    """`jupyter nixkernel list --all` lists what the server would: the allow list in
    jupyter_server_config.py applies to its own kernels and the ordinary ones."""
    (tmp_path / "projects" / "api").mkdir(parents=True)
    (tmp_path / "projects" / "api" / "shell.nix").write_text("{}\n")
    config = tmp_path / "config"
    config.mkdir()
    (config / "jupyter_server_config.py").write_text(
        "c.KernelSpecManager.allowed_kernelspecs = ['python3']\n"
    )
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config),
           "NIXKERNEL_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    argv = ["list", "--all", "--json", str(tmp_path / "projects")]
    result = subprocess.run([sys.executable, "-m", "nixkernel.cli", *argv],
                            capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [r["name"] for r in json.loads(result.stdout)] == ["python3"]
    assert "2 kernel(s) hidden by c.KernelSpecManager.allowed_kernelspecs" in result.stderr


class LabelledSpec(KernelSpec):
    """A kernel_spec_class with a field of its own."""

    label = Unicode("labelled")

    def to_dict(self) -> dict:
        return {**super().to_dict(), "label": self.label}


def test_kernel_spec_class_is_honoured(manager_factory, projects):
    (projects / "api").mkdir()
    (projects / "api" / "shell.nix").write_text("{}\n")
    manager = manager_factory(project_dirs=[str(projects)], kernel_spec_class=LabelledSpec)
    (target,) = manager.targets()
    assert isinstance(manager.get_kernel_spec(target.name), LabelledSpec)
    assert isinstance(manager.get_kernel_spec(PROJECT_KERNEL_NAME), LabelledSpec)
    specs = manager.get_all_specs()
    assert specs[target.name]["spec"]["label"] == "labelled"
    assert specs[target.name]["spec"]["display_name"] == "api (shell.nix)"
