"""Start ipykernel as ``python -m ipykernel_launcher`` does, or say why it cannot.

The launcher execs the *project's* Python on this file. If that environment has no ipykernel,
rather than dying (and being restarted five times by the server with the reason only in its
log), it execs nixkernel's fallback kernel in the Jupyter server's Python, which answers every
cell with the fix. Runs on whatever Python 3 the project has: keep it tiny and version-neutral.
"""

import os
import sys

# sys.path[0] is this directory: nothing in it may shadow the kernel's imports.
del sys.path[0]

# The launcher picked this Python from the shell's PATH before the shellHook ran. If the hook
# put another python3 first (a virtualenv it activates), that one is the kernel's, as it is
# for `nix develop -c python3`. (A PATH search by hand: nixkernel is not importable here.)
_before_hook = os.environ.pop("NIXKERNEL_PYTHON_BEFORE_HOOK", "")
if _before_hook:
    for _directory in os.environ.get("PATH", "").split(":"):
        _candidate = os.path.join(_directory, "python3")
        if _directory and os.path.isfile(_candidate) and os.access(_candidate, os.X_OK):
            if _candidate != _before_hook:
                os.execv(_candidate, [_candidate, os.path.abspath(__file__)] + sys.argv[1:])
            break

_fallback_python = os.environ.pop("NIXKERNEL_FALLBACK_PYTHON", "")
_hint = os.environ.pop("NIXKERNEL_IPYKERNEL_HINT", "add ipykernel to this environment")

try:
    from ipykernel import kernelapp
except ImportError as exc:
    if not _fallback_python:
        raise
    message = (
        "This environment's Python (%s) cannot import ipykernel, which Jupyter kernels need: "
        "%s\n\nHow to fix it: %s, then restart the kernel." % (sys.executable, exc, _hint)
    )
    # -E: this environment's PYTHONPATH and PYTHONHOME are for the project's Python.
    _boot = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fallback.py")
    os.execv(_fallback_python, [_fallback_python, "-E", _boot, "--message", message] + sys.argv[1:])


def _curve_refusal():
    """Why this ipykernel cannot serve the connection file's CurveZMQ keys, or None.

    jupyter_client (transport_encryption "auto" / "required") writes keys into the connection
    file; an ipykernel older than 7.3 ignores them and binds unencrypted sockets, which the
    server's encrypted client never reaches: the kernel would just never answer."""
    if hasattr(kernelapp.IPKernelApp, "curve_secretkey") or "-f" not in sys.argv[:-1]:
        return None
    import json

    try:
        with open(sys.argv[sys.argv.index("-f") + 1]) as f:
            if "curve_secretkey" not in json.load(f):
                return None
    except (OSError, ValueError):
        return None
    import ipykernel

    return (
        "The Jupyter server encrypts its connections to kernels (CurveZMQ, transport_encryption), "
        "but this environment's ipykernel %s cannot: encryption needs ipykernel 7.3 or newer "
        "(%s).\n\nHow to fix it: upgrade ipykernel in this environment, then restart the kernel; "
        "or, if unencrypted kernels are acceptable, set "
        'c.MappingKernelManager.transport_encryption = "auto" (nixkernel then declares '
        "encryption only for environments whose ipykernel supports it)."
        % (getattr(ipykernel, "__version__", "?"), sys.executable)
    )


_refusal = _curve_refusal() if _fallback_python else None
if _refusal:
    _boot = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fallback.py")
    _argv = [_fallback_python, "-E", _boot, "--message", _refusal]
    os.execv(_fallback_python, _argv + sys.argv[1:])


if os.environ.get("NIXKERNEL_REPLAY") or os.environ.get("NIXKERNEL_STALE_WARNING"):
    # Cells run while nixkernel built this environment, or a warning for the first cell.
    import importlib.util

    _spec = importlib.util.spec_from_file_location(
        "nixkernel_handover",
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "handover.py"),
    )
    _handover = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_handover)
    _handover.launch()
else:
    kernelapp.launch_new_instance()
