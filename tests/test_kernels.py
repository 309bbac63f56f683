"""Kernels started with jupyter_client from NixKernelSpecManager specs, on real Nix: they run
inside the project's dev shell, come from the cache on the next start, and re-evaluate when an
input changes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from helpers import find_target, interrupt_when_it_prints, running_kernel
from nixprojects import DEFAULT_SHELL, PYTHON, write_flake, write_shell_nix

from nixkernel.kernelspec import LAUNCHER

PROBE = (
    "import os, shutil, json\n"
    "print(json.dumps({k: os.environ.get(k) for k in "
    "('GREETING', 'HOOK_RAN_IN', 'IN_NIX_SHELL', 'HOME', 'TMPDIR', 'NIX_BUILD_TOP', 'DOCS')}"
    " | {'python3': shutil.which('python3'), 'cwd': os.getcwd(), 'path': os.environ['PATH'],"
    " 'pid': os.getpid(), 'ppid': os.getppid()}))"
)


def probe(run) -> dict:
    assert not run.errors, run.error_text
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_flake_kernel_runs_inside_the_dev_shell(nix, projects, manager_factory, kernel_runner):
    project = write_flake(projects / "noahs-rug")
    manager = manager_factory(project_dirs=[str(projects)])
    name = find_target(manager, "flake").name
    spec = manager.get_kernel_spec(name)
    assert spec.display_name == "noahs-rug (flake)"
    # The server's own interpreter, by absolute path (jupyter_client replaces only a bare
    # `python`/`python3` with its sys.executable), running the launcher without site.
    assert spec.argv[:3] == [sys.executable, "-S", LAUNCHER]
    assert os.path.isabs(spec.argv[0])

    info = probe(kernel_runner(manager, name, PROBE, cwd=project))

    assert info["GREETING"] == "hello from the dev shell"
    # shellHook ran, in the project's root (here also the notebook's folder).
    assert info["HOOK_RAN_IN"] == str(project)
    assert info["cwd"] == str(project)
    assert info["IN_NIX_SHELL"] == "impure"
    # The shell's python3 (a store path) comes first on PATH; the server's PATH follows.
    assert info["python3"].startswith("/nix/store/") and info["python3"].endswith(
        "-python/bin/python3"
    )
    assert info["path"].split(":")[0].startswith("/nix/store/")
    assert os.environ["PATH"].split(":")[0] in info["path"].split(":")
    # Sandbox variables of the build do not leak into the kernel: as `nix develop` does, each
    # start gets a new temporary directory (develop.cc: mktemp -d -t nix-shell.XXXXXX).
    assert info["HOME"] == os.environ.get("HOME")
    assert info["NIX_BUILD_TOP"] == info["TMPDIR"]
    assert os.path.basename(info["TMPDIR"]).startswith("nix-shell.")
    assert os.path.isdir(info["TMPDIR"])


def test_python_the_shellhook_puts_first_on_path_runs_the_kernel(
    nix, projects, manager_factory, kernel_runner, tmp_path
):
    """A shellHook that activates another Python (a virtualenv it makes, say) chooses the
    kernel's Python, as `nix develop -c python3` runs the python3 found after the hook."""
    hook_bin = tmp_path / "hook-bin"
    hook_bin.mkdir()
    (hook_bin / "python3").write_text(
        f'#!/bin/sh\nexport PYTHON_CHOSEN_BY=hook\nexec {sys.executable} "$@"\n'
    )
    (hook_bin / "python3").chmod(0o755)
    shell = {**DEFAULT_SHELL, "shellHook": f'export PATH={hook_bin}:"$PATH"'}
    project = write_flake(projects / "activates", {"default": shell})
    manager = manager_factory(project_dirs=[str(projects)])
    code = "import os, shutil; print(os.environ.get('PYTHON_CHOSEN_BY'), shutil.which('python3'))"
    run = kernel_runner(manager, find_target(manager, "flake").name, code, cwd=project)
    assert not run.errors, run.error_text
    assert run.stdout.split() == ["hook", str(hook_bin / "python3")]


def test_second_devshell_gets_its_own_kernel(nix, projects, manager_factory, kernel_runner):
    shells = {"default": DEFAULT_SHELL, "docs": {"DOCS": "sphinx", "packages": [PYTHON]}}
    project = write_flake(projects / "api", shells)
    manager = manager_factory(project_dirs=[str(projects)])
    manager.refresh()
    # Names of non-default shells come from a cached evaluation, never from a listing.
    assert [t.shell for t in manager.targets()] == ["default"]
    assert manager.learn_flake_shells()
    targets = manager.refresh()
    assert [(t.shell, t.display_name) for t in targets] == [
        ("default", "api (flake)"),
        ("docs", "api (flake: docs)"),
    ]
    info = probe(kernel_runner(manager, find_target(manager, "flake", "docs").name, PROBE, project))
    assert info["DOCS"] == "sphinx"
    assert info["GREETING"] is None


def test_shell_nix_kernel(nix, projects, manager_factory, kernel_runner):
    project = write_shell_nix(projects / "legacy")
    manager = manager_factory(project_dirs=[str(projects)])
    name = find_target(manager, "shell.nix").name
    assert manager.get_kernel_spec(name).display_name == "legacy (shell.nix)"
    info = probe(kernel_runner(manager, name, PROBE, cwd=project))
    assert info["GREETING"] == "hello from the dev shell"
    assert info["HOOK_RAN_IN"] == str(project)
    assert info["python3"].startswith("/nix/store/")


def test_kernel_process_is_exec_not_a_child(nix, projects, manager_factory, kernel_runner):
    """No launcher stays between the server and the kernel: the kernel is the launched process."""
    project = write_flake(projects / "p")
    manager = manager_factory(project_dirs=[str(projects)])
    with running_kernel(manager, find_target(manager, "flake").name, project) as (km, kc):
        out: list[str] = []
        kc.execute_interactive(
            "import os; print(os.getpid())",
            # stdout only: on a cold start the cell also shows the build's progress on stderr.
            output_hook=lambda m: out.append(
                m["content"]["text"] if m["content"].get("name") == "stdout" else ""
            ),
            timeout=60,
        )
        assert int("".join(out).strip()) == km.provisioner.process.pid


def test_second_start_uses_the_cache_without_running_nix(
    nix, counting_nix, projects, manager_factory, kernel_runner
):
    project = write_flake(projects / "cached")
    manager = manager_factory(project_dirs=[str(projects)], nix_executable=counting_nix.path)
    name = find_target(manager, "flake").name

    first = probe(kernel_runner(manager, name, PROBE, project))
    assert counting_nix.evaluations() == 1
    calls_after_first = len(counting_nix.calls())

    second = probe(kernel_runner(manager, name, PROBE, project))
    assert len(counting_nix.calls()) == calls_after_first, counting_nix.calls()
    assert second["GREETING"] == first["GREETING"]
    # ...and the hook still runs at every start, in the project's root, before the kernel
    # starts in its own (the notebook's) folder.
    sub = project / "notebooks"
    sub.mkdir()
    third = probe(kernel_runner(manager, name, PROBE, sub))
    assert third["HOOK_RAN_IN"] == str(project)
    assert third["cwd"] == str(sub)
    assert len(counting_nix.calls()) == calls_after_first


def test_editing_an_imported_nix_file_reevaluates(
    nix, counting_nix, projects, manager_factory, kernel_runner
):
    project = write_shell_nix(
        projects / "imports",
        {"GREETING": "x", "COLOR": "${colors.favourite}", "packages": [PYTHON]},
        let="colors = import ./lib/colors.nix;",
    )
    # nix_value escapes ${...}: un-escape the one interpolation this test wants.
    shell = project / "shell.nix"
    shell.write_text(shell.read_text().replace("\\${colors.favourite}", "${colors.favourite}"))
    (project / "lib").mkdir()
    (project / "lib" / "colors.nix").write_text('{ favourite = "blue"; }\n')
    manager = manager_factory(project_dirs=[str(projects)], nix_executable=counting_nix.path)
    name = find_target(manager, "shell.nix").name
    code = "import os; print(os.environ['COLOR'])"

    assert kernel_runner(manager, name, code, project).stdout.strip() == "blue"
    assert kernel_runner(manager, name, code, project).stdout.strip() == "blue"
    assert counting_nix.evaluations() == 1

    (project / "lib" / "colors.nix").write_text('{ favourite = "green"; }\n')
    assert kernel_runner(manager, name, code, project).stdout.strip() == "green"
    assert counting_nix.evaluations() == 2


def test_editing_flake_nix_reevaluates(nix, counting_nix, projects, manager_factory, kernel_runner):
    project = write_flake(projects / "edit")
    manager = manager_factory(project_dirs=[str(projects)], nix_executable=counting_nix.path)
    name = find_target(manager, "flake").name
    code = "import os; print(os.environ['GREETING'])"
    assert kernel_runner(manager, name, code, project).stdout.strip() == "hello from the dev shell"
    write_flake(project, {"default": {**DEFAULT_SHELL, "GREETING": "changed"}})
    assert kernel_runner(manager, name, code, project).stdout.strip() == "changed"
    assert counting_nix.evaluations() == 2


def test_cache_entry_is_gc_rooted(nix, projects, manager_factory, kernel_runner):
    project = write_flake(projects / "rooted")
    manager = manager_factory(project_dirs=[str(projects)])
    kernel_runner(manager, find_target(manager, "flake").name, "1", project)
    slot = manager.cache.slot(manager.targets()[0].nix_source())
    profile = Path(slot) / "profile"
    target = os.path.realpath(profile)
    assert target.startswith("/nix/store/") and os.path.exists(target)
    roots = [os.path.realpath(p) for p in Path("/nix/var/nix/gcroots/auto").iterdir()]
    assert any(os.path.realpath(r) == target or r.startswith(str(slot)) for r in roots)


def test_direct_mode_enters_the_shell_with_nix_develop_every_time(
    nix, counting_nix, projects, manager_factory, kernel_runner
):
    project = write_flake(projects / "direct")
    manager = manager_factory(
        project_dirs=[str(projects)], launch_mode="direct", nix_executable=counting_nix.path
    )
    name = find_target(manager, "flake").name
    for _ in range(2):
        info = probe(kernel_runner(manager, name, PROBE, project))
        assert info["GREETING"] == "hello from the dev shell"
        assert info["HOOK_RAN_IN"] == str(project)
    flag = "--extra-experimental-features nix-command flakes "
    assert [c.removeprefix(flag).split()[0] for c in counting_nix.calls()] == ["develop"] * 2
    assert not Path(manager.cache.slot(manager.targets()[0].nix_source())).exists()


def test_direct_mode_with_nix_shell(nix, projects, manager_factory, kernel_runner):
    project = write_shell_nix(projects / "direct-legacy")
    manager = manager_factory(project_dirs=[str(projects)], launch_mode="direct")
    info = probe(kernel_runner(manager, find_target(manager, "shell.nix").name, PROBE, project))
    assert info["GREETING"] == "hello from the dev shell"
    assert info["python3"].startswith("/nix/store/")


def test_interrupt_and_restart_reach_the_kernel(nix, projects, manager_factory):
    """The launcher execs (through bash when there is a shellHook), so the server's SIGINT and
    restart act on the kernel itself."""
    project = write_flake(projects / "interruptible")  # DEFAULT_SHELL has a shellHook
    manager = manager_factory(project_dirs=[str(projects)])
    with running_kernel(manager, find_target(manager, "flake").name, project) as (km, kc):
        msg_id = kc.execute("import time\nprint('running', flush=True)\ntime.sleep(600)")
        reply = interrupt_when_it_prints(km, kc, msg_id)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"

        old_pid = km.provisioner.process.pid
        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=120)
        assert km.provisioner.process.pid != old_pid
        reply = kc.execute_interactive("import os; os.environ['GREETING']", timeout=60)
        assert reply["content"]["status"] == "ok"
