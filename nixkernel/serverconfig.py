"""The server's configuration, as far as nixkernel is concerned.

Turning the server extension on and off (``jupyter nixkernel enable/disable``), and telling
whether it is on and which KernelSpecManager the server will use (``jupyter nixkernel status``).

The package ships ``etc/jupyter/jupyter_server_config.d/nixkernel.json``, which enables the
extension for every user of the environment. A user turns it off by writing
``ServerApp.jpserver_extensions.nixkernel = false`` into their own
``jupyter_server_config.json``: the server takes ``jpserver_extensions`` from the regular config
files first and only fills in names missing there from the ``config.d`` files
(``ServerApp.find_server_extensions``), so that setting wins over the shipped file.

Run ``python -m nixkernel.serverconfig > examples/jupyter_server_config.py`` to regenerate the
example configuration from the traits' help.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jupyter_server.config_manager import recursive_update
from jupyter_server.extension.config import ExtensionConfigManager
from jupyter_server.extension.serverextension import _get_config_dir

from .cache import write_json_atomically
from .extension import MANAGER_CLASS, manager_choice

EXTENSION = "nixkernel"
CONFIG_SECTION = "jupyter_server_config"
DEFAULT_MANAGER_CLASS = "jupyter_client.kernelspec.KernelSpecManager"


class ConfigFileError(Exception):
    """A configuration file nixkernel must not touch (unreadable, not a JSON object)."""


def config_dir(sys_prefix: bool = False) -> str:
    """The directory ``enable``/``disable`` write to: the user's (``jupyter_config_dir()``,
    honouring ``JUPYTER_CONFIG_DIR``) or the environment's (``sys.prefix/etc/jupyter``).

    The same choice as ``jupyter server extension enable --user / --sys-prefix``."""
    return _get_config_dir(user=not sys_prefix, sys_prefix=sys_prefix)


def config_file(directory: str) -> str:
    return os.path.join(directory, CONFIG_SECTION + ".json")


def read_json_config(path: str) -> dict[str, Any]:
    """The JSON object in ``path`` ({} if the file is missing or empty).

    Raises :class:`ConfigFileError` rather than returning {} for a file that does not parse:
    rewriting it would throw away the user's other settings."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigFileError(f"Cannot read {path}: {exc}") from exc
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigFileError(
            f"{path} is not valid JSON ({exc}); nixkernel leaves it alone. Fix or remove the "
            "file, then run the command again."
        ) from exc
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path} holds a JSON {type(data).__name__}, not an object.")
    return data


def set_enabled(enabled: bool, sys_prefix: bool = False) -> str:
    """Turn the server extension on or off for this user (or this environment), keeping every
    other setting of that ``jupyter_server_config.json``. Returns the file written."""
    path = config_file(config_dir(sys_prefix))
    data = read_json_config(path)
    recursive_update(data, {"ServerApp": {"jpserver_extensions": {EXTENSION: bool(enabled)}}})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        mode = os.stat(path).st_mode & 0o777  # the user's own choice of permissions stays
    except FileNotFoundError:
        mode = 0o644
    write_json_atomically(path, data, indent=2, mode=mode)
    return path


# -- status ------------------------------------------------------------------------------------


@dataclass
class Status:
    """Whether the server will use nixkernel, and why (not)."""

    enabled: bool
    """The server extension is enabled."""
    decided_by: str
    """The file (or setting) that decided ``enabled``."""
    manager_class: str
    """The KernelSpecManager class the server will use."""
    conflicts: list[str] = field(default_factory=list)
    """Reasons nixkernel's kernels will not show up (or not start), each with its fix."""

    @property
    def active(self) -> bool:
        return self.manager_class == MANAGER_CLASS and not self.conflicts

    def as_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "decided_by": self.decided_by,
            "kernel_spec_manager_class": self.manager_class,
            "active": self.active,
            "conflicts": self.conflicts,
        }


def _files_by_priority(paths: list[str]) -> list[str]:
    """The JSON files the server reads jpserver_extensions from, highest priority first: per
    config directory, the ``.json`` file over its ``.d/*.json`` (later names over earlier)."""
    files = []
    for directory in paths:
        files.append(config_file(directory))
        pattern = os.path.join(directory, CONFIG_SECTION + ".d", "*.json")
        files.extend(sorted(glob.glob(pattern), reverse=True))
    return files


def _setting_in(path: str) -> bool | None:
    try:
        data = read_json_config(path)
    except ConfigFileError:
        return None
    value = data.get("ServerApp", {}).get("jpserver_extensions", {})
    return value.get(EXTENSION) if isinstance(value, dict) else None


def extension_enabled(config: Mapping[str, Any], config_paths: list[str]) -> tuple[bool, str]:
    """Whether the server would load the extension, and which file says so.

    Mirrors ``ServerApp.find_server_extensions``: ``ServerApp.jpserver_extensions`` from the
    loaded config (``jupyter_server_config.py`` / ``.json``) first, then the merged JSON files of
    every config directory (``ExtensionConfigManager``, as ``jupyter server extension list``)."""
    configured = config.get("ServerApp", {}).get("jpserver_extensions", {})
    if isinstance(configured, Mapping) and EXTENSION in configured:
        value = bool(configured[EXTENSION])
        # Regular config comes from the .json (or .py) files, not from the .d directories.
        for directory in config_paths:
            if _setting_in(config_file(directory)) is not None:
                return value, config_file(directory)
        return value, "ServerApp.jpserver_extensions in jupyter_server_config.py"
    merged = ExtensionConfigManager(read_config_path=config_paths).get_jpserver_extensions()
    if EXTENSION in merged:
        for path in _files_by_priority(config_paths):
            if _setting_in(path) is not None:
                return bool(merged[EXTENSION]), path
        return bool(merged[EXTENSION]), "the server's configuration"
    return False, (
        "no configuration file mentions nixkernel (the package's "
        "jupyter_server_config.d/nixkernel.json is not installed)"
    )


def server_status(
    config: Mapping[str, Any],
    config_paths: list[str],
    nix_found: bool,
    environ: Mapping[str, str] | None = None,
) -> Status:
    """What the server will do, from its loaded ``config`` and its config directories."""
    environ = os.environ if environ is None else environ
    enabled, decided_by = extension_enabled(config, config_paths)
    conflicts = []
    # The extension decides with the same function when the server starts.
    choice = manager_choice(
        config.get("ServerApp", {}).get("kernel_spec_manager_class"), config, environ
    )
    configured = choice.configured
    if configured is not None and choice.import_error:
        manager = configured
        conflicts.append(
            f"c.ServerApp.kernel_spec_manager_class is set to {configured}, which cannot be "
            f"imported ({choice.import_error}), so the server will not start. Fix: correct the "
            f"class name, or remove the setting (nixkernel then selects {MANAGER_CLASS!r})."
        )
    elif configured is not None and not choice.nix:
        manager = configured
        conflicts.append(
            f"c.ServerApp.kernel_spec_manager_class is set to {configured}, so the server uses "
            "that manager and nixkernel's kernels are off. Fix: remove that setting, or set it "
            f"to {MANAGER_CLASS!r}."
        )
    elif configured or enabled:
        manager = MANAGER_CLASS
    else:
        manager = DEFAULT_MANAGER_CLASS
    if not enabled and not configured:
        conflicts.append(
            f"The nixkernel server extension is disabled ({decided_by}). Fix: "
            "`jupyter nixkernel enable` (or `--sys-prefix` for this environment)."
        )
    if choice.gateway and not configured:
        conflicts.append(
            f"A kernel gateway is configured ({choice.gateway}): kernels run on the gateway, not "
            "here, so nixkernel's kernels are off. Fix: unset GatewayClient.url / "
            "JUPYTER_GATEWAY_URL."
        )
    if not nix_found:
        conflicts.append(
            "Nix was not found, so Nix kernels will start the error kernel. Fix: install Nix, "
            "put it on the server's PATH, or set c.NixKernelSpecManager.nix_executable "
            "(details: `jupyter nixkernel doctor`)."
        )
    return Status(enabled, decided_by, manager, conflicts)


# -- the example configuration -------------------------------------------------------------------

#: An example value (Python source) for each configurable trait of NixKernelSpecManager.
EXAMPLE_VALUES = {
    "project_dirs": '["~/projects", "~/work"]',
    "max_depth": "3",
    "cache_dir": '"~/.cache/nixkernel"',
    "nix_executable": '"/nix/var/nix/profiles/default/bin/nix"',
    "launch_mode": '"cached"',
    "stale_fallback": "True",
    "include_venvs": "True",
    "venv_library_shell": '"/etc/nixos#pylibs"',
    "keep_native_kernels": "True",
    "project_kernel": "True",
    "discover_flake_shells": "True",
    "refresh_interval": "30.0",
    "first_scan_wait": "2.0",
    "flake_shells_timeout": "60.0",
    "flake_shells_jobs": "2",
    "warm_on_start": "True",
    "offer_languages": '["python", "R"]',
    "hide_languages": '["julia"]',
    "hide_kernelspecs": '["ir"]',
}

_EXAMPLE_HEADER = '''\
"""Example jupyter_server_config.py for nixkernel: every NixKernelSpecManager setting.

Copy the lines you need into ~/.jupyter/jupyter_server_config.py (`jupyter --config-dir` shows
where that is) and remove the leading `# `. The Jupyter server and `jupyter nixkernel` both read
this file. Generated from the settings' help by `python -m nixkernel.serverconfig`.
"""

c = get_config()  # noqa: F821  (provided by Jupyter when it loads this file)

# Installing nixkernel enables its server extension, which selects NixKernelSpecManager unless
# you chose another manager. To select it explicitly (e.g. with the extension disabled):
# c.ServerApp.kernel_spec_manager_class = "nixkernel.kernelspec.NixKernelSpecManager"
'''


def example_config() -> str:
    """The text of ``examples/jupyter_server_config.py``, from the traits' help and defaults."""
    from .kernelspec import NixKernelSpecManager

    parts = [_EXAMPLE_HEADER]
    traits = NixKernelSpecManager.class_own_traits(config=True)
    order = list(EXAMPLE_VALUES)
    for name in sorted(traits, key=lambda n: (order.index(n) if n in order else len(order), n)):
        trait = traits[name]
        help_text = " ".join(trait.help.split())
        lines = textwrap.wrap(help_text, width=96, break_on_hyphens=False)
        default = trait.default_value_repr()
        # A default computed at run time (@default) is described in the help instead.
        computed = name in getattr(NixKernelSpecManager, "_trait_default_generators", {})
        shown = "computed, see above" if computed else default
        lines.append(f"Type: {type(trait).__name__}. Default: {shown}.")
        parts.append("\n".join(f"## {line}" for line in lines))
        # A trait without a chosen example shows its default, which is always valid.
        example = EXAMPLE_VALUES.get(name, default)
        parts.append(f"# c.NixKernelSpecManager.{name} = {example}\n")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(example_config())
