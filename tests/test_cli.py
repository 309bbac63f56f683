"""`jupyter nixkernel ...` run as users run it (a subprocess of ``python -m nixkernel.cli``), on
real Nix projects, with the Jupyter config/data directories and the cache in temporary ones."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import run_cli
from jupyter_client.kernelspec import KernelSpecManager
from nixprojects import DEFAULT_SHELL, PYTHON, Raw, write_flake, write_shell_nix
from traitlets.config import Config

from nixkernel import doctor, serverconfig
from nixkernel.kernelspec import LAUNCHER, NixKernelSpecManager

REPO = Path(__file__).parent.parent
OWN_ROW_KEYS = {"name", "display_name", "kind", "shell", "project", "venv", "language", "spec",
                "cache"}  # fmt: skip


@dataclass
class Workspace:
    root: Path
    good: Path
    """api (flake: default + docs) and legacy (shell.nix): all evaluate."""
    bad: Path
    """broken (flake whose shell throws)."""
    env: dict[str, str]


def cli(ws: Workspace, *args: str, cwd: Path | None = None, **extra_env: str):
    return run_cli(*args, env={**ws.env, **extra_env}, cwd=cwd or ws.root)


@pytest.fixture(scope="module")
def ws(nix: str, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Projects shared by this module's tests, and private Jupyter/cache directories."""
    root = tmp_path_factory.mktemp("cli")
    good, bad = root / "good", root / "bad"
    write_flake(
        good / "api", {"default": DEFAULT_SHELL, "docs": {"DOCS": "sphinx", "packages": [PYTHON]}}
    )
    write_shell_nix(good / "legacy")
    write_flake(bad / "broken", {"default": {"packages": [PYTHON], "X": Raw('throw "boom"')}})
    env = {
        **os.environ,
        "NIXKERNEL_CACHE_DIR": str(root / "cache"),
        "JUPYTER_CONFIG_DIR": str(root / "jupyter-config"),
        "JUPYTER_DATA_DIR": str(root / "jupyter-data"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    env.pop("JUPYTER_PATH", None)
    env.pop("JUPYTER_GATEWAY_URL", None)
    return Workspace(root, good, bad, env)


@pytest.fixture(scope="module")
def warmed(ws: Workspace) -> subprocess.CompletedProcess:
    """`warm --all` over the good projects, once for the module."""
    return cli(ws, "warm", "--all", "--jobs", "2", "--dir", str(ws.good))


def listing(ws: Workspace, *args: str) -> list[dict]:
    result = cli(ws, "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def name_of(rows: list[dict], kind: str, shell: str | None = None) -> str:
    return next(
        r["name"] for r in rows if r["kind"] == kind and (shell is None or r["shell"] == shell)
    )


# -- help, list --------------------------------------------------------------------------------

SUBCOMMANDS = ["list", "show", "warm", "install", "uninstall", "clean", "doctor", "enable",
               "disable", "status"]  # fmt: skip


def test_every_subcommand_has_help(ws):
    top = cli(ws, "--help")
    assert top.returncode == 0
    for sub in SUBCOMMANDS:
        assert re.search(rf"^{sub}\n", top.stdout, re.MULTILINE), f"{sub} missing in --help"
    # All at once: each is a Python start-up, and they are independent.
    procs = {
        sub: subprocess.Popen(
            [sys.executable, "-m", "nixkernel.cli", sub, "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ws.env,
        )
        for sub in SUBCOMMANDS
    }
    for sub, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (sub, err)
        assert "Options" in out and "Examples" in out and f"jupyter nixkernel {sub}" in out, sub


def test_list_all_adds_native_kernelspecs_and_keeps_own_keys(ws, warmed):
    own = listing(ws, "--dir", str(ws.good))
    assert all(set(row) == OWN_ROW_KEYS for row in own), own
    # Python (this project) is listed as the server offers it: nixkernel's, not a native one.
    assert {r["kind"] for r in own} == {"flake", "shell.nix", "auto"}
    auto = next(r for r in own if r["kind"] == "auto")
    assert auto["name"] == "nix-this-project" and auto["display_name"] == "Python (this project)"
    assert auto["project"] is None

    everything = listing(ws, "--all", "--dir", str(ws.good))
    native = [r for r in everything if r["kind"] == "native"]
    assert "python3" in {r["name"] for r in native}
    assert [r for r in everything if r["kind"] != "native"] == own


# -- warm ----------------------------------------------------------------------------------------


def test_warm_all_evaluates_every_devshell_with_progress(ws, warmed):
    assert warmed.returncode == 0, warmed.stdout + warmed.stderr
    progress = re.findall(r"^\[(\d)/(\d)\] (\S+) \.\.\. ok", warmed.stdout, re.MULTILINE)
    # --all learnt the flake's second devShell: api, api docs, legacy.
    assert sorted(p[0] for p in progress) == ["1", "2", "3"]
    assert {p[1] for p in progress} == {"3"}
    assert any("-docs-" in p[2] for p in progress)
    rows = listing(ws, "--dir", str(ws.good))
    assert all(r["cache"] == "fresh" for r in rows if r["kind"] != "auto")

    again = cli(ws, "warm", "--all", "--dir", str(ws.good))
    assert again.returncode == 0
    assert again.stdout.count("already cached") == 3


def test_warm_reports_failures_and_exits_1(ws):
    result = cli(ws, "warm", "--all", "--dir", str(ws.bad))
    assert result.returncode == 1
    # The summary is Nix's real message and where it points (Nix 2.8 prints `error: boom`;
    # 2.26 and 2.34 print `error:`, a trace, then `error: boom`).
    assert re.search(
        r"^\[1/1\] nix-broken-flake-\S+ \.\.\. FAILED: flake\.nix: boom", result.stdout, re.M
    )
    # Nix's own output is relayed, prefixed by the kernel name.
    assert re.search(r"\[nix-broken-flake-\S+\]\s+error: boom", result.stdout)
    assert "1 of 1 failed: nix-broken-flake-" in result.stderr
    assert "How to fix it" in result.stderr and "--show-trace" in result.stderr
    assert "restart the kernel" not in result.stderr  # there is no kernel here


def test_warm_needs_names_or_all(ws):
    result = cli(ws, "warm")
    assert result.returncode == 1
    assert "--all" in result.stderr


# -- show ----------------------------------------------------------------------------------------


def test_show_describes_spec_inputs_cache_and_environment(ws, warmed):
    name = name_of(listing(ws, "--dir", str(ws.good)), "flake", "default")
    result = cli(ws, "show", name, "--json", "--env", "--dir", str(ws.good))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    spec = info["kernelspec"]
    assert spec["display_name"] == "api (flake)"
    assert spec["argv"][:3] == [sys.executable, "-S", LAUNCHER]
    assert spec["metadata"]["nixkernel"]["project"] == str(ws.good / "api")
    assert str(ws.good / "api" / "flake.nix") in info["watched_inputs"]
    cache = info["cache"]
    assert cache["state"] == "fresh"
    assert cache["nix_version"] and cache["evaluated"]
    assert os.path.realpath(cache["gc_root"]) == cache["gc_root_target"]
    assert cache["gc_root_target"].startswith("/nix/store/")
    assert info["env"]["GREETING"] == "hello from the dev shell"
    assert info["env"]["PATH"].split(":")[0].startswith("/nix/store/")

    text = cli(ws, "show", name, "--dir", str(ws.good))
    assert "Watched inputs" in text.stdout and "Cache:        fresh" in text.stdout


def test_show_env_without_cache_says_to_warm_or_evaluate(ws, tmp_path):
    name = name_of(listing(ws, "--dir", str(ws.good)), "shell.nix")
    args = ("show", name, "--env", "--dir", str(ws.good), "--cache-dir", str(tmp_path))
    result = cli(ws, *args)
    assert result.returncode == 0
    assert "Cache:        none" in result.stdout
    assert f"jupyter nixkernel warm {name}" in result.stdout and "--evaluate" in result.stdout

    evaluated = cli(ws, *args, "--evaluate", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    info = json.loads(evaluated.stdout)
    assert info["cache"]["state"] == "fresh"
    assert info["env"]["GREETING"] == "hello from the dev shell"


def test_show_unknown_name_says_how_to_find_names(ws):
    result = cli(ws, "show", "nix-no-such-kernel", "--dir", str(ws.good))
    assert result.returncode == 1
    assert "no kernel named nix-no-such-kernel" in result.stderr
    assert "jupyter nixkernel list" in result.stderr and "--dir" in result.stderr


# -- install / uninstall -------------------------------------------------------------------------


def test_installed_kernel_runs_with_plain_jupyter_client(ws, warmed, tmp_path, kernel_runner):
    """A kernel.json written by `install` starts the dev-shell kernel through an ordinary
    KernelSpecManager, as VS Code, nbconvert and papermill use."""
    prefix = tmp_path / "prefix"
    result = cli(ws, "install", "--all", "--prefix", str(prefix), "--dir", str(ws.good))
    assert result.returncode == 0, result.stderr
    kernels = prefix / "share" / "jupyter" / "kernels"
    name = name_of(listing(ws, "--dir", str(ws.good)), "flake", "default")
    spec_dir = kernels / name
    spec = json.loads((spec_dir / "kernel.json").read_text())
    assert spec["metadata"]["nixkernel"]["installed_by"] == "nixkernel"
    assert os.path.isabs(spec["argv"][0])
    assert (spec_dir / "logo-64x64.png").is_file() and (spec_dir / "logo-svg.svg").is_file()
    installed = sorted(p.name for p in kernels.iterdir())
    assert "nix-this-project" in installed and len(installed) == 4

    plain = KernelSpecManager(kernel_dirs=[str(kernels)])
    assert name in plain.find_kernel_specs()
    run = kernel_runner(plain, name, "import os; print(os.environ['GREETING'])", cwd=ws.good)
    assert not run.errors, run.error_text
    assert run.stdout.strip() == "hello from the dev shell"

    # uninstall removes only what install wrote.
    foreign = kernels / "someone-else"
    foreign.mkdir()
    (foreign / "kernel.json").write_text(json.dumps({"argv": ["x"], "display_name": "x"}))
    refused = cli(ws, "uninstall", "someone-else", "--prefix", str(prefix))
    assert refused.returncode == 1 and "not installed by nixkernel" in refused.stderr
    removed = cli(ws, "uninstall", "--all", "--prefix", str(prefix))
    assert removed.returncode == 0, removed.stderr
    assert sorted(p.name for p in kernels.iterdir()) == ["someone-else"]


def test_install_defaults_to_the_users_data_dir(ws, warmed):
    name = name_of(listing(ws, "--dir", str(ws.good)), "shell.nix")
    result = cli(ws, "install", name, "--dir", str(ws.good))
    assert result.returncode == 0, result.stderr
    spec_dir = Path(ws.env["JUPYTER_DATA_DIR"]) / "kernels" / name
    assert (spec_dir / "kernel.json").is_file()
    assert cli(ws, "uninstall", name).returncode == 0
    assert not spec_dir.exists()


# -- clean ---------------------------------------------------------------------------------------


def test_clean_missing_drops_only_entries_of_deleted_projects(ws, tmp_path):
    cache = tmp_path / "cache"
    projects = tmp_path / "projects"
    write_shell_nix(projects / "kept")
    gone = write_shell_nix(projects / "gone")
    args = ("--cache-dir", str(cache), "--dir", str(projects))
    assert cli(ws, "warm", "--all", *args).returncode == 0
    envs = cache / "envs"
    assert len(list(envs.iterdir())) == 2
    roots = {p: os.path.realpath(p / "profile") for p in envs.iterdir()}

    for path in sorted(gone.iterdir()):
        path.unlink()
    gone.rmdir()
    result = cli(ws, "clean", "--missing", *args)
    assert result.returncode == 0, result.stderr
    assert re.search(rf"Removed \S+ \({re.escape(str(gone))}/shell.nix\)", result.stdout)
    (left,) = envs.iterdir()
    assert left.name.startswith("kept-") and os.path.realpath(left / "profile") == roots[left]

    kept = name_of(listing(ws, *args), "shell.nix")
    result = cli(ws, "clean", kept, *args)
    assert result.returncode == 0 and "Removed" in result.stdout
    assert list(envs.iterdir()) == []  # entry and GC root gone
    assert listing(ws, *args)[0]["cache"] == "none"
    assert "Nothing to clean" in cli(ws, "clean", "--all", *args).stdout


# -- doctor --------------------------------------------------------------------------------------


def test_doctor_passes_on_warmed_projects(ws, warmed):
    result = cli(ws, "doctor", str(ws.good))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^  OK    Nix \d+\.\d+", result.stdout, re.M)
    assert re.search(r"^  OK    Nix experimental features: .*flakes", result.stdout, re.M)
    assert result.stdout.count("ipykernel found") == 3
    checks = json.loads(cli(ws, "doctor", str(ws.good), "--json").stdout)
    assert not [c for c in checks if c["status"] == doctor.FAIL]


def test_doctor_fails_on_untracked_flake_and_missing_ipykernel(ws, tmp_path):
    # A fresh virtualenv has no ipykernel, whatever the machine's Python has installed (a
    # Debian with python3-ipykernel included): the test never depends on the host's packages.
    bare_python = tmp_path / "bare-python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare_python)], check=True)
    host = str(bare_python / "bin" / "python")
    probe = subprocess.run([host, "-c", "import ipykernel"], capture_output=True)
    assert probe.returncode != 0, "a fresh virtualenv should not have ipykernel"
    projects = tmp_path / "projects"
    no_ipykernel = Raw(
        '(mini.hostWrapper "python" [ { name = "python3"; target = "' + host + '"; } ])'
    )
    write_shell_nix(projects / "bare", {"packages": [no_ipykernel]})
    untracked = write_flake(projects / "fresh", git=False)
    subprocess.run(["git", "init", "-q", str(untracked)], check=True)
    args = ("--cache-dir", str(tmp_path / "cache"))
    assert cli(ws, "warm", "--all", "--dir", str(projects / "bare"), *args).returncode == 0

    result = cli(ws, "doctor", str(projects), *args)
    assert result.returncode == 1
    out = result.stdout
    assert re.search(r"FAIL  .*fresh/flake\.nix not tracked by git", out)
    assert "git add --intent-to-add flake.nix" in out
    assert re.search(r"FAIL  bare \(shell\.nix\): .*import ipykernel'. failed: .*No module", out), (
        out
    )
    assert "ipykernel" in out.split("bare (shell.nix)")[1].split("fix:")[1]


def test_nix_ld_advice_for_downloaded_python_on_nixos(tmp_path):
    venv = tmp_path / ".venv"
    venv.mkdir()
    downloaded = "/home/ada/.local/share/uv/python/cpython-3.12.3-linux-x86_64-gnu/bin"
    (venv / "pyvenv.cfg").write_text(f"home = {downloaded}\nuv = 0.4.0\n")
    bare_nixos = doctor.Machine(nixos=True, nix_ld=False)

    check = doctor.check_venv_interpreter(str(venv), bare_nixos)
    assert check is not None and check.status == doctor.FAIL
    assert "python-build-standalone" in check.message
    assert "programs.nix-ld.enable = true" in check.fix
    assert "UV_PYTHON_DOWNLOADS=never" in check.fix and "--python $(which python3)" in check.fix
    assert doctor.check_nix_ld(bare_nixos).status == doctor.WARN

    with_nix_ld = doctor.Machine(nixos=True, nix_ld=True)
    assert doctor.check_venv_interpreter(str(venv), with_nix_ld).status == doctor.OK
    assert doctor.check_venv_interpreter(str(venv), doctor.Machine(False, False)) is None

    (venv / "pyvenv.cfg").write_text("home = /nix/store/" + "a" * 32 + "-python3-3.12.3/bin\n")
    assert doctor.check_venv_interpreter(str(venv), bare_nixos).status == doctor.OK


def test_machine_detection_reads_nixos_marker_and_nix_ld(tmp_path):
    assert doctor.Machine.detect({}, root=str(tmp_path)) == doctor.Machine(False, False)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "NIXOS").write_text("")
    assert doctor.Machine.detect({}, root=str(tmp_path)) == doctor.Machine(True, False)
    assert doctor.Machine.detect({"NIX_LD": "/run/current-system/sw/share/nix-ld/lib/ld.so"},
                                 root=str(tmp_path)) == doctor.Machine(True, True)  # fmt: skip
    (tmp_path / "lib64").mkdir()
    (tmp_path / "lib64" / "ld-linux-x86-64.so.2").write_text("")
    assert doctor.Machine.detect({}, root=str(tmp_path), arch="x86_64").nix_ld
    # Each machine has its own loader name: the x86-64 one proves nothing on an ARM machine.
    assert not doctor.Machine.detect({}, root=str(tmp_path), arch="aarch64").nix_ld
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "ld-linux-aarch64.so.1").write_text("")
    assert doctor.Machine.detect({}, root=str(tmp_path), arch="aarch64").nix_ld


def test_nix_feature_and_nixpkgs_checks_read_the_real_nix(nix, monkeypatch, tmp_path):
    """Features missing from Nix's settings are reported, not failed: nixkernel enables them on
    its own calls (see test_nix_calls.py); the fix is for `nix develop` typed by hand."""
    monkeypatch.setenv("NIX_CONFIG", "experimental-features = nix-command")
    check = doctor.check_experimental_features(nix)
    assert check.status == doctor.OK and "flakes" in check.message
    assert "nixkernel enables them" in check.message
    assert "experimental-features = nix-command flakes" in check.fix
    assert doctor.check_experimental_features(nix, need_flakes=False).message.startswith(
        "Nix experimental features: nix-command"
    )
    monkeypatch.setenv("NIX_CONFIG", "experimental-features =")
    check = doctor.check_experimental_features(nix)
    assert check.status == doctor.OK and "nix-command" in check.message

    monkeypatch.setenv("NIX_PATH", "")
    check = doctor.check_nixpkgs(nix, ["/p/shell.nix"])
    assert check.status == doctor.FAIL and "/p/shell.nix" in check.message
    assert "nix-channel --add" in check.fix
    fake_nixpkgs = tmp_path / "nixpkgs"
    fake_nixpkgs.mkdir()
    monkeypatch.setenv("NIX_PATH", f"nixpkgs={fake_nixpkgs}")
    assert doctor.check_nixpkgs(nix, ["/p/shell.nix"]).status == doctor.OK


# -- enable / disable / status -------------------------------------------------------------------

SERVER_EXTENSIONS = (
    "from jupyter_server.serverapp import ServerApp\n"
    "app = ServerApp(); app.load_config_file(); app.find_server_extensions()\n"
    "print(app.jpserver_extensions.get('nixkernel'))\n"
)


def test_enable_disable_flip_only_our_switch(ws, tmp_path):
    config_dir = tmp_path / "jupyter-config"
    config_dir.mkdir()
    config_file = config_dir / "jupyter_server_config.json"
    original = {
        "ServerApp": {"port": 9999, "jpserver_extensions": {"someext": True}},
        "FileContentsManager": {"delete_to_trash": False},
    }
    config_file.write_text(json.dumps(original))
    env = {"JUPYTER_CONFIG_DIR": str(config_dir)}

    disabled = cli(ws, "disable", **env)
    assert disabled.returncode == 0, disabled.stderr
    data = json.loads(config_file.read_text())
    assert data == {
        "ServerApp": {"port": 9999, "jpserver_extensions": {"someext": True, "nixkernel": False}},
        "FileContentsManager": {"delete_to_trash": False},
    }
    # The real server agrees: the user's false beats the package's config.d true.
    server = subprocess.run([sys.executable, "-c", SERVER_EXTENSIONS], capture_output=True,
                            text=True, env={**ws.env, **env}, check=True)  # fmt: skip
    assert server.stdout.strip() == "False"
    status = cli(ws, "status", "--json", **env)
    assert status.returncode == 1
    assert json.loads(status.stdout)["enabled"] is False
    assert json.loads(status.stdout)["decided_by"] == str(config_file)

    enabled = cli(ws, "enable", **env)
    assert enabled.returncode == 0, enabled.stderr
    data = json.loads(config_file.read_text())
    assert data["ServerApp"]["jpserver_extensions"] == {"someext": True, "nixkernel": True}
    assert data["ServerApp"]["port"] == 9999 and data["FileContentsManager"]
    status = cli(ws, "status", "--json", **env)
    assert status.returncode == 0, status.stdout
    assert json.loads(status.stdout)["kernel_spec_manager_class"] == (
        "nixkernel.kernelspec.NixKernelSpecManager"
    )
    assert not list(config_dir.glob(".nixkernel-*"))  # no temp file left behind


def test_disable_refuses_to_rewrite_a_broken_config_file(ws, tmp_path):
    config_file = tmp_path / "jupyter_server_config.json"
    config_file.write_text('{"ServerApp": {"port": 9999,}')
    result = cli(ws, "disable", JUPYTER_CONFIG_DIR=str(tmp_path))
    assert result.returncode == 1
    assert "not valid JSON" in result.stderr and str(config_file) in result.stderr
    assert config_file.read_text() == '{"ServerApp": {"port": 9999,}'


def test_status_reports_another_manager_class_and_a_gateway(ws, tmp_path):
    (tmp_path / "jupyter_server_config.py").write_text(
        "c.ServerApp.kernel_spec_manager_class = 'jupyter_client.kernelspec.KernelSpecManager'\n"
    )
    result = cli(ws, "status", JUPYTER_CONFIG_DIR=str(tmp_path))
    assert result.returncode == 1
    assert "KernelSpecManager:  jupyter_client.kernelspec.KernelSpecManager" in result.stdout
    assert re.search(
        r"Conflict: c\.ServerApp\.kernel_spec_manager_class is set to "
        r"jupyter_client\.kernelspec\.KernelSpecManager.*Fix:",
        result.stdout,
    )

    (tmp_path / "jupyter_server_config.py").unlink()
    gateway = cli(ws, "status", "--json", JUPYTER_CONFIG_DIR=str(tmp_path),
                  JUPYTER_GATEWAY_URL="http://gateway:8888")  # fmt: skip
    assert gateway.returncode == 1
    (conflict,) = json.loads(gateway.stdout)["conflicts"]
    assert "gateway" in conflict and "http://gateway:8888" in conflict


# -- the example configuration -------------------------------------------------------------------


def test_example_config_documents_every_setting_with_a_valid_value():
    path = REPO / "examples" / "jupyter_server_config.py"
    text = path.read_text()
    assert text == serverconfig.example_config(), (
        "examples/jupyter_server_config.py is out of date: regenerate it with "
        "`python -m nixkernel.serverconfig > examples/jupyter_server_config.py`"
    )
    traits = NixKernelSpecManager.class_own_traits(config=True)
    for name in traits:
        assert f"# c.NixKernelSpecManager.{name} = " in text, name
    # Uncommented, every example value is one the manager accepts.
    active = re.sub(r"^# (c\.NixKernelSpecManager\.)", r"\1", text, flags=re.M)
    config = Config()
    exec(compile(active, str(path), "exec"), {"get_config": lambda: config})
    manager = NixKernelSpecManager(config=config)
    assert set(config.NixKernelSpecManager) == set(traits)
    for name, value in config.NixKernelSpecManager.items():
        assert getattr(manager, name) == value, name
