#!/usr/bin/env python3
"""Run jupyter_client's and jupyter_server's own kernelspec tests against NixKernelSpecManager.

Their test suites ship in their sdists. This downloads the sdists of the *installed* versions
(once: they are kept in the cache directory), unpacks them, and runs

- jupyter_client: tests/test_kernelspec.py, tests/test_kernelspecapp.py
- jupyter_server: tests/services/kernelspecs/

with tools/upstream_ksm_plugin.py, which puts NixKernelSpecManager (finding a flake and a
shell.nix project) in place of the stock KernelSpecManager. The exit status is pytest's (0: every
contract holds for nixkernel's manager too); 3 when an sdist cannot be downloaded.

    python tools/upstream_kernelspec_tests.py [--cache-dir DIR] [PYTEST ARGS...]

The cache defaults to $NIXKERNEL_UPSTREAM_CACHE, else .cache/upstream-tests in the checkout.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"
SUITES = {
    "jupyter_client": ["tests/test_kernelspec.py", "tests/test_kernelspecapp.py"],
    "jupyter_server": ["tests/services/kernelspecs"],
}
NO_DOWNLOAD = 3


def sdist(package: str, cache: Path) -> Path:
    """The unpacked sdist of the installed ``package``, downloaded on first use."""
    ver = version(package)
    unpacked = cache / f"{package}-{ver}"
    if (unpacked / "tests").is_dir():
        return unpacked
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"{package}-{ver}.tar.gz"
    if not archive.exists():
        # --no-binary for this package only: its build requirements may come as wheels.
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", package, "--dest", str(cache), f"{package}=={ver}"],
            capture_output=True, text=True,
        )  # fmt: skip
        if result.returncode != 0 or not archive.exists():
            print(f"cannot download the {package} {ver} sdist:\n{result.stderr}", file=sys.stderr)
            sys.exit(NO_DOWNLOAD)
    with tarfile.open(archive) as tar:
        tar.extractall(cache, filter="data")
    return unpacked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache-dir",
        default=os.environ.get("NIXKERNEL_UPSTREAM_CACHE") or ROOT / ".cache" / "upstream-tests",
    )
    args, pytest_args = parser.parse_known_args()
    cache = Path(args.cache_dir).resolve()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TOOLS), os.environ.get("PYTHONPATH", "")]).rstrip(":"),
    }
    env.pop("JUPYTER_PATH", None)
    status = 0
    for package, paths in SUITES.items():
        directory = sdist(package, cache)
        print(f"== {package} {version(package)}: {' '.join(paths)}", flush=True)
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "upstream_ksm_plugin", "-p", "no:cacheprovider",
             "-q", *paths, *pytest_args],
            cwd=directory, env=env,
        )  # fmt: skip
        status = status or result.returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
