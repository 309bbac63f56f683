"""The Jupyter server extension: makes NixKernelSpecManager the server's kernelspec manager.

Installing the package drops ``jupyter_server_config.d/nixkernel.json``, which enables this
extension. Linking runs before the server creates its managers, so it can select
``NixKernelSpecManager``, unless the user chose another manager class or uses a gateway: their
choice wins, with one line in the log saying so.
"""

from __future__ import annotations

from typing import Any

MANAGER_CLASS = "nixkernel.kernelspec.NixKernelSpecManager"


def user_chose_other_manager(serverapp: Any) -> str | None:
    """The reason not to install nixkernel's manager, or None."""
    configured = serverapp.config.get("ServerApp", {}).get("kernel_spec_manager_class")
    if configured and not str(configured).endswith("NixKernelSpecManager"):
        return f"ServerApp.kernel_spec_manager_class is set to {configured}"
    gateway = serverapp.config.get("GatewayClient", {}).get("url")
    import os

    if gateway or os.environ.get("JUPYTER_GATEWAY_URL"):
        return "a kernel gateway is configured (GatewayClient.url)"
    return None


def _link_jupyter_server_extension(serverapp: Any) -> None:
    reason = user_chose_other_manager(serverapp)
    if reason:
        serverapp.log.info(
            "nixkernel: %s; leaving it in place (nixkernel's kernels are off).", reason
        )
        return
    serverapp.kernel_spec_manager_class = MANAGER_CLASS


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from .kernelspec import NixKernelSpecManager

    manager = serverapp.kernel_spec_manager
    if isinstance(manager, NixKernelSpecManager):
        manager.start_background_refresh()
        serverapp.log.info(
            "nixkernel: looking for projects under %s", ", ".join(manager.project_dirs)
        )
