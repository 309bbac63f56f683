"""The README's first command, run exactly as written, as root (a fresh Debian has no sudo, and
JupyterLab refuses root without --allow-root) and as an ordinary user whose Nix goes through the
daemon: each ends with JupyterLab serving the project's kernel.

It installs JupyterLab from PyPI into a new virtualenv (about a minute per run), so it runs under
CI=true or with NIXKERNEL_SLOW_TESTS=1."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import IN_CI, NixDaemon
from nixprojects import write_shell_nix
from test_browser import free_port

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 900  # apt-get is skipped here, but pip downloads JupyterLab

pytestmark = [
    pytest.mark.skipif(
        not (IN_CI or os.environ.get("NIXKERNEL_SLOW_TESTS") == "1"),
        reason="installs JupyterLab from PyPI (a minute or more): NIXKERNEL_SLOW_TESTS=1 runs it",
    ),
    # The command installs Debian's nix-bin and uses it: the machine's own Nix, once.
    pytest.mark.system_nix,
]


def readme_first_command() -> str:
    block = (REPO / "README.md").read_text().split("```sh\n", 1)[1].split("```", 1)[0]
    return next(ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#"))


def fresh_home(home: Path) -> None:
    """A home with one project, and (as a desktop would not need) no browser to open."""
    write_shell_nix(home / "projects" / "api")
    config = home / ".jupyter" / "jupyter_server_config.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"ServerApp": {"open_browser": False}}))


def serve_and_list(argv_env: dict[str, str], checkout: Path, user: str | None) -> dict:
    """Run the README's command in ``checkout``; the kernelspecs JupyterLab serves once the
    project's kernel is listed. The whole process group is stopped afterwards."""
    port, token = free_port(), secrets.token_hex(16)
    env = {**argv_env, "JUPYTER_PORT": str(port), "JUPYTER_TOKEN": token}
    extra: dict = {}
    if user is not None:
        entry = pwd.getpwnam(user)
        extra = {"user": entry.pw_uid, "group": entry.pw_gid,
                 "extra_groups": os.getgrouplist(user, entry.pw_gid)}  # fmt: skip
    log = checkout.parent / f"quickstart-{user or 'root'}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            ["bash", "-c", readme_first_command()], cwd=checkout, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True, **extra,
        )  # fmt: skip
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/kernelspecs", headers={"Authorization": f"token {token}"}
    )
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"the command exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    specs = json.load(response)["kernelspecs"]
                if any(m["spec"]["display_name"] == "api (shell.nix)" for m in specs.values()):
                    return {"specs": specs, "log": log.read_text()}
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not list the project in time:\n{log.read_text()}")
            time.sleep(1)  # poll interval while pip and the server work, not synchronisation
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_readme_first_command_as_root(nix, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("runs as root")
    home = tmp_path / "home"
    fresh_home(home)
    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env = {"HOME": str(home), "PATH": path, "NIX_CONFIG": os.environ["NIX_CONFIG"],
           "LANG": "C.UTF-8"}  # fmt: skip
    served = serve_and_list(env, REPO, None)
    assert "--allow-root" in served["log"] and "sudo" not in served["log"]
    assert "Nix evaluates and builds as root" in served["log"]  # doctor ran


def test_readme_first_command_as_a_user(nix_daemon: NixDaemon):
    user = nix_daemon.member
    home = Path(pwd.getpwnam(user).pw_dir)
    fresh_home(home)
    # The user's own copy of the checkout (pip builds in it).
    checkout = nix_daemon.base / user / "nixkernel"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    for name in files:
        if (REPO / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, checkout / name)
    nix_daemon.give(nix_daemon.base / user, user)
    nix_daemon.give(home, user)
    env = nix_daemon.client_env(user)
    env.pop("PYTHONPATH")  # the README's command installs its own everything
    env["PATH"] = f"{nix_daemon.nix_bin}:/usr/local/bin:/usr/bin:/bin"
    served = serve_and_list(env, checkout, user)
    assert "--allow-root" not in served["log"]
    assert f"Nix evaluates and builds as {user}" in served["log"]
