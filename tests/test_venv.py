"""uv virtualenvs as kernels, and the NixOS missing-library problem, with real uv and real Nix.

The situation this reproduces: a wheel's C extension needs a shared library that the system does
not have in a standard place (on NixOS: libstdc++, zlib... live only in the Nix store). Here the
library is ``libnkdemo.so``, built in the Nix store with ``mini.cLibrary``, and the "wheel" is
``nkext``, a C extension compiled into a uv venv against it *without an rpath*. A plain venv
kernel cannot import it ("cannot open shared object file"); nixkernel's kernel of the project
(venv + the flake/shell that provides the library, or venv + the configured library shell) can.

Expensive parts are made once: the library (Nix build, per module), and a template venv with
ipykernel and ``nkext`` (per session) that each test project gets a hard-linked copy of.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import find_target, require, run_in_kernel
from jupyter_client.kernelspec import KernelSpecManager
from nixprojects import DEFAULT_SHELL, MINI_NIX, Raw, nix_value, write_flake, write_shell_nix

from nixkernel.describe import NixSource

SYSTEM = "x86_64-linux"
LIB_NAME = "nkdemo"
LIB_SOURCE = "int nk_answer(void) { return 42; }"
#: The Nix binding every test shell uses for the library (same derivation = same store path).
LIB_LET = f"nkdemo = mini.cLibrary {nix_value(LIB_NAME)} {nix_value(LIB_SOURCE)};"
#: Shell attributes that provide the library the way a nixpkgs shell provides zlib.
LIB_ATTRS = {
    "LD_LIBRARY_PATH": Raw('"${nkdemo}/lib"'),
    "NKDEMO_LIB": Raw('"${nkdemo}"'),
}

EXTENSION_SOURCE = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>

int nk_answer(void);  /* from libnkdemo.so */

static PyObject *answer(PyObject *self, PyObject *unused) {
    return PyLong_FromLong(nk_answer());
}

static PyMethodDef methods[] = {
    {"answer", answer, METH_NOARGS, "The answer, from libnkdemo.so."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "nkext", NULL, -1, methods};

PyMODINIT_FUNC PyInit_nkext(void) { return PyModule_Create(&module); }
"""

IMPORT_NKEXT = "import nkext; print('answer', nkext.answer())"
LOADER_ERROR = "libnkdemo.so: cannot open shared object file"

PROBE = (
    "import os, sys, json, shutil\n"
    "print(json.dumps({'env': {k: os.environ.get(k) for k in ('VIRTUAL_ENV', 'PYTHONPATH',"
    " 'PYTHONHOME', 'LD_LIBRARY_PATH', 'GREETING', 'HOOK_RAN_IN', 'NKDEMO_LIB')},"
    " 'path': os.environ['PATH'].split(':'), 'python3': shutil.which('python3'),"
    " 'prefix': sys.prefix, 'executable': sys.executable, 'sys_path': sys.path}))"
)


# -- the expensive parts, made once ------------------------------------------------------------


def uv_env() -> dict[str, str]:
    """uv must build venvs on this interpreter, never download one."""
    return {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}


def uv_venv(directory: Path) -> Path:
    """A real ``uv venv`` at ``directory/.venv`` on this test run's interpreter (no ipykernel)."""
    uv = require("uv")
    venv = directory / ".venv"
    subprocess.run(
        [uv, "venv", "-q", "--python", sys.executable, str(venv)],
        check=True,
        env=uv_env(),
    )
    return venv


@pytest.fixture(scope="module")
def nkdemo(nix: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The store path of libnkdemo (``$out/lib/libnkdemo.so``), built once with real Nix."""
    expr = (
        f"let mini = import {MINI_NIX} {{ system = {nix_value(SYSTEM)}; }}; "
        f"in mini.cLibrary {nix_value(LIB_NAME)} {nix_value(LIB_SOURCE)}"
    )
    result = subprocess.run(
        [nix, "build", "--no-link", "--json", "--impure", "--expr", expr],
        check=True,
        capture_output=True,
        text=True,
    )
    out = json.loads(result.stdout)[0]["outputs"]["out"]
    assert os.path.isfile(f"{out}/lib/libnkdemo.so")
    return out


@pytest.fixture(scope="module")
def template_venv(nkdemo: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A uv venv with ipykernel (really installed by uv) and ``nkext`` linked against libnkdemo
    without an rpath: the loader finds libnkdemo.so only through LD_LIBRARY_PATH."""
    gcc = require("gcc")
    uv = require("uv")
    venv = uv_venv(tmp_path_factory.mktemp("template"))
    python = str(venv / "bin" / "python")
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", python, "ipykernel"], check=True, env=uv_env()
    )
    paths = json.loads(
        subprocess.run(
            [python, "-c", "import sysconfig, json; p = sysconfig.get_paths(); print(json.dumps("
             "[p['include'], p['platlib'], sysconfig.get_config_var('EXT_SUFFIX')]))"],
            check=True, capture_output=True, text=True,
        ).stdout
    )  # fmt: skip
    include, platlib, suffix = paths
    source = venv.parent / "nkext.c"
    source.write_text(EXTENSION_SOURCE)
    target = Path(platlib) / f"nkext{suffix}"
    subprocess.run(
        [gcc, "-shared", "-fPIC", f"-I{include}", str(source),
         f"-L{nkdemo}/lib", f"-l{LIB_NAME}", "-o", str(target)],
        check=True,
    )  # fmt: skip
    dynamic = subprocess.run(["readelf", "-d", str(target)], capture_output=True, text=True).stdout
    assert "libnkdemo.so" in dynamic and "RPATH" not in dynamic and "RUNPATH" not in dynamic
    return venv


def copy_venv(template: Path, project: Path) -> Path:
    """The template venv at ``project/.venv`` (hard links: fast, and nothing edits files in
    place). Python finds its prefix from the copied pyvenv.cfg, so the copy is a venv of its own."""
    venv = project / ".venv"
    try:
        shutil.copytree(template, venv, symlinks=True, copy_function=os.link)
    except OSError:
        shutil.rmtree(venv, ignore_errors=True)
        shutil.copytree(template, venv, symlinks=True)
    return venv


def plain_kernel_manager(venv: Path, kernels: Path) -> KernelSpecManager:
    """A kernelspec the way people write one for a venv, no nixkernel: the venv's python on
    ipykernel, with the server's environment."""
    spec_dir = kernels / "nkplain"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [str(venv / "bin" / "python"), "-m", "ipykernel_launcher",
                         "-f", "{connection_file}"],
                "display_name": "plain venv",
                "language": "python",
            }
        )
    )  # fmt: skip
    return KernelSpecManager(kernel_dirs=[str(kernels)])


def probe(run, errors_expected: bool = False) -> dict:
    """What PROBE printed (its line is the last JSON line of the output)."""
    if not errors_expected:
        assert not run.errors, run.error_text
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert lines, (run.stdout, run.error_text)
    return json.loads(lines[-1])


def lib_flake(directory: Path, shell: str = "default") -> Path:
    """A flake whose dev shell provides libnkdemo on LD_LIBRARY_PATH, plus the usual test
    shell (GREETING, a python3, a shellHook)."""
    return write_flake(directory, {shell: {**DEFAULT_SHELL, **LIB_ATTRS}}, let=LIB_LET)


# -- the proof: the same venv fails plainly and works under nixkernel ---------------------------


@pytest.mark.parametrize("launch_mode", ["cached", "direct"])
def test_venv_in_flake_project_finds_the_shells_library_where_a_plain_kernel_fails(
    nix, nkdemo, template_venv, projects, tmp_path, manager_factory, launch_mode
):
    """A C extension linked against a store library without an rpath: the plain venv kernel
    fails with the loader's error; the project's nixkernel kernel (venv + flake shell providing
    the library) imports it and calls into the library."""
    project = lib_flake(projects / "api")
    venv = copy_venv(template_venv, project)  # after git add: the flake never copies the venv

    plain = run_in_kernel(plain_kernel_manager(venv, tmp_path / "kernels"), "nkplain",
                          IMPORT_NKEXT, cwd=project)  # fmt: skip
    assert plain.errors, plain.stdout
    assert LOADER_ERROR in plain.error_text

    manager = manager_factory(project_dirs=[str(projects)], launch_mode=launch_mode)
    target = find_target(manager, "flake", project=project)
    assert target.display_name == "api (flake + uv .venv)"
    assert target.venv == str(venv)
    run = run_in_kernel(manager, target.name, IMPORT_NKEXT + "\n" + PROBE, cwd=project)
    assert not run.errors, run.error_text
    assert "answer 42" in run.stdout
    info = probe(run)
    assert info["env"]["NKDEMO_LIB"] == nkdemo  # the library the extension was built against
    assert info["prefix"] == str(venv)  # the venv's Python, not the shell's python3
    assert info["python3"] == str(venv / "bin" / "python3")
    assert info["env"]["GREETING"] == "hello from the dev shell"


def test_library_shell_makes_a_venv_only_project_work(
    nix, nkdemo, template_venv, projects, tmp_path, manager_factory
):
    """venv_library_shell (a flake reference, long and short form) applies a separate flake's
    shell to a project that has only a venv; without it the same kernel fails to load."""
    libshell = write_flake(tmp_path / "libshell", {"pylibs": LIB_ATTRS}, let=LIB_LET)
    project = projects / "solo"
    project.mkdir()
    venv = copy_venv(template_venv, project)

    bare = manager_factory(project_dirs=[str(projects)])
    target = find_target(bare, "venv", project=project)
    assert target.display_name == "solo (uv .venv)"
    failed = run_in_kernel(bare, target.name, IMPORT_NKEXT, cwd=project)
    assert LOADER_ERROR in failed.error_text

    long_ref = f"{libshell}#devShells.{SYSTEM}.pylibs"
    short_ref = f"{libshell}#pylibs"
    # Both go to Nix as written: it finds `pylibs` under devShells.<system> first.
    assert NixSource.parse(short_ref) == NixSource("flake", str(libshell), "pylibs")
    assert NixSource.parse(long_ref).attr == f"devShells.{SYSTEM}.pylibs"
    for ref in (long_ref, short_ref):
        manager = manager_factory(project_dirs=[str(projects)], venv_library_shell=ref)
        target = find_target(manager, "venv", project=project)
        assert target.display_name == "solo (uv .venv + library shell)"
        # The same notebook kernel name:
        assert target.name == find_target(bare, "venv", project=project).name
        run = run_in_kernel(manager, target.name, IMPORT_NKEXT + "\n" + PROBE, cwd=project)
        assert "answer 42" in run.stdout, run.error_text
        info = probe(run)
        assert info["env"]["NKDEMO_LIB"] == nkdemo
        assert info["env"]["VIRTUAL_ENV"] == str(venv)


def test_library_shell_from_a_nix_file_and_for_the_project_following_kernel(
    nix, nkdemo, template_venv, projects, tmp_path, manager_factory
):
    """The library shell can be a plain Nix file, and it applies to the project-following kernel
    ("Python (this project)") when that kernel lands in a venv-only project."""
    libfile = write_shell_nix(tmp_path / "libfile", LIB_ATTRS, let=LIB_LET) / "shell.nix"
    project = projects / "solo"
    project.mkdir()
    copy_venv(template_venv, project)
    manager = manager_factory(project_dirs=[str(projects)], venv_library_shell=str(libfile))
    notebooks = project / "notebooks"
    notebooks.mkdir()
    for name in (find_target(manager, "venv", project=project).name, "nix-this-project"):
        run = run_in_kernel(manager, name, IMPORT_NKEXT, cwd=notebooks)
        assert "answer 42" in run.stdout, (name, run.error_text)


def test_venv_in_shell_nix_project(nix, nkdemo, template_venv, projects, manager_factory):
    """A venv inside a shell.nix project: the venv's Python runs with the shell's variables,
    its shellHook and its library path."""
    project = write_shell_nix(projects / "legacy", {**DEFAULT_SHELL, **LIB_ATTRS}, let=LIB_LET)
    venv = copy_venv(template_venv, project)
    manager = manager_factory(project_dirs=[str(projects)])
    target = find_target(manager, "shell.nix", project=project)
    assert target.display_name == "legacy (shell.nix + uv .venv)"
    run = run_in_kernel(manager, target.name, IMPORT_NKEXT + "\n" + PROBE, cwd=project)
    assert "answer 42" in run.stdout, run.error_text
    info = probe(run)
    assert info["executable"].startswith(str(venv))
    assert info["prefix"] == str(venv)
    assert info["env"]["GREETING"] == "hello from the dev shell"
    assert info["env"]["HOOK_RAN_IN"] == str(project)


def test_server_python_variables_do_not_leak_into_venv_kernels(
    nix, nkdemo, template_venv, projects, tmp_path, manager_factory, monkeypatch
):
    """The server's PYTHONPATH / PYTHONHOME / VIRTUAL_ENV / LD_LIBRARY_PATH stay with the
    server: the venv's bin is first on PATH, VIRTUAL_ENV is the venv, and the server's library
    path (which here even holds libnkdemo) is not what a kernel loads from."""
    flake_project = lib_flake(projects / "api")
    flake_venv = copy_venv(template_venv, flake_project)
    solo = projects / "solo"
    solo.mkdir()
    solo_venv = copy_venv(template_venv, solo)

    leaked = tmp_path / "server-pythonpath"
    leaked.mkdir()
    (leaked / "leaked_marker.py").write_text("")
    elsewhere = tmp_path / "server-lib"
    elsewhere.mkdir()
    # Values a real server can have: they must be valid for the server's own Python (the
    # launcher runs in it), and must not reach the kernel's.
    monkeypatch.setenv("PYTHONPATH", str(leaked))
    monkeypatch.setenv("PYTHONHOME", sys.base_prefix)
    monkeypatch.setenv("VIRTUAL_ENV", str(tmp_path / "server-venv"))
    monkeypatch.setenv("LD_LIBRARY_PATH", f"{elsewhere}:{nkdemo}/lib")

    manager = manager_factory(project_dirs=[str(projects)])
    checks = (
        "\ntry:\n    import leaked_marker\n    print('LEAKED')\nexcept ImportError:\n    pass\n"
    )

    flake_run = run_in_kernel(
        manager,
        find_target(manager, "flake", project=flake_project).name,
        PROBE + checks,
        flake_project,
    )
    info = probe(flake_run)
    assert "LEAKED" not in flake_run.stdout
    assert info["path"][0] == str(flake_venv / "bin")
    assert info["env"]["VIRTUAL_ENV"] == str(flake_venv)
    assert info["env"]["PYTHONPATH"] is None and info["env"]["PYTHONHOME"] is None
    assert str(leaked) not in info["sys_path"]
    assert info["env"]["LD_LIBRARY_PATH"] == f"{nkdemo}/lib"  # the shell's, not the server's

    solo_run = run_in_kernel(
        manager,
        find_target(manager, "venv", project=solo).name,
        PROBE + checks + IMPORT_NKEXT,
        solo,
    )
    info = probe(solo_run, errors_expected=True)
    assert "LEAKED" not in solo_run.stdout
    assert info["path"][0] == str(solo_venv / "bin")
    assert info["env"]["VIRTUAL_ENV"] == str(solo_venv)
    assert info["env"]["PYTHONPATH"] is None and info["env"]["PYTHONHOME"] is None
    assert info["env"]["LD_LIBRARY_PATH"] is None
    # Had the server's LD_LIBRARY_PATH leaked, libnkdemo would have been found.
    assert LOADER_ERROR in solo_run.error_text


# -- venvs nixkernel cannot run: explained, never repaired behind the user's back ----------------


def venv_snapshot(venv: Path) -> list[tuple[str, int, int]]:
    """Every file and directory of the venv with its mtime and size (links not followed)."""
    rows = []
    for path in sorted([venv, *venv.rglob("*")]):
        st = path.lstat()
        rows.append((str(path.relative_to(venv)), st.st_mtime_ns, st.st_size))
    return rows


def test_venv_without_ipykernel_gets_the_fallback_and_is_left_alone(nix, projects, manager_factory):
    """No ipykernel in the venv: the kernel that starts is the fallback one, telling the user to
    `uv add --dev ipykernel`; nixkernel installs nothing and the venv is unchanged."""
    project = projects / "bare"
    project.mkdir()
    venv = uv_venv(project)
    before = venv_snapshot(venv)

    manager = manager_factory(project_dirs=[str(projects)])
    target = find_target(manager, "venv", project=project)
    assert target.problem is None  # listed as a kernel: the reason shows when it starts
    run = run_in_kernel(manager, target.name, "1 + 1", cwd=project)

    assert run.implementation == "nixkernel-fallback"
    assert "uv add --dev ipykernel" in run.error_text
    assert "cannot import ipykernel" in run.error_text
    assert venv_snapshot(venv) == before
    assert not (project / "uv.lock").exists() and not (project / "pyproject.toml").exists()


def dangling_venv(project: Path) -> Path:
    """A real uv venv whose interpreter was since removed (as a garbage collection removes the
    store Python a venv was made with)."""
    venv = uv_venv(project)
    python = venv / "bin" / "python"
    python.unlink()
    python.symlink_to("/nix/store/00000000000000000000000000000000-python3-3.12.8/bin/python3.12")
    return venv


def test_venv_with_dangling_python_is_listed_with_a_problem_and_starts_the_fallback(
    nix, projects, tmp_path, manager_factory
):
    """A venv whose bin/python is a dangling link is listed with the reason (by the manager and
    `jupyter nixkernel list --json`), and starting it gives the fallback kernel with it."""
    project = projects / "broken"
    project.mkdir()
    dangling_venv(project)
    manager = manager_factory(project_dirs=[str(projects)])
    target = find_target(manager, "venv", project=project)
    assert target.problem and "does not exist" in target.problem
    assert manager.get_kernel_spec(target.name).metadata["nixkernel"]["problem"] == target.problem

    listing = subprocess.run(
        [sys.executable, "-c", "from nixkernel.cli import main; main()", "list", "--json",
         f"--cache-dir={tmp_path / 'cache'}", str(projects)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows[target.name]["problem"] == target.problem

    run = run_in_kernel(manager, target.name, "1 + 1", cwd=project)
    assert run.implementation == "nixkernel-fallback"
    assert "does not exist" in run.error_text
    assert "uv venv" in run.error_text  # how to fix it


def test_dangling_venv_in_a_flake_project_blocks_its_kernel_with_the_reason(
    nix, projects, manager_factory
):
    """The flake's kernel runs the venv's Python, so a broken venv is that kernel's problem too."""
    project = write_flake(projects / "api")
    dangling_venv(project)
    manager = manager_factory(project_dirs=[str(projects)])
    target = find_target(manager, "flake", project=project)
    assert target.display_name == "api (flake + uv .venv)"
    assert target.problem and "does not exist" in target.problem


def test_venv_python_without_its_program_loader_is_listed_with_the_nixos_fix(
    nix, projects, manager_factory
):
    """A venv on a downloaded Python (its ELF program loader, /lib64/ld-linux..., is missing, as
    on NixOS without nix-ld): listed with the reason and the fix, started as the fallback."""
    gcc = require("gcc")
    project = projects / "standalone"
    project.mkdir()
    venv = uv_venv(project)
    main_c = project / "main.c"
    main_c.write_text("int main(void) { return 0; }\n")
    foreign = project / "python3.12"
    loader = "/lib64/nixkernel-test-missing-ld-linux-x86-64.so.2"
    subprocess.run(
        [gcc, f"-Wl,--dynamic-linker={loader}", str(main_c), "-o", str(foreign)], check=True
    )
    (venv / "bin" / "python").unlink()
    (venv / "bin" / "python").symlink_to(foreign)

    manager = manager_factory(project_dirs=[str(projects)])
    target = find_target(manager, "venv", project=project)
    assert target.problem and loader in target.problem and "nix-ld" in target.problem
    run = run_in_kernel(manager, target.name, "1 + 1", cwd=project)
    assert run.implementation == "nixkernel-fallback"
    assert loader in run.error_text


def test_venv_python_that_cannot_be_executed_starts_the_fallback(nix, projects, manager_factory):
    """Whatever makes exec of the venv's Python fail (here: not executable), the launcher shows
    it in the fallback kernel instead of dying and being restarted by the server."""
    project = projects / "noexec"
    project.mkdir()
    venv = uv_venv(project)
    python = venv / "bin" / "python"
    python.unlink()
    python.write_text("#!/bin/sh\n")  # exists, but without the executable bit
    manager = manager_factory(project_dirs=[str(projects)])
    target = find_target(manager, "venv", project=project)
    run = run_in_kernel(manager, target.name, "1 + 1", cwd=project)
    assert run.implementation == "nixkernel-fallback"
    assert f"Cannot run {python}" in run.error_text and "Permission denied" in run.error_text


# -- display names -------------------------------------------------------------------------------


def test_display_names_say_who_made_the_venv(projects, manager_factory):
    """uv venvs are `(uv .venv)`, plain `python -m venv` ones `(.venv)`, Poetry in-project venvs
    (poetry.lock beside them) `(poetry .venv)`."""
    for name in ("api-uv", "api-plain", "api-poetry"):
        (projects / name).mkdir()
    uv_venv(projects / "api-uv")
    for name in ("api-plain", "api-poetry"):
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(projects / name / ".venv")],
            check=True,
        )
    (projects / "api-poetry" / "poetry.lock").write_text("# poetry lock file\n")

    manager = manager_factory(project_dirs=[str(projects)])
    names = {t.display_name for t in manager.targets() if t.kind == "venv"}
    assert names == {"api-uv (uv .venv)", "api-plain (.venv)", "api-poetry (poetry .venv)"}
