"""Transport encryption (jupyter_client 8.10+, CurveZMQ): a nixkernel spec declares
``metadata.supported_encryption = ["curve"]`` when its environment's ipykernel can encrypt (7.3 or
newer, read from its ``.dist-info``), so under ``transport_encryption = "auto"`` project kernels
are encrypted like ``python3`` where they can be, and never handed keys they would ignore. Under
"required", a kernel whose ipykernel cannot encrypt says so in the notebook."""

from __future__ import annotations

import json
import site
from pathlib import Path

import pytest
import zmq
from jupyter_client import KernelManager
from nixprojects import DEFAULT_SHELL, write_flake
from traitlets.config import Config

from nixkernel import interpreter

pytestmark = pytest.mark.skipif(
    not hasattr(KernelManager, "transport_encryption") or not zmq.has("curve"),
    reason="this jupyter_client / libzmq has no CurveZMQ transport encryption",
)

#: The test run's site-packages (ipykernel 7.4 here): a shell whose PYTHONPATH names it lets
#: nixkernel see which ipykernel the shell's Python imports.
SITE = site.getsitepackages()[0]


def fake_old_ipykernel(directory: Path, version: str = "6.29.5") -> Path:
    """An ipykernel too old for CurveZMQ: its IPKernelApp has no ``curve_secretkey``."""
    package = directory / "ipykernel"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"__version__ = {version!r}\n")
    (package / "kernelapp.py").write_text(
        "class IPKernelApp:\n    pass\n\n"
        "def launch_new_instance():\n    raise SystemExit('the old ipykernel was started')\n"
    )
    (directory / f"ipykernel-{version}.dist-info").mkdir()
    return directory


def run_cell(manager, name: str, cwd: Path, policy: str, code: str) -> tuple[dict, list, str]:
    """Start ``name`` under ``transport_encryption=policy``; (connection info, errors, stdout)."""
    km = KernelManager(kernel_spec_manager=manager, kernel_name=name, transport_encryption=policy)
    km.start_kernel(cwd=str(cwd))
    kc = km.client()
    errors: list = []
    out: list[str] = []

    def hook(msg: dict) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            errors.append(msg["content"])

    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=120)
        kc.execute_interactive(code, output_hook=hook, timeout=120)
        return km.get_connection_info(), errors, "".join(out)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def evaluate_all(manager) -> None:
    for target in manager.refresh():
        source = target.nix_source()
        if source is not None:
            manager.cache.ensure(source, None)
    manager.refresh()


def test_auto_encrypts_kernels_whose_ipykernel_can_and_only_those(nix, projects, manager_factory):
    known = write_flake(projects / "known", {"default": {**DEFAULT_SHELL, "PYTHONPATH": SITE}})
    unknown = write_flake(projects / "unknown")
    manager = manager_factory(project_dirs=[str(projects)])
    targets = {Path(t.project).name: t for t in manager.refresh()}
    # Not evaluated: nothing is known about their ipykernel, nothing is declared.
    assert not any(
        "supported_encryption" in manager.get_kernel_spec(t.name).metadata for t in targets.values()
    )

    evaluate_all(manager)
    declared = manager.get_kernel_spec(targets["known"].name).metadata
    assert declared["supported_encryption"] == ["curve"]
    assert "supported_encryption" not in manager.get_kernel_spec(targets["unknown"].name).metadata
    listing = manager.get_all_specs()[targets["known"].name]["spec"]["metadata"]
    assert listing["supported_encryption"] == ["curve"]

    info, errors, out = run_cell(manager, targets["known"].name, known, "auto", "print(6 * 7)")
    assert info.get("curve_publickey") and not errors and out.strip() == "42"
    info, errors, out = run_cell(manager, targets["unknown"].name, unknown, "auto", "print(6 * 7)")
    assert not info.get("curve_publickey") and not errors and out.strip() == "42"


def test_required_kernel_whose_ipykernel_cannot_encrypt_explains_in_the_notebook(
    nix, projects, manager_factory, tmp_path
):
    """With transport_encryption = "required" in the configuration every spec declares curve
    (jupyter_client would otherwise refuse with "kernelspec does not declare 'curve'"); the
    boot script sees keys its ipykernel cannot use and the fallback kernel (the server's
    ipykernel, which can) answers, encrypted, with the reason and the fix."""
    old = fake_old_ipykernel(tmp_path / "old-ipykernel")
    project = write_flake(projects / "old", {"default": {**DEFAULT_SHELL, "PYTHONPATH": str(old)}})
    config = Config({"MappingKernelManager": {"transport_encryption": "required"}})
    manager = manager_factory(project_dirs=[str(projects)], config=config)
    (target,) = manager.refresh()
    assert manager.get_kernel_spec(target.name).metadata["supported_encryption"] == ["curve"]

    info, errors, out = run_cell(manager, target.name, project, "required", "print(1)")
    assert info.get("curve_publickey")
    assert out == "" and len(errors) == 1
    text = "\n".join(errors[0]["traceback"])
    assert "ipykernel 6.29.5 cannot" in text and "7.3 or newer" in text
    assert "upgrade ipykernel" in text and 'transport_encryption = "auto"' in text


def test_ipykernel_version_is_read_from_dist_info(tmp_path):
    venv = tmp_path / ".venv"
    packages = venv / "lib" / "python3.12" / "site-packages"
    packages.mkdir(parents=True)
    (venv / "bin").mkdir()
    assert interpreter.venv_ipykernel(str(venv)) is None
    (packages / "ipykernel-7.2.0.dist-info").mkdir()
    assert interpreter.venv_ipykernel(str(venv)) == (7, 2, 0)
    assert not interpreter.supports_curve((7, 2, 0))
    (packages / "ipykernel-7.2.0.dist-info").rename(packages / "ipykernel-7.3.1.dist-info")
    assert interpreter.venv_ipykernel(str(venv)) == (7, 3, 1)  # a changed venv is read again
    assert interpreter.supports_curve((7, 3, 1)) and interpreter.supports_curve((8, 0))
    assert not interpreter.supports_curve(None)
    assert json.dumps(interpreter.CURVE) == '"curve"'
