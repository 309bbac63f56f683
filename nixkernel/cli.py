"""The command line: ``jupyter nixkernel SUBCOMMAND``.

A :class:`~jupyter_core.application.JupyterApp` with subcommands, like ``jupyter kernelspec``.
Every subcommand reads ``jupyter_server_config.py`` (and ``.json``) like the server does, so
``c.NixKernelSpecManager.*`` settings apply to both.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from jupyter_core.application import JupyterApp, base_aliases, base_flags
from traitlets import Bool, Instance, List, Unicode

from . import __version__
from .describe import KernelTarget
from .kernelspec import NixKernelSpecManager
from .launch import target_source


class NixKernelSubcommand(JupyterApp):
    """Shared plumbing: server configuration, a manager, and DIR arguments."""

    version = __version__
    # Read the same configuration files as the Jupyter server.
    config_file_name = Unicode("jupyter_server_config")

    classes = [NixKernelSpecManager]

    aliases = {
        **base_aliases,
        "depth": "NixKernelSpecManager.max_depth",
        "cache-dir": "NixKernelSpecManager.cache_dir",
        "nix": "NixKernelSpecManager.nix_executable",
    }
    flags = dict(base_flags)

    manager = Instance(NixKernelSpecManager, allow_none=True)
    dirs = List(Unicode(), help="Directories given on the command line.")

    def initialize(self, argv: Any = None) -> None:
        super().initialize(argv)
        self.dirs = [os.path.abspath(d) for d in self.extra_args]
        self.manager = NixKernelSpecManager(parent=self)
        if self.dirs:
            self.manager.project_dirs = self.dirs

    def cache_state(self, target: KernelTarget) -> str:
        assert self.manager is not None
        source = target_source(target, self.manager.venv_library_shell or None)
        if source is None:
            return "-"
        state, _ = self.manager.cache.inspect(source, self.manager.nix_executable or None)
        return state

    def fail(self, message: str, status: int = 1) -> None:
        print(f"jupyter nixkernel: {message}", file=sys.stderr)
        self.exit(status)


class ListApp(NixKernelSubcommand):
    name = "jupyter-nixkernel-list"
    description = """List the kernels nixkernel offers: one per flake devShell, shell.nix and
    virtualenv found under DIR... (default: c.NixKernelSpecManager.project_dirs, else the current
    directory). The CACHE column says whether the environment is evaluated and current (fresh),
    evaluated but its Nix files changed since (stale), or not evaluated (none)."""
    examples = """
    jupyter nixkernel list
    jupyter nixkernel list --json ~/projects
    """

    json_output = Bool(False, help="Print JSON instead of a table.").tag(config=True)
    flags = {
        **NixKernelSubcommand.flags,
        "json": ({"ListApp": {"json_output": True}}, "Print machine-readable JSON."),
    }

    def start(self) -> None:
        assert self.manager is not None
        rows = []
        for target in self.manager.refresh():
            row: dict[str, Any] = {**target.as_dict(), "cache": self.cache_state(target)}
            if target.problem:
                row["problem"] = target.problem
            rows.append(row)
        if self.json_output:
            json.dump(rows, sys.stdout, indent=2)
            print()
            return
        if not rows:
            print(f"No projects found under {', '.join(self.manager.project_dirs)}.")
            return
        print_table(
            ["NAME", "DISPLAY NAME", "KIND", "PROJECT", "CACHE"],
            [
                [r["name"], r["display_name"], r["kind"], r["project"],
                 r["cache"] + (" (broken venv)" if r.get("problem") else "")]
                for r in rows
            ],
        )  # fmt: skip


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    for line in [headers, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=False)).rstrip())


class NixKernelApp(JupyterApp):
    name = "jupyter-nixkernel"
    version = __version__
    description = """Jupyter kernels for every Nix dev shell, shell.nix and uv virtualenv in
    your projects. Configure with c.NixKernelSpecManager.* in jupyter_server_config.py."""
    subcommands = {
        "list": (ListApp, ListApp.description.splitlines()[0]),
    }
    aliases: dict = {}
    flags: dict = {}

    def start(self) -> None:
        if self.subapp is None:
            print(
                "No subcommand given. Available subcommands:", ", ".join(sorted(self.subcommands))
            )
            print("Run `jupyter nixkernel SUBCOMMAND --help` for help on one.")
            self.exit(1)
        self.subapp.start()


def main() -> None:
    NixKernelApp.launch_instance()
