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
#: How long to wait for a client to reconnect before running the kept cells anyway.
WAIT_FOR_CLIENTS = 30.0
#: After the first client is back: time for the other clients to reconnect too (they retry
#: every 100 ms), and on ipykernel 6, where subscriptions cannot be seen, for the first one's.
SETTLE, SETTLE_UNSEEN = 0.15, 0.3

_tasks = set()


def _log(message):
    print("[nixkernel] %s" % message, file=sys.stderr, flush=True)


def load(path):
    """The kept messages in ``path`` (deleted once read), each a list of frames (bytes)."""
    if not path:
        return []
    try:
        with open(path) as f:
            record = json.load(f)
        os.unlink(path)
        return [[base64.b64decode(frame) for frame in m["frames"]] for m in record["messages"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _log("could not read the cells kept during the build (%s): run them again" % exc)
        return []


class ClientWatcher:
    """Knows when a client is back: connected to the shell socket (a monitor on it, attached as
    ipykernel binds it, before any client can connect) and subscribed to iopub.

    A client's SUB socket sends its subscription again only when its own program next uses the
    socket (libzmq processes the reconnection's "hiccup" in the application's thread), so a
    connection to iopub is not enough: until the subscription arrives, what the kernel publishes
    is dropped. ipykernel >= 7 publishes on an XPUB socket, which receives subscriptions: wait
    for one. On ipykernel 6 (PUB) the connection is all there is to see."""

    def __init__(self, app):
        import zmq

        self.subscribed = _watch_subscriptions()
        self.monitors = {}
        self.event = getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", zmq.EVENT_ACCEPTED)
        bind = app._bind_socket

        def bind_and_watch(socket, port):
            kind = socket.getsockopt(zmq.TYPE)
            role = None
            if kind in (zmq.PUB, zmq.XPUB):
                role = "iopub"
            elif kind == zmq.ROUTER and "shell" not in self.monitors:
                role = "shell"  # ipykernel binds shell first, then stdin and control
            if role is not None:
                self.monitors[role] = socket.get_monitor_socket(self.event)
            return bind(socket, port)

        app._bind_socket = bind_and_watch

    def wait(self, timeout):
        """Block until a client is connected to both sockets (or ``timeout``), then settle."""
        import zmq
        from zmq.utils.monitor import recv_monitor_message

        poller = zmq.Poller()
        roles = {}
        for role, monitor in self.monitors.items():
            poller.register(monitor, zmq.POLLIN)
            roles[monitor] = role
        seen = set()
        deadline = time.monotonic() + timeout
        while not self._back(seen):
            left = deadline - time.monotonic()
            if left <= 0:
                _log("no client reconnected in %.0f s: running the kept cells anyway" % timeout)
                break
            for socket, _ in poller.poll(min(left, 0.05) * 1000):
                event = recv_monitor_message(socket)
                if event["event"] == self.event:
                    seen.add(roles[socket])
        time.sleep(SETTLE if self.subscribed is not None else SETTLE_UNSEEN)
        for monitor in self.monitors.values():
            monitor.close(linger=0)

    def _back(self, seen):
        if self.subscribed is not None and not self.subscribed.is_set():
            return False
        return all(role in seen for role in self.monitors if role != "iopub" or not self.subscribed)


def _watch_subscriptions():
    """An Event set when ipykernel's iopub (XPUB) receives a subscription, or None (PUB)."""
    import threading

    try:
        from ipykernel.iostream import IOPubThread
    except ImportError:
        return None
    handle = getattr(IOPubThread, "_handle_subscription", None)
    if handle is None:
        return None
    subscribed = threading.Event()

    def handle_and_tell(self, frames):
        if any(bytes(frame[:1]) == b"\x01" for frame in frames):
            subscribed.set()
        return handle(self, frames)

    IOPubThread._handle_subscription = handle_and_tell
    return subscribed


def _acquire_now(lock):
    """Take an asyncio.Lock without yielding to the loop (no other task may get it first)."""
    attempt = lock.acquire()
    try:
        attempt.send(None)
    except StopIteration:
        return True
    attempt.close()
    return False


def replay(app, messages, watcher):
    """Run ``messages`` through the kernel's shell dispatch, in order and before any request
    that arrives later, once a client is back."""
    import zmq
    from tornado import ioloop

    kernel = app.kernel
    kept = [[zmq.Frame(frame) for frame in m] for m in messages]

    async def run_kept():
        await asyncio.get_event_loop().run_in_executor(None, watcher.wait, WAIT_FOR_CLIENTS)
        _log("running %d cell(s) kept while the environment was built" % len(kept))
        for frames in kept:
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

    messages = load(os.environ.pop(REPLAY_VARIABLE, ""))
    warning = os.environ.pop(WARNING_VARIABLE, "")
    app = IPKernelApp.instance(**({"kernel_class": kernel_class} if kernel_class else {}))
    watcher = ClientWatcher(app) if messages else None
    app.initialize(argv)
    if warning:
        warn_in_first_cell(app, warning)
    if messages:
        replay(app, messages, watcher)
    app.start()
