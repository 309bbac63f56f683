"""A cold start, visible: the launcher's hand-over to the building kernel, and its worker.

On a cache miss (or a stale entry to re-evaluate) the launcher does not make the client wait on
Nix. It execs the *building kernel* (:mod:`nixkernel.buildkernel`, started by path through
``boot/building.py`` in the server's Python, like the fallback kernel), which answers
``kernel_info`` at once and keeps the cells run meanwhile. That kernel runs the evaluation in a
*worker* (``boot/evaluate.py`` -> :func:`worker_main`), a child in its own process group, so an
interrupt stops Nix and only Nix: the worker runs the same :meth:`EnvironmentCache.ensure` as the
launcher (the slot's lock, so a build another kernel started is waited for, not repeated), and
Nix's output goes to the slot's build log (:mod:`nixkernel.buildlog`), which every waiting kernel
follows. When the worker is done the building kernel execs the launcher again, with
``NIXKERNEL_BUILT`` set: the launcher finds the entry fresh (or takes the build's failure) and
execs the project's kernel, same pid, same ports, which runs the kept cells
(``boot/handover.py``).

Standard library only: the launcher imports this module on a miss.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys

from .nix import log

_BOOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "boot")
BUILDING_SCRIPT = os.path.join(_BOOT, "building.py")
EVALUATE_SCRIPT = os.path.join(_BOOT, "evaluate.py")

#: The file of cells kept by the building kernel, for the project's kernel to run (handover.py).
REPLAY_VARIABLE = "NIXKERNEL_REPLAY"
#: The building kernel's pid, as its worker must see it as its parent (else it is orphaned).
PARENT_VARIABLE = "NIXKERNEL_WORKER_PARENT"

#: How many lines of a stale environment's error the first cell shows.
NOTICE_LINES = 10


def exec_building_kernel(launcher_argv: list[str], state: str) -> None:
    """Become the building kernel (the launcher's ``on_miss``). Returns only if it cannot."""
    argv = [sys.executable, BUILDING_SCRIPT, "--state", state, "--", *launcher_argv]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, argv)
    except OSError as exc:
        log(f"could not start the building kernel ({exc}); evaluating before the kernel starts")


# -- the worker ----------------------------------------------------------------------------------


def _stop_group(*_: object) -> None:
    """End this worker's process group (it and its Nix), as the default SIGTERM would end it."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.killpg(0, signal.SIGTERM)


def _die_with_parent(parent: int) -> None:
    """Stop Nix when the building kernel dies without stopping it (a SIGKILL from the server):
    the kernel is in another process group, so nothing else would reach this one."""
    signal.signal(signal.SIGTERM, _stop_group)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent stops us on its way out
        pass
    if parent and os.getppid() != parent:
        _stop_group()


def worker_main(argv: list[str] | None = None) -> None:
    """Evaluate the launcher's environment (``argv``: the launcher's own arguments) through the
    cache, and print the outcome as one JSON line: ``{"state": "fresh" | "stale" | "error" |
    "none", "message": ..., "seconds": ...}``. Nix's output goes to the slot's build log and, as
    the launcher's does, to the server's log."""
    from . import kernels, launch
    from .cache import EnvironmentCache
    from .nix import NixKernelError

    _die_with_parent(int(os.environ.pop(PARENT_VARIABLE, "0") or 0))
    args = launch.build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    result: dict = {"state": "none"}
    try:
        target = launch.resolve_target(args)
        source = launch.target_source(target, args.library_shell)
        if source is not None and not target.problem:
            cache = EnvironmentCache(args.cache_dir)
            resolved = cache.ensure(source, args.nix or None, allow_stale=args.stale, on_line=log)
            result = {
                "state": resolved.state,
                "evaluated": resolved.evaluated,
                "seconds": resolved.seconds,
                "message": resolved.warning,
                # Whether the kernel the launcher starts next runs kept cells: ipykernel does
                # (the project's, or the fallback that explains a kernel the shell dropped).
                "replayable": not args.spec or kernels.find(resolved.entry, args.spec) is None,
            }
    except NixKernelError as exc:
        result = {"state": "error", "message": str(exc)}
    except Exception as exc:  # reported by the launcher's own run, with the fallback kernel
        result = {"state": "error", "message": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)


# -- a stale environment, said in the notebook ---------------------------------------------------


def stale_notice(warning: str, target: object) -> str:
    """What the first cell of a kernel started on a last-good environment shows (stderr): the
    warning with the first lines of the evaluation's error, and where to read all of it."""
    from .describe import kernel_name

    name = getattr(target, "name", "") or kernel_name(
        getattr(target, "project", ""), getattr(target, "kind", ""), getattr(target, "shell", None)
    )
    lines = warning.strip().splitlines()
    advice = lines.pop() if len(lines) > 1 else ""
    # The headline and what failed, then Nix's own messages: newer Nix puts the message on an
    # "error: ..." line after a trace of what it was evaluating (which the whole error keeps).
    messages = [ln.strip() for ln in lines[2:] if re.match(r"^\s*error: \S", ln)]
    shown = [*lines[:2], "Nix said:", *messages] if messages else list(lines)
    shown = [ln for ln in shown if ln.strip()][:NOTICE_LINES]
    total = len([ln for ln in lines if ln.strip()])
    if total > len(shown):
        shown.append(f"... (the whole error has {total} lines)")
    shown.append(
        f"The whole error: `jupyter nixkernel show {name}` in a terminal, or the Jupyter "
        "server's log."
    )
    if advice:
        shown.append(advice)
    return "[nixkernel] " + "\n".join(shown) + "\n"
