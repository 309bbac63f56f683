"""What every nixkernel kernelspec runs: ``<server python> -S .../nixkernel/boot/launcher.py ...``.

The launcher needs only the standard library and nixkernel itself, so it runs without ``site``:
no scan of site-packages and no ``.pth`` files, some of which import whole packages at every
interpreter start. That is tens of milliseconds off every kernel start. ``python -m
nixkernel.launch`` does the same job with ``site``.
"""

import os
import sys

# sys.path[0] is this directory: replace it with the one that holds the nixkernel package.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nixkernel.launch import main  # noqa: E402

main()
