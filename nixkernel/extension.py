"""The Jupyter server extension: makes NixKernelSpecManager the server's kernelspec manager.

Installing the package drops ``etc/jupyter/jupyter_server_config.d/nixkernel.json``, which
enables this extension (files there are only read for ``jpserver_extensions``). jupyter_server
links extensions (``init_server_extensions``) *before* it creates its managers
(``init_configurables``), so linking can select ``NixKernelSpecManager``, unless the user chose
another manager class (in a config file, on the command line, or on the ServerApp itself) or
uses a gateway: their choice wins, with one line in the log saying so.

Loading (after the web app exists) starts the background scan and, with
``c.NixKernelSpecManager.warm_on_start = True``, evaluates the environments whose cache is stale
or missing on a background thread, so the first kernel start of the day does not wait for Nix.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .describe import NixSource
    from .kernelspec import NixKernelSpecManager

MANAGER_CLASS = "nixkernel.kernelspec.NixKernelSpecManager"

#: Seconds the server's shutdown waits for nixkernel's background threads (a scan under way).
STOP_TIMEOUT = 10.0

#: Environments evaluated at the same time when warming: Nix is CPU- and IO-heavy, and the
#: server (and the user's first kernel) must stay responsive meanwhile.
WARM_WORKERS = 2


def _class_name(value: object) -> str:
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return str(value)


def _is_nix_manager(value: object) -> bool:
    """Whether ``value`` (a class or a dotted name) is NixKernelSpecManager or a subclass.

    Decided by name, without importing nixkernel's manager: the answer must not depend on
    whether jupyter_client imports here. An unimportable name is not ours (see
    :func:`manager_choice`)."""
    if isinstance(value, str):
        if value == MANAGER_CLASS:
            return True
        from traitlets.utils.importstring import import_item

        value = import_item(value)  # ImportError etc. for the caller to report
    return isinstance(value, type) and any(_class_name(c) == MANAGER_CLASS for c in value.__mro__)


class ManagerChoice(NamedTuple):
    """What the user's settings say about the server's kernelspec manager: the one decision
    behind both the extension (which selects nixkernel's manager, or not) and
    ``jupyter nixkernel status`` (which reports it)."""

    configured: str | None
    """The class set in ServerApp.kernel_spec_manager_class, if any."""
    nix: bool = False
    """That class is NixKernelSpecManager or a subclass of it."""
    import_error: str | None = None
    """Why that class cannot be imported: the server refuses to start with it."""
    gateway: str | None = None
    """The kernel gateway in use (it decides the manager when no class is set)."""

    @property
    def other(self) -> str | None:
        """Why nixkernel's manager will not be used (the user's own choice), or None."""
        if self.configured is not None and not self.nix:
            setting = f"ServerApp.kernel_spec_manager_class is set to {self.configured}"
            if self.import_error:
                return f"{setting}, which cannot be imported ({self.import_error})"
            return setting
        if self.configured is None and self.gateway:
            return f"a kernel gateway is configured (GatewayClient.url = {self.gateway})"
        return None


def manager_choice(
    configured: object | None, config: Mapping[str, Any], environ: Mapping[str, str]
) -> ManagerChoice:
    """The decision for a configured manager class (None: not set), the loaded ``config``
    (for ``GatewayClient.url``) and ``environ`` (for ``JUPYTER_GATEWAY_URL``).

    A class that cannot be imported is the user's (broken) choice, never replaced by
    nixkernel's: the server itself refuses it at start-up, with its own error."""
    gateway = config.get("GatewayClient", {}).get("url") or environ.get("JUPYTER_GATEWAY_URL")
    if configured is None or configured == "":
        return ManagerChoice(None, gateway=gateway or None)
    name = _class_name(configured)
    try:
        nix = _is_nix_manager(configured)
    except Exception as exc:  # any failure to import it: the server would fail the same way
        return ManagerChoice(name, import_error=f"{type(exc).__name__}: {exc}")
    return ManagerChoice(name, nix, gateway=gateway or None)


def configured_manager_class(serverapp: Any) -> object | None:
    """The kernelspec manager class the user chose, or None if the server would pick its default.

    Config files and the command line (``--ServerApp.kernel_spec_manager_class=...``) are loaded
    into the ServerApp's traits before extensions are linked, and so is a value passed to the
    ServerApp directly: ``trait_has_value`` sees all three. The trait's *default* must not be
    read here: it consults ``serverapp.gateway_config``, which only exists after
    ``init_configurables``.
    """
    if serverapp.trait_has_value("kernel_spec_manager_class"):
        return serverapp.kernel_spec_manager_class
    # Config not (yet) applied to the trait, e.g. a ServerApp subclass that loads it later.
    return serverapp.config.get("ServerApp", {}).get("kernel_spec_manager_class")


def gateway_url(serverapp: Any) -> str | None:
    """The kernel gateway in use (``--gateway-url``, ``c.GatewayClient.url`` or
    ``$JUPYTER_GATEWAY_URL``), or None. Read from config: instantiating the GatewayClient
    singleton here would create it before the server passes it its parent."""
    return manager_choice(None, serverapp.config, os.environ).gateway


def user_chose_other_manager(serverapp: Any) -> str | None:
    """Why not to install nixkernel's manager (the user's own choice), or None."""
    return manager_choice(configured_manager_class(serverapp), serverapp.config, os.environ).other


def _link_jupyter_server_extension(serverapp: Any) -> None:
    reason = user_chose_other_manager(serverapp)
    if reason:
        serverapp.log.info(
            "nixkernel: %s, so nixkernel leaves it in place and offers no project kernels "
            "(remove that setting to let nixkernel select %s).",
            reason,
            MANAGER_CLASS,
        )
        return
    if configured_manager_class(serverapp) is not None:
        return  # the user already chose NixKernelSpecManager (or a subclass of it)
    serverapp.kernel_spec_manager_class = MANAGER_CLASS


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from .kernelspec import NixKernelSpecManager

    manager = serverapp.kernel_spec_manager
    if not isinstance(manager, NixKernelSpecManager):
        return
    manager.start_background_refresh()  # stops with the server: see stop_with_server
    serverapp.log.info("nixkernel: looking for projects under %s", ", ".join(manager.project_dirs))
    # Its own logger under the server's (shown as "ServerApp.nixkernel"): the report comes from a
    # background thread, after the start-up lines, and can be filtered on its own.
    log = serverapp.log
    start_report(manager, log.getChild("nixkernel") if hasattr(log, "getChild") else log)
    if manager.warm_on_start:
        start_warming(manager)


# -- what the server found -----------------------------------------------------------------------


def report(manager: NixKernelSpecManager, log: Any) -> str:
    """Log one line saying what nixkernel found (projects, kernels, directories, the Nix it
    uses), and a warning when Nix is missing or cannot evaluate and build for this user, so that
    failing kernels are explained in the server's log before anyone starts one. Blocking (waits
    for the first scan, runs Nix): call it off the event loop. Returns the line."""
    from . import doctor, nix
    from .describe import KIND_FLAKE, KIND_SHELL_NIX

    targets = manager.targets()
    projects = {t.project for t in targets}
    kernels = len(targets) + (1 if manager.project_kernel else 0)
    needs_nix = any(t.kind in (KIND_FLAKE, KIND_SHELL_NIX) for t in targets) or bool(
        manager.venv_library_shell
    )
    try:
        nix_path = nix.find_nix(manager.nix_executable or None)
        nix_text = f"Nix {nix.nix_version(nix_path)} at {nix_path}"
    except nix.NixKernelError as exc:
        nix_path, nix_text = None, "no usable Nix"
        if needs_nix:
            log.warning("nixkernel: %s How to fix it: %s", exc.message, exc.hint)
    line = (
        f"nixkernel: {len(projects)} project(s), {kernels} kernel(s) under "
        f"{', '.join(manager.project_dirs)}; {nix_text}"
    )
    log.info(line)
    if nix_path is not None and needs_nix:
        usable = doctor.check_nix_usable(nix_path)
        if usable.status != doctor.OK:
            log.warning(
                "nixkernel: the projects' kernels cannot start: %s How to fix it: %s "
                "(`jupyter nixkernel doctor` checks it all)",
                usable.message,
                usable.fix,
            )
    return line


def start_report(manager: NixKernelSpecManager, log: Any) -> threading.Thread:
    """Run :func:`report` on a daemon thread: never on the server's event loop."""

    def run() -> None:
        try:
            report(manager, log)
        except Exception:  # a report must not take anything else down
            manager.log.exception("nixkernel: reporting what was found failed")

    thread = threading.Thread(target=run, name="nixkernel-report", daemon=True)
    thread.start()
    return thread


def stop_with_server(serverapp: Any, manager: NixKernelSpecManager) -> None:
    """Stop the manager's background threads when the server stops (the manager calls this
    when it starts them under a server, whether or not the extension selected it).

    jupyter_server (2.x) calls no unload hook of a module extension: only ``ExtensionApp``
    extensions get ``stop_extension()``. Its clean-up (``ServerApp.stop``, and pytest-jupyter's
    teardown) does call ``cleanup_extensions()``, "the shutdown hooks in all extensions": this
    server's own method is wrapped so that nixkernel's hook runs there too."""
    original = serverapp.cleanup_extensions

    async def cleanup_extensions() -> None:
        try:
            # Joining waits for a scan under way: on a worker thread, not the event loop.
            await asyncio.to_thread(manager.stop_background_refresh, STOP_TIMEOUT)
        finally:
            await original()

    serverapp.cleanup_extensions = cleanup_extensions


# -- warming the cache -------------------------------------------------------------------------


def warm_sources(manager: NixKernelSpecManager) -> list[NixSource]:
    """The Nix sources of the discovered kernels, each once (waits for the first scan): the
    manager's warm plan, as `jupyter nixkernel warm --all` evaluates it."""
    return [source for _name, source in manager.warm_plan(manager.targets())]


def warm_environments(
    manager: NixKernelSpecManager, log: Callable[..., None] | None = None
) -> dict[str, str]:
    """Evaluate every discovered environment whose cache entry is stale or missing, at most
    :data:`WARM_WORKERS` at a time. Blocking (runs Nix): call it off the event loop.

    Returns ``{source: outcome}`` for the environments it tried: ``"evaluated"``, ``"stale"``
    (re-evaluation failed, the old environment stays) or ``"failed: <reason>"``.
    """
    from . import nix
    from .cache import FRESH, STALE

    log = log or manager.log.info
    if manager.launch_mode != "cached":
        log(
            "nixkernel: launch_mode is %r, which uses no cache: nothing to warm.",
            manager.launch_mode,
        )
        return {}
    nix_executable = manager.nix_executable or None
    try:
        nix.find_nix(nix_executable)
    except nix.NixNotFoundError as exc:
        log("nixkernel: cannot warm environments: %s", exc.message)
        return {}
    cache = manager.cache
    sources = warm_sources(manager)
    todo = [s for s in sources if cache.inspect(s, nix_executable)[0] != FRESH]
    log(
        "nixkernel: warming %d of %d environments (stale or not cached), %d at a time",
        len(todo),
        len(sources),
        WARM_WORKERS,
    )

    outcomes: dict[str, str] = {}
    for source, result in cache.ensure_all(
        todo, nix_executable, jobs=WARM_WORKERS, allow_stale=manager.stale_fallback
    ):
        if isinstance(result, Exception):
            outcome = f"failed: {getattr(result, 'message', result)}"
        else:
            outcome = "stale" if result.state == STALE else "evaluated"
        outcomes[source.describe()] = outcome
        log("nixkernel: warmed %s: %s", source.describe(), outcome)
    return outcomes


def start_warming(manager: NixKernelSpecManager) -> threading.Thread:
    """Run :func:`warm_environments` on a daemon thread: never on the server's event loop."""

    def run() -> None:
        try:
            warm_environments(manager)
        except Exception:  # a failed warm-up must not take anything else down
            manager.log.exception("nixkernel: warming the environment cache failed")

    thread = threading.Thread(target=run, name="nixkernel-warm", daemon=True)
    thread.start()
    return thread
