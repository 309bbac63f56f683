"""``jupyter nixkernel doctor`` proves that Nix works for this user and checks projects before
evaluating them: run as ordinary users against a real nix-daemon on a private socket (in the
socket's group, outside it, refused by ``allowed-users``, with no daemon), on a syntax error, on
a flake input that is not in the store, and with ``--evaluate``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import NixDaemon, daemon_config, nix_daemon_process
from nixprojects import Raw, nix_value, write_flake, write_shell_nix

from nixkernel import doctor, flakelock


def doctor_as(daemon: NixDaemon, user: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    argv = [daemon.python, "-m", "nixkernel.cli", "doctor", *args]
    return daemon.run_as(user, argv, env=daemon.client_env(user, **env), cwd=str(daemon.base))


def user_project(daemon: NixDaemon, user: str, name: str) -> Path:
    """A shell.nix project that ``user`` owns, whose python3 (with ipykernel) they may run."""
    python = Raw(
        '(mini.hostWrapper "python" [ { name = "python3"; target = '
        + nix_value(daemon.python)
        + "; } ])"
    )
    attrs = {"packages": [python], "PYTHONPATH": daemon.pythonpath}
    project = write_shell_nix(daemon.base / user / name, attrs)
    daemon.give(daemon.base / user, user)
    return project


def test_user_outside_the_sockets_group_is_told_to_join_it(nix_daemon: NixDaemon):
    """As an ordinary user who cannot reach the daemon, doctor fails and names the group, where
    it used to print `OK Nix ... 0 problem(s)`. (Nix 2.8's `nix-instantiate --eval` of `1 + 1`
    never opens the store, so only the build step proves store access.)"""
    user = nix_daemon.outsider
    project = user_project(nix_daemon, user, "api")
    result = doctor_as(nix_daemon, user, str(project))
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert re.search(rf"FAIL  Nix cannot (evaluate|build) as {user}: the Nix daemon's socket", out)
    assert f"open to the group nix-users only, and {user} is not in it" in out
    assert f"sudo usermod -aG nix-users {user}" in out


def test_member_of_the_sockets_group_passes_and_evaluate_builds_through_the_daemon(
    nix_daemon: NixDaemon,
):
    user = nix_daemon.member
    project = user_project(nix_daemon, user, "api")
    result = doctor_as(nix_daemon, user, str(project))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"OK    Nix evaluates and builds as {user}" in result.stdout
    assert "not evaluated yet" in result.stdout and "doctor --evaluate" in result.stdout

    evaluated = doctor_as(nix_daemon, user, str(project), "--evaluate", "--json")
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    checks = json.loads(evaluated.stdout)
    messages = [c["message"] for c in checks if c["status"] == doctor.OK]
    assert any(m.startswith("api (shell.nix): evaluated in") for m in messages), checks
    assert any(m.startswith("api (shell.nix): ipykernel found") for m in messages), checks


def test_no_daemon_listening_is_named(nix_daemon: NixDaemon):
    user = nix_daemon.member
    nowhere = nix_daemon.base / user / "no-daemon"
    nowhere.mkdir(parents=True)
    nix_daemon.give(nowhere, user)
    result = doctor_as(nix_daemon, user, str(nowhere),
                       NIX_DAEMON_SOCKET_PATH=str(nowhere / "socket"))  # fmt: skip
    assert result.returncode == 1
    assert "the Nix daemon is not running" in result.stdout
    assert "systemctl start nix-daemon" in result.stdout


def test_user_the_daemon_does_not_allow_is_told_about_allowed_users(
    nix_daemon: NixDaemon, nix: str
):
    """A daemon with `allowed-users = root` closes the connection (the client sees a reset or a
    broken pipe, by version: daemon.cc `user '...' is not allowed to connect`)."""
    user = nix_daemon.member
    config = daemon_config(nix_daemon.base / "empty-registry.json", "allowed-users = root\n")
    with nix_daemon_process(nix_daemon.nix_bin, nix_daemon.base / "strict", config) as socket:
        empty = nix_daemon.base / user / "strict"
        empty.mkdir(parents=True)
        nix_daemon.give(empty, user)
        result = doctor_as(nix_daemon, user, str(empty), NIX_DAEMON_SOCKET_PATH=socket)
    assert result.returncode == 1, result.stdout
    assert "the Nix daemon closed the connection: it does not allow this user" in result.stdout
    assert "allowed-users" in result.stdout and "restart nix-daemon" in result.stdout


def test_syntax_error_is_found_without_evaluating(nix, projects):
    broken = write_shell_nix(projects / "broken")
    (broken / "shell.nix").write_text("let\n  x = 1;\n  y = = 2;\nin x\n")
    write_flake(projects / "fine")
    env = {**os.environ, "NIXKERNEL_CACHE_DIR": str(projects.parent / "cache")}
    result = subprocess.run([sys.executable, "-m", "nixkernel.cli", "doctor", str(projects)],
                            capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert result.returncode == 1
    assert re.search(r"FAIL  shell\.nix: syntax error, unexpected '=',? at line 3", result.stdout)
    assert f"nix-instantiate --parse {broken / 'shell.nix'}" in result.stdout
    assert re.search(r"OK    \d+ Nix file\(s\) parse", result.stdout)  # the flake's
    assert not (projects.parent / "cache" / "envs").exists()  # nothing was evaluated


def test_flake_input_not_in_the_store_is_reported_as_needing_the_network(nix, projects):
    """flake.lock pins an input whose store path (computed from its narHash, as Nix's
    makeFixedOutputPath does) is absent: doctor says the first evaluation would download it."""
    project = write_flake(projects / "online")
    lock = {
        "nodes": {
            "nixpkgs": {
                "locked": {
                    "lastModified": 1700000000,
                    "narHash": "sha256-" + "A" * 43 + "=",
                    "owner": "NixOS",
                    "repo": "nixpkgs",
                    "rev": "0" * 40,
                    "type": "github",
                },
                "original": {"owner": "NixOS", "repo": "nixpkgs", "type": "github"},
            },
            "root": {"inputs": {"nixpkgs": "nixpkgs"}},
        },
        "root": "root",
        "version": 7,
    }
    (project / "flake.lock").write_text(json.dumps(lock))
    (missing,) = flakelock.missing_inputs(str(project))
    assert missing.reference == f"github:NixOS/nixpkgs/{'0' * 40}"
    check = doctor.check_flake_inputs(str(project))
    assert check is not None and check.status == doctor.WARN
    assert "1 flake input(s) not in the Nix store: nixpkgs (github:NixOS/nixpkgs/" in check.message
    assert "needs the network" in check.message and "--evaluate" in check.fix


def test_input_store_paths_match_nixs(nix, projects, tmp_path):
    """The store path computed for a locked input is the one Nix copied it to."""
    dependency = tmp_path / "dep"
    dependency.mkdir()
    (dependency / "data.txt").write_text("a flake input\n")
    top = projects / "top"
    top.mkdir()
    (top / "flake.nix").write_text(
        f'{{ inputs.dep = {{ url = "path:{dependency}"; flake = false; }};\n'
        '  outputs = { self, dep }: { path = "${dep}"; }; }\n'
    )
    result = subprocess.run([nix, "eval", "--raw", f"path:{top}#path"], capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (locked,) = flakelock.locked_inputs(str(top))
    assert locked.store_path == result.stdout.strip() and locked.local
    assert doctor.check_flake_inputs(str(top)).status == doctor.OK
