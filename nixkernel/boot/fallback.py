"""Start nixkernel's fallback kernel by path: ``<server python> [-E] .../boot/fallback.py ...``.

Run by path rather than ``-m nixkernel.fallback`` so that the kernel's working directory (the
notebook's folder, which ``-m`` would put first on sys.path) cannot shadow what it imports, and
so that the package is found where this file is even when the server found it through
PYTHONPATH. The boot script adds ``-E`` when it comes here from a project's environment, whose
PYTHONPATH and PYTHONHOME belong to another Python; unlike ``-I`` that keeps the user's
site-packages, where ``pip install --user`` puts nixkernel and ipykernel.
"""

import os
import sys

# sys.path[0] is this directory: replace it with the one that holds the nixkernel package.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nixkernel.fallback import main  # noqa: E402

main()
