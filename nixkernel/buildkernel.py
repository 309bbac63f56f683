"""The building kernel: a kernel's stand-in while Nix builds its environment (see building.py).

The launcher execs it on a cache miss, in the Jupyter server's Python, started by path
(``boot/building.py``), so the client gets its ``kernel_info`` reply at once instead of a minute
of "Connecting". It speaks the kernel protocol itself, on pyzmq and the standard library: it
must start fast (ipykernel's imports alone take longer than the rest) and it handles requests
as raw frames, to hand them over untouched. It runs the evaluation in a worker (its own process
group) and:

- keeps every ``execute_request`` (its raw frames: ZMQ identities, signature, header, content)
  without answering it, marks the kernel busy for it, and streams Nix's progress (the slot's build
  log, with a "still building" line while Nix is quiet) on stderr into the first kept cell of
  each client session;
- when the worker is done, takes the last requests off the shell socket, closes the sockets,
  writes the kept requests to a file and execs the launcher again (same pid, connection file and
  ports): the project's kernel starts, and ``boot/handover.py`` runs the kept requests through
  ipykernel's own shell dispatch once a client is back, so their output and replies reach the
  cells that asked, in order;
- on an interrupt (SIGINT, or ``interrupt_request``) stops the worker's whole process group (Nix
  included; nothing is cached) and answers the kept cells that the build was cancelled; a
  restart builds again;
- on shutdown stops the worker, so no Nix outlives the kernel.

Other requests get plain answers (no completions, nothing to inspect): there is no environment
yet. A connection file it cannot serve (missing, or with CurveZMQ keys) makes it give way to the
launcher's old path, which evaluates before the kernel starts.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import datetime
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import zmq

from . import __version__, buildlog, launch
from .building import EVALUATE_SCRIPT, PARENT_VARIABLE, REPLAY_VARIABLE
from .cache import STALE, EnvironmentCache
from .kernels import language_info
from .nix import log

#: Seconds without a line from Nix before the first "still building" line, then between them.
QUIET_FIRST, QUIET_EVERY = 5.0, 10.0
#: How often the build log is read (and the worker checked), in seconds.
POLL_SECONDS = 0.25
#: How long Nix gets to stop after SIGTERM before its process group is killed.
STOP_GRACE = 5.0
#: Before the exec, how long no request may have arrived (and the most it waits for that). A
#: request still on its way as the sockets close is lost (ZMQ has no acknowledgements), and
#: clients often send their first cell a few tenths of a second after kernel_info (as
#: jupyter_client's wait_for_ready does): after any other request, hand over in a pause longer
#: than that. After a cell, its client waits for the reply (the cells of a "run all" come
#: within milliseconds of each other).
HAND_OVER_QUIET, HAND_OVER_QUIET_AFTER_CELL, HAND_OVER_WAIT = 1.0, 0.1, 3.0
#: Even past HAND_OVER_WAIT, a pause this long: a client that keeps asking (jupyter_server's
#: "nudge" sends kernel_info until iopub speaks) must not have a request on its way.
HAND_OVER_MIN_QUIET = 0.05
#: Nix lines a cell run mid-build is shown first, to catch up.
CATCH_UP_LINES = 8

PROTOCOL_VERSION = "5.3"
DELIMITER = b"<IDS|MSG>"
_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "boot", "launcher.py")
_PREFIX = "[nixkernel] "


class Unsupported(Exception):
    """A connection this kernel cannot serve: the launcher's old path takes over."""


@dataclass
class Plan:
    """What the building kernel was started for."""

    launcher_argv: list[str]
    state: str
    """The cache state that made the launcher hand over: ``none`` or ``stale``."""
    env: dict[str, str]
    """The launcher's environment, to exec it again with."""
    connection_file: str
    what: str = "this environment"
    slot: str | None = None
    language: str = "python"
    """The language of the kernel it stands for (its ``language_info``)."""
    replayable: bool = True
    """Whether the kernel it becomes runs the kept cells (ipykernel, through boot/handover.py).
    Kernels of other languages cannot: their cells are told to run again."""


@dataclass
class Request:
    """A request as it came: its frames, and what they say."""

    frames: list[bytes]
    idents: list[bytes]
    header: dict
    content: dict

    @property
    def msg_type(self) -> str:
        return str(self.header.get("msg_type", ""))

    @property
    def session(self) -> str:
        return str(self.header.get("session", ""))


@dataclass
class _Progress:
    started: float = field(default_factory=time.monotonic)
    last_line_at: float = field(default_factory=time.monotonic)
    last_notice_at: float = 0.0
    derivations: int = 0
    recent: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=CATCH_UP_LINES)
    )


class Wire:
    """The kernel protocol's framing and HMAC signatures (jupyter_client's Session, in small)."""

    def __init__(self, key: bytes, scheme: str) -> None:
        digest = scheme.split("-", 1)[1] if scheme.startswith("hmac-") else "sha256"
        try:
            self._mac = hmac.new(key, digestmod=getattr(hashlib, digest)) if key else None
        except (AttributeError, TypeError) as exc:
            raise Unsupported(f"signature scheme {scheme!r}") from exc
        self.session = uuid.uuid4().hex

    def sign(self, parts: list[bytes]) -> bytes:
        if self._mac is None:
            return b""
        mac = self._mac.copy()
        for part in parts:
            mac.update(part)
        return mac.hexdigest().encode()

    def parse(self, frames: list[bytes]) -> Request | None:
        """The request in ``frames``, or None if it is malformed or its signature is wrong."""
        try:
            split = frames.index(DELIMITER)
        except ValueError:
            return None
        parts = frames[split + 1 :]
        if len(parts) < 5 or not hmac.compare_digest(parts[0], self.sign(parts[1:5])):
            return None
        try:
            header, content = json.loads(parts[1]), json.loads(parts[4])
        except ValueError:
            return None
        if not isinstance(header, dict) or not isinstance(content, dict):
            return None
        return Request(frames, frames[:split], header, content)

    def message(self, msg_type: str, content: dict, parent: dict | None = None) -> list[bytes]:
        header = {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "username": "nixkernel",
            "session": self.session,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "version": PROTOCOL_VERSION,
        }
        parts = [json.dumps(p).encode() for p in (header, parent or {}, {}, content)]
        return [DELIMITER, self.sign(parts), *parts]


class BuildingKernel:
    """Answers at once, shows the build, and hands its cells over to the project's kernel."""

    def __init__(self, plan: Plan, connection: dict) -> None:
        if any(k.startswith("curve") and connection.get(k) for k in connection):
            raise Unsupported("CurveZMQ transport encryption")
        self.plan = plan
        self.wire = Wire(
            str(connection.get("key", "")).encode(),
            connection.get("signature_scheme", "hmac-sha256"),
        )
        self.context = zmq.Context()
        self.sockets: dict[str, zmq.Socket] = {}
        transport, ip = connection.get("transport", "tcp"), connection.get("ip", "127.0.0.1")
        kinds = {"shell": zmq.ROUTER, "control": zmq.ROUTER, "stdin": zmq.ROUTER,
                 "iopub": zmq.XPUB, "hb": zmq.REP}  # fmt: skip
        for name, kind in kinds.items():
            socket = self.context.socket(kind)
            socket.linger = 0
            if kind == zmq.ROUTER:
                socket.router_handover = 1  # a client that reconnects takes its identity back
            if kind == zmq.XPUB:
                # Every subscription and unsubscription: for iopub_welcome, and to count the
                # subscribers the project's kernel waits for before it runs the kept cells.
                socket.setsockopt(zmq.XPUB_VERBOSER, 1)
            port = connection[f"{name}_port"]
            socket.bind(f"ipc://{ip}-{port}" if transport == "ipc" else f"tcp://{ip}:{port}")
            self.sockets[name] = socket
        self.held: list[Request] = []
        self.subscribers = 0
        self.replayable = plan.replayable
        self.introduced: set[str] = set()
        self.phase = "building"  # then "handing-over", or "cancelled"
        self.cancelling = False
        self.interrupted = False
        self.done_at = 0.0
        self.last_request_at = 0.0
        self.last_request_was_cell = False
        self.worker: subprocess.Popen | None = None
        self.follower: buildlog.LogFollower | None = None
        self.progress = _Progress()
        self.since = time.time()
        self.pending_path = os.path.join(
            os.path.dirname(os.path.abspath(plan.connection_file)),
            f"nixkernel-pending-{os.path.basename(plan.connection_file)}",
        )

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        signal.signal(signal.SIGINT, self._on_sigint)
        self._publish("status", {"execution_state": "starting"})
        try:
            self._start_worker()
        except OSError as exc:
            self._close(linger_ms=0)
            _old_path(self.plan.launcher_argv, self.plan.env, f"cannot start its worker: {exc}")
        poller = zmq.Poller()
        for socket in self.sockets.values():
            poller.register(socket, zmq.POLLIN)
        assert self.worker is not None and self.worker.stdout is not None
        # The worker's stdout ends when it does: wake up then, not at the next tick.
        worker_out = self.worker.stdout
        poller.register(worker_out, zmq.POLLIN)
        next_tick = 0.0
        while True:
            ready = dict(poller.poll(POLL_SECONDS * 1000))
            if self.sockets["hb"] in ready:
                self.sockets["hb"].send(self.sockets["hb"].recv())
            if self.sockets["iopub"] in ready:
                self._subscription(self.sockets["iopub"].recv())
            for name in ("control", "shell", "stdin"):
                if self.phase == "exit":
                    return
                if self.sockets[name] in ready:
                    self._receive(name)
            if self.interrupted:
                self.interrupted = False
                self._interrupt()
            if worker_out in ready:
                poller.unregister(worker_out)
                next_tick = 0.0
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + POLL_SECONDS
                self._tick()
            if self.phase == "handing-over" and self._quiet_enough():
                self._hand_over()  # does not return
            if self.phase == "exit":
                return

    def _receive(self, name: str) -> None:
        socket = self.sockets[name]
        while True:
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if name == "stdin":
                continue  # no input is ever asked for
            request = self.wire.parse(frames)
            if request is not None:
                self.last_request_at = time.monotonic()
                self.last_request_was_cell = request.msg_type == "execute_request"
                self._handle(name, request)
                if self.phase == "exit":
                    return

    def _handle(self, channel: str, request: Request) -> None:
        kind = request.msg_type
        if kind == "execute_request" and channel == "shell":
            if self.phase == "cancelled":
                self._busy(request)
                self._answer_cancelled(request, first=True)
            else:
                self.held.append(request)
                self._busy(request)
                self._introduce(request)
                log(f"building kernel: cell {len(self.held)} kept until the environment is ready")
            return
        if kind == "shutdown_request":
            self._shutdown(channel, request)
            return
        reply = self._answer(request)
        if reply is None:
            return  # comm messages and unknown requests: no reply, as ipykernel
        self._busy(request)
        self._reply(channel, request, kind.rsplit("_", 1)[0] + "_reply", reply)
        self._publish("status", {"execution_state": "idle"}, request)
        if kind == "interrupt_request":
            self._interrupt()
        if self.held and self.phase != "cancelled":
            self._busy(self.held[0])  # a cell is still waiting: still busy

    def _answer(self, request: Request) -> dict | None:
        kind, content = request.msg_type, request.content
        if kind == "kernel_info_request":
            return {
                "status": "ok",
                "protocol_version": PROTOCOL_VERSION,
                "implementation": "nixkernel-building",
                "implementation_version": __version__,
                "language_info": language_info(self.plan.language),
                "banner": "nixkernel: Nix is building this kernel's environment",
                "help_links": [],
                "debugger": False,
            }
        if kind == "complete_request":
            cursor = content.get("cursor_pos") or len(str(content.get("code", "")))
            return {"status": "ok", "matches": [], "cursor_start": cursor, "cursor_end": cursor,
                    "metadata": {}}  # fmt: skip
        if kind == "inspect_request":
            text = "nixkernel: the environment is still being built; ask again when it is ready."
            return {"status": "ok", "found": True, "data": {"text/plain": text}, "metadata": {}}
        if kind == "is_complete_request":
            return {"status": "unknown"}
        if kind == "history_request":
            return {"status": "ok", "history": []}
        if kind == "comm_info_request":
            return {"status": "ok", "comms": {}}
        if kind == "interrupt_request":
            return {"status": "ok"}
        return None

    # -- publishing ----------------------------------------------------------------------------

    def _publish(self, msg_type: str, content: dict, parent: Request | None = None) -> None:
        topic = f"kernel.nixkernel-building.{msg_type}".encode()
        message = self.wire.message(msg_type, content, parent.header if parent else None)
        self.sockets["iopub"].send_multipart([topic, *message])

    def _reply(self, channel: str, request: Request, msg_type: str, content: dict) -> None:
        message = self.wire.message(msg_type, content, request.header)
        self.sockets[channel].send_multipart([*request.idents, *message])

    def _busy(self, request: Request) -> None:
        self._publish("status", {"execution_state": "busy"}, request)

    def _stream(self, request: Request, text: str) -> None:
        self._publish("stream", {"name": "stderr", "text": text}, request)

    def _subscription(self, frame: bytes) -> None:
        if frame[:1] == b"\x00":
            self.subscribers -= 1
        if frame[:1] == b"\x01":  # JEP 65: tell the new subscriber its subscription is live
            self.subscribers += 1
            topic = frame[1:]
            message = self.wire.message(
                "iopub_welcome", {"subscription": topic.decode(errors="replace")}
            )
            self.sockets["iopub"].send_multipart([topic, *message] if topic else message)

    # -- the build ------------------------------------------------------------------------------

    def _start_worker(self) -> None:
        if self.plan.slot:
            # A log whose evaluation is still running is another kernel's build: follow it from
            # its start. One that ended is old news.
            other = buildlog.running(self.plan.slot)
            self.follower = buildlog.LogFollower(self.plan.slot, skip_current=other is None)
        self.since = time.time()
        env = dict(self.plan.env, **{PARENT_VARIABLE: str(os.getpid())})
        self.worker = subprocess.Popen(
            [sys.executable, "-S", EVALUATE_SCRIPT, *self.plan.launcher_argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: an interrupt reaches it only via us
        )

    def _tick(self) -> None:
        if self.follower is not None:
            for line in self.follower.poll():
                self._nix_line(line)
        progress, now = self.progress, time.monotonic()
        if self.phase == "building":
            quiet = now - max(progress.last_line_at, progress.last_notice_at)
            first = progress.last_notice_at < progress.last_line_at
            if quiet >= (QUIET_FIRST if first else QUIET_EVERY):
                progress.last_notice_at = now
                count = progress.derivations
                done = f", {count} derivation{'s' if count > 1 else ''} so far" if count else ""
                self._say(f"{_PREFIX}still building ({now - progress.started:.0f} s{done})")
            if self.worker is not None and self.worker.poll() is not None:
                self._worker_done()

    def _nix_line(self, line: str) -> None:
        if line.startswith(buildlog.MARK):
            header = buildlog.parse_header(line)
            if header is None or (self.worker and header["pid"] == self.worker.pid):
                return
            ago = max(0.0, time.time() - header["started"])
            line = (
                f"{_PREFIX}following the build that process {header['pid']} started {ago:.0f} s ago"
            )
        elif not line.strip():
            return
        if line.startswith(("building '", "copying path '")):
            self.progress.derivations += 1
        self.progress.last_line_at = time.monotonic()
        self.progress.recent.append(line)
        self._say(line)

    def _firsts(self, held: list[Request] | None = None) -> list[Request]:
        """The first kept cell of each client session: where the progress goes."""
        firsts: dict[str, Request] = {}
        for request in self.held if held is None else held:
            firsts.setdefault(request.session, request)
        return list(firsts.values())

    def _say(self, text: str) -> None:
        for request in self._firsts():
            self._stream(request, text + "\n")

    def _introduce(self, request: Request) -> None:
        """What a session's first kept cell shows first: what is happening, and the build so far."""
        if request.session in self.introduced:
            return
        self.introduced.add(request.session)
        what = self.plan.what
        if self.phase == "handing-over":
            self._stream(
                request, f"{_PREFIX}{what} is ready: starting the kernel; this cell runs in it.\n"
            )
            return
        why = (
            "its Nix files changed, so Nix re-evaluates it"
            if self.plan.state == STALE
            else "it is not built yet"
        )
        elapsed = time.monotonic() - self.progress.started
        lines = [
            f"{_PREFIX}{what}: {why} ({elapsed:.0f} s so far). This cell runs in it when it is "
            "ready; interrupt the kernel to stop the build.",
            *self.progress.recent,
        ]
        self._stream(request, "\n".join(lines) + "\n")

    def _worker_done(self) -> None:
        assert self.worker is not None and self.worker.stdout is not None
        status = self.worker.wait()
        out = self.worker.stdout.read().decode(errors="replace")
        if self.follower is not None:
            for line in self.follower.poll():  # the last lines of the log
                self._nix_line(line)
        if self.cancelling or status < 0:
            self._cancelled()
            return
        try:
            result = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            result = {"state": "error", "message": f"the worker exited with status {status}"}
        elapsed = time.monotonic() - self.progress.started
        state = str(result.get("state"))
        # A failure starts the fallback kernel, which runs kept cells whatever the language.
        self.replayable = bool(result.get("replayable", self.plan.replayable or state == "error"))
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
        self.phase = "handing-over"
        self.done_at = time.monotonic()

    def _quiet_enough(self) -> bool:
        now = time.monotonic()
        quiet = HAND_OVER_QUIET_AFTER_CELL if self.last_request_was_cell else HAND_OVER_QUIET
        since = now - self.last_request_at
        if since < HAND_OVER_MIN_QUIET:
            return False
        return since >= quiet or now - self.done_at >= HAND_OVER_WAIT

    def _hand_over(self) -> None:
        """Exec the launcher again (warm now): the project's kernel, with the kept cells."""
        # What arrived since the last look: cells kept, other requests answered, not lost.
        self._receive("control")
        self._receive("shell")
        if self.phase == "exit":
            return  # a shutdown request came in
        run_again = bool(self.held) and not self.replayable
        if run_again:
            self._answer_run_again()
        # With linger: the replies just sent leave before the process is replaced (a kernel_info
        # reply dropped here would leave jupyter_server waiting 60 s for it).
        self.sockets.pop("shell").close(linger=1000)
        env = dict(self.plan.env, **{launch.BUILT_VARIABLE: repr(self.since)})
        if self.replayable:
            # Even with no cell kept: the kernel holds its first cells until the clients are
            # back on iopub (boot/handover.py), and needs to know how many there were.
            self._write_pending()
            env[REPLAY_VARIABLE] = self.pending_path
        self._close(linger_ms=1000)  # what was published leaves before the process is replaced
        argv = [sys.executable, "-S", _LAUNCHER, *self.plan.launcher_argv]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, env)

    def _write_pending(self) -> None:
        record = {
            "version": 1,
            "subscribers": self.subscribers,
            "messages": [
                {"frames": [base64.b64encode(f).decode() for f in request.frames]}
                for request in self.held
            ],
        }
        tmp = f"{self.pending_path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.replace(tmp, self.pending_path)

    def _answer_run_again(self) -> None:
        """Tell the kept cells the environment is ready and to run them again (the kernel it
        becomes cannot run them for their clients)."""
        firsts = self._firsts()
        text = (
            f"{_PREFIX}{self.plan.what} is ready and its {self.plan.language} kernel is "
            "starting: run this cell again."
        )
        for request in self.held:
            self._finish(request, request in firsts, "EnvironmentReady", text, [text])
        self.held = []

    def _close(self, linger_ms: int) -> None:
        for socket in self.sockets.values():
            socket.close(linger=linger_ms)
        self.sockets.clear()
        self.context.term()

    # -- cancel and shutdown --------------------------------------------------------------------

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.interrupted = True

    def _interrupt(self) -> None:
        worker = self.worker
        if self.phase != "building" or worker is None or worker.poll() is not None:
            return
        self.cancelling = True
        self._say(f"{_PREFIX}interrupted: stopping Nix...")
        _signal_group(worker.pid, signal.SIGTERM)

    def _cancelled(self) -> None:
        assert self.worker is not None
        _wait_group_gone(self.worker.pid, STOP_GRACE)
        self.phase = "cancelled"
        log("building kernel: the build was cancelled")
        firsts = self._firsts()
        for request in self.held:
            self._answer_cancelled(request, first=request in firsts)
        self.held = []
        with contextlib.suppress(OSError):
            os.unlink(self.pending_path)

    def _answer_cancelled(self, request: Request, first: bool) -> None:
        what = self.plan.what
        self._finish(
            request,
            first,
            "BuildCancelled",
            f"{_PREFIX}build cancelled: Nix was stopped and nothing was cached. Restart the "
            "kernel to build the environment again.",
            [
                f"{_PREFIX}The build of {what} was cancelled: Nix was stopped, nothing was cached.",
                "Restart the kernel to build the environment again.",
            ],
            evalue=f"the build of {what} was cancelled",
        )

    def _finish(
        self,
        request: Request,
        first: bool,
        ename: str,
        text: str,
        traceback: list[str],
        evalue: str = "",
    ) -> None:
        """Answer a kept cell without running it: the first cell of a session gets ``text`` and
        an error; the ones queued behind it are aborted, as ipykernel does after an error."""
        if not first:
            self._reply("shell", request, "execute_reply", {"status": "aborted"})
            self._publish("status", {"execution_state": "idle"}, request)
            return
        error = {
            "ename": ename,
            "evalue": evalue or text.removeprefix(_PREFIX),
            "traceback": traceback,
        }
        self._stream(request, text + "\n")
        self._publish("error", error, request)
        self._reply(
            "shell", request, "execute_reply", {"status": "error", "execution_count": 0, **error}
        )
        self._publish("status", {"execution_state": "idle"}, request)

    def stop_worker(self) -> None:
        worker = self.worker
        if worker is None or worker.poll() is not None:
            return
        self.cancelling = True
        _signal_group(worker.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(STOP_GRACE)
        _wait_group_gone(worker.pid, STOP_GRACE)

    def _shutdown(self, channel: str, request: Request) -> None:
        self._busy(request)
        self.stop_worker()
        with contextlib.suppress(OSError):
            os.unlink(self.pending_path)
        content = {"status": "ok", "restart": bool(request.content.get("restart", False))}
        self._reply(channel, request, "shutdown_reply", content)
        self._publish("shutdown_reply", content, request)
        self._publish("status", {"execution_state": "idle"}, request)
        self._close(linger_ms=1000)
        self.phase = "exit"


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


def _old_path(launcher_argv: list[str], env: dict[str, str], why: str) -> None:
    """Give way to the launcher, which then evaluates before the kernel starts (no hand-over)."""
    log(f"the building kernel cannot serve this start ({why}): evaluating first")
    env = dict(env, **{launch.BUILT_VARIABLE: repr(time.time())})
    os.execve(sys.executable, [sys.executable, "-S", _LAUNCHER, *launcher_argv], env)


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ if env is None else env)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="nixkernel-building")
    parser.add_argument("--state", default="none")
    ours = parser.parse_args(argv[:split])
    launcher_argv = argv[split + 1 :]
    args = launch.build_parser().parse_args(launcher_argv)
    what, slot = _describe(args)
    plan = Plan(
        launcher_argv, ours.state, env, args.connection_file, what, slot,
        language=args.language or "python", replayable=not args.spec,
    )  # fmt: skip
    try:
        with open(args.connection_file, encoding="utf-8") as f:
            connection = json.load(f)
        kernel = BuildingKernel(plan, connection)
    except (OSError, ValueError, KeyError, Unsupported, zmq.ZMQError) as exc:
        _old_path(launcher_argv, env, str(exc))
        return
    log(f"{what} is not cached: the building kernel answers while Nix builds it")
    try:
        kernel.run()
    finally:
        kernel.stop_worker()
