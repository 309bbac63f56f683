"""Nix's failures summarised by their cause, on the running Nix: the real message (the final
`error:` of Nix >= 2.2x's trace layout, the only line of 2.8's), where it points, and the fix for
that cause. See nixkernel/nixerrors.py and docs/nix-semantics.md."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from nixprojects import DEFAULT_SHELL, MINI_NIX, git_track, shell_expr, write_flake

from nixkernel import nix as nixmod
from nixkernel import nixerrors
from nixkernel.describe import NixSource


def shell_nix(directory: Path, text: str) -> NixSource:
    directory.mkdir(parents=True)
    shutil.copy(MINI_NIX, directory / "mini.nix")
    (directory / "shell.nix").write_text(text)
    return NixSource("file", str(directory / "shell.nix"))


def flake(directory: Path, outputs_let: str, shell_attrs: str, inputs: str = "") -> NixSource:
    directory.mkdir(parents=True)
    shutil.copy(MINI_NIX, directory / "mini.nix")
    args = "{ self" + "".join(f", {i}" for i in inputs.split()) + " }"
    decl = "".join(f' inputs.{i}.url = "github:x/{i}";' for i in inputs.split())
    (directory / "flake.nix").write_text(
        f"{{{decl}\n  outputs = {args}:\n"
        '    let mini = import ./mini.nix { system = "x86_64-linux"; }; ' + outputs_let + "\n"
        f"    in {{ devShells.x86_64-linux.default = mini.mkShell {shell_attrs}; }};\n}}\n"
    )
    return NixSource("flake", str(directory))


def failure(nix: str, source: NixSource, env: dict[str, str] | None = None):
    with pytest.raises(nixmod.NixEvaluationError) as info:
        nixmod.print_dev_env(nix, source, env=env)
    return info.value


def newer(nix: str) -> bool:
    """Nix >= 2.13 prints `error:`, a short `… while` trace with places, the message last
    ("Error traces have been reworked", doc/manual release notes rl-2.13.md); 2.8 prints only
    `error: MESSAGE` (with `(use '--show-trace' ...)`), so no place for an evaluation error."""
    return nixmod.nix_release(nix).numbers >= (2, 13)


def test_throw_in_shell_nix(nix, tmp_path):
    """The summary is Nix's message with the file (and on >= 2.2x the line its trace points
    at), not the bare `error:` that heads 2.2x's trace; the trace stays in the details."""
    source = shell_nix(
        tmp_path / "p", 'let mini = import ./mini.nix {};\nin mini.mkShell { X = throw "boom"; }\n'
    )
    error = failure(nix, source)
    assert error.cause == "evaluation"
    expected = "shell.nix: boom at line 2" if newer(nix) else "shell.nix: boom"
    assert error.message == expected
    assert "--show-trace" in error.hint and "nix-shell" in error.hint
    assert "error: boom" in error.details
    assert "restart" not in str(error)


def test_syntax_error_names_file_and_line(nix, tmp_path):
    source = shell_nix(
        tmp_path / "p", "let mini = import ./mini.nix {};\nin mini.mkShell {\n  X = = 1;\n}\n"
    )
    error = failure(nix, source)
    assert error.cause == "syntax"
    assert error.message == "shell.nix: syntax error, unexpected '=' at line 3"
    assert "syntax error" in error.hint


def test_syntax_error_in_a_flake_names_the_project_file_not_the_store_copy(nix, tmp_path):
    """Nix < 2.3x points into the flake's store copy (/nix/store/...-source/flake.nix)."""
    source = flake(tmp_path / "f", "", "{ X = ; }")
    git_track(tmp_path / "f")
    error = failure(nix, source)
    assert error.message == "flake.nix: syntax error, unexpected ';' at line 4"


def test_missing_nixpkgs(nix, tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NIX_PATH", "")
    source = shell_nix(tmp_path / "p", "with import <nixpkgs> {}; mkShell {}\n")
    error = failure(nix, source)
    assert error.cause == "nix-path"
    assert error.message.startswith(
        "shell.nix imports <nixpkgs>, but the Jupyter server's NIX_PATH"
    )
    assert "nix-channel --add" in error.hint


def test_untracked_file_of_a_flake_in_a_subdirectory(nix, tmp_path):
    """2.8: "getting status of '/nix/store/...-source/sub/mini.nix': No such file"; 2.26:
    "path '...' does not exist"; 2.34: "Path 'sub/mini.nix' in the repository ... is not
    tracked by Git": one cause, one fix, with the path in the repository."""
    repo = tmp_path / "repo"
    source = flake(repo / "sub", "", "{ }")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "sub/flake.nix"], check=True)
    error = failure(nix, source)
    assert error.cause == "untracked"
    assert error.message.startswith("mini.nix is not tracked by git")
    assert f"git -C {repo} add --intent-to-add sub/mini.nix" in error.hint


def test_untracked_flake_nix_is_found_before_nix_runs(nix, tmp_path):
    source = flake(tmp_path / "f", "", "{ }")
    subprocess.run(["git", "init", "-q", str(tmp_path / "f")], check=True)
    error = failure(nix, source)
    assert error.message.startswith("flake.nix is not tracked by git")
    assert "git add --intent-to-add flake.nix" in error.hint


def test_flake_input_not_in_the_store_offline(nix, tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A locked `github:x/foo` input that is not in the store: Nix must download it, and this
    machine is offline. The cause is the network, not the Nix file."""
    monkeypatch.setenv("NIX_CONFIG", os.environ["NIX_CONFIG"] + "download-attempts = 1\n")
    source = flake(tmp_path / "f", "", '{ FOO = "${foo}"; }', inputs="foo")
    nar_hash = "sha256-" + base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    (tmp_path / "f" / "flake.lock").write_text(
        '{"nodes": {"foo": {"locked": {"lastModified": 1700000000, "narHash": "' + nar_hash + '", '
        '"owner": "x", "repo": "foo", "rev": "0123456789012345678901234567890123456789", '
        '"type": "github"}, "original": {"owner": "x", "repo": "foo", "type": "github"}}, '
        '"root": {"inputs": {"foo": "foo"}}}, "root": "root", "version": 7}\n'
    )
    git_track(tmp_path / "f")
    error = failure(nix, source)
    assert error.cause == "network"
    assert (
        error.message.startswith("Nix needs the network") and "unable to download" in error.message
    )
    assert "nix flake archive" in error.hint


def test_failing_builder_gives_the_end_of_its_log(nix, tmp_path):
    source = shell_nix(
        tmp_path / "p",
        "let mini = import ./mini.nix {};\n"
        '  bad = derivation { name = "bad"; system = builtins.currentSystem;\n'
        '    builder = "/bin/bash";\n'
        '    args = [ "-c" "echo compiling; echo >&2 oops it failed; exit 3" ]; };\n'
        "in mini.mkShell { packages = [ bad ]; }\n",
    )
    error = failure(nix, source)
    assert error.cause == "build"
    assert error.message == "Building bad failed (exit code 3): oops it failed"
    assert "nix log /nix/store/" in error.hint
    assert "> compiling" in error.details


def test_daemon_not_running(nix, tmp_path):
    source = shell_nix(
        tmp_path / "p", f"let mini = import ./mini.nix {{}};\nin {shell_expr(DEFAULT_SHELL)}\n"
    )
    env = {**os.environ, "NIX_REMOTE": "daemon", "NIX_DAEMON_SOCKET_PATH": str(tmp_path / "socket")}
    error = failure(nix, source, env)
    assert error.cause == "daemon"
    assert error.message.startswith("Nix cannot use its daemon: cannot connect to socket at")
    assert "systemctl start nix-daemon" in error.hint


def test_flake_without_the_asked_shell(nix, tmp_path):
    project = write_flake(tmp_path / "f", {"other": DEFAULT_SHELL})
    error = failure(nix, NixSource.flake_shell(str(project), "default"))
    assert error.cause == "attribute"
    assert error.message == f"The flake {project} has no default dev shell."


def test_fallback_kernel_evalue_is_the_cause(nix, projects, manager_factory, kernel_runner):
    """Clients that show `ename: evalue` print the cause, not `Project: /path`; the kernel's
    text adds the project and "Then restart the kernel" (there is a kernel)."""
    shell_nix(
        projects / "p", "let mini = import ./mini.nix {};\nin mini.mkShell {\n  X = = 1;\n}\n"
    )
    manager = manager_factory(project_dirs=[str(projects)])
    (target,) = manager.targets()
    run = kernel_runner(manager, target.name, "1", projects / "p")
    (error,) = run.errors
    assert error["evalue"] == "shell.nix: syntax error, unexpected '=' at line 3"
    assert f"Project: {projects / 'p'}" in run.error_text
    assert "Then restart the kernel." in run.error_text


# -- captured text: what this machine's Nix versions print only in set-ups the tests do not make


def explain(lines: str, source: NixSource | None = None) -> nixerrors.Explained:
    source = source or NixSource("file", "/p/shell.nix")
    return nixerrors.explain(source, lines.splitlines(), 1)


@pytest.mark.parametrize(
    "stderr",
    [
        # Nix 2.8, an ordinary user, no daemon running (auto store, socket dir root:nix-users
        # 0770); the issue's report.
        "error: getting status of /nix/var/nix/daemon-socket/socket: Permission denied",
        # Nix 2.34, the same.
        'error: getting status of "/nix/var/nix/daemon-socket/socket": Permission denied',
        # Nix 2.8, NIX_REMOTE=daemon, a user outside the socket's group.
        "error: cannot connect to socket at '/nix/var/nix/daemon-socket/socket': Permission denied",
        # Nix 2.34, the same: the message last, after a trace.
        "error:\n       … while calling the 'toFile' builtin\n         at «string»:1:1:\n\n"
        "       error: cannot connect to socket at '/s/socket': Permission denied",
    ],
)
def test_daemon_permission_denied_names_the_group_fix(stderr):
    explained = explain(stderr)
    assert explained.cause == "daemon"
    assert explained.summary.startswith("Nix cannot use its daemon:")
    assert "Permission denied" in explained.summary
    assert "nix-users" in explained.hint and "allowed-users" in explained.hint


def test_daemon_refusing_the_user_names_allowed_users():
    """A daemon with `allowed-users = root` (checked with 2.8's and 2.34's nix-daemon on a
    private socket) closes the connection; the client says only 'reset by peer'."""
    explained = explain(
        "error: cannot open connection to remote store 'daemon': error: reading from file: "
        "Connection reset by peer"
    )
    assert explained.cause == "daemon" and "allowed-users" in explained.hint


def test_experimental_feature_a_project_needs():
    explained = explain(
        "error: experimental Nix feature 'pipe-operators' is disabled; add "
        "'--extra-experimental-features pipe-operators' to enable it",
        NixSource("flake", "/p"),
    )
    assert explained.cause == "feature"
    assert explained.summary.startswith(
        "flake.nix needs Nix's experimental feature 'pipe-operators'"
    )
    assert "nix_args" in explained.hint


def test_build_failure_of_nix_2_34_layout_skips_the_consequence():
    """Nix 2.34: the package's "Cannot build ... Reason: builder failed", then the shell's
    "Reason: 1 dependency failed"; the first is the cause."""
    explained = explain(
        "building '/nix/store/fggmidadxzs94k61img0c0600fhi785b-bad.drv'...\n"
        "error: Cannot build '/nix/store/fggmidadxzs94k61img0c0600fhi785b-bad.drv'.\n"
        "       Reason: builder failed with exit code 3.\n"
        "       Last 2 log lines:\n       > compiling\n       > oops it failed\n"
        "error: Cannot build '/nix/store/b5m5adk6z4i4y39zchswcysg9p3s55mn-shell-env.drv'.\n"
        "       Reason: 1 dependency failed.\n"
    )
    assert explained.summary == "Building bad failed (exit code 3): oops it failed"
