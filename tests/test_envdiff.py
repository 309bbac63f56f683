"""The contract, executable: a kernel's ``os.environ`` is what ``nix develop -c`` (flakes) or
``nix-shell --run`` (shell.nix) gives a command, run in the same directory with the same server
environment and the same Nix, but for the allowed differences that docs/nix-semantics.md lists
(the test reads that table: a difference it does not name fails)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from nixprojects import PYTHON, Raw, git_track, write_flake, write_shell_nix

from nixkernel.devshell import hash_placeholder
from nixkernel.nix import nix_version

DOC = Path(__file__).parent.parent / "docs" / "nix-semantics.md"
KINDS_OF_DIFFERENCE = {"value", "any", "server-only", "cwd-entries"}

#: A stdenv like nixpkgs' in what matters here: a runHook that runs the `shellHooks` array, setup
#: that computes values from `$out` (rewritten by nix develop, the real path under nix-shell), a
#: non-exported variable and an array over names the server exports, and nixpkgs' export of the
#: outputs of a structured-attrs derivation.
FIDELITY_STDENV = r"""
  fidelityStdenv = derivation {
    name = "fidelity-stdenv"; system = "x86_64-linux"; builder = "/bin/bash";
    PATH = "/usr/bin:/bin";
    args = [ "-c" ''
      mkdir -p $out
      cat > $out/setup <<'SETUP'
      _eval() { if declare -F "$1" > /dev/null 2>&1; then "$@"; else eval "$1"; fi; }
      _callImplicitHook() {
        if declare -F "$2" > /dev/null; then "$2"; elif [ -n "''${!2:-}" ]; then eval "''${!2}"; fi
      }
      runHook() {
        local hookName="$1"; shift; local hooksSlice="''${hookName%Hook}Hooks[@]"; local hook
        for hook in "_callImplicitHook 0 $hookName" ''${!hooksSlice+"''${!hooksSlice}"}; do
          _eval "$hook" "$@"
        done
        return 0
      }
      if [[ "$(declare -p outputs 2> /dev/null)" == "declare -A"* ]]; then
        for o_ in "''${!outputs[@]}"; do export "$o_=''${outputs[$o_]}"; done; unset o_
      fi
      if [ "''${PATH:-}" = /path-not-set ]; then PATH=; fi
      for pkg_ in ''${packages[@]}; do
        if [ -d "$pkg_/bin" ]; then PATH="$pkg_/bin''${PATH:+:$PATH}"; fi
      done
      unset pkg_; export PATH
      export NIX_LDFLAGS="-rpath $out/lib''${NIX_LDFLAGS:+ $NIX_LDFLAGS}"
      prefix="$out"
      SERVER_EXPORTED=from-setup
      declare -a ARRAY_OVER=(x y)
      shellHooks+=('export FROM_SHELL_HOOKS=1')
      SETUP
      exit 0
    '' ];
  };
"""

SHELL = {
    "GREETING": "hello from the dev shell",
    "packages": [PYTHON],
    "stdenv": Raw("fidelityStdenv"),
    "shellHook": 'export HOOK_RAN_IN="$PWD" HOOK_SAW_OUT="$out"',
}

#: A `<nixpkgs>` whose only package is the bashInteractive nix-shell looks for.
FAKE_NIXPKGS = """{ ... }: {
  bashInteractive = derivation {
    name = "bash-interactive"; system = builtins.currentSystem; builder = "/bin/bash";
    PATH = "/usr/bin:/bin";
    args = [ "-c" "mkdir -p $out/bin && ln -s /bin/bash $out/bin/bash; exit 0" ];
  };
}
"""

FIXTURES = [
    "flake",
    "shell.nix",
    "shell.nix+bashInteractive",
    "flake+structured",
    "shell.nix+structured",
]

DUMP = "import os, json; print(json.dumps(dict(os.environ)))"


def allowed_differences() -> dict[str, str]:
    """``{variable pattern: kind of difference}`` from docs/nix-semantics.md's table."""
    text = DOC.read_text()
    section = text.split("## Allowed differences", 1)[1]
    allowed: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        assert cells[1] in KINDS_OF_DIFFERENCE, f"unknown kind of difference {cells[1]!r}"
        for name in re.findall(r"`([^`]+)`", cells[0]):
            allowed[name] = cells[1]
    return allowed


def _without_cwd_entries(path: str) -> list[str]:
    return [p for p in path.split(":") if p not in ("", ".")]


def differences(kernel: dict[str, str], reference: dict[str, str]) -> list[str]:
    allowed = allowed_differences()
    found = []
    for name in sorted(set(kernel) | set(reference)):
        ours, theirs = kernel.get(name), reference.get(name)
        if ours == theirs:
            continue
        rule = next((k for pat, k in allowed.items() if fnmatch.fnmatchcase(name, pat)), None)
        if rule == "any":
            continue
        if rule == "value" and ours is not None and theirs is not None:
            continue
        if rule == "server-only" and ours is None:
            continue
        if (
            rule == "cwd-entries"
            and ours is not None
            and theirs is not None
            and _without_cwd_entries(ours) == _without_cwd_entries(theirs)
        ):
            continue
        found.append(f"{name}: kernel {ours!r}, nix {theirs!r}")
    return found


def make_fixture(fixture: str, directory: Path) -> Path:
    structured = {"__structuredAttrs": True} if fixture.endswith("+structured") else {}
    attrs = {**SHELL, **structured}
    if fixture.startswith("flake"):
        project = write_flake(directory, {"default": attrs}, git=False, let=FIDELITY_STDENV)
        git_track(project)
        return project
    return write_shell_nix(directory, attrs, let=FIDELITY_STDENV)


def reference_environment(nix: str, fixture: str, project: Path) -> subprocess.CompletedProcess:
    if fixture.startswith("flake"):
        argv = [nix, "develop", "-c", "env", "-0"]
    else:
        argv = [os.path.join(os.path.dirname(nix), "nix-shell"), "--run", "env -0"]
    return subprocess.run(argv, cwd=project, capture_output=True, timeout=600, env=os.environ)


def parse_env0(output: bytes) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in output.decode().split("\0") if item)
    return {name: value for name, value in pairs}


@pytest.fixture
def server_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What the Jupyter server's environment holds that the rules act on."""
    monkeypatch.setenv("SERVER_EXPORTED", "from-the-server")  # a shell variable replaces it
    monkeypatch.setenv("ARRAY_OVER", "from-the-server")  # an array of the shell drops it
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "server-site"))  # the server's Python's
    monkeypatch.setenv("TZ", "Europe/Paris")  # nix-shell puts the caller's back after the hook
    monkeypatch.setenv("SHELL", "/bin/bash")
    monkeypatch.setenv("SHLVL", "3")
    monkeypatch.setenv("OLDPWD", str(tmp_path))
    monkeypatch.delenv("NIX_BUILD_SHELL", raising=False)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_kernel_environment_is_what_nix_gives(
    nix, fixture, projects, manager_factory, kernel_runner, server_environment, monkeypatch
):
    """For each fixture, on the running Nix: the kernel's os.environ against `nix develop -c env
    -0` / `nix-shell --run 'env -0'`, in the project, with the same server environment. Each
    version's rules (docs/nix-semantics.md) make the expectation: e.g. `name` is `shell-env`
    under nix develop >= 2.13 and `shell` before and under nix-shell; `TMPDIR` is a directory
    per call under nix-shell >= 2.25 and the caller's before."""
    version = tuple(int(p) for p in re.findall(r"\d+", nix_version(nix))[:2])
    if fixture.endswith("+bashInteractive"):
        nixpkgs = projects / "nixpkgs"
        nixpkgs.mkdir()
        (nixpkgs / "default.nix").write_text(FAKE_NIXPKGS)
        monkeypatch.setenv("NIX_PATH", f"nixpkgs={nixpkgs}")
    project = make_fixture(fixture, projects / "fidelity")
    manager = manager_factory(project_dirs=[str(project)])
    (target,) = [t for t in manager.targets() if t.kind != "auto"]

    reference = reference_environment(nix, fixture, project)
    run = kernel_runner(manager, target.name, DUMP, cwd=project)

    assert reference.returncode == 0, reference.stderr.decode()[-3000:]
    assert not run.errors, run.error_text
    kernel = json.loads(run.stdout.strip().splitlines()[-1])
    theirs = parse_env0(reference.stdout)
    found = differences(kernel, theirs)
    assert not found, "\n".join(found)
    # The fixture exercised what it is for.
    assert theirs["HOOK_RAN_IN"] == str(project)
    assert theirs["SERVER_EXPORTED"] == "from-setup" and "ARRAY_OVER" not in theirs
    assert ("FROM_SHELL_HOOKS" in theirs) == fixture.startswith("shell.nix")
    if fixture.endswith("+structured"):
        assert "name" not in theirs  # an attribute in .attrs.sh, not an exported variable
    elif fixture.startswith("flake"):
        assert theirs["name"] == ("shell-env" if version >= (2, 13) else "shell")
    else:
        assert theirs["name"] == "shell"
    if fixture.startswith("flake"):
        assert theirs["NIX_LDFLAGS"].startswith(f"-rpath {project}/outputs/out/lib")
    elif fixture.endswith("+structured"):
        # nix-shell's .attrs files hold placeholders for the outputs (prepareStructuredAttrs).
        assert theirs["out"] == hash_placeholder("out")
    else:
        assert theirs["NIX_LDFLAGS"].startswith("-rpath /nix/store/")
        assert theirs["out"].startswith("/nix/store/") and not theirs["out"].endswith("-env")
    if fixture.endswith("+bashInteractive"):
        assert theirs["SHELL"].endswith("-bash-interactive/bin/bash")


def test_allowed_differences_table_is_read() -> None:
    """The table the test uses is the documented one, with known kinds of difference."""
    allowed = allowed_differences()
    assert allowed["TMPDIR"] == "value" and allowed["PATH"] == "cwd-entries"
    assert allowed["PYTHONPATH"] == "server-only"
    assert set(allowed.values()) <= KINDS_OF_DIFFERENCE
