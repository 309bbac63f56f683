"""nixkernel: a Jupyter kernel for every Nix dev shell, shell.nix and virtualenv in your projects.

This module stays import-light: the launcher imports it on every kernel start.
The KernelSpecManager (which pulls in jupyter_client) is imported on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["NixKernelSpecManager", "__version__"]


def __getattr__(name: str) -> object:
    if name == "NixKernelSpecManager":
        from .kernelspec import NixKernelSpecManager

        return NixKernelSpecManager
    raise AttributeError(f"module 'nixkernel' has no attribute {name!r}")


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "nixkernel.extension"}]
