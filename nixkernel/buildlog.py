"""What an evaluation in progress leaves in its cache slot, for everyone else to see.

Next to a slot's ``entry.json`` (see :mod:`nixkernel.cache`)::

    build.log       the current (or last) evaluation's Nix output, one line per line, opened by a
                    header line and closed by a trailer; replaced (a new file) at every start, so
                    a reader that sees a new inode knows a new evaluation began
    failure.json    the last evaluation's failure: its error and the key it failed under, so the
                    launchers that waited on the lock meanwhile take it instead of running the
                    same failing evaluation again (cleared by the next success)

Writers hold the slot's lock; readers never take it (they only test it, to say whether an
evaluation is running). Standard library only: the launcher imports this on a cache miss.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator

from .nix import NixEvaluationError, NixKernelError

LOG_FILE = "build.log"
FAILURE_FILE = "failure.json"
LOCK_FILE = "lock"
#: Lines of the log that are nixkernel's own (header and trailer), not Nix's.
MARK = "# nixkernel: "


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def writing(
    slot: str, what: str, on_line: Callable[[str], None] | None
) -> Iterator[Callable[[str], None]]:
    """Record one evaluation's output in ``slot``'s build log (the caller holds the slot's lock).

    Yields the line callback to give Nix: it appends to the log and passes each line on to
    ``on_line``. The log is a new file from the first line, so followers notice the new build.
    """
    path = os.path.join(slot, LOG_FILE)
    started = time.time()
    header = f"{MARK}evaluating {what} (pid {os.getpid()}, started {started:.3f})\n"
    _write_atomically(path, header)
    log = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 (closed below)

    def tee(line: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            log.write(line + "\n")
            log.flush()
        if on_line is not None:
            on_line(line)

    outcome = "failed"
    try:
        yield tee
        outcome = "done"
    finally:
        with contextlib.suppress(OSError, ValueError):
            log.write(f"{MARK}{outcome} after {time.time() - started:.1f} s\n")
        log.close()


def running(slot: str) -> dict | None:
    """The evaluation running in ``slot`` now (someone holds its lock), or None.

    ``{"pid", "started", "what", "last_line"}`` as far as its build log tells (the holder may
    still be waiting to write it)."""
    try:
        fd = os.open(os.path.join(slot, LOCK_FILE), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: an evaluation is running
        else:
            return None
    finally:
        os.close(fd)
    info: dict = {"pid": None, "started": None, "what": None, "last_line": None}
    try:
        with open(os.path.join(slot, LOG_FILE), encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return info
    if (
        lines
        and lines[0].startswith(MARK)
        and not lines[-1].startswith((f"{MARK}done", f"{MARK}failed"))
    ):
        header = parse_header(lines[0])
        if header:
            info.update(header)
        nix_lines = [ln for ln in lines[1:] if ln.strip()]
        info["last_line"] = nix_lines[-1] if nix_lines else None
    return info


def parse_header(line: str) -> dict | None:
    """``{"what", "pid", "started"}`` from a build log's first line, or None."""
    import re

    match = re.match(rf"^{re.escape(MARK)}evaluating (.*) \(pid (\d+), started ([\d.]+)\)$", line)
    if not match:
        return None
    return {"what": match.group(1), "pid": int(match.group(2)), "started": float(match.group(3))}


class LogFollower:
    """Reads a slot's build log as it grows, and starts over when a new evaluation replaces it.

    ``skip_current``: the log there now belongs to an evaluation that already ended; show only
    the next one."""

    def __init__(self, slot: str, skip_current: bool = False) -> None:
        self.path = os.path.join(slot, LOG_FILE)
        self._file = None
        self._inode: tuple[int, int] | None = None
        self._partial = ""
        if skip_current:
            with contextlib.suppress(OSError):
                st = os.stat(self.path)
                self._inode = (st.st_dev, st.st_ino)

    def poll(self) -> list[str]:
        """The complete lines written since the last call (headers and trailers included)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return []
        inode = (st.st_dev, st.st_ino)
        lines: list[str] = []
        if inode != self._inode:
            # A new evaluation: finish the old file first, then read the new one from its start.
            lines += self._read()
            self.close()
            try:
                self._file = open(self.path, encoding="utf-8", errors="replace")  # noqa: SIM115
            except OSError:
                return lines
            opened = os.fstat(self._file.fileno())
            self._inode = (opened.st_dev, opened.st_ino)
            self._partial = ""
        return lines + self._read()

    def _read(self) -> list[str]:
        if self._file is None:
            return []
        text = self._partial + self._file.read()
        *complete, self._partial = text.split("\n")
        return complete

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# -- failures -------------------------------------------------------------------------------------


def record_failure(slot: str, key: dict, error: NixKernelError) -> None:
    """Remember that evaluating under ``key`` failed with ``error`` (the caller holds the lock)."""
    record = {
        "at": time.time(),
        "key": key,
        "message": error.message,
        "hint": error.hint,
        "details": error.details,
    }
    with contextlib.suppress(OSError):
        _write_atomically(os.path.join(slot, FAILURE_FILE), json.dumps(record))


def clear_failure(slot: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(slot, FAILURE_FILE))


def last_failure(slot: str) -> dict | None:
    """The recorded failure of ``slot``, if any: ``{"at", "key", "message", "hint", "details"}``."""
    try:
        with open(os.path.join(slot, FAILURE_FILE), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("at"), int | float):
        return None
    return record


def recorded_failure(slot: str, key: dict, since: float) -> NixEvaluationError | None:
    """The error of an evaluation under the same ``key`` that failed at or after ``since``."""
    record = last_failure(slot)
    if record is None or record["at"] < since or record.get("key") != key:
        return None
    return NixEvaluationError(
        str(record.get("message", "")), str(record.get("hint", "")), str(record.get("details", ""))
    )
