"""Kernels of other languages that a project's shell carries (nixkernel/kernels.py), on real Nix
and real R: Debian's r-base-core and r-cran-irkernel, wrapped into test shells the way nixpkgs'
rWrapper wraps R (``nixprojects.r_package``), and a package that ships its own kernelspec in
``share/jupyter/kernels`` (``mini.withKernelspecs``).

Debian's r-cran-irkernel also installs ``/usr/share/jupyter/kernels/ir`` system-wide and puts
``R`` on the server's PATH: the tests find nixkernel's kernels by their metadata, never by
language or by the name ``ir``, and prove that neither the host's R nor that spec is taken for
a shell's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jupyter_kernel_test as jkt
import pytest
from helpers import IN_CI, interrupt_when_it_prints, require, running_kernel
from jupyter_client import KernelManager
from nixprojects import (
    DEFAULT_SHELL,
    PYTHON,
    Raw,
    r_package,
    with_kernelspecs,
    write_flake,
    write_shell_nix,
)

from nixkernel import kernels
from nixkernel.cache import ENTRY_FILE
from nixkernel.describe import KernelTarget
from nixkernel.kernelspec import RESOURCES, NixKernelSpecManager

IRKERNEL_ARGV = ["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"]
R_PROBE = (
    'cat(Sys.getenv("GREETING"), Sys.getenv("R_WRAPPED_BY"), Sys.getenv("HOOK_RAN_IN"), '
    'getwd(), Sys.getenv("VIRTUAL_ENV"), sep = "|")'
)


@pytest.fixture(scope="session")
def host_r() -> str:
    """The host's R, with IRkernel in its library (under CI=true, a missing R fails the run)."""
    r = require("R")
    found = subprocess.run(
        [r, "-s", "-e", 'cat(system.file("kernelspec", package = "IRkernel"))'],
        capture_output=True,
        text=True,
    ).stdout
    if not found:
        message = "R has no IRkernel: apt-get install -y r-cran-irkernel"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    return r


def evaluate(manager: NixKernelSpecManager) -> list[KernelTarget]:
    """Evaluate every Nix environment under the manager's project_dirs (what `warm` does), then
    list again."""
    for target in manager.refresh():
        source = target.nix_source()
        if source is not None:
            manager.cache.ensure(source, manager.nix_executable or None)
    return manager.refresh()


def r_probe(run) -> list[str]:
    assert not run.errors, run.error_text
    return run.stdout.split("|")


def r_shell(tmp_path: Path, **extra) -> dict:
    return {
        "GREETING": "hello from the R shell",
        "packages": [r_package(tmp_path / "wrap")],
        "shellHook": 'export HOOK_RAN_IN="$PWD"',
        **extra,
    }


def test_r_only_shell_offers_its_r_kernel_and_no_python_kernel(
    nix, host_r, projects, manager_factory, kernel_runner, tmp_path
):
    """Before its first evaluation the shell is offered as Python (nothing is known yet); once
    evaluated, only its R kernel: IRkernel's spec from the R library of the shell's R, started
    with the shell's variables, after its shellHook, in the notebook's folder, by the shell's
    wrapped R (the nixpkgs #38733 trap: not an R found elsewhere)."""
    project = write_flake(projects / "stats", {"default": r_shell(tmp_path)})
    manager = manager_factory(project_dirs=[str(projects)])
    before = manager.refresh()
    assert [(t.display_name, t.kernel) for t in before] == [("stats (flake)", None)]

    (target,) = evaluate(manager)
    assert target.display_name == "stats (flake: R)"
    assert target.name.startswith("nix-stats-flake-ir-")
    assert target.name != before[0].name
    spec = manager.get_kernel_spec(target.name)
    assert spec.language == "R"
    assert spec.interrupt_mode == "signal"
    assert spec.argv[spec.argv.index("--spec") + 1] == "ir"
    # IRkernel's spec and logos as the shell's R reports them, not /usr/share/jupyter/kernels/ir.
    irkernel = subprocess.run(
        [host_r, "-s", "-e", 'cat(system.file("kernelspec", package = "IRkernel"))'],
        capture_output=True,
        text=True,
    ).stdout
    assert spec.resource_dir == irkernel != "/usr/share/jupyter/kernels/ir"
    assert "logo-64x64.png" in os.listdir(spec.resource_dir)

    notebooks = project / "notebooks"
    notebooks.mkdir()
    run = kernel_runner(manager, target.name, R_PROBE, cwd=notebooks)
    assert run.implementation == "IRkernel"
    assert r_probe(run) == [
        "hello from the R shell",
        "the shell's R",
        str(project),  # the hook runs in the project's root (docs/nix-semantics.md)
        str(notebooks),
        "",
    ]


def test_shell_with_python_and_r_offers_both_and_the_python_kernel_is_unchanged(
    nix, host_r, projects, manager_factory, kernel_runner, tmp_path
):
    """A shell.nix with a Python that has ipykernel and an R with IRkernel: its Python kernel
    keeps its name, display name and spec; the R kernel comes beside it."""
    shell = r_shell(tmp_path)
    shell["packages"] = [PYTHON, *shell["packages"]]
    project = write_shell_nix(projects / "both", shell)
    manager = manager_factory(project_dirs=[str(projects)])
    (python,) = manager.refresh()
    python_spec = manager.get_kernel_spec(python.name).to_dict()

    targets = evaluate(manager)
    assert [(t.name, t.display_name) for t in targets] == [
        (python.name, "both (shell.nix)"),
        (targets[1].name, "both (shell.nix: R)"),
    ]
    assert manager.get_kernel_spec(python.name).to_dict() == python_spec

    code = "import os; print(os.environ['GREETING'], os.environ['HOOK_RAN_IN'])"
    run = kernel_runner(manager, python.name, code, cwd=project)
    assert not run.errors, run.error_text
    assert run.stdout.strip() == f"hello from the R shell {project}"
    assert r_probe(kernel_runner(manager, targets[1].name, R_PROBE, cwd=project))[:3] == [
        "hello from the R shell",
        "the shell's R",
        str(project),
    ]


def test_kernelspec_shipped_beside_bin_on_path_is_offered_with_its_logos_and_env(
    nix, host_r, projects, manager_factory, kernel_runner, tmp_path
):
    """A package that ships share/jupyter/kernels/<name>/kernel.json beside its bin/: offered
    with the spec's name, display name, language and logos; its bare argv[0] runs the shell's
    wrapped program; its env goes over the shell's (``${VAR}`` filled from it). The R-library
    probe finds no second R kernel: a spec of that language in share/ wins."""
    logos = projects / "shipped" / "logos"
    logos.mkdir(parents=True)
    (logos / "logo-64x64.png").write_bytes(b"\x89PNG\r\n\x1a\nshipped logo")
    spec = {
        "argv": [*IRKERNEL_ARGV, "{resource_dir}", "{no_such_placeholder}"],
        "display_name": "R (shipped)",
        "language": "R",
        "env": {"FROM_SPEC": "spec over ${GREETING}", "GREETING": "overridden by the spec"},
        "interrupt_mode": "signal",
    }
    package = with_kernelspecs(r_package(tmp_path / "wrap"), {"rshipped": spec}, "./logos")
    project = write_flake(projects / "shipped", {"default": r_shell(tmp_path, packages=[package])})
    manager = manager_factory(project_dirs=[str(projects)])

    (target,) = evaluate(manager)
    assert target.display_name == "shipped (flake: R (shipped))"
    assert target.kernel is not None and target.kernel.name == "rshipped"
    assert target.kernel.origin.startswith("PATH: /nix/store/")
    resource_dir = manager.get_kernel_spec(target.name).resource_dir
    assert resource_dir.startswith("/nix/store/") and resource_dir.endswith(
        "/share/jupyter/kernels/rshipped"
    )
    assert (Path(resource_dir) / "logo-64x64.png").read_bytes().endswith(b"shipped logo")

    code = (
        'cat(Sys.getenv("FROM_SPEC"), Sys.getenv("GREETING"), Sys.getenv("R_WRAPPED_BY"), '
        'commandArgs(TRUE)[2:3], sep = "|")'
    )
    run = kernel_runner(manager, target.name, code, cwd=project)
    assert not run.errors, run.error_text
    assert run.stdout.split("|") == [
        "spec over hello from the R shell",
        "overridden by the spec",
        "the shell's R",
        resource_dir,  # {resource_dir}: the spec's own directory
        "{no_such_placeholder}",  # unknown placeholders stay, as jupyter_client leaves them
    ]


def test_kernelspec_under_the_shells_xdg_data_dirs_is_found(
    nix, host_r, projects, manager_factory, tmp_path
):
    """A kernelspec under a directory of the shell's own XDG_DATA_DIRS (a package not on PATH),
    with its interrupt mode."""
    spec = {
        "argv": ["R", "--slave"],
        "display_name": "Data-dir R",
        "language": "R",
        "interrupt_mode": "message",
    }
    specs_only = with_kernelspecs(r_package(tmp_path / "wrap"), {"datadir": spec})
    shell = r_shell(tmp_path, XDG_DATA_DIRS=Raw(f'"${{{specs_only.expr}}}/share"'))
    write_flake(projects / "xdg", {"default": shell})
    manager = manager_factory(project_dirs=[str(projects)])
    (target,) = evaluate(manager)
    assert target.kernel is not None and target.kernel.name == "datadir"
    assert target.kernel.origin.startswith("XDG_DATA_DIRS: /nix/store/")
    assert manager.get_kernel_spec(target.name).interrupt_mode == "message"


def test_host_r_and_the_system_ir_spec_are_not_a_shells_kernels(
    nix, host_r, projects, manager_factory
):
    """The server's PATH has R with IRkernel and /usr/share/jupyter/kernels/ir exists; a shell
    without R (even one naming /usr/share in its XDG_DATA_DIRS) carries no R kernel."""
    assert os.path.isfile("/usr/share/jupyter/kernels/ir/kernel.json")
    write_flake(projects / "plain")
    write_shell_nix(projects / "sysdata", {**DEFAULT_SHELL, "XDG_DATA_DIRS": "/usr/share"})
    manager = manager_factory(project_dirs=[str(projects)])
    names = [t.name for t in manager.refresh()]
    targets = evaluate(manager)
    assert [t.name for t in targets] == names
    assert all(t.kernel is None for t in targets)


def test_ipykernels_own_spec_is_not_offered_twice(nix, projects, manager_factory):
    """A Python with ipykernel ships ipykernel's python3 spec in share/: the shell offers its
    Python kernel once, under the name it always had."""
    ipykernel_spec = {
        "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    shell = {**DEFAULT_SHELL, "packages": [with_kernelspecs(PYTHON, {"python3": ipykernel_spec})]}
    write_flake(projects / "py", {"default": shell})
    manager = manager_factory(project_dirs=[str(projects)])
    (before,) = manager.refresh()
    (after,) = evaluate(manager)
    assert after == before
    entry = manager.cache.load(manager.cache.slot(after.nix_source()))
    shell_kernels = kernels.from_entry(entry)
    assert shell_kernels is not None and shell_kernels.ipykernel
    assert any("ipykernel's own spec" in note for note in shell_kernels.notes)


def test_configuration_offers_and_hides_languages_and_kernelspecs(
    nix, host_r, projects, manager_factory, tmp_path
):
    shell = r_shell(tmp_path)
    shell["packages"] = [PYTHON, *shell["packages"]]
    write_shell_nix(projects / "both", shell)
    evaluate(manager_factory(project_dirs=[str(projects)]))

    def languages(**traits) -> list[str]:
        manager = manager_factory(project_dirs=[str(projects)], **traits)
        return [t.kernel.language if t.kernel else "python" for t in manager.refresh()]

    assert languages() == ["python", "R"]
    assert languages(offer_languages=["r"]) == ["R"]
    assert languages(offer_languages=["Python"]) == ["python"]
    assert languages(hide_languages=["R"]) == ["python"]
    assert languages(hide_languages=["python"]) == ["R"]
    assert languages(hide_kernelspecs=["IR"]) == ["python"]


def test_r_kernel_of_a_failing_environment_is_the_fallback_in_r(
    nix, host_r, projects, manager_factory, tmp_path
):
    """The shell's Nix file breaks after the R kernel was listed: the kernel that starts says
    why, and tells the front end it stands for an R kernel (language_info as IRkernel's), both
    while Nix re-evaluates (the building kernel) and after (the fallback kernel, which answers
    the cell run meanwhile with the error)."""
    project = write_flake(projects / "breaks", {"default": r_shell(tmp_path)})
    manager = manager_factory(project_dirs=[str(projects)], stale_fallback=False)
    (target,) = evaluate(manager)
    with running_kernel(manager, target.name, project) as (_km, kc):
        real = kc.kernel_info(reply=True, timeout=60)["content"]["language_info"]
    write_flake(project, {"default": {**r_shell(tmp_path), "X": Raw('throw "R shell broke"')}})
    with running_kernel(manager, target.name, project) as (_km, kc):
        during = kc.kernel_info(reply=True, timeout=60)["content"]
        reply = kc.execute_interactive('cat("never runs")', timeout=60)
        after = kc.kernel_info(reply=True, timeout=60)["content"]
    assert during["implementation"] == "nixkernel-building"
    assert after["implementation"] == "nixkernel-fallback"
    for info in (during, after):
        assert info["language_info"]["name"] == real["name"] == "R"
        assert info["language_info"]["file_extension"] == real["file_extension"]
    assert reply["content"]["status"] == "error"
    assert "R shell broke" in "\n".join(reply["content"]["traceback"])


def test_an_r_cell_run_during_the_build_is_told_to_run_again_then_runs_in_r(
    nix, host_r, projects, manager_factory, tmp_path
):
    """IRkernel cannot take the cells the building kernel kept (only ipykernel's dispatch can be
    handed them): a cell run while Nix evaluates is answered that the environment is ready and
    to run it again, and run again it runs in R, in the shell."""
    project = write_flake(projects / "cold-r", {"default": r_shell(tmp_path)})
    manager = manager_factory(project_dirs=[str(projects)])
    (target,) = evaluate(manager)
    source = target.nix_source()
    assert source is not None
    (Path(manager.cache.slot(source)) / ENTRY_FILE).unlink()  # cold again, the listing kept
    out: list[str] = []

    def keep_stdout(msg: dict) -> None:
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            out.append(msg["content"]["text"])

    with running_kernel(manager, target.name, project) as (_km, kc):
        info = kc.kernel_info(reply=True, timeout=60)["content"]
        early = kc.execute_interactive('cat("kept")', timeout=120, output_hook=lambda m: None)
        # IRkernel knows nothing of the hand-over, so nothing holds its first cell until this
        # client's iopub subscription is back (its SUB socket sends it again only when this
        # thread next polls it): ask as a client does after a kernel's start.
        kc.wait_for_ready(timeout=60)
        again = kc.execute_interactive(R_PROBE, timeout=60, output_hook=keep_stdout)
    assert info["implementation"] == "nixkernel-building"
    assert info["language_info"]["name"] == "R"
    assert early["content"]["status"] == "error"
    assert early["content"]["ename"] == "EnvironmentReady"
    assert "run this cell again" in early["content"]["evalue"]
    assert again["content"]["status"] == "ok"
    assert "".join(out).split("|")[0] == "hello from the R shell"


def test_a_kernel_the_shell_no_longer_carries_gets_the_fallback_saying_so(
    nix, host_r, projects, manager_factory, tmp_path
):
    """The listing still names an R kernel the re-evaluated shell has dropped."""
    project = write_flake(projects / "dropped", {"default": r_shell(tmp_path)})
    manager = manager_factory(project_dirs=[str(projects)])
    (target,) = evaluate(manager)
    write_flake(project, {"default": DEFAULT_SHELL})
    with running_kernel(manager, target.name, project) as (_km, kc):
        reply = kc.execute_interactive("1", timeout=60)
    text = "\n".join(reply["content"]["traceback"])
    assert "does not carry the kernel 'ir'" in text and "jupyter nixkernel list" in text


def test_interrupt_and_restart_reach_the_r_kernel(nix, host_r, projects, manager_factory, tmp_path):
    """Through bash (the shell has a shellHook), the launcher execs R: the server's SIGINT stops
    the running cell and a restart starts a new R in the shell."""
    project = write_flake(projects / "longrun", {"default": r_shell(tmp_path)})
    manager = manager_factory(project_dirs=[str(projects)])
    (target,) = evaluate(manager)
    with running_kernel(manager, target.name, project) as (km, kc):
        msg_id = kc.execute('cat("running\\n"); flush.console(); Sys.sleep(600); cat("done")')
        reply = interrupt_when_it_prints(km, kc, msg_id)
        assert reply["content"]["status"] in ("error", "abort")

        old_pid = km.provisioner.process.pid
        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=120)
        assert km.provisioner.process.pid != old_pid
        out: list[str] = []
        kc.execute_interactive(
            'cat(Sys.getenv("GREETING"), Sys.getpid())',
            output_hook=lambda m: out.append(m["content"].get("text", "")),
            timeout=60,
        )
        greeting, pid = "".join(out).rsplit(" ", 1)
        assert greeting == "hello from the R shell"
        assert int(pid) == km.provisioner.process.pid  # exec: R is the launched process


def test_uv_venv_runs_the_python_kernel_and_the_shells_r_the_r_kernel(
    nix, host_r, projects, manager_factory, kernel_runner, tmp_path
):
    """Nix shell + uv .venv: the Python kernel runs the venv's Python inside the shell, the R
    kernel the shell's R, without the venv activated."""
    uv = require("uv")
    shell = r_shell(tmp_path)
    shell["packages"] = [PYTHON, *shell["packages"]]
    project = write_shell_nix(projects / "mixed", shell)
    venv = project / ".venv"
    subprocess.run(
        [uv, "venv", "-q", "--python", sys.executable, str(venv)],
        check=True,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
    )
    # ipykernel for the venv without installing it: the test run's own site-packages.
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "host.pth").write_text(
        "\n".join(p for p in sys.path if p.endswith("site-packages")) + "\n"
    )
    manager = manager_factory(project_dirs=[str(projects)])
    targets = evaluate(manager)
    assert [t.display_name for t in targets] == [
        "mixed (shell.nix + uv .venv)",
        "mixed (shell.nix: R)",
    ]
    run = kernel_runner(manager, targets[0].name, "import sys; print(sys.prefix)", project)
    assert not run.errors, run.error_text
    assert run.stdout.strip() == str(venv)
    assert r_probe(kernel_runner(manager, targets[1].name, R_PROBE, project)) == [
        "hello from the R shell",
        "the shell's R",
        str(project),
        str(project),
        "",
    ]


def test_direct_mode_starts_the_r_kernel_through_nix_develop(
    nix, host_r, projects, manager_factory, kernel_runner, tmp_path
):
    """launch_mode = "direct": the spec known from an evaluation, started by `nix develop -c`."""
    project = write_flake(projects / "direct", {"default": r_shell(tmp_path)})
    evaluate(manager_factory(project_dirs=[str(projects)]))
    manager = manager_factory(project_dirs=[str(projects)], launch_mode="direct")
    (target,) = manager.refresh()
    assert target.kernel is not None
    assert r_probe(kernel_runner(manager, target.name, R_PROBE, project))[:3] == [
        "hello from the R shell",
        "the shell's R",
        str(project),
    ]


def test_an_entry_made_before_kernels_were_looked_for_learns_them_without_nix(
    nix, counting_nix, host_r, projects, manager_factory, tmp_path
):
    """Entries written by an older nixkernel have no ``kernels`` field (nor the kernels.json
    copy listings read): the next kernel start or `warm` adds it (probing, not evaluating),
    and the listing then shows the R kernel."""
    write_flake(projects / "old", {"default": r_shell(tmp_path)})
    manager = manager_factory(project_dirs=[str(projects)], nix_executable=counting_nix.path)
    (target,) = manager.refresh()
    source = target.nix_source()
    entry = manager.cache.ensure(source, counting_nix.path).entry
    slot = manager.cache.slot(source)
    del entry["kernels"]
    manager.cache.store(slot, entry)
    assert not (Path(slot) / "kernels.json").exists()
    assert [t.kernel for t in manager.refresh()] == [None]
    calls = len(counting_nix.calls())

    again = manager.cache.ensure(source, counting_nix.path)
    assert again.entry["kernels"]["specs"][0]["name"] == "ir"
    assert len(counting_nix.calls()) == calls
    assert [t.display_name for t in manager.refresh()] == ["old (flake: R)"]


def test_probes_for_julia_and_evcxr_read_what_the_programs_say(tmp_path):
    """The IJulia and evcxr probes, against stand-in programs on a shell's PATH (no Julia or
    Rust here): the spec IJulia.installkernel writes (run_kernel() for a release without
    src/kernel.jl), IJulia's logos, and evcxr's own spec; nothing from programs the shell's own
    PATH lacks."""
    ijulia = tmp_path / "depot" / "IJulia"
    (ijulia / "src").mkdir(parents=True)
    (ijulia / "deps").mkdir()
    (ijulia / "deps" / "logo-64x64.png").write_bytes(b"png")
    bin_dir = tmp_path / "shell" / "bin"
    bin_dir.mkdir(parents=True)
    julia = bin_dir / "julia"
    julia.write_text(
        "#!/bin/sh\necho 'chatter from a startup file'\n"
        f"printf '\\n{kernels.MARK}1.10 {ijulia}/src/IJulia.jl\\n'\n"
    )
    (bin_dir / "evcxr_jupyter").write_text("#!/bin/sh\nexit 1\n")
    for program in bin_dir.iterdir():
        program.chmod(0o755)

    found = kernels.detect({"PATH": str(bin_dir)}, {"PATH": "/usr/bin:/bin"})
    specs = {s["name"]: s for s in found["specs"]}
    assert set(specs) == {"julia-1.10", "rust"}
    julia_spec = specs["julia-1.10"]
    assert julia_spec["spec"]["argv"] == [
        "julia", "-i", "--color=yes", "-e", "import IJulia; IJulia.run_kernel()",
        "{connection_file}",
    ]  # fmt: skip
    assert julia_spec["spec"]["language"] == "julia"
    assert julia_spec["resource_dir"] == str(ijulia / "deps")
    assert julia_spec["logos"] == ["logo-64x64.png"]
    (ijulia / "src" / "kernel.jl").write_text("")
    again = {s["name"]: s for s in kernels.detect({"PATH": str(bin_dir)}, {})["specs"]}
    assert again["julia-1.10"]["spec"]["argv"][3] == str(ijulia / "src" / "kernel.jl")
    assert specs["rust"]["spec"]["argv"] == ["evcxr_jupyter", "--control_file", "{connection_file}"]
    assert specs["rust"]["spec"]["interrupt_mode"] == "message"
    # No R on the shell's own PATH: the host's R (on the server's PATH) is not probed.
    assert found["python3"] is None and not found["ipykernel"]


def test_command_line_lists_warms_shows_checks_and_installs_the_r_kernel(
    nix, host_r, projects, tmp_path
):
    """`jupyter nixkernel list` before any evaluation: the Python kernel, and a note that a
    shell's other kernels appear once evaluated; `warm` names the kernels it found; then
    `list --json` has the R kernel with its language and spec, `show` says where it was found,
    `doctor` checks that its R runs, `install` writes its spec with IRkernel's logos."""
    project = write_flake(projects / "rlist", {"default": r_shell(tmp_path)})
    env = {**os.environ, "NIXKERNEL_CACHE_DIR": str(tmp_path / "cache"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_DATA_DIR": str(tmp_path / "data")}  # fmt: skip

    def cli(*args: str, dirs: bool = True) -> subprocess.CompletedProcess:
        where = [str(projects)] if dirs else ["--dir", str(projects)]
        result = subprocess.run(
            [sys.executable, "-m", "nixkernel.cli", *args, *where],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result

    before = cli("list").stdout
    assert "rlist (flake)" in before
    assert "appear once it is evaluated: `jupyter nixkernel warm --all`" in before
    warmed = cli("warm", "--all", dirs=False)
    assert "kernels: R" in warmed.stdout
    # The project's kernels (list also shows "Python (this project)", kind auto).
    rows = [r for r in json.loads(cli("list", "--json").stdout) if r["kind"] != "auto"]
    assert [(r["display_name"], r["language"], r["spec"], r["cache"]) for r in rows] == [
        ("rlist (flake: R)", "R", "ir", "fresh")
    ]
    assert rows[0]["project"] == str(project)
    assert "appear once" not in cli("list").stdout
    name = rows[0]["name"]

    shown = cli("show", name, dirs=False).stdout
    assert "Kernel:       ir (R), found in /nix/store/" in shown
    assert "python3 - (without ipykernel); kernels: ir" in shown
    doctor = cli("doctor").stdout
    assert re.search(r"OK +rlist \(flake: R\): runs /nix/store/[^ ]+-R/bin/R", doctor), doctor
    cli("install", name, dirs=False)
    installed = tmp_path / "data" / "kernels" / name
    spec = json.loads((installed / "kernel.json").read_text())
    assert spec["language"] == "R" and spec["argv"][spec["argv"].index("--spec") + 1] == "ir"
    assert sorted(p.name for p in installed.glob("logo-*")) == ["logo-64x64.png", "logo-svg.svg"]


def test_fallback_language_info_matches_the_language():
    from nixkernel.kernels import language_info

    assert language_info("R")["name"] == "R"
    assert language_info("python")["file_extension"] == ".py"
    assert language_info("cobol") == {"name": "cobol"}


# -- the Jupyter protocol, against the R kernel nixkernel starts ------------------------------


@pytest.fixture(scope="class")
def nix_r_kernel(request, nix, host_r, tmp_path_factory):
    """The R kernel of an R-only flake, started by nixkernel through jupyter_client."""
    root = tmp_path_factory.mktemp("rprotocol")
    project = write_flake(root / "projects" / "proto", {"default": r_shell(root)})
    manager = NixKernelSpecManager(
        project_dirs=[str(root / "projects")], cache_dir=str(root / "cache")
    )
    (target,) = evaluate(manager)
    km = KernelManager(kernel_spec_manager=manager, kernel_name=target.name)
    km.start_kernel(cwd=str(project))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)
    request.cls.km, request.cls.kc = km, kc
    yield
    kc.stop_channels()
    km.shutdown_kernel(now=True)


@pytest.mark.usefixtures("nix_r_kernel")
class TestNixRKernelProtocol(jkt.KernelTests):
    """jupyter_kernel_test's protocol checks (message schemas, kernel_info, execute, stderr,
    errors, completion, is_complete, display data, inspection), with IRkernel's own samples,
    against the R kernel nixkernel started from a shell."""

    @classmethod
    def setUpClass(cls) -> None:  # the fixture starts the kernel
        pass

    @classmethod
    def tearDownClass(cls) -> None:
        pass

    language_name = "R"
    file_extension = ".r"
    code_hello_world = 'cat("hello, world")'
    code_stderr = 'message("oops")'
    code_generate_error = 'stop("nixkernel test error")'
    completion_samples = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples = ["1", 'print("hello, world")', "f <- function(x) {\n  x*2\n}"]
    incomplete_code_samples = ['print("hello', "f <- function(x) {\n  x*2"]
    code_display_data = [{"code": '"a"', "mime": "text/plain"}]
    code_inspect_sample = "c"

    def test_runs_in_the_shell(self) -> None:
        self.flush_channels()
        reply, outputs = self.execute_helper('cat(Sys.getenv("GREETING"))')
        assert reply["content"]["status"] == "ok"
        assert [m["content"]["text"] for m in outputs] == ["hello from the R shell"]


def test_kernels_without_logos_get_nixkernels(tmp_path):
    """A found kernel with no logo files of its own (evcxr's are inside its binary) shows
    nixkernel's logos, never an empty resource_dir (which the server would serve files of its
    working directory from)."""
    rust = kernels.FoundKernel(
        "rust", {"argv": ["evcxr_jupyter"], "display_name": "Rust", "language": "rust"}, ""
    )
    target = KernelTarget("n", "p (flake: Rust)", "flake", str(tmp_path), "default", kernel=rust)
    manager = NixKernelSpecManager(project_dirs=[str(tmp_path)], cache_dir=str(tmp_path / "c"))
    assert manager.kernel_spec_for(target).resource_dir == RESOURCES
