"""Discovery and naming: which directories are projects, and what their kernels are called.
File system only: these tests need no Nix."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nixkernel import discovery
from nixkernel.describe import describe, kernel_name, slugify
from nixkernel.discovery import discover

NAME_RE = re.compile(r"^[a-z0-9._-]+$")


def touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def make_venv(path: Path, cfg: str = "home = /usr/bin\n") -> Path:
    touch(path / "pyvenv.cfg", cfg)
    (path / "bin").mkdir(exist_ok=True)
    os.symlink(sys.executable, path / "bin" / "python")
    return path


def paths(projects) -> list[str]:
    return [p.path for p in projects]


def test_finds_flakes_shell_nix_and_venvs(tmp_path: Path) -> None:
    touch(tmp_path / "a" / "flake.nix")
    touch(tmp_path / "b" / "shell.nix")
    make_venv(tmp_path / "c" / ".venv")
    touch(tmp_path / "d" / "README.md")  # not a project
    found = {Path(p.path).name: p for p in discover([str(tmp_path)])}
    assert sorted(found) == ["a", "b", "c"]
    assert found["a"].flake and not found["a"].shell_nix
    assert found["b"].shell_nix
    assert found["c"].venv == str(tmp_path / "c" / ".venv")


def test_depth_is_bounded(tmp_path: Path) -> None:
    touch(tmp_path / "1" / "2" / "3" / "flake.nix")
    touch(tmp_path / "1" / "2" / "3" / "4" / "shell.nix")
    assert [Path(p).name for p in paths(discover([str(tmp_path)], max_depth=3))] == ["3"]
    assert len(discover([str(tmp_path)], max_depth=4)) == 2
    assert discover([str(tmp_path)], max_depth=2) == []


@pytest.mark.parametrize(
    "pruned", [".git", "node_modules", ".direnv", "result", "result-dev", "__pycache__", ".hidden"]
)
def test_pruned_directories_are_not_searched(tmp_path: Path, pruned: str) -> None:
    touch(tmp_path / pruned / "p" / "flake.nix")
    touch(tmp_path / "real" / "flake.nix")
    assert [Path(p).name for p in paths(discover([str(tmp_path)]))] == ["real"]


def test_inside_of_virtualenvs_is_not_searched(tmp_path: Path) -> None:
    venv = make_venv(tmp_path / "proj" / ".venv")
    touch(venv / "lib" / "site-packages" / "pkg" / "shell.nix")
    other = make_venv(tmp_path / "env")  # a venv not called .venv: still not descended into
    touch(other / "x" / "flake.nix")
    assert paths(discover([str(tmp_path)])) == [str(tmp_path / "proj")]


def test_symlink_loop_terminates_and_lists_once(tmp_path: Path) -> None:
    touch(tmp_path / "p" / "flake.nix")
    os.symlink(tmp_path, tmp_path / "p" / "loop")
    os.symlink(tmp_path / "p", tmp_path / "alias")
    # Listed once, under its real path, not under the link nor through the loop.
    assert paths(discover([str(tmp_path)], max_depth=10)) == [str(tmp_path / "p")]


def test_unreadable_directory_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, who can read anything: simulate the permission error scandir raises.
    touch(tmp_path / "secret" / "inner" / "flake.nix")
    touch(tmp_path / "open" / "flake.nix")
    real_scandir = os.scandir

    def scandir(path):
        if os.fspath(path) == str(tmp_path / "secret"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(discovery.os, "scandir", scandir)
    assert paths(discover([str(tmp_path)])) == [str(tmp_path / "open")]


def test_missing_root_is_not_fatal(tmp_path: Path) -> None:
    touch(tmp_path / "p" / "shell.nix")
    assert paths(discover([str(tmp_path / "nope"), str(tmp_path)])) == [str(tmp_path / "p")]


def test_names_are_valid_stable_and_independent_of_order(tmp_path: Path) -> None:
    for name in ["b", "a", "Ünïcode proj", 'with space\'s "quotes"', "x" * 200]:
        touch(tmp_path / name / "flake.nix")
    first = [t.name for p in discover([str(tmp_path)]) for t in describe(p)]
    # More projects appear: the existing ones keep their names.
    touch(tmp_path / "0-new" / "flake.nix")
    second = {t.name for p in discover([str(tmp_path)]) for t in describe(p)}
    assert set(first) <= second
    assert all(NAME_RE.match(n) for n in second), second
    # The same in a fresh interpreter (no hash randomisation or ordering involved).
    code = (
        "import sys; from nixkernel.discovery import discover; from nixkernel.describe import "
        "describe; print('\\n'.join(t.name for p in discover([sys.argv[1]]) for t in describe(p)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True
    )
    assert set(out.stdout.split()) == second


def test_same_directory_name_in_two_places_gives_distinct_names(tmp_path: Path) -> None:
    touch(tmp_path / "work" / "api" / "flake.nix")
    touch(tmp_path / "home" / "api" / "flake.nix")
    targets = [t for p in discover([str(tmp_path)]) for t in describe(p)]
    assert len({t.name for t in targets}) == 2
    assert {t.display_name for t in targets} == {"api (flake)"}


def test_name_depends_on_path_and_shell_only() -> None:
    # Pinned values: notebooks store kernel names, so a change to how names are made (the
    # hash's input, its length, the slug) would orphan every notebook that names one.
    assert kernel_name("/p/api", "flake", "default") == "nix-api-flake-751d837a21"
    assert kernel_name("/p/api", "shell.nix") == "nix-api-shell.nix-2a1ff837e0"
    assert kernel_name("/p/api", "flake", "docs") != kernel_name("/p/api", "flake", "default")
    assert kernel_name("/p/api", "flake") != kernel_name("/q/api", "flake")
    assert kernel_name("/p/api", "flake", "docs").startswith("nix-api-flake-docs-")


@pytest.mark.parametrize("text", ["", "..", "---", "日本語", "a/b", "A B", "x" * 100])
def test_slugs_are_kernel_name_safe(text: str) -> None:
    slug = slugify(text)
    assert NAME_RE.match(slug) and len(slug) <= 32


def test_flake_with_venv_gives_venv_python_inside_the_shell(tmp_path: Path) -> None:
    touch(tmp_path / "api" / "flake.nix")
    make_venv(tmp_path / "api" / ".venv", "home = /usr/bin\nuv = 0.5.0\n")
    (project,) = discover([str(tmp_path)])
    (target,) = describe(project)
    assert target.kind == "flake" and target.venv == str(tmp_path / "api" / ".venv")
    assert target.display_name == "api (flake + uv .venv)"
    # Without venvs, the flake kernel runs the shell's own Python.
    (plain,) = describe(project, include_venvs=False)
    assert plain.venv is None and plain.display_name == "api (flake)"


def test_enclosing_project_is_the_nearest_one_above(tmp_path: Path) -> None:
    touch(tmp_path / "outer" / "shell.nix")
    touch(tmp_path / "outer" / "inner" / "flake.nix")
    (tmp_path / "outer" / "inner" / "notebooks" / "deep").mkdir(parents=True)
    found = discovery.find_enclosing_project(
        str(tmp_path / "outer" / "inner" / "notebooks" / "deep")
    )
    assert found is not None and found.path == str(tmp_path / "outer" / "inner") and found.flake


def test_enclosing_project_stops_at_a_git_boundary(nix: str, tmp_path: Path) -> None:
    """`nix develop` in a repository without a flake.nix does not take one from above the
    repository (flakeref.cc: "is not part of a flake", 2.4 to 2.34); nor does the
    project-following kernel take a project from above a repository's root."""
    touch(tmp_path / "flake.nix", "{ outputs = { self }: { }; }")
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    notebooks = repo / "notebooks"
    notebooks.mkdir()
    assert discovery.find_enclosing_project(str(notebooks)) is None
    refused = subprocess.run(
        [nix, "develop", "-c", "true"], cwd=notebooks, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "not part of a flake" in refused.stderr
    # A repository that is itself the project is found, .git and all.
    touch(repo / "shell.nix")
    found = discovery.find_enclosing_project(str(notebooks))
    assert found is not None and found.path == str(repo)


def test_enclosing_project_stops_at_a_file_system_boundary(nix: str, tmp_path: Path) -> None:
    """`nix develop` stops searching up at the first directory on another file system than
    where it started that holds no flake.nix ("unable to find a flake before encountering
    filesystem boundary", flakeref.cc 2.4 to 2.34: flake.nix and .git are looked for before
    the device is compared, so the directory a file system is mounted in still counts). The
    project-following kernel stops at the same place. Checked in a private mount namespace,
    with a tmpfs mounted two levels below a flake."""
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "--mount", "true"], capture_output=True)
    if unshare is None or probe.returncode != 0:
        pytest.skip("no private mount namespace here (unshare --mount)")
    touch(tmp_path / "flake.nix", "{ outputs = { self }: { }; }")
    mount = tmp_path / "data" / "mnt"
    mount.mkdir(parents=True)
    code = (
        "from nixkernel.discovery import find_enclosing_project as f; "
        f"print(f({str(mount / 'nb')!r}), f({str(mount / 'nb')!r}) == f({str(mount)!r}))"
    )
    script = (
        f"mount -t tmpfs tmpfs {mount} && mkdir {mount}/nb && "
        f"{sys.executable} -c {shlex.quote(code)} && cd {mount}/nb && {nix} develop -c true"
    )
    result = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True, text=True, cwd=Path(discovery.__file__).parent.parent,
    )  # fmt: skip
    assert result.stdout.strip() == "None True", result.stderr
    assert result.returncode != 0 and "filesystem boundary" in result.stderr
    # Without the mount, the same directory is inside the flake.
    (mount / "nb").mkdir()
    found = discovery.find_enclosing_project(str(mount / "nb"))
    assert found is not None and found.path == str(tmp_path)
