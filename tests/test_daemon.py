"""The set-up our users run: NixOS or Nix with a nix-daemon, the product used by an ordinary user.

Each test runs once per Nix version, against that version's own ``nix-daemon`` on a private
socket (``NIX_REMOTE=daemon``): evaluations, builds and GC roots go through the daemon, exactly
as for an ordinary user on NixOS; the user owns nothing in the store and is not root.
"""

from __future__ import annotations

import json
import pwd
import shutil
import subprocess
from pathlib import Path

from helpers import NixDaemon
from nixprojects import python_package, write_flake, write_shell_nix

#: Started by the user: every kernel of the projects, one cell each, results as JSON.
PROBE = """
import json, os, sys
from jupyter_client import KernelManager
from nixkernel.kernelspec import NixKernelSpecManager

manager = NixKernelSpecManager(project_dirs=[sys.argv[1]], cache_dir=sys.argv[2])
results = {}
for target in manager.targets():
    km = KernelManager(kernel_spec_manager=manager, kernel_name=target.name)
    km.start_kernel(cwd=target.project)
    kc = km.client()
    kc.start_channels()
    out = []
    try:
        kc.wait_for_ready(timeout=120)
        kc.execute_interactive(
            "import os; print(os.environ.get('GREETING'), os.getuid())",
            output_hook=lambda m: out.append(m["content"].get("text", ""))
            if m["msg_type"] == "stream" else None,
            timeout=120,
        )
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    results[target.display_name] = "".join(out).strip()
print(json.dumps(results))
"""


def user_home(daemon: NixDaemon, user: str) -> Path:
    """A directory of the user's own, that the user can reach (under the daemon's base)."""
    home = daemon.base / user
    home.mkdir(exist_ok=True)
    return home


def user_projects(daemon: NixDaemon, user: str) -> Path:
    """A flake and a shell.nix project, owned by the user. The shells' python3 is one the user
    may run; its PYTHONPATH (set by the shell) finds this test run's ipykernel."""
    home = user_home(daemon, user)
    shell = {
        "GREETING": "hello through the daemon",
        "packages": [python_package(daemon.python)],
        "PYTHONPATH": daemon.pythonpath,
    }
    write_flake(home / "projects" / "api", {"default": shell})
    write_shell_nix(home / "projects" / "legacy", shell)
    daemon.give(home, user)
    return home / "projects"


def as_user(daemon: NixDaemon, user: str, *argv: str) -> subprocess.CompletedProcess:
    home = user_home(daemon, user)
    env = daemon.client_env(
        user,
        NIXKERNEL_CACHE_DIR=str(home / "cache"),
        JUPYTER_CONFIG_DIR=str(home / "jupyter-config"),
        JUPYTER_DATA_DIR=str(home / "jupyter-data"),
    )
    return daemon.run_as(user, list(argv), env=env, cwd=str(home))


def nixkernel_cli(daemon: NixDaemon, user: str, *args: str) -> subprocess.CompletedProcess:
    return as_user(daemon, user, daemon.python, "-m", "nixkernel.cli", *args)


def test_ordinary_user_evaluates_through_the_daemon_and_runs_kernels(nix_daemon: NixDaemon):
    """warm, the GC roots and the kernels work for a user in nix-users who talks to the daemon:
    the environments are built by the daemon, rooted from the user's cache (an indirect root the
    daemon registers), and the kernels run as the user with the shell's variables."""
    user = nix_daemon.member
    projects = user_projects(nix_daemon, user)
    cache = user_home(nix_daemon, user) / "cache"

    warm = nixkernel_cli(nix_daemon, user, "warm", "--all", "--dir", str(projects))
    assert warm.returncode == 0, warm.stdout + warm.stderr
    assert warm.stdout.count(" ok") >= 2 or "evaluated" in warm.stdout, warm.stdout

    # The GC roots: each slot's profile link names a store path, and the daemon knows the link
    # as a root (print-roots only lists; nothing is collected).
    profiles = sorted(cache.glob("envs/*/profile"))
    assert len(profiles) == 2
    roots = subprocess.run(
        [f"{nix_daemon.nix_bin}/nix-store", "--gc", "--print-roots"],
        capture_output=True,
        text=True,
        env=nix_daemon.client_env("root"),
        check=True,
    ).stdout
    for profile in profiles:
        target = profile.resolve()
        assert str(target).startswith("/nix/store/")
        assert f"{profile.parent}/" in roots and str(target) in roots, roots

    probe = user_home(nix_daemon, user) / "probe.py"
    probe.write_text(PROBE)
    shutil.chown(probe, user, user)
    uid = pwd.getpwnam(user).pw_uid
    run = as_user(nix_daemon, user, nix_daemon.python, str(probe), str(projects), str(cache))
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout.splitlines()[-1])
    assert results == {
        "api (flake)": f"hello through the daemon {uid}",
        "legacy (shell.nix)": f"hello through the daemon {uid}",
    }


def test_user_outside_nix_users_is_told_the_reason_and_the_fix(nix_daemon: NixDaemon):
    """The daemon's socket refuses a user outside nix-users: warm names that cause and its fix,
    never "fix the Nix file"."""
    user = nix_daemon.outsider
    projects = user_projects(nix_daemon, user)
    warm = nixkernel_cli(nix_daemon, user, "warm", "--all", "--dir", str(projects))
    assert warm.returncode == 1
    text = warm.stdout + warm.stderr
    assert "Permission denied" in text
    assert "nix-users" in text, text
    assert "Nix file" not in text


def test_the_user_reaches_the_store_only_through_the_daemon(nix_daemon: NixDaemon):
    """Sanity of the set-up itself: the user's Nix talks to the daemon and cannot open the store
    itself, so a success above is the daemon's doing, as on NixOS."""
    user = nix_daemon.member
    nix_store = f"{nix_daemon.nix_bin}/nix-store"
    direct = as_user(nix_daemon, user, nix_store, "--store", "local", "--add", "/etc/hostname")
    assert direct.returncode != 0  # an ordinary user cannot write the store itself
    via = as_user(nix_daemon, user, nix_store, "--add", "/etc/hostname")
    assert via.returncode == 0 and via.stdout.startswith("/nix/store/"), via.stderr
