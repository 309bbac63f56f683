"""Fresh before it is needed: the server re-evaluates, in the background, the environments of
kernels that ran recently once their Nix files change (a ``git pull``, an edit), so the next
start is warm instead of a build.

The manager notes the environment of every kernel it starts (``get_kernel_spec`` runs at each
start). A daemon thread looks at those environments every ``keep_fresh_interval`` seconds and
re-evaluates one whose inputs changed, once they stayed the same for a whole interval (an editor
saving, a checkout in progress: debounced), one at a time (bounded: Nix is CPU- and IO-heavy),
and never twice for the same inputs (a failure waits for the next change). What it does goes to
the server's log; while it evaluates, ``jupyter nixkernel show`` says so (the slot's lock and
build log), and a kernel started meanwhile follows that build instead of starting its own.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from . import nix
from .cache import STALE, watched_inputs
from .describe import NixSource


class Freshener:
    """Re-evaluates the stale environments of recently started kernels (see the module doc)."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self._used: dict[NixSource, float] = {}
        self._seen: dict[NixSource, dict] = {}
        self._tried: dict[NixSource, dict] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def note(self, source: NixSource) -> None:
        """A kernel of ``source`` starts now (called on the server's event loop: stays quick)."""
        with self._lock:
            self._used[source] = time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="nixkernel-keep-fresh", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        stop = self.manager._stop
        while not stop.wait(self.manager.keep_fresh_interval):
            try:
                self.check_once()
            except Exception:  # keep looking next time
                self.manager.log.exception("nixkernel: keeping environments fresh failed")

    def check_once(self) -> list[NixSource]:
        """Look at each recently used environment once; re-evaluate those due. Returns them."""
        manager = self.manager
        recent = manager.keep_fresh_hours * 3600
        with self._lock:
            now = time.monotonic()
            for source in [s for s, at in self._used.items() if now - at > recent]:
                del self._used[source]
            sources = list(self._used)
        cache, configured = manager.cache, manager.nix_executable or None
        evaluated = []
        for source in sources:
            if manager._stop.is_set():
                break
            state, entry = cache.inspect(source, configured)
            if state != STALE or entry is None:
                # Fresh: nothing to do. Never evaluated (or collected): the next start builds it,
                # showing its progress; nothing says it is wanted before that.
                self._seen.pop(source, None)
                continue
            try:
                nix_path = nix.find_nix(configured)
            except nix.NixNotFoundError:
                return evaluated
            inputs = sorted(set(watched_inputs(source)) | set(entry["key"]["inputs"]))
            now_key = cache.key(source, nix_path, inputs)
            if self._seen.get(source) != now_key:
                self._seen[source] = now_key  # changed since the last look: let it settle
                continue
            if self._tried.get(source) == now_key:
                continue  # these inputs failed already: wait for the next change
            self._tried[source] = now_key
            evaluated.append(source)
            self._evaluate(source, configured)
        return evaluated

    def _evaluate(self, source: NixSource, configured: str | None) -> None:
        log = self.manager.log
        log.info("nixkernel: %s changed: re-evaluating it in the background", source.describe())
        started = time.monotonic()
        try:
            resolved = self.manager.cache.ensure(source, configured, allow_stale=False)
        except nix.NixKernelError as exc:
            log.warning(
                "nixkernel: re-evaluating %s in the background failed (a kernel start will show "
                "why): %s",
                source.describe(),
                exc.message,
            )
            return
        took = time.monotonic() - started
        if resolved.evaluated:
            log.info("nixkernel: %s is fresh again (%.1f s)", source.describe(), took)
