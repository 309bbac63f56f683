"""The building kernel: a kernel's stand-in while Nix builds its environment (see building.py).

It runs in the Jupyter server's Python, started by path (``boot/building.py``) by the launcher on
a cache miss, so the client gets its ``kernel_info`` reply at once instead of a minute of
"Connecting". It runs the evaluation in a worker (its own process group) and:

- keeps every ``execute_request`` (its raw frames: ZMQ identities, header, signature) without
  answering it, marks the kernel busy for it, and streams Nix's progress (the slot's build log,
  with a "still building" line when Nix is quiet) on stderr into the first kept cell of each
  client session;
- when the worker is done, writes the kept requests to a file and execs the launcher again (same
  pid, connection file and ports): the project's kernel starts, and ``boot/handover.py`` runs the
  kept requests through ipykernel's own shell dispatch once the clients have reconnected, so
  their output and replies reach the cells that asked, in order;
- on an interrupt stops the worker's whole process group (Nix included; nothing is cached) and
  answers the kept cells that the build was cancelled; a restart builds again;
- on shutdown stops the worker, so no Nix outlives the kernel.

Other requests (completion, inspection...) get plain answers: there is no environment yet.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ipykernel.kernelapp import IPKernelApp
from ipykernel.kernelbase import Kernel
from tornado import ioloop

from . import __version__, buildlog, launch
from .building import EVALUATE_SCRIPT, PARENT_VARIABLE, REPLAY_VARIABLE
from .cache import STALE, EnvironmentCache

#: Seconds without a line from Nix before the first "still building" line, then between them.
QUIET_FIRST, QUIET_EVERY = 5.0, 10.0
#: How often the build log is read.
POLL_SECONDS = 0.25
#: How long Nix gets to stop after SIGTERM before the group is killed.
STOP_GRACE = 5.0
#: Nix lines a cell run mid-build is shown first, to catch up.
CATCH_UP_LINES = 8

_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "boot", "launcher.py")
_PREFIX = "[nixkernel] "


@dataclass
class Plan:
    """What the building kernel was started for."""

    launcher_argv: list[str]
    state: str
    """The cache state that made the launcher hand over: ``none`` or ``stale``."""
    env: dict[str, str]
    """The launcher's environment, to exec it again with."""
    what: str = "this environment"
    slot: str | None = None


@dataclass
class Held:
    """An ``execute_request`` kept for the project's kernel."""

    frames: list[bytes]
    msg: dict
    session: str
    introduced: bool = False


@dataclass
class _Progress:
    started: float = field(default_factory=time.monotonic)
    last_line_at: float = field(default_factory=time.monotonic)
    last_notice_at: float = 0.0
    derivations: int = 0
    recent: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=CATCH_UP_LINES)
    )


class BuildingKernel(Kernel):
    """Answers at once, shows the build, and hands its cells over to the project's kernel."""

    implementation = "nixkernel-building"
    implementation_version = __version__
    language = "python"
    language_info = {
        "name": "python",
        "mimetype": "text/x-python",
        "file_extension": ".py",
        "codemirror_mode": {"name": "ipython", "version": 3},
        "pygments_lexer": "ipython3",
        "nbconvert_exporter": "python",
    }
    banner = "nixkernel: Nix is building this kernel's environment"
    plan: Plan | None = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._held: list[Held] = []
        self._phase = "building"  # then "handing-over", or "cancelled"
        self._cancelling = False
        self._worker: subprocess.Popen | None = None
        self._follower: buildlog.LogFollower | None = None
        self._progress = _Progress()
        self._since = time.time()
        self._ticker: ioloop.PeriodicCallback | None = None
        self._loop: ioloop.IOLoop | None = None
        connection = getattr(self.parent, "abs_connection_file", "") or ""
        self._pending_path = os.path.join(
            os.path.dirname(connection), f"nixkernel-pending-{os.path.basename(connection)}"
        )

    # -- the build ------------------------------------------------------------------------------

    def start(self) -> None:
        super().start()
        self._loop = ioloop.IOLoop.current()
        self._loop.add_callback(self._begin)

    def _begin(self) -> None:
        assert self.plan is not None
        # In the loop, so an interrupt arriving while the loop sleeps in select() is seen at once.
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self._interrupt)
        if self.plan.slot:
            # A log whose evaluation is still running is another kernel's build: follow it from
            # its start. One that ended is old news.
            other = buildlog.running(self.plan.slot)
            self._follower = buildlog.LogFollower(self.plan.slot, skip_current=other is None)
        self._since = time.time()
        env = dict(self.plan.env, **{PARENT_VARIABLE: str(os.getpid())})
        self._worker = subprocess.Popen(
            [sys.executable, "-S", EVALUATE_SCRIPT, *self.plan.launcher_argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: Nix gets our signal, not the server's
        )
        threading.Thread(target=self._wait_for_worker, daemon=True, name="nixkernel-worker").start()
        self._ticker = ioloop.PeriodicCallback(self._tick, POLL_SECONDS * 1000)
        self._ticker.start()

    def _wait_for_worker(self) -> None:
        worker = self._worker
        assert worker is not None and worker.stdout is not None and self._loop is not None
        out = worker.stdout.read().decode(errors="replace")
        status = worker.wait()
        if self._cancelling:
            _wait_group_gone(worker.pid, STOP_GRACE)
        self._loop.add_callback(self._worker_done, status, out)

    def _tick(self) -> None:
        if self._follower is not None:
            for line in self._follower.poll():
                self._nix_line(line)
        progress, now = self._progress, time.monotonic()
        quiet = now - max(progress.last_line_at, progress.last_notice_at)
        first = progress.last_notice_at < progress.last_line_at
        if self._phase == "building" and quiet >= (QUIET_FIRST if first else QUIET_EVERY):
            progress.last_notice_at = now
            done = f", {progress.derivations} derivations so far" if progress.derivations else ""
            self._say(f"{_PREFIX}still building ({now - progress.started:.0f} s{done})")

    def _nix_line(self, line: str) -> None:
        if line.startswith(buildlog.MARK):
            header = buildlog.parse_header(line)
            worker = self._worker.pid if self._worker else None
            if header is None or header["pid"] == worker:
                return
            ago = max(0.0, time.time() - header["started"])
            line = (
                f"{_PREFIX}following the build that process {header['pid']} started {ago:.0f} s ago"
            )
        elif not line.strip():
            return
        if line.startswith(("building '", "copying path '")):
            self._progress.derivations += 1
        self._progress.last_line_at = time.monotonic()
        self._progress.recent.append(line)
        self._say(line)

    def _say(self, text: str, to: list[Held] | None = None) -> None:
        """Stream ``text`` (one line) on stderr to the first kept cell of every client session."""
        for held in self._firsts() if to is None else to:
            self._introduce(held)
            self._stream(held, text + "\n")

    def _firsts(self) -> list[Held]:
        firsts: dict[str, Held] = {}
        for held in self._held:
            firsts.setdefault(held.session, held)
        return list(firsts.values())

    def _introduce(self, held: Held) -> None:
        if held.introduced:
            return
        held.introduced = True
        assert self.plan is not None
        why = (
            "its Nix files changed, so Nix re-evaluates it"
            if self.plan.state == STALE
            else "it is not built yet"
        )
        elapsed = time.monotonic() - self._progress.started
        lines = [
            f"{_PREFIX}{self.plan.what}: {why} ({elapsed:.0f} s so far). This cell runs in it "
            "when it is ready; interrupt the kernel to stop the build.",
            *self._progress.recent,
        ]
        self._stream(held, "\n".join(lines) + "\n")

    def _stream(self, held: Held, text: str) -> None:
        content = {"name": "stderr", "text": text}
        self.session.send(
            self.iopub_socket, "stream", content, parent=held.msg, ident=self._topic("stream")
        )

    def _busy(self, held: Held) -> None:
        self.session.send(
            self.iopub_socket,
            "status",
            {"execution_state": "busy"},
            parent=held.msg,
            ident=self._topic("status"),
        )

    # -- the end of the build -------------------------------------------------------------------

    def _worker_done(self, status: int, out: str) -> None:
        self._tick()  # the last lines of the log
        if self._ticker is not None:
            self._ticker.stop()
        if self._cancelling or status < 0:
            self._cancelled()
            return
        try:
            result = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            result = {"state": "error", "message": f"the worker exited with status {status}"}
        elapsed = time.monotonic() - self._progress.started
        state = result.get("state")
        if state == "error":
            text = f"the evaluation failed after {elapsed:.0f} s: the error follows."
        elif state == STALE:
            text = (
                f"re-evaluating failed after {elapsed:.0f} s: the kernel starts in the last good "
                "environment (its warning follows)."
            )
        else:
            text = f"the environment is ready ({elapsed:.0f} s): starting the kernel."
        self._say(_PREFIX + text)
        log(f"building kernel: {text}")
        self._hand_over()

    def _hand_over(self) -> None:
        """Exec the launcher again (warm now): the project's kernel, with the kept cells."""
        assert self.plan is not None
        self._phase = "handing-over"
        env = dict(self.plan.env, **{launch.BUILT_VARIABLE: repr(self._since)})
        if self._held:
            self._write_pending()
            env[REPLAY_VARIABLE] = self._pending_path
        argv = [sys.executable, "-S", _LAUNCHER, *self.plan.launcher_argv]
        app = IPKernelApp.instance()
        # What was published must leave before the sockets go: flush the IOPub thread, then close
        # with linger. A stuck close does not stop the hand-over.
        closing = threading.Thread(target=_close_app, args=(app,), daemon=True)
        closing.start()
        closing.join(5)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, env)

    def _write_pending(self) -> None:
        record = {
            "version": 1,
            "messages": [
                {"frames": [base64.b64encode(f).decode() for f in held.frames]}
                for held in self._held
            ],
        }
        tmp = f"{self._pending_path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.replace(tmp, self._pending_path)

    # -- cancel and shutdown --------------------------------------------------------------------

    def _interrupt(self) -> None:
        worker = self._worker
        if self._phase != "building" or worker is None or worker.poll() is not None:
            return
        self._cancelling = True
        self._say(f"{_PREFIX}interrupted: stopping Nix...")
        _signal_group(worker.pid, signal.SIGTERM)

    def _cancelled(self) -> None:
        self._phase = "cancelled"
        log("building kernel: the build was cancelled")
        held, self._held = self._held, []
        self._say(
            f"{_PREFIX}build cancelled: Nix was stopped and nothing was cached. Restart the "
            "kernel to build the environment again.",
            to=[h for h in held if h is _first_of(held, h.session)],
        )
        with contextlib.suppress(OSError):
            os.unlink(self._pending_path)
        # Through ipykernel's own dispatch, now answering "cancelled": the first cell gets the
        # error, and ipykernel aborts the ones queued behind it, as after any error.
        self._loop.add_callback(self._answer_cancelled, held)  # type: ignore[union-attr]

    async def _answer_cancelled(self, held: list[Held]) -> None:
        import zmq

        for h in held:
            await super().dispatch_shell([zmq.Frame(f) for f in h.frames])

    def _stop_worker(self) -> None:
        worker = self._worker
        if worker is None or worker.poll() is not None:
            return
        self._cancelling = True
        _signal_group(worker.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(STOP_GRACE)
        _wait_group_gone(worker.pid, STOP_GRACE)

    async def do_shutdown(self, restart: bool) -> dict[str, Any]:  # type: ignore[override]
        self._stop_worker()
        with contextlib.suppress(OSError):
            os.unlink(self._pending_path)
        return {"status": "ok", "restart": restart}

    # -- requests -------------------------------------------------------------------------------

    async def dispatch_shell(self, msg: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if self._phase != "cancelled" and self.session is not None and len(msg) > 1:
            held = self._parse(msg)
            if held is not None:
                self._held.append(held)
                self._busy(held)
                if held is _first_of(self._held, held.session):
                    self._introduce(held)
                if self._phase == "handing-over":
                    self._write_pending()
                return None
        result = await super().dispatch_shell(msg, *args, **kwargs)
        if self._held and self._phase != "cancelled":
            self._busy(self._held[0])  # an answer to another request said idle: still busy
        return result

    def _parse(self, msg: list) -> Held | None:
        """The request as a :class:`Held`, if it is an ``execute_request``."""
        try:
            _idents, frames = self.session.feed_identities(msg, copy=False)
            parsed = self.session.deserialize(frames, content=False, copy=False)
        except Exception:
            return None  # ipykernel's dispatch reports it
        header = parsed.get("header", {})
        if header.get("msg_type") != "execute_request":
            return None
        raw = [bytes(f.bytes) if hasattr(f, "bytes") else bytes(f) for f in msg]
        return Held(raw, parsed, str(header.get("session", "")))

    def pre_handler_hook(self) -> None:
        """No KeyboardInterrupt inside handlers: an interrupt cancels the build (see _begin)."""

    def post_handler_hook(self) -> None:
        pass

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
        what = self.plan.what if self.plan else "this environment"
        content = {
            "ename": "BuildCancelled",
            "evalue": f"the build of {what} was cancelled",
            "traceback": [
                f"{_PREFIX}The build of {what} was cancelled: Nix was stopped, nothing was cached.",
                "Restart the kernel to build the environment again.",
            ],
        }
        if not silent:
            self.send_response(self.iopub_socket, "error", content)
        return {"status": "error", "execution_count": self.execution_count, **content}

    async def do_complete(self, code: str, cursor_pos: int) -> dict[str, Any]:  # type: ignore[override]
        cursor = len(code) if cursor_pos is None else cursor_pos
        return {
            "status": "ok",
            "matches": [],
            "cursor_start": cursor,
            "cursor_end": cursor,
            "metadata": {},
        }

    async def do_inspect(  # type: ignore[override]
        self, code: str, cursor_pos: int, detail_level: int = 0, omit_sections: Any = ()
    ) -> dict[str, Any]:
        text = "nixkernel: the environment is still being built; ask again when it is ready."
        return {"status": "ok", "found": True, "data": {"text/plain": text}, "metadata": {}}


def log(message: str) -> None:
    """A line in the server's log. Not through sys.stderr: ipykernel publishes that on iopub."""
    for line in message.splitlines() or [""]:
        with contextlib.suppress(OSError):
            os.write(2, f"[nixkernel] {line}\n".encode(errors="replace"))


def _first_of(held: list[Held], session: str) -> Held | None:
    return next((h for h in held if h.session == session), None)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _wait_group_gone(pgid: int, grace: float) -> None:
    """Wait until the process group ``pgid`` is empty (Nix stopped); SIGKILL it after ``grace``."""
    killed = False
    deadline = time.monotonic() + grace
    while True:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        if time.monotonic() >= deadline:
            if killed:
                return
            _signal_group(pgid, signal.SIGKILL)
            killed, deadline = True, time.monotonic() + 2.0
        time.sleep(0.05)


def _close_app(app: IPKernelApp) -> None:
    with contextlib.suppress(Exception):
        flushed = threading.Event()
        app.iopub_thread.schedule(flushed.set)
        flushed.wait(2)
    with contextlib.suppress(Exception):
        app.close()
    with contextlib.suppress(Exception):
        app.context.destroy(linger=1000)


def _describe(args: argparse.Namespace) -> tuple[str, str | None]:
    """The environment's description and cache slot, as the launcher resolves them."""
    try:
        target = launch.resolve_target(args)
        source = launch.target_source(target, args.library_shell)
    except Exception:
        return "this environment", None
    if source is None:
        return "this environment", None
    return source.describe(), EnvironmentCache(args.cache_dir).slot(source)


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="nixkernel-building")
    parser.add_argument("--state", default="none")
    ours = parser.parse_args(argv[:split])
    launcher_argv = argv[split + 1 :]
    args = launch.build_parser().parse_args(launcher_argv)
    what, slot = _describe(args)
    BuildingKernel.plan = Plan(
        launcher_argv, ours.state, dict(os.environ if env is None else env), what, slot
    )
    log(f"{what} is not cached: the building kernel answers while Nix builds it")
    app = IPKernelApp.instance(kernel_class=BuildingKernel)
    if app.has_trait("capture_fd_output"):
        # The worker's stderr (Nix's output, for the server's log) stays on the real stderr:
        # captured, ipykernel would also publish it on iopub, in no cell.
        app.capture_fd_output = False
    app.initialize(["-f", args.connection_file])
    app.start()
