"""Turning `nix print-dev-env --json` output into a kernel's environment, as `nix develop` does."""

from __future__ import annotations

import os
import subprocess
import sys

from nixkernel.environment import (
    SANDBOX_VARIABLES,
    exported_variables,
    kernel_environment,
    rc_script,
)

DEV_ENV = {
    "bashFunctions": {"greet": ' echo "hi $1"'},
    "variables": {
        "GREETING": {"type": "exported", "value": "hello"},
        "PATH": {"type": "exported", "value": "/nix/store/aaa-py/bin"},
        "XDG_DATA_DIRS": {"type": "exported", "value": "/nix/store/aaa-py/share"},
        "HOME": {"type": "exported", "value": "/homeless-shelter"},
        "TMPDIR": {"type": "exported", "value": "/tmp/nix-build-x"},
        "NIX_BUILD_TOP": {"type": "exported", "value": "/tmp/nix-build-x"},
        "NIX_LOG_FD": {"type": "exported", "value": "2"},
        "localVar": {"type": "var", "value": "not exported"},
        "arr": {"type": "array", "value": ["a b", "c"]},
        "assoc": {"type": "associative", "value": {"k": "v w"}},
        "shellHook": {
            "type": "exported",
            "value": 'export FROM_HOOK="$localVar ${arr[0]}"; greet x',
        },
    },
}


def test_only_exported_non_sandbox_variables() -> None:
    exported = exported_variables(DEV_ENV)
    assert exported["GREETING"] == "hello"
    assert "localVar" not in exported and "arr" not in exported
    assert not set(exported) & SANDBOX_VARIABLES
    assert "NIX_BUILD_TOP" not in exported and "HOME" not in exported


def test_paths_are_prepended_and_server_python_variables_dropped() -> None:
    server = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/me",
        "PYTHONPATH": "/server/site",
        "PYTHONHOME": "/server",
        "VIRTUAL_ENV": "/server/venv",
        "LD_LIBRARY_PATH": "/server/lib",
        "JPY_SESSION_NAME": "nb.ipynb",
    }
    env = kernel_environment(exported_variables(DEV_ENV), server)
    assert env["PATH"] == "/nix/store/aaa-py/bin:/usr/bin:/bin"
    assert env["XDG_DATA_DIRS"] == "/nix/store/aaa-py/share"
    assert env["HOME"] == "/home/me" and env["JPY_SESSION_NAME"] == "nb.ipynb"
    for leaked in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH"):
        assert leaked not in env


def test_shell_values_win_over_server_values() -> None:
    shell = {"LD_LIBRARY_PATH": "/nix/store/zlib/lib", "PYTHONPATH": "/nix/store/site"}
    env = kernel_environment(shell, {"LD_LIBRARY_PATH": "/x", "PYTHONPATH": "/y"})
    assert env["LD_LIBRARY_PATH"] == "/nix/store/zlib/lib"
    assert env["PYTHONPATH"] == "/nix/store/site"


def test_empty_shell_path_does_not_add_the_current_directory() -> None:
    # nix develop turns an empty shell PATH into ":..." (the cwd on PATH); we don't.
    env = kernel_environment({"PATH": ""}, {"PATH": "/usr/bin"})
    assert env["PATH"] == "/usr/bin"


def test_venv_comes_first() -> None:
    env = kernel_environment({"PATH": "/nix/store/a/bin"}, {"PATH": "/usr/bin"}, venv="/p/.venv")
    assert env["PATH"] == "/p/.venv/bin:/nix/store/a/bin:/usr/bin"
    assert env["VIRTUAL_ENV"] == "/p/.venv"


def test_rc_script_runs_the_hook_with_shell_state_then_execs() -> None:
    script = rc_script(DEV_ENV)
    env = kernel_environment(exported_variables(DEV_ENV), {"PATH": "/usr/bin:/bin"})
    out = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", script, "nixkernel-shell",
         "bash", "-c", 'echo "$FROM_HOOK|${localVar:-unset}|$GREETING"'],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    # The hook saw the non-exported variable, the array and the function; the exec'd process
    # got the hook's export but not the shell-only variable.
    assert out.stdout == "hi x\nnot exported a b|unset|hello\n"


def test_which_finds_executables_on_the_given_path_only(tmp_path) -> None:
    from nixkernel.environment import which

    (tmp_path / "bin").mkdir()
    tool = tmp_path / "bin" / "tool"
    tool.write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "data").write_text("")  # not executable
    tool.chmod(0o755)
    assert which("tool", f"/nonexistent::{tmp_path / 'bin'}") == str(tool)
    assert which("data", str(tmp_path / "bin")) is None
    assert which("tool", "") is None  # an empty entry is not the current directory
    assert which(str(tool)) == str(tool)


def test_launcher_imports_only_the_standard_library_and_no_heavy_modules() -> None:
    """The launcher runs (with python -S) on every kernel start: nothing outside the standard
    library, none of the modules only a cache miss needs, and not dataclasses (it imports
    inspect: about 19 ms, where typing.NamedTuple costs about 6)."""
    import nixkernel

    parent = os.path.dirname(os.path.dirname(nixkernel.__file__))
    code = (
        f"import sys; sys.path[0] = {parent!r}; from nixkernel import launch; "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('jupyter_client', 'traitlets', 'platformdirs', 'dataclasses', 'inspect', 'subprocess', "
        "'shutil', 'tempfile', 'platform', 'zmq'))))"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
