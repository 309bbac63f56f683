"""Reliability and security on real Nix: concurrency, faults, garbage collection, broken files,
odd paths, untrusted kernel names and a tampered cache.

Slow builds are simulated with a *gated* derivation: its builder signals that it runs, then
blocks reading a FIFO the test controls, so a test acts exactly while Nix is busy (no sleeps).
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import wait_for
from jupyter_client import KernelManager
from jupyter_client.kernelspec import NoSuchKernel
from nixprojects import DEFAULT_SHELL, Raw, write_flake, write_shell_nix

import nixkernel
from nixkernel import launch
from nixkernel.cache import ENTRY_FILE, NONE, EnvironmentCache, write_json_atomically

KERNEL_NAME = re.compile(r"^[a-z0-9._-]+$")
GREETING = "import os; print(os.environ.get('GREETING'))"


# -- helpers ---------------------------------------------------------------------------------


class Gate:
    """A Nix expression whose *evaluation* waits until the test lets it go on.

    Evaluating it reads two FIFOs (``builtins.readFile``) unless the ``open`` file exists, so
    Nix waits inside the evaluation, in the launcher's own nix process: the window the cache's
    lock must serialise. (A gated *build* is no good: builders run as nixbld users, and Nix kills
    a build user's processes when it hands the user to a build, which made such tests flaky.)

    Nix only blocks in ``open()``: a FIFO's ``open`` for reading waits for a writer. What comes
    after differs by version: Nix 2.8 reads until EOF (until every writer closed), but since
    2.19 ``PosixSourceAccessor::readFile`` (src/libutil/posix-source-accessor.cc; checked on
    2.26 and 2.34) reads the ``st_size`` bytes ``fstat`` reports, 0 for a FIFO, so it returns as
    soon as a writer opens. A gate that held a writer open while it waited would let 2.26/2.34
    through at once. So each FIFO is passed by a writer that opens and closes at once (EOF for
    2.8, nothing to read for 2.19+): ``started`` tells the test that an evaluation arrived (the
    writer's non-blocking open succeeds only when a reader is there), ``held`` is where it then
    waits, with no writer, until released.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.open_file = directory / "open"
        self.started = directory / "started"
        self.held = directory / "held"
        os.mkfifo(self.started)
        os.mkfifo(self.held)
        self._waiting = 0
        self._releasers: list[threading.Thread] = []

    def value(self) -> Raw:
        opened = json.dumps(str(self.open_file))
        started, held = json.dumps(str(self.started)), json.dumps(str(self.held))
        return Raw(
            f'(if builtins.pathExists {opened} then "open" else '
            f"builtins.seq (builtins.readFile {started}) (builtins.readFile {held}))"
        )

    @staticmethod
    def _writer_if_read(fifo: Path) -> int | None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nobody is reading yet
                return None
            raise

    def wait_started(self) -> None:
        """Return once an evaluation has reached the gate; it then waits at ``held``."""
        os.close(wait_for(lambda: self._writer_if_read(self.started), "an evaluation at the gate"))
        self._waiting += 1

    def release_waiting(self) -> None:
        """Let each evaluation that reached the gate go on, once it waits at ``held`` (a writer's
        blocking open returns when the reader is there; closing it gives EOF or nothing)."""
        for _ in range(self._waiting):
            thread = threading.Thread(
                target=lambda: os.close(os.open(self.held, os.O_WRONLY)), daemon=True
            )
            thread.start()
            self._releasers.append(thread)
        self._waiting = 0

    def open(self) -> None:
        """Let the waiting evaluations and every later one through."""
        self.open_file.touch()
        self.release_waiting()

    def close(self) -> None:
        """Never leave an evaluation, or a releaser whose evaluation was killed, waiting."""
        self.open()
        for thread in self._releasers:
            while thread.is_alive():
                # A reader of our own completes a releaser's open (its evaluation is gone).
                fd = os.open(self.held, os.O_RDONLY | os.O_NONBLOCK)
                thread.join(timeout=1)
                os.close(fd)


@pytest.fixture
def gate(nix: str, tmp_path: Path) -> Iterator[Gate]:
    g = Gate(tmp_path / "gate")
    yield g
    g.close()


def gated_shell(directory: Path, gate: Gate, greeting: str = "gated") -> Path:
    return write_shell_nix(directory, {**DEFAULT_SHELL, "GREETING": greeting, "GATE": gate.value()})


def only_name(manager, kind: str = "shell.nix", project: Path | None = None) -> str:
    names = [
        t.name
        for t in manager.targets()
        if t.kind == kind and (project is None or t.project == str(project))
    ]
    assert len(names) == 1, names
    return names[0]


def launcher_args(manager, name: str, connection_file: str = "/nonexistent/conn.json"):
    """The launcher's parsed arguments for kernel ``name``, exactly as its kernelspec gives them."""
    argv = manager.get_kernel_spec(name).argv
    rest = argv[argv.index("--kind") :]
    return launch.build_parser().parse_args(
        [a.replace("{connection_file}", connection_file) for a in rest]
    )


def plan(manager, name: str) -> launch.Launch:
    """What the launcher would exec for ``name`` (run in-process: no kernel is started)."""
    return launch.plan(launcher_args(manager, name), dict(os.environ))


def is_fallback(plan_: launch.Launch) -> bool:
    return launch.FALLBACK_SCRIPT in plan_.argv


def slot_of(manager, name: str) -> Path:
    target = next(t for t in manager.targets() if t.name == name)
    return Path(manager.cache.slot(target.nix_source()))


def blocked_on(lock_file: Path) -> int:
    """How many processes wait (blocked) for a flock on ``lock_file`` (from /proc/locks)."""
    try:
        inode = lock_file.stat().st_ino
    except FileNotFoundError:
        return 0
    waiting = 0
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and fields[-3].endswith(f":{inode}"):
            waiting += 1
    return waiting


# -- concurrency and faults ------------------------------------------------------------------


def test_eight_kernels_of_one_cold_environment_start_and_nix_evaluates_once(
    nix, counting_nix, projects, manager_factory, gate
):
    project = gated_shell(projects / "busy", gate)
    manager = manager_factory(project_dirs=[str(projects)], nix_executable=counting_nix.path)
    name = only_name(manager)
    lock = slot_of(manager, name) / "lock"
    kms = [KernelManager(kernel_spec_manager=manager, kernel_name=name) for _ in range(8)]
    clients = []
    try:
        for km in kms:
            km.start_kernel(cwd=str(project))
        # One launcher evaluates (held at the gate); the 7 others wait for its lock.
        gate.wait_started()
        wait_for(lambda: blocked_on(lock) == 7, "7 launchers blocked on the slot's lock")
        assert counting_nix.evaluations() == 1
        gate.open()
        for km in kms:
            kc = km.client()
            kc.start_channels()
            clients.append(kc)
        for kc in clients:
            kc.wait_for_ready(timeout=180)
            # A cell runs in the kernel the building kernel (if any) hands over to.
            kc.execute_interactive("pass", timeout=180)
            reply = kc.kernel_info(reply=True, timeout=60)
            assert reply["content"]["implementation"] == "ipython"  # not the fallback kernel
    finally:
        for kc in clients:
            kc.stop_channels()
        for km in kms:
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    assert counting_nix.evaluations() == 1, counting_nix.calls()


def test_launcher_killed_during_evaluation_leaves_no_entry_and_next_start_works(
    nix, counting_nix, projects, manager_factory, kernel_runner, gate, tmp_path
):
    project = gated_shell(projects / "killed", gate)
    manager = manager_factory(project_dirs=[str(projects)], nix_executable=counting_nix.path)
    name = only_name(manager)
    slot = slot_of(manager, name)
    argv = [
        a.replace("{connection_file}", str(tmp_path / "kernel.json"))
        for a in manager.get_kernel_spec(name).argv
    ]
    proc = subprocess.Popen(argv, cwd=project, start_new_session=True)
    try:
        gate.wait_started()  # Nix is evaluating the shell right now
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its nix
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    gate.release_waiting()
    assert not (slot / ENTRY_FILE).exists()
    # A launcher killed while writing the entry leaves a temp file: it must never be read.
    (slot / ".entry-killed.tmp").write_text('{"schema": 1, "key": {"inp')

    gate.open()
    run = kernel_runner(manager, name, GREETING, project)
    assert run.implementation == "ipython" and run.stdout.strip() == "gated", run
    assert counting_nix.evaluations() == 2
    assert manager.cache.load(str(slot)) is not None  # complete and well-formed
    assert not list(slot.glob(".entry-*.tmp"))


@pytest.fixture
def private_store(nix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A Nix store of the test's own (its URL), made the default store of every Nix the test
    starts (through NIX_CONFIG, which launchers inherit)."""
    base = tmp_path / "private-nix"
    url = f"local?store={base}/store&state={base}/state&log={base}/log"
    monkeypatch.setenv(
        "NIX_CONFIG", os.environ["NIX_CONFIG"] + f"store = {url}\nbuild-users-group =\n"
    )
    return url


def test_garbage_collection_keeps_the_rooted_environment_and_forgets_an_unrooted_one(
    nix, counting_nix, projects, manager_factory, kernel_runner, private_store, tmp_path
):
    """The garbage collector keeps a cached environment (its slot's ``profile`` is a GC root)
    and, once the root is gone, takes it; the cache then evaluates again instead of trusting
    the entry.

    Only ever against a private store: collecting the machine's store would delete the
    environments other tests (and other users) are using, and ``nix-collect-garbage -d`` also
    deletes old generations of every profile in the global /nix/var/nix/profiles, whatever the
    store. The store is ``local?store=D/store&state=D/state&log=D/log`` (checked offline with
    Nix 2.8, 2.26 and 2.34): a store directory of its own, so builds need no sandbox (a chroot
    store, ``local?root=D``, forces the sandbox, where mini.nix's /bin/bash builders fail), and
    ``nix store gc --store URL`` collects only it. nixkernel's roots map there as on
    /nix/store: ``print-dev-env --profile SLOT/profile`` links SLOT/profile -> profile-1-link ->
    D/store/...-env and registers the link in D/state/gcroots/auto. The cache recognises store
    paths in an entry's variables under /nix/store only (cache._STORE_PATH), so here liveness
    rests on the profile's target alone: the path the root protects. ``build-users-group =``:
    from Nix 2.30 a build as nixbld users refuses a build directory under world-writable /tmp
    (checkNotWorldWritable, src/libstore/unix/build/derivation-builder.cc; the build directory
    is D/state/builds)."""
    project = write_shell_nix(projects / "collected", {**DEFAULT_SHELL, "GREETING": "collected"})
    manager = manager_factory(project_dirs=[str(projects)], nix_executable=counting_nix.path)
    name = only_name(manager)
    slot = slot_of(manager, name)
    source = manager.targets()[0].nix_source()

    def collect() -> None:
        # --store on the command line too: this never reaches the machine's store.
        subprocess.run([nix, "store", "gc", "--store", private_store], check=True,
                       capture_output=True)  # fmt: skip

    run = kernel_runner(manager, name, GREETING, project)
    assert run.stdout.strip() == "collected", run
    environment = os.path.realpath(slot / "profile")
    assert environment.startswith(f"{tmp_path}/private-nix/store/"), environment
    calls = len(counting_nix.calls())
    collect()
    # The GC root kept the environment: the second start does not run Nix at all.
    assert os.path.exists(environment)
    assert manager.cache.inspect(source, counting_nix.path)[0] == "fresh"
    run = kernel_runner(manager, name, GREETING, project)
    assert run.stdout.strip() == "collected", run
    assert len(counting_nix.calls()) == calls, counting_nix.calls()

    # Without its GC root, the collector takes the environment: the entry is gone, not trusted.
    for link in slot.glob("profile*"):
        link.unlink()
    collect()
    assert not os.path.exists(environment)
    assert manager.cache.inspect(source, counting_nix.path)[0] == NONE
    run = kernel_runner(manager, name, GREETING, project)
    assert run.stdout.strip() == "collected", run
    assert counting_nix.evaluations() == 2


def test_broken_nix_file_falls_back_to_the_last_good_environment_with_a_warning(
    nix, counting_nix, projects, manager_factory, kernel_runner, capsys
):
    project = write_shell_nix(projects / "breaks", {**DEFAULT_SHELL, "GREETING": "last good"})
    manager = manager_factory(project_dirs=[str(projects)], nix_executable=counting_nix.path)
    name = only_name(manager)
    assert plan(manager, name).env["GREETING"] == "last good"
    (project / "shell.nix").write_text('throw "broken on purpose 4711"\n')
    capsys.readouterr()

    stale = plan(manager, name)
    log = capsys.readouterr().err
    assert not is_fallback(stale)
    assert stale.env["GREETING"] == "last good"
    assert "WARNING: re-evaluating" in log and "broken on purpose 4711" in log, log
    assert counting_nix.evaluations() == 2

    # With the stale fallback off, the error kernel shows Nix's own message in the notebook.
    strict = manager_factory(
        project_dirs=[str(projects)], nix_executable=counting_nix.path, stale_fallback=False
    )
    run = kernel_runner(strict, name, "1 + 1", project)
    assert run.implementation == "nixkernel-fallback"
    assert "broken on purpose 4711" in run.error_text, run.error_text
    assert str(project) in run.error_text


# -- paths and discovery ---------------------------------------------------------------------

ODD_NAMES = ["with space", 'quote\'s "double"', "naïve-日本語", "x" * 200]


def test_odd_project_paths_get_valid_names_and_their_kernels_run(
    nix, projects, manager_factory, kernel_runner
):
    dirs = [write_shell_nix(projects / n, {**DEFAULT_SHELL, "GREETING": n}) for n in ODD_NAMES]
    manager = manager_factory(project_dirs=[str(projects)])
    targets = {t.project: t for t in manager.targets() if t.kind == "shell.nix"}
    assert set(targets) == {str(d) for d in dirs}
    assert len({t.name for t in targets.values()}) == len(dirs)
    for directory in dirs:
        name = targets[str(directory)].name
        assert KERNEL_NAME.match(name), name
        run = kernel_runner(manager, name, GREETING, directory)
        assert run.stdout.strip() == directory.name, run


def test_flakes_at_odd_paths_run_or_explain_nix_limits(nix, projects, manager_factory):
    """Nix 2.8 rejects some paths as flake references (a space, non-ASCII letters): such a
    flake's kernel either runs, or is the fallback kernel naming the project and the fix."""
    dirs = [
        write_flake(projects / name) for name in ('it\'s"flake"', "flake with space", "ok-flake")
    ]
    manager = manager_factory(project_dirs=[str(projects)])
    for directory in dirs:
        launched = plan(manager, only_name(manager, "flake", directory))
        if is_fallback(launched):
            message = launched.argv[launched.argv.index("--message") + 1]
            assert directory.name in message and "How to fix it" in message, message
        else:
            assert launched.env["GREETING"] == DEFAULT_SHELL["GREETING"]
    assert not is_fallback(plan(manager, only_name(manager, "flake", dirs[-1])))


def test_symlink_loops_and_unreadable_directories_do_not_stop_discovery(
    projects, manager_factory, monkeypatch
):
    """Root can read anything, so an unreadable directory is simulated by making os.scandir
    raise PermissionError for it (as it would for another user)."""
    (projects / "good").mkdir()
    (projects / "good" / "shell.nix").write_text("")
    (projects / "a" / "b").mkdir(parents=True)
    (projects / "a" / "b" / "loop").symlink_to(projects / "a")  # a/b/loop -> a
    (projects / "up").symlink_to(projects)  # a link to the root itself
    (projects / "self").symlink_to(projects / "self")  # ELOOP
    (projects / "secret" / "inner").mkdir(parents=True)
    (projects / "secret" / "inner" / "shell.nix").write_text("")
    secret = str(projects / "secret")
    real_scandir = os.scandir

    def scandir(path=".", *args, **kwargs):
        if os.fspath(path) == secret:
            raise PermissionError(errno.EACCES, "Permission denied", secret)
        return real_scandir(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)
    manager = manager_factory(
        project_dirs=[str(projects)], max_depth=6, project_kernel=False, keep_native_kernels=False
    )
    targets = manager.refresh()
    assert [t.project for t in targets] == [str(projects / "good")]


def test_five_thousand_projects_are_discovered_with_unique_names(projects, manager_factory):
    for i in range(5000):
        directory = projects / f"p{i:04d}"
        directory.mkdir()
        (directory / "shell.nix").touch()
    manager = manager_factory(
        project_dirs=[str(projects)], project_kernel=False, keep_native_kernels=False
    )
    names = [t.name for t in manager.refresh()]
    assert len(names) == 5000
    assert len(set(names)) == 5000
    assert all(KERNEL_NAME.match(n) for n in names)
    assert len(manager.get_all_specs()) == 5000


# -- untrusted input -------------------------------------------------------------------------

UNTRUSTED_NAMES = [
    "../../etc",
    "../../../../bin/sh",
    "nix-evil-flake-0000000000",
    "nix-a;touch /tmp/pwned",
    "$(touch /tmp/pwned)",
    "`id`",
    "nix-x|sh",
]


@pytest.mark.parametrize("bad", UNTRUSTED_NAMES)
def test_undiscovered_kernel_name_is_refused_and_runs_nothing(
    bad, nix, counting_nix, projects, manager_factory
):
    write_shell_nix(projects / "real")
    manager = manager_factory(project_dirs=[str(projects)], nix_executable=counting_nix.path)
    assert bad not in {t.name for t in manager.targets()}
    for name in (bad, bad.upper(), ""):
        with pytest.raises(NoSuchKernel):
            manager.get_kernel_spec(name)
    km = KernelManager(kernel_spec_manager=manager, kernel_name=bad)
    with pytest.raises(NoSuchKernel):
        km.start_kernel(cwd=str(projects))
    assert not km.has_kernel
    assert counting_nix.calls() == []
    assert not Path("/tmp/pwned").exists()


def test_nothing_enables_accept_flake_config(nix, tmp_path, projects, manager_factory):
    """Flakes may ask for settings (nixConfig); accepting them would let a cloned repository
    configure Nix. No source file mentions the option, and no nix call passes it."""
    package = Path(nixkernel.__file__).parent
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8").lower()
        assert "accept-flake-config" not in text and "accept_flake_config" not in text, path
    log = tmp_path / "nix-invocations.log"
    wrapper = tmp_path / "bin" / "nix"
    wrapper.parent.mkdir()
    wrapper.write_text(
        f'#!/bin/sh\nprintf "%s\\n---\\n%s\\n===\\n" "$*" "$NIX_CONFIG" >> "{log}"\n'
        f'exec "{nix}" "$@"\n'
    )
    wrapper.chmod(0o755)
    project = write_flake(projects / "configured")
    flake = project / "flake.nix"
    flake.write_text(flake.read_text().replace("{\n", '{\n  nixConfig.sandbox = "relaxed";\n', 1))
    subprocess.run(["git", "-C", str(project), "add", "-A"], check=True)
    manager = manager_factory(project_dirs=[str(projects)], nix_executable=str(wrapper))
    manager.learn_flake_shells()
    assert not is_fallback(plan(manager, only_name(manager, "flake")))
    invocations = log.read_text()
    assert "print-dev-env" in invocations
    assert "accept-flake-config" not in invocations


# -- the cache on disk -----------------------------------------------------------------------


def test_cache_is_private_and_never_group_or_world_writable(nix, projects, manager_factory):
    cache_dir = projects.parent / "cache"
    cache_dir.mkdir(mode=0o777)
    cache_dir.chmod(0o777)  # as a permissive umask or a careless user would leave it
    write_shell_nix(projects / "shell")
    write_flake(projects / "flake")
    manager = manager_factory(project_dirs=[str(projects)], cache_dir=str(cache_dir))
    manager.learn_flake_shells()
    for target in manager.refresh():
        assert not is_fallback(plan(manager, target.name))
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((cache_dir / "envs").stat().st_mode) == 0o700
    checked = 0
    for path in [cache_dir, *cache_dir.rglob("*")]:
        if path.is_symlink():
            continue  # the GC-root links point into the read-only store
        mode = stat.S_IMODE(path.stat().st_mode)
        assert not mode & 0o022, (path, oct(mode))
        if path.is_dir():
            assert mode == 0o700, (path, oct(mode))
        checked += 1
    assert checked >= 6


def _valid_entry(slot: Path) -> dict:
    return json.loads((slot / ENTRY_FILE).read_text())


TAMPERED: dict[str, Callable[[dict], str]] = {
    "invalid JSON": lambda e: '{"schema": 1, "variables": {',
    "empty file": lambda e: "",
    "a list": lambda e: "[1, 2]",
    "other schema": lambda e: json.dumps({**e, "schema": 99}),
    "no key": lambda e: json.dumps({k: v for k, v in e.items() if k != "key"}),
    "variables not strings": lambda e: json.dumps({**e, "variables": {"GREETING": 1}}),
    "variables a list": lambda e: json.dumps({**e, "variables": ["GREETING=x"]}),
    "rc not a string": lambda e: json.dumps({**e, "rc": ["rm -rf /"]}),
    "store_paths a string": lambda e: json.dumps({**e, "store_paths": "/nix/store"}),
    "inputs a list": lambda e: json.dumps({**e, "key": {**e["key"], "inputs": []}}),
    "search path a list": lambda e: json.dumps({**e, "key": {**e["key"], "search_path": []}}),
}


def test_tampered_cache_entries_are_a_miss_not_a_crash(
    nix, counting_nix, projects, manager_factory
):
    write_shell_nix(projects / "tampered")
    manager = manager_factory(project_dirs=[str(projects)], nix_executable=counting_nix.path)
    name = only_name(manager)
    slot = slot_of(manager, name)
    assert plan(manager, name).env["GREETING"] == DEFAULT_SHELL["GREETING"]
    for evaluations, (what, tamper) in enumerate(TAMPERED.items(), start=2):
        (slot / ENTRY_FILE).write_text(tamper(_valid_entry(slot)))
        launched = plan(manager, name)
        assert not is_fallback(launched), what
        assert launched.env["GREETING"] == DEFAULT_SHELL["GREETING"], what
        assert counting_nix.evaluations() == evaluations, what
        assert EnvironmentCache(manager.cache_dir).load(str(slot)) is not None, what


def test_json_writes_are_atomic_durable_and_leave_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "data.json"
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("replace") or real_replace(a, b))
    write_json_atomically(str(target), {"a": 1}, indent=2, mode=0o644)
    assert json.loads(target.read_text()) == {"a": 1}
    assert events == ["fsync", "replace"]  # on disk before it is visible under its name
    assert stat.S_IMODE(target.stat().st_mode) == 0o644

    with pytest.raises(TypeError):
        write_json_atomically(str(target), {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}  # the old content, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]

    # The flake shell names went through a writer of their own without clean-up (.shells-*).
    cache = EnvironmentCache(str(tmp_path / "cache"))
    with pytest.raises(TypeError):
        cache.store_flake_shells(str(tmp_path), [object()])  # type: ignore[list-item]
    assert list((tmp_path / "cache" / "flake-shells").iterdir()) == []
