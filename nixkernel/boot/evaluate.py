"""The building kernel's worker: ``<server python> -S .../boot/evaluate.py LAUNCHER ARGS``.

Evaluates the environment through nixkernel's cache, as the launcher would, and prints the
outcome as JSON (see nixkernel/building.py). Standard library only, hence ``-S``.
"""

import os
import sys

# sys.path[0] is this directory: replace it with the one that holds the nixkernel package.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nixkernel.building import worker_main  # noqa: E402

worker_main()
