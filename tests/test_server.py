"""nixkernel inside a real jupyter_server (pytest-jupyter): the REST listing and logos, kernels
started through sessions in the notebook's folder and executed over the kernel websocket, the
project-following kernel, auto-enabling through the shipped config.d file, respecting the user's
own manager, picking up new projects without a restart, and a listing served from memory."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from helpers import KernelRun, logged, ws_request
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_server.serverapp import ServerApp
from nixprojects import DEFAULT_SHELL, write_flake, write_shell_nix
from traitlets.config import Config

from nixkernel import extension, serverconfig
from nixkernel.cache import FRESH
from nixkernel.describe import PROJECT_KERNEL_NAME
from nixkernel.extension import MANAGER_CLASS
from nixkernel.kernelspec import RESOURCES, NixKernelSpecManager

REPO = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = REPO / "jupyter-config" / "jupyter_server_config.d" / "nixkernel.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
START_TIMEOUT = 120  # a first start evaluates the shell with Nix; CI machines are slow
PROBE = (
    "import os, json; "
    "print(json.dumps({'GREETING': os.environ.get('GREETING'), 'cwd': os.getcwd()}))"
)


@dataclass
class RootProjects:
    """Projects under the server's root: a flake, a shell.nix, and a folder in no project."""

    root: Path
    alpha: Path
    beta: Path
    loose: Path


@pytest.fixture
def root_projects(nix: str, jp_root_dir: Path) -> RootProjects:
    alpha = write_flake(jp_root_dir / "alpha", {"default": {**DEFAULT_SHELL, "GREETING": "alpha"}})
    beta = write_shell_nix(jp_root_dir / "beta", {**DEFAULT_SHELL, "GREETING": "beta"})
    loose = jp_root_dir / "loose"
    loose.mkdir()
    return RootProjects(jp_root_dir, alpha, beta, loose)


@pytest.fixture
def nix_traits() -> dict:
    """Extra c.NixKernelSpecManager settings (tests parametrize this)."""
    return {}


@pytest.fixture
def server_traits() -> dict:
    """c.ServerApp settings (tests parametrize this): by default, just the extension enabled."""
    return {"jpserver_extensions": {"nixkernel": True}}


@pytest.fixture
def server_log() -> Iterator[list[str]]:
    """Every message the ServerApp logs, from its very start.

    pytest-jupyter empties the ServerApp logger's handlers and jupyter_server turns off its
    propagation before extensions are linked, so a filter (which runs anyway) records them.
    """
    with logged("ServerApp") as lines:
        yield lines


@pytest.fixture
def jp_server_config(
    root_projects: RootProjects,
    tmp_path: Path,
    nix_traits: dict,
    server_traits: dict,
    server_log: list[str],
) -> Config:
    # The projects exist before the server starts: its first scan finds them.
    return Config(
        {
            "ServerApp": {**server_traits},
            "NixKernelSpecManager": {
                "cache_dir": str(tmp_path / "cache"),
                # Learning devShell names runs `nix eval` in the background: not needed here.
                "discover_flake_shells": False,
                **nix_traits,
            },
        }
    )


@pytest.fixture
def manager(jp_serverapp: ServerApp):
    """The server's NixKernelSpecManager; its refresh thread stops with the test."""
    ksm = jp_serverapp.kernel_spec_manager
    assert isinstance(ksm, NixKernelSpecManager), type(ksm)
    yield ksm
    ksm.stop_background_refresh()


async def get_json(jp_fetch, *parts: str) -> dict:
    response = await jp_fetch(*parts)
    assert response.code == 200
    return json.loads(response.body)


def spec_of(listing: dict, project: Path, kind: str) -> dict:
    """The listing's kernelspec model for ``project``'s ``kind`` environment."""
    for model in listing["kernelspecs"].values():
        info = model["spec"]["metadata"].get("nixkernel", {})
        if info.get("project") == str(project) and info.get("kind") == kind:
            return model
    names = sorted(listing["kernelspecs"])
    raise AssertionError(f"no {kind} kernel for {project} in {names}")


def write_notebook(path: Path) -> str:
    """An empty notebook at ``path``; returns its API path (relative to the server root)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nbformat.v4.new_notebook(), path)
    return str(path)


async def start_session(jp_fetch, root: Path, notebook: Path, kernel_name: str) -> str:
    """POST /api/sessions for ``notebook`` (as JupyterLab does when it opens one): the kernel id."""
    write_notebook(notebook)
    api_path = notebook.relative_to(root).as_posix()
    body = {
        "path": api_path,
        "name": notebook.name,
        "type": "notebook",
        "kernel": {"name": kernel_name},
    }
    response = await jp_fetch(
        "api", "sessions", method="POST", body=json.dumps(body), request_timeout=START_TIMEOUT
    )
    assert response.code == 201
    model = json.loads(response.body)
    assert model["kernel"]["name"] == kernel_name
    return model["kernel"]["id"]


async def execute(jp_ws_fetch, kernel_id: str, code: str, timeout: float = START_TIMEOUT):
    """Run ``code`` over the kernel's websocket (JSON protocol) and collect its outputs until
    the kernel is idle again."""
    ws = await jp_ws_fetch("api", "kernels", kernel_id, "channels")
    msg_id = uuid.uuid4().hex
    ws.write_message(
        json.dumps(
            ws_request(
                "execute_request",
                {
                    "code": code,
                    "silent": False,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": True,
                },
                msg_id,
            )
        )
    )
    run = KernelRun()
    deadline = time.monotonic() + timeout
    try:
        while True:
            raw = await asyncio.wait_for(ws.read_message(), deadline - time.monotonic())
            assert raw is not None, f"the websocket closed before the cell finished: {run}"
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                setattr(run, content["name"], getattr(run, content["name"]) + content["text"])
            elif kind == "error":
                run.errors.append(content)
            elif kind == "status" and content["execution_state"] == "idle":
                return run
    finally:
        ws.close()


def probed(run: KernelRun) -> dict:
    assert not run.errors, run.error_text
    return json.loads(run.stdout.strip().splitlines()[-1])


# -- (a) the listing and the logos ----------------------------------------------------------------


async def test_listing_shows_projects_with_display_names_and_logos(
    jp_fetch, root_projects, manager, jp_base_url
):
    listing = await get_json(jp_fetch, "api", "kernelspecs")
    alpha = spec_of(listing, root_projects.alpha, "flake")
    beta = spec_of(listing, root_projects.beta, "shell.nix")
    assert alpha["spec"]["display_name"] == "alpha (flake)"
    assert beta["spec"]["display_name"] == "beta (shell.nix)"
    this_project = listing["kernelspecs"][PROJECT_KERNEL_NAME]
    assert this_project["spec"]["display_name"] == "Python (this project)"
    # The native kernel still opens notebooks that name it.
    assert "python3" in listing["kernelspecs"]

    logo_url = alpha["resources"]["logo-64x64"]
    assert logo_url == f"{jp_base_url}kernelspecs/{alpha['name']}/logo-64x64.png"
    assert "logo-svg" in alpha["resources"]
    logo = await jp_fetch(logo_url[len(jp_base_url) :])
    assert logo.code == 200
    assert logo.body.startswith(PNG_MAGIC)
    assert logo.headers["Content-Type"] == "image/png"


# -- (b) a session starts the project's kernel in the notebook's folder ---------------------------


async def test_session_starts_project_kernel_in_notebook_folder(
    jp_fetch, jp_ws_fetch, root_projects, manager
):
    listing = await get_json(jp_fetch, "api", "kernelspecs")
    name = spec_of(listing, root_projects.alpha, "flake")["name"]
    notebook = root_projects.alpha / "notebooks" / "analysis.ipynb"

    kernel_id = await start_session(jp_fetch, root_projects.root, notebook, name)
    info = probed(await execute(jp_ws_fetch, kernel_id, PROBE))

    assert info["GREETING"] == "alpha"  # the flake's dev shell
    assert info["cwd"] == str(notebook.parent)  # the notebook's folder, not the project's root


# -- (c) "Python (this project)" follows the notebook ---------------------------------------------


async def test_project_kernel_follows_the_notebooks_folder(
    jp_fetch, jp_ws_fetch, root_projects, manager
):
    notebooks = {
        "alpha": root_projects.alpha / "notebooks" / "a.ipynb",
        "beta": root_projects.beta / "b.ipynb",
        "loose": root_projects.loose / "c.ipynb",
    }
    kernels = await asyncio.gather(
        *(
            start_session(jp_fetch, root_projects.root, nb, PROJECT_KERNEL_NAME)
            for nb in notebooks.values()
        )
    )
    runs = dict(
        zip(
            notebooks,
            await asyncio.gather(*(execute(jp_ws_fetch, k, PROBE) for k in kernels)),
            strict=True,
        )
    )

    assert probed(runs["alpha"]) == {"GREETING": "alpha", "cwd": str(notebooks["alpha"].parent)}
    assert probed(runs["beta"]) == {"GREETING": "beta", "cwd": str(notebooks["beta"].parent)}
    # Outside any project: the fallback kernel, whose every cell says why.
    assert not runs["loose"].stdout
    assert [e["ename"] for e in runs["loose"].errors] == ["NixKernelError"]
    assert f"No project found at or above {root_projects.loose}" in runs["loose"].error_text


# -- (d), (e) enabling ----------------------------------------------------------------------------


def test_pip_install_ships_the_config_d_file():
    """`pip install (-e) .` puts the file enabling the extension into
    sys.prefix/etc/jupyter/jupyter_server_config.d/ (hatchling shared-data)."""
    dist = metadata.distribution("nixkernel")
    shipped = [
        f
        for f in dist.files or []
        if f.as_posix().endswith("etc/jupyter/jupyter_server_config.d/nixkernel.json")
    ]
    assert shipped, "nixkernel.json is not in the installed distribution's RECORD"
    installed = Path(dist.locate_file(shipped[0])).resolve()
    assert json.loads(installed.read_text()) == json.loads(SHIPPED_CONFIG.read_text())
    assert json.loads(SHIPPED_CONFIG.read_text()) == {
        "ServerApp": {"jpserver_extensions": {"nixkernel": True}}
    }


@pytest.fixture
def shipped_config_d(jp_env_config_path: Path) -> Path:
    """The shipped config.d file, installed where the test server's Jupyter paths look."""
    target = jp_env_config_path / "jupyter_server_config.d" / "nixkernel.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHIPPED_CONFIG, target)
    return target


@pytest.mark.parametrize("server_traits", [{}])
async def test_shipped_config_d_alone_selects_nix_manager(
    shipped_config_d, jp_serverapp, jp_fetch, root_projects
):
    """No ServerApp configuration at all: the config.d file enables the extension, and the
    extension selects NixKernelSpecManager."""
    ksm = jp_serverapp.kernel_spec_manager
    try:
        assert jp_serverapp.jpserver_extensions.get("nixkernel") is True
        assert type(ksm) is NixKernelSpecManager
        listing = await get_json(jp_fetch, "api", "kernelspecs")
        spec_of(listing, root_projects.alpha, "flake")
    finally:
        ksm.stop_background_refresh()


OTHER_MANAGER = "jupyter_client.kernelspec.KernelSpecManager"


@pytest.mark.parametrize(
    ("server_traits", "jp_argv"),
    [
        pytest.param(
            {
                "jpserver_extensions": {"nixkernel": True},
                "kernel_spec_manager_class": OTHER_MANAGER,
            },
            [],
            id="config",
        ),
        pytest.param(
            {"jpserver_extensions": {"nixkernel": True}},
            [f"--ServerApp.kernel_spec_manager_class={OTHER_MANAGER}"],
            id="command-line",
        ),
    ],
)
async def test_configured_other_manager_is_respected(jp_serverapp, jp_fetch, server_log):
    assert type(jp_serverapp.kernel_spec_manager) is KernelSpecManager
    listing = await get_json(jp_fetch, "api", "kernelspecs")
    assert "python3" in listing["kernelspecs"]
    assert not [n for n in listing["kernelspecs"] if n.startswith("nix-")]
    said = [line for line in server_log if line.startswith("nixkernel:")]
    assert len(said) == 1, said
    assert said[0].startswith(
        f"nixkernel: ServerApp.kernel_spec_manager_class is set to {OTHER_MANAGER}, "
        "so nixkernel leaves it in place"
    )


class MyNixManager(NixKernelSpecManager):
    """A user's subclass: nixkernel must not replace it with its base class."""


def linked(config: dict | None = None, **traits: object) -> tuple[ServerApp, list[str]]:
    """Link the extension into an uninitialised ServerApp; returns it and its log lines."""
    app = ServerApp(config=Config(config or {}), **traits)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    app.log = logging.getLogger(f"test-link-{uuid.uuid4().hex}")
    app.log.addHandler(handler)
    app.log.setLevel(logging.INFO)
    extension._link_jupyter_server_extension(app)
    return app, lines


def test_link_selects_nix_manager_by_default():
    app, lines = linked()
    assert app.kernel_spec_manager_class is NixKernelSpecManager
    assert lines == []


def test_link_respects_manager_set_on_the_serverapp_trait():
    app, lines = linked(kernel_spec_manager_class=KernelSpecManager)
    assert app.kernel_spec_manager_class is KernelSpecManager
    assert len(lines) == 1 and "leaves it in place" in lines[0], lines


def test_link_keeps_a_users_nix_manager_subclass():
    app, lines = linked({"ServerApp": {"kernel_spec_manager_class": MyNixManager}})
    assert app.kernel_spec_manager_class is MyNixManager
    assert lines == []


def test_link_leaves_a_gateway_alone(monkeypatch):
    monkeypatch.delenv("JUPYTER_GATEWAY_URL", raising=False)
    _app, lines = linked({"GatewayClient": {"url": "http://gateway.example:8888"}})
    assert len(lines) == 1 and "kernel gateway is configured" in lines[0], lines
    monkeypatch.setenv("JUPYTER_GATEWAY_URL", "http://gateway.example:8888")
    app, lines = linked()
    assert not app.trait_has_value("kernel_spec_manager_class")
    assert "kernel gateway" in lines[0]


CASES = {
    "not set": None,
    "nixkernel's": MANAGER_CLASS,
    "a subclass": f"{__name__}.MyNixManager",
    "another": OTHER_MANAGER,
    "unimportable": "no_such_module.Manager",
}


def linked_server(configured: object | None) -> SimpleNamespace:
    """Just what the extension's link reads from a ServerApp: a real one refuses an unimportable
    class in its config before any extension runs."""
    # The extension runs only when enabled: `status` sees the same switch.
    server_config: dict = {"jpserver_extensions": {"nixkernel": True}}
    if configured is not None:
        server_config["kernel_spec_manager_class"] = configured
    config = Config({"ServerApp": server_config})
    lines: list[str] = []
    log = SimpleNamespace(info=lambda msg, *args: lines.append(msg % args))
    return SimpleNamespace(trait_has_value=lambda name: False, config=config, log=log, lines=lines)


@pytest.mark.parametrize("gateway", [None, "http://gateway.example:8888"])
@pytest.mark.parametrize("case", list(CASES))
def test_extension_and_status_make_the_same_decision(case, gateway, monkeypatch):
    """The extension (at server start) and `status` (on the command line) ask one function
    whether the user chose another manager or a gateway, so they cannot disagree."""
    configured = CASES[case]
    environ = {"JUPYTER_GATEWAY_URL": gateway} if gateway else {}
    monkeypatch.delenv("JUPYTER_GATEWAY_URL", raising=False)
    if gateway:
        monkeypatch.setenv("JUPYTER_GATEWAY_URL", gateway)
    server = linked_server(configured)
    extension._link_jupyter_server_extension(server)
    status = serverconfig.server_status(server.config, [], True, environ)

    leaves_it = bool(server.lines)
    assert leaves_it == (not status.active), (server.lines, status)
    expected_other = case in ("another", "unimportable") or (case == "not set" and gateway)
    assert leaves_it == bool(expected_other)
    if case == "unimportable":
        assert "cannot be imported" in server.lines[0]
        assert any("will not start" in c for c in status.conflicts), status.conflicts


def test_the_decision_needs_no_import_of_nixkernels_manager(monkeypatch):
    """When nixkernel's manager cannot be imported (a broken jupyter_client, say), its own name
    is still recognised: `status` does not crash, and the extension does not call it another
    manager."""
    monkeypatch.setitem(sys.modules, "nixkernel.kernelspec", None)  # import now fails
    choice = extension.manager_choice(MANAGER_CLASS, {}, {})
    assert choice.nix and choice.other is None
    config = {"ServerApp": {"kernel_spec_manager_class": MANAGER_CLASS}}
    status = serverconfig.server_status(config, [], True, {})
    assert status.manager_class == MANAGER_CLASS and status.active, status.conflicts


# -- (f) new projects without a restart -----------------------------------------------------------


@pytest.mark.parametrize("nix_traits", [{"refresh_interval": 3600}])
async def test_new_project_appears_after_refresh(jp_fetch, root_projects, manager):
    # The first listing waits for the first scan, which must not see gamma: it is written after.
    spec_of(await get_json(jp_fetch, "api", "kernelspecs"), root_projects.alpha, "flake")
    gamma = write_flake(root_projects.root / "gamma")
    listing = await get_json(jp_fetch, "api", "kernelspecs")
    # No re-scan for an hour: the listing comes from memory, so gamma is not there yet...
    with pytest.raises(AssertionError):
        spec_of(listing, gamma, "flake")
    manager.refresh()
    # ...and is after a refresh, without restarting the server.
    spec_of(await get_json(jp_fetch, "api", "kernelspecs"), gamma, "flake")


@pytest.mark.parametrize("nix_traits", [{"refresh_interval": 0.2}])
async def test_new_project_appears_within_refresh_interval(jp_fetch, root_projects, manager):
    delta = write_shell_nix(root_projects.root / "delta")
    deadline = time.monotonic() + 30
    while True:
        listing = await get_json(jp_fetch, "api", "kernelspecs")
        try:
            model = spec_of(listing, delta, "shell.nix")
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)  # poll interval, not synchronisation
    assert model["spec"]["display_name"] == "delta (shell.nix)"


# -- (g) the listing is served from memory --------------------------------------------------------


@pytest.mark.parametrize("nix_traits", [{"refresh_interval": 3600}])
async def test_warm_listing_is_served_from_memory(jp_fetch, root_projects, manager, monkeypatch):
    await get_json(jp_fetch, "api", "kernelspecs")  # the first scan is done
    scans: list[float] = []
    original_scan = manager.scan
    monkeypatch.setattr(manager, "scan", lambda: scans.append(time.monotonic()) or original_scan())

    timings = []
    for _ in range(20):
        start = time.perf_counter()
        listing = await get_json(jp_fetch, "api", "kernelspecs")
        timings.append(time.perf_counter() - start)
    spec_of(listing, root_projects.alpha, "flake")

    assert scans == []  # no directory walk (and so no Nix) on the request path
    print(
        f"warm GET /api/kernelspecs x{len(timings)}: median {statistics.median(timings) * 1e3:.1f}"
        f" ms, max {max(timings) * 1e3:.1f} ms"
    )
    # A sanity bound only: the real numbers belong in a benchmark. A walk or a Nix call on this
    # path would take far longer on a busy machine than a cold cache makes this.
    assert statistics.median(timings) < 1.0


async def test_listing_hands_the_server_ready_models(jp_fetch, root_projects, manager, monkeypatch):
    """nixkernel's entries are already REST models, so jupyter_server does not rebuild each one
    on a worker thread (globbing for logos): only the native kernelspecs go that way."""
    from jupyter_server.services.kernelspecs import handlers

    built: list[str] = []
    original = handlers.kernelspec_model

    def counting_model(handler, name, *args):
        built.append(name)
        return original(handler, name, *args)

    monkeypatch.setattr(handlers, "kernelspec_model", counting_model)
    listing = await get_json(jp_fetch, "api", "kernelspecs")
    ours = {n for n, m in listing["kernelspecs"].items() if "nixkernel" in m["spec"]["metadata"]}
    assert len(ours) == 3  # alpha, beta, "this project"
    assert not set(built) & ours
    assert "python3" in built
    # The ready models carry what the server would have computed.
    for name in ours:
        model = listing["kernelspecs"][name]
        assert model["name"] == name
        assert "resource_dir" not in model  # no server path in the REST model
        expected = original(
            type("H", (), {"base_url": manager.parent.base_url})(),
            name,
            model["spec"],
            RESOURCES,
        )
        assert model["resources"] == expected["resources"]


# -- warm_on_start --------------------------------------------------------------------------------


class TestWarmOnStart:
    """c.NixKernelSpecManager.warm_on_start: the server evaluates stale or uncached environments
    in the background, so the first kernel start finds them in the cache."""

    @pytest.fixture
    def nix_traits(self, counting_nix) -> dict:
        return {"warm_on_start": True, "nix_executable": counting_nix.path}

    async def test_environments_are_cached_before_any_kernel_starts(
        self, jp_fetch, jp_ws_fetch, root_projects, manager, counting_nix, server_log
    ):
        sources = [t.nix_source() for t in manager.targets() if t.nix_source()]
        assert len(sources) == 2  # alpha's flake, beta's shell.nix
        deadline = time.monotonic() + START_TIMEOUT
        while not all(manager.cache.inspect(s, counting_nix.path)[0] == FRESH for s in sources):
            assert time.monotonic() < deadline, counting_nix.calls()
            await asyncio.sleep(0.2)  # poll interval, not synchronisation
        assert counting_nix.evaluations() == 2
        assert "nixkernel: warming 2 of 2 environments (stale or not cached), 2 at a time" in (
            server_log
        )

        listing = await get_json(jp_fetch, "api", "kernelspecs")
        name = spec_of(listing, root_projects.beta, "shell.nix")["name"]
        kernel_id = await start_session(
            jp_fetch, root_projects.root, root_projects.beta / "b.ipynb", name
        )
        assert probed(await execute(jp_ws_fetch, kernel_id, PROBE))["GREETING"] == "beta"
        assert counting_nix.evaluations() == 2  # the kernel start did not wait for Nix


def test_warming_evaluates_only_stale_or_missing_environments(
    nix, counting_nix, projects, manager_factory
):
    alpha = write_flake(projects / "alpha")
    beta = write_shell_nix(projects / "beta")
    manager = manager_factory(project_dirs=[str(projects)], nix_executable=counting_nix.path)
    lines: list[str] = []

    def log(message: str, *args: object) -> None:
        lines.append(message % args)

    first = extension.warm_environments(manager, log)
    assert sorted(first.values()) == ["evaluated", "evaluated"]
    assert counting_nix.evaluations() == 2

    assert extension.warm_environments(manager, log) == {}  # all fresh: Nix does not run
    assert counting_nix.evaluations() == 2
    assert lines[-1] == "nixkernel: warming 0 of 2 environments (stale or not cached), 2 at a time"

    write_shell_nix(beta, {**DEFAULT_SHELL, "GREETING": "edited"})  # beta is stale now
    again = extension.warm_environments(manager, log)
    assert again == {f"{beta}/shell.nix": "evaluated"}
    assert counting_nix.evaluations() == 3
    assert str(alpha) not in " ".join(again)


async def test_first_listing_waits_off_the_event_loop(
    jp_serverapp, jp_fetch, root_projects, tmp_path
):
    """A listing requested before the first scan has finished waits on a worker thread: the
    server keeps answering other requests meanwhile, and the listing then has the projects."""
    import threading

    release = threading.Event()
    slow = NixKernelSpecManager(
        parent=jp_serverapp, project_dirs=[str(root_projects.root)], cache_dir=str(tmp_path / "c")
    )
    real_scan = slow.scan
    slow.scan = lambda: (release.wait(60), real_scan())[1]  # type: ignore[method-assign]
    jp_serverapp.web_app.settings["kernel_spec_manager"] = slow
    try:
        listing = asyncio.ensure_future(jp_fetch("api", "kernelspecs", request_timeout=60))
        status = await asyncio.wait_for(jp_fetch("api", "status"), timeout=10)
        assert status.code == 200
        assert not listing.done()
        release.set()
        response = await asyncio.wait_for(listing, timeout=60)
        names = json.loads(response.body)["kernelspecs"]
        assert spec_of({"kernelspecs": names}, root_projects.alpha, "flake")
    finally:
        release.set()
        slow.stop_background_refresh()
