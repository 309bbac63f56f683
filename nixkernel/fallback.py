"""The fallback kernel: a kernel that answers every cell with why the real one cannot start.

When a project's environment cannot be made (Nix fails, no ipykernel, a broken venv), a kernel
that dies leaves JupyterLab restarting it with the reason only in the server's log. This one
starts in the Jupyter server's own Python instead and shows the error, with its fix, in the
notebook.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ipykernel.kernelapp import IPKernelApp
from ipykernel.kernelbase import Kernel

from . import __version__
from .kernels import language_info

_RED, _RESET = "\x1b[0;31m", "\x1b[0m"


class FallbackKernel(Kernel):
    """Reports :attr:`message` for every execution request."""

    implementation = "nixkernel-fallback"
    implementation_version = __version__
    language = "python"
    language_info = {"name": "python", "mimetype": "text/x-python", "file_extension": ".py"}
    banner = "nixkernel: this environment could not be started"
    message = "nixkernel could not start this environment."

    async def do_execute(  # type: ignore[override]
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict | None = None,
        allow_stdin: bool = False,
        *,
        cell_meta: Any = None,
        cell_id: Any = None,
    ) -> dict[str, Any]:
        headline = self.message.strip().splitlines()[0] if self.message.strip() else ""
        content = {
            "ename": "NixKernelError",
            "evalue": headline,
            "traceback": [
                f"{_RED}nixkernel could not start this environment{_RESET}",
                "",
                *self.message.splitlines(),
            ],
        }
        if not silent:
            self.send_response(self.iopub_socket, "error", content)
        return {"status": "error", "execution_count": self.execution_count, **content}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    message = "nixkernel could not start this environment."
    if "--message" in argv:
        i = argv.index("--message")
        message = argv[i + 1]
        del argv[i : i + 2]
    if "--language" in argv:
        i = argv.index("--language")
        FallbackKernel.language = argv[i + 1]
        FallbackKernel.language_info = language_info(argv[i + 1])
        del argv[i : i + 2]
    print(f"[nixkernel] starting the fallback kernel:\n{message}", file=sys.stderr, flush=True)
    FallbackKernel.message = message
    if os.environ.get("NIXKERNEL_REPLAY"):
        # Cells run while the building kernel waited for Nix: they get the reason too.
        _handover().launch(kernel_class=FallbackKernel, argv=argv)
        return
    IPKernelApp.launch_instance(argv=argv, kernel_class=FallbackKernel)


def _handover() -> Any:
    """nixkernel/boot/handover.py (a file run by path in the project's Python, not a module)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "boot", "handover.py")
    spec = importlib.util.spec_from_file_location("nixkernel_handover", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    main()
