"""Start nixkernel's building kernel by path: ``<server python> .../boot/building.py ARGS``.

The launcher execs this on a cache miss (see nixkernel/building.py), in the server's own
environment, as it starts the fallback kernel. Run by path, so that the kernel's working
directory (the notebook's folder) cannot shadow what it imports.
"""

import os
import sys
import time

# sys.path[0] is this directory: replace it with the one that holds the nixkernel package.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The environment to exec the launcher with again, before ipykernel's imports can touch it.
_env = dict(os.environ)

try:
    from nixkernel.buildkernel import main
except ImportError as exc:
    # No kernel to answer with: the launcher evaluates before the kernel starts, as it used to.
    print("[nixkernel] cannot start the building kernel (%s)" % exc, file=sys.stderr, flush=True)
    _argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    _env["NIXKERNEL_BUILT"] = repr(time.time())
    _launcher = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launcher.py")
    os.execve(sys.executable, [sys.executable, "-S", _launcher] + _argv, _env)

main(env=_env)
