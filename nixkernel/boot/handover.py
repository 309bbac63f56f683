"""Start ipykernel with what nixkernel hands over to it (loaded by path by ipykernel_launcher.py
and by the fallback kernel; runs on whatever Python 3 and ipykernel >= 6 the project has).

- ``NIXKERNEL_REPLAY``: a file of ``execute_request`` messages that nixkernel's building kernel
  kept, raw (ZMQ identities, signature, header, content), while Nix built this environment. This
  kernel runs them through ipykernel's own shell dispatch, before any request that arrives later,
  once the clients are back: the kernel's process was exec'd, so their sockets reconnect by
  themselves (jupyter_server's and jupyter_client's shell and stdin sockets keep their session as
  ZMQ identity, so the replies route to the same client); until one has reconnected a reply
  would be dropped. The file is deleted once read.
- ``NIXKERNEL_STALE_WARNING``: a text the first cell run shows on stderr (the kernel started in
  a last-good environment because the current Nix files fail to evaluate).
"""

import asyncio
import base64
import json
import os
import sys
import time

REPLAY_VARIABLE = "NIXKERNEL_REPLAY"
WARNING_VARIABLE = "NIXKERNEL_STALE_WARNING"
#: How long to wait for the clients to reconnect before running the kept cells anyway.
WAIT_FOR_CLIENTS = 10.0
#: After the clients connected: time for the kernel's sockets to take their connections in
#: (a ROUTER drops what it sends to a client whose connection its own thread has not processed
#: yet), and on ipykernel 6 (a PUB socket, whose subscriptions cannot be seen) for the
#: subscriptions to follow the connections.
SETTLE, SETTLE_UNSEEN = 0.15, 0.3

_tasks = set()


def _log(message):
    print("[nixkernel] %s" % message, file=sys.stderr, flush=True)


class Kept:
    """The building kernel's record: the kept requests (each a list of frames) and how many
    iopub subscribers it had when it handed over (the clients to wait for)."""

    def __init__(self, messages, subscribers=1):
        self.messages = messages
        self.subscribers = max(1, subscribers)

    @property
    def clients(self):
        """The distinct shell identities of the kept requests' clients."""
        return {bytes(m[0]) for m in self.messages if m}


def load(path):
    """The :class:`Kept` record in ``path`` (deleted once read); None if there is no path (the
    kernel was not started by a building kernel)."""
    if not path:
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        os.unlink(path)
        messages = [[base64.b64decode(frame) for frame in m["frames"]] for m in record["messages"]]
        return Kept(messages, int(record.get("subscribers", 1)))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _log("could not read the cells kept during the build (%s): run them again" % exc)
        return Kept([])


class ClientWatcher:
    """Knows when the clients are back: connected to the shell socket and subscribed to iopub.

    It attaches a monitor to the shell socket as ipykernel binds it (before any client can
    connect), and counts iopub subscribers. The shell socket's connections are counted: one
    per client whose cells were kept (each client's shell socket has its own identity), plus
    the one ipykernel makes to its own shell socket (``debug_shell_socket``, for the debugger),
    which is not a client. A client's SUB socket sends its subscription again only when its
    own program next uses the socket (libzmq processes the reconnection in the application's
    thread), so a connection to iopub is not enough: until the subscription arrives, what the
    kernel publishes is dropped. ipykernel >= 7 publishes on an XPUB socket,
    made verbose here so that every subscriber's subscription is seen, not only the first. On
    ipykernel 6 (PUB) connections are all there is to count."""

    def __init__(self, app, kept):
        import zmq

        self.kept = kept
        self.app = app
        self.subscriptions = _count_subscriptions()
        self.monitors = {}
        self.event = getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", zmq.EVENT_ACCEPTED)
        bind = app._bind_socket

        def bind_and_watch(socket, port):
            kind = socket.getsockopt(zmq.TYPE)
            role = None
            if kind == zmq.XPUB:
                socket.setsockopt(zmq.XPUB_VERBOSE, 1)
            if kind == zmq.PUB or (kind == zmq.XPUB and self.subscriptions is None):
                role = "iopub"
            elif kind == zmq.ROUTER and "shell" not in self.monitors:
                role = "shell"  # ipykernel binds shell first, then stdin and control
            if role is not None:
                self.monitors[role] = socket.get_monitor_socket(self.event)
            return bind(socket, port)

        app._bind_socket = bind_and_watch

    def start(self, timeout):
        """Wait for the clients on a thread of its own; :attr:`ready` is set when they are back
        (or after ``timeout``)."""
        import threading

        self.ready = threading.Event()

        def wait_then_open():
            try:
                self.wait(timeout)
            finally:
                self.ready.set()

        threading.Thread(target=wait_then_open, name="nixkernel-handover", daemon=True).start()

    def wait(self, timeout):
        """Block until as many clients as the building kernel had are back (or ``timeout``)."""
        import zmq
        from zmq.utils.monitor import recv_monitor_message

        poller = zmq.Poller()
        roles = {}
        for role, monitor in self.monitors.items():
            poller.register(monitor, zmq.POLLIN)
            roles[monitor] = role
        seen = {role: 0 for role in self.monitors}
        # ipykernel's own connection to its shell socket, made as it binds, is not a client.
        own = 1 if getattr(self.app, "debug_shell_socket", None) is not None else 0
        shells = len(self.kept.clients) + own
        deadline = time.monotonic() + timeout
        while not self._back(seen, shells):
            left = deadline - time.monotonic()
            if left <= 0:
                _log("not every client reconnected in %.0f s: running the kept cells" % timeout)
                break
            # A bounded poll: subscriptions are counted on ipykernel's own thread.
            for socket, _ in poller.poll(min(left, 0.05) * 1000):
                event = recv_monitor_message(socket)
                if event["event"] == self.event:
                    seen[roles[socket]] += 1
        time.sleep(SETTLE_UNSEEN if "iopub" in self.monitors else SETTLE)
        for monitor in self.monitors.values():
            monitor.close(linger=0)

    def _back(self, seen, shells):
        if seen.get("shell", 0) < shells:
            return False
        if self.subscriptions is not None:
            return self.subscriptions.count >= self.kept.subscribers
        return seen.get("iopub", 0) >= self.kept.subscribers


class _Counter:
    def __init__(self):
        import threading

        self.lock = threading.Lock()
        self.count = 0

    def add(self, n):
        with self.lock:
            self.count += n


def _count_subscriptions():
    """A counter of ipykernel's iopub (XPUB) subscribers, or None (PUB: nothing to count)."""
    try:
        from ipykernel.iostream import IOPubThread
    except ImportError:
        return None
    handle = getattr(IOPubThread, "_handle_subscription", None)
    if handle is None:
        return None
    counter = _Counter()

    def handle_and_count(self, frames):
        for frame in frames:
            first = bytes(frame[:1])
            counter.add(1 if first == b"\x01" else -1 if first == b"\x00" else 0)
        return handle(self, frames)

    IOPubThread._handle_subscription = handle_and_count
    return counter


def _acquire_now(lock):
    """Take an asyncio.Lock without yielding to the loop (no other task may get it first)."""
    attempt = lock.acquire()
    try:
        attempt.send(None)
    except StopIteration:
        return True
    attempt.close()
    return False


def gate_cells(app, watcher):
    """Run no cell before the clients are back on iopub (:attr:`ClientWatcher.ready`).

    The clients' sockets reconnected by themselves after the exec, but a client's iopub
    subscription reaches the kernel only once that client next uses its socket: a cell run
    before it would publish its output, and its "idle", to nobody. Only cells wait; other
    requests (kernel_info above all, which a client awaits on its shell socket alone) are
    answered at once."""
    kernel = app.kernel
    handlers = getattr(kernel, "shell_handlers", {})
    execute = handlers.get("execute_request")
    if execute is None:
        return

    async def execute_when_ready(*args, **kwargs):
        if not watcher.ready.is_set():
            await asyncio.get_event_loop().run_in_executor(None, watcher.ready.wait)
        result = execute(*args, **kwargs)
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        return result

    handlers["execute_request"] = execute_when_ready


def replay(app, kept):
    """Run the kept requests through the kernel's shell dispatch, in order and before any
    request that arrives later (each cell waits for the clients: :func:`gate_cells`)."""
    import zmq
    from tornado import ioloop

    kernel = app.kernel
    frames_of = [[zmq.Frame(frame) for frame in m] for m in kept.messages]

    async def run_kept():
        _log("running %d cell(s) kept while the environment was built" % len(frames_of))
        for frames in frames_of:
            await kernel.dispatch_shell(frames)

    lock = getattr(kernel, "_main_asyncio_lock", None)
    if lock is not None and hasattr(kernel, "shell_main"):
        # ipykernel 7: shell requests run one at a time under this lock, in arrival order. Hold
        # it from the loop's first step until the kept cells ran: later requests queue behind.
        def begin():
            held = _acquire_now(lock)

            async def run_and_release():
                try:
                    await run_kept()
                finally:
                    if held:
                        lock.release()

            # Keep a reference: the loop holds tasks weakly.
            _tasks.add(asyncio.ensure_future(run_and_release()))

        ioloop.IOLoop.current().add_callback(begin)
    elif hasattr(kernel, "schedule_dispatch"):
        # ipykernel 6: shell requests go through one queue, in order; be its first entry.
        start = kernel.start

        def start_then_replay():
            start()
            kernel.schedule_dispatch(run_kept)

        kernel.start = start_then_replay
    else:
        _log("this ipykernel has no shell dispatch nixkernel knows: run the kept cells again")


def warn_in_first_cell(app, text):
    """Show ``text`` on stderr in the output of the first cell the user runs."""
    shell = getattr(app, "shell", None)
    if shell is None:
        return

    def show(*_):
        shell.events.unregister("pre_run_cell", show)
        sys.stderr.write(text)
        sys.stderr.flush()

    shell.events.register("pre_run_cell", show)


def launch(kernel_class=None, argv=None):
    """``IPKernelApp.launch_instance``, with the hand-over."""
    from ipykernel.kernelapp import IPKernelApp

    kept = load(os.environ.pop(REPLAY_VARIABLE, ""))
    warning = os.environ.pop(WARNING_VARIABLE, "")
    app = IPKernelApp.instance(**({"kernel_class": kernel_class} if kernel_class else {}))
    watcher = ClientWatcher(app, kept) if kept is not None else None
    app.initialize(argv)
    if warning:
        warn_in_first_cell(app, warning)
    if watcher is not None:
        watcher.start(WAIT_FOR_CLIENTS)
        gate_cells(app, watcher)
    if kept is not None and kept.messages:
        replay(app, kept)
    app.start()
