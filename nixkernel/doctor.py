"""``jupyter nixkernel doctor``: what on this machine or in a project keeps kernels from starting.

Each check is a function that returns :class:`Check` data (status, what it found, the fix), so
tests can call them one by one; :func:`format_report` turns them into the lines users read.
Machine checks: Nix found and recent enough, Nix usable by this user (a tiny evaluation and a
trivial build through its store: daemon socket, ``allowed-users``, daemon running),
``nix-command`` and ``flakes`` enabled, ``<nixpkgs>`` resolvable (for ``shell.nix`` files that
import it), nix-ld on NixOS. Project checks, without evaluating anything: every Nix file parses
(``nix-instantiate --parse``), flake inputs are in the store (else the first evaluation needs the
network), flake files tracked by git, a virtualenv whose downloaded interpreter cannot run on
NixOS; ipykernel in each environment that is evaluated (or needs no evaluation). With
``evaluate``, each environment is evaluated first.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from . import kernels, nix
from .describe import (
    KIND_AUTO,
    KIND_FLAKE,
    KIND_SHELL_NIX,
    KernelTarget,
    find_python,
    ipykernel_hint,
    pyvenv_cfg,
    target_source,
)
from .environment import kernel_environment

if TYPE_CHECKING:
    from .kernelspec import NixKernelSpecManager

OK, WARN, FAIL = "OK", "WARN", "FAIL"

#: The oldest Nix with ``nix print-dev-env --json``.
MIN_NIX_VERSION = (2, 4)
#: The program loader downloaded Linux binaries ask for, by machine; NixOS has none without
#: nix-ld.
FHS_LOADERS = {
    "x86_64": "/lib64/ld-linux-x86-64.so.2",
    "aarch64": "/lib/ld-linux-aarch64.so.1",
    "i686": "/lib/ld-linux.so.2",
    "riscv64": "/lib/ld-linux-riscv64-lp64d.so.1",
}
NIX_LD_FIX = (
    "Enable nix-ld in your NixOS configuration (`programs.nix-ld.enable = true;`, then "
    "`sudo nixos-rebuild switch` and log in again)"
)
TIMEOUT = 60


@dataclass
class Check:
    """One finding: ``status`` is OK, WARN or FAIL; ``fix`` says what to do about it."""

    status: str
    message: str
    fix: str = ""
    subject: str = ""
    """The project directory the check is about, or "" for the machine."""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Machine:
    """Facts about the operating system that decide which binaries can run."""

    nixos: bool
    nix_ld: bool
    """A loader for foreign (FHS) binaries is present: nix-ld's NIX_LD, or the FHS loader."""

    @classmethod
    def detect(
        cls, environ: Mapping[str, str] | None = None, root: str = "/", arch: str | None = None
    ) -> Machine:
        environ = os.environ if environ is None else environ
        nixos = os.path.exists(os.path.join(root, "etc/NIXOS"))
        loader = os.path.exists(os.path.join(root, fhs_loader(arch).lstrip("/")))
        return cls(nixos=nixos, nix_ld=bool(environ.get("NIX_LD")) or loader)


def fhs_loader(arch: str | None = None) -> str:
    """The loader a downloaded binary for ``arch`` (default: this machine's) asks for."""
    arch = arch or os.uname().machine
    return FHS_LOADERS.get(arch, FHS_LOADERS["x86_64"])


def _run(argv: list[str], env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        errors="replace",
        env=None if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
    )


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# -- the machine ------------------------------------------------------------------------------


def check_nix(configured: str | None = None) -> tuple[Check, str | None]:
    """Nix is found and new enough; returns the check and the nix path (None if unusable)."""
    try:
        path = nix.find_nix(configured)
        version = nix.nix_version(path)
    except nix.NixKernelError as exc:
        return Check(FAIL, exc.message, exc.hint), None
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    if numbers and numbers < MIN_NIX_VERSION:
        return (
            Check(
                FAIL,
                f"Nix {version} at {path} is too old: nixkernel needs `nix print-dev-env --json` "
                "(Nix 2.4 or newer).",
                "Upgrade Nix (https://nixos.org/download).",
            ),
            None,
        )
    return Check(OK, f"Nix {version} at {path}"), path


#: A derivation that builds in milliseconds with nothing but ``/bin/sh`` (NixOS has it, and its
#: sandbox provides it), never substituted: building it proves that this user may use the store.
BUILD_PROBE = (
    'derivation { name = "nixkernel-doctor"; system = builtins.currentSystem; '
    'builder = "/bin/sh"; args = [ "-c" "echo ok > $out" ]; '
    "allowSubstitutes = false; preferLocalBuild = true; }"
)
DEFAULT_SOCKET = "/nix/var/nix/daemon-socket/socket"
_SOCKET_ERROR = re.compile(
    r"(?:cannot connect to socket at|getting status of) ['\"]?(/[^'\"]+?)['\"]?: "
    r"(Permission denied|Connection refused|No such file or directory)"
)
_DAEMON_HUNG_UP = re.compile(
    r"cannot open connection to remote store.*(Connection reset|Broken pipe|end of file|"
    r"end-of-file)",
    re.IGNORECASE,
)
_STORE_DENIED = re.compile(r"['\"]?(/nix/[^'\"\s]*)['\"]?: Permission denied")


def _sibling(nix_path: str, name: str) -> str | None:
    """``name`` (nix-instantiate, nix-build) installed beside ``nix``, if it is there."""
    candidate = os.path.join(os.path.dirname(nix_path), name)
    return candidate if os.access(candidate, os.X_OK) else None


def user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def check_nix_usable(nix_path: str) -> Check:
    """Nix can evaluate and build for this user: ``nix-instantiate --eval -E '1 + 1'``, then a
    trivial derivation built through the store (the daemon, on a multi-user install). A Nix that
    is installed but refuses this user (daemon socket, ``allowed-users``, no daemon) fails every
    kernel, so this is where doctor says why."""
    user = user_name()
    instantiate, build = _sibling(nix_path, "nix-instantiate"), _sibling(nix_path, "nix-build")
    command = [nix_path, "--extra-experimental-features", "nix-command"]
    steps = [
        ("evaluate", [instantiate, "--eval", "-E", "1 + 1"] if instantiate
         else [*command, "eval", "--expr", "1 + 1"]),
        ("build", [build, "--no-out-link", "-E", BUILD_PROBE] if build
         else [*command, "build", "--impure", "--no-link", "--expr", BUILD_PROBE]),
    ]  # fmt: skip
    for what, argv in steps:
        try:
            result = _run(argv)
        except (OSError, subprocess.SubprocessError) as exc:
            return Check(FAIL, f"Nix cannot {what} as {user}: {exc}")
        if result.returncode != 0:
            message, fix = explain_store_access(result.stderr, user)
            return Check(FAIL, f"Nix cannot {what} as {user}: {message}", fix)
    return Check(OK, f"Nix evaluates and builds as {user} (a trivial derivation, in its store)")


def explain_store_access(output: str, user: str) -> tuple[str, str]:
    """What keeps ``user`` from Nix's store, from Nix's complaint: (message, fix)."""
    socket = _SOCKET_ERROR.search(output)
    if socket and socket.group(2) == "Permission denied":
        return _socket_denied(socket.group(1), user)
    if socket:
        path = socket.group(1)
        return (
            f"the Nix daemon is not running (nothing answers on {path}: {socket.group(2)}).",
            "Start it: `sudo systemctl start nix-daemon` (on NixOS: `sudo systemctl start "
            "nix-daemon.socket`). For a single-user install without a daemon, unset NIX_REMOTE "
            "for the Jupyter server.",
        )
    if _DAEMON_HUNG_UP.search(output):
        return (
            "the Nix daemon closed the connection: it does not allow this user "
            f"(`allowed-users` in nix.conf does not list {user} or a group of theirs).",
            f"Add {user} (or a group, `@nix-users`) to `allowed-users` in /etc/nix/nix.conf (on "
            f'NixOS: `nix.settings.allowed-users = [ "{user}" ];` then `sudo nixos-rebuild '
            "switch`), and restart the daemon: `sudo systemctl restart nix-daemon`.",
        )
    denied = _STORE_DENIED.search(output)
    if denied:
        return (
            f"{user} may not write to the Nix store ({denied.group(1)}: Permission denied), and "
            "no Nix daemon does it for them.",
            "On a multi-user install, have the daemon run (`sudo systemctl start nix-daemon`) "
            "and start Jupyter with NIX_REMOTE=daemon; on a single-user install, run Jupyter as "
            "the user who owns /nix.",
        )
    return (
        _last_line(output) or "Nix failed without a message.",
        f"Run `nix-build --no-out-link -E {shlex.quote(BUILD_PROBE)}` in a terminal, as {user}, "
        "to see Nix's whole error.",
    )


def _socket_denied(path: str, user: str) -> tuple[str, str]:
    """The daemon's socket is closed to ``user``: name the group that may use it."""
    import grp

    group = None
    for candidate in (os.path.dirname(path), path):
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if not st.st_mode & (0o001 if candidate != path else 0o002):
            try:
                group = grp.getgrgid(st.st_gid).gr_name
            except KeyError:
                group = str(st.st_gid)
            break
    if group is None:
        return (
            f"the Nix daemon's socket {path} is closed to {user} (Permission denied).",
            f"Give {user} access to {path} (on most installs: the group `nix-users`, "
            f"`sudo usermod -aG nix-users {user}`, then log in again).",
        )
    try:
        members = set(grp.getgrnam(group).gr_mem)
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        members, gid = set(), -1
    if user in members and gid not in os.getgroups():
        return (
            f"the Nix daemon's socket {path} is open to the group {group} only; {user} was "
            "added to it, but this session started before that.",
            "Log out and in again (or run `newgrp " + group + "`), then restart Jupyter.",
        )
    return (
        f"the Nix daemon's socket {path} is open to the group {group} only, and {user} is not "
        "in it (Permission denied).",
        f"`sudo usermod -aG {group} {user}`, then log out and in again and restart Jupyter (on "
        f'NixOS: `users.users.{user}.extraGroups = [ "{group}" ];`, or list {user} in '
        "`nix.settings.allowed-users`).",
    )


def nix_settings(nix_path: str) -> tuple[dict[str, str] | None, str]:
    """Nix's effective settings (``nix show-config``; ``nix config show`` on newer Nix), or
    None and Nix's complaint. Run without extra flags, so a disabled nix-command shows."""
    output = ""
    for argv in ([nix_path, "show-config"], [nix_path, "config", "show"]):
        try:
            result = _run(argv)
        except (OSError, subprocess.SubprocessError) as exc:
            return None, str(exc)
        if result.returncode == 0:
            settings = {}
            for line in result.stdout.splitlines():
                key, sep, value = line.partition(" = ")
                if sep:
                    settings[key.strip()] = value.strip()
            return settings, ""
        output = result.stderr
        if "experimental Nix feature" in output:
            break
    return None, _last_line(output)


def check_experimental_features(nix_path: str, need_flakes: bool = True) -> Check:
    """Which of ``nix-command`` and ``flakes`` Nix's own settings enable. nixkernel passes
    ``--extra-experimental-features 'nix-command flakes'`` on each of its calls (as nix-direnv
    does), so kernels need neither: their absence only matters for the ``nix develop``
    commands a user types (the ones nixkernel suggests to reproduce a failure)."""
    enable = (
        "To use `nix develop` in a terminal too, add `experimental-features = nix-command "
        "flakes` to ~/.config/nix/nix.conf (or /etc/nix/nix.conf; on NixOS: "
        '`nix.settings.experimental-features = [ "nix-command" "flakes" ];`).'
    )
    passed = "nixkernel enables them on its own Nix calls, so kernels do not need them"
    settings, complaint = nix_settings(nix_path)
    if settings is None:
        if "experimental Nix feature" in complaint:
            return Check(OK, f"Nix's `nix-command` feature is not enabled; {passed}.", enable)
        return Check(WARN, f"Could not read Nix's settings: {complaint}", enable)
    features = settings.get("experimental-features", "").split()
    missing = [f for f in ("nix-command", "flakes") if f not in features]
    if "flakes" in missing and not need_flakes:
        missing.remove("flakes")
    if missing:
        return Check(
            OK, f"Nix experimental features not enabled: {', '.join(missing)}; {passed}.", enable
        )
    return Check(OK, f"Nix experimental features: {' '.join(features)}")


def check_nixpkgs(nix_path: str, needed_by: list[str]) -> Check:
    """``<nixpkgs>`` resolves on the server's NIX_PATH, for the ``shell.nix`` files importing it."""
    instantiate = os.path.join(os.path.dirname(nix_path), "nix-instantiate")
    argv = (
        [instantiate, "--find-file", "nixpkgs"]
        if os.access(instantiate, os.X_OK)
        else nix.nix_command(nix_path, "eval", "--impure", "--expr", "<nixpkgs>")
    )
    try:
        result = _run(argv)
    except (OSError, subprocess.SubprocessError) as exc:
        return Check(WARN, f"Could not ask Nix where <nixpkgs> is: {exc}")
    if result.returncode == 0:
        return Check(OK, f"<nixpkgs> is {result.stdout.strip()}")
    if needed_by:
        status, users = FAIL, f"imported by {', '.join(needed_by)}"
    else:
        # A shell.nix may still reach it through another file: worth a warning, not a failure.
        status, users = WARN, "no shell.nix here names it directly"
    return Check(
        status,
        f"<nixpkgs> is not on the Nix search path (NIX_PATH={os.environ.get('NIX_PATH', '')!r}); "
        f"{users}.",
        "Add a channel (`nix-channel --add https://nixos.org/channels/nixos-unstable nixpkgs && "
        "nix-channel --update`), start Jupyter with NIX_PATH=nixpkgs=/path/to/nixpkgs, or pin "
        "nixpkgs in the file (`import (fetchTarball ...) {}`).",
    )


def check_nix_ld(machine: Machine) -> Check | None:
    """On NixOS: whether downloaded binaries (uv's Pythons, some wheels) can find a loader."""
    if not machine.nixos:
        return None
    if machine.nix_ld:
        return Check(OK, "NixOS with nix-ld: downloaded binaries can run.")
    return Check(
        WARN,
        "NixOS without nix-ld (NIX_LD is unset and there is no "
        f"{fhs_loader()}): downloaded Pythons and binary wheels cannot run.",
        NIX_LD_FIX + ", or use only Nix-provided Pythons.",
    )


# -- projects ---------------------------------------------------------------------------------


def check_venv_interpreter(venv: str, machine: Machine, project: str = "") -> Check | None:
    """A virtualenv made with a downloaded interpreter (uv's python-build-standalone builds),
    which NixOS can only run with nix-ld."""
    home = pyvenv_cfg(venv).get("home")
    if home is None:
        return None
    real = os.path.realpath(home)
    if real.startswith("/nix/store/"):
        return Check(OK, f"{venv} uses a Nix-provided Python ({home})", subject=project)
    if not machine.nixos:
        return None
    downloaded = "python-build-standalone" if "/uv/python/" in real + "/" else "non-Nix"
    if machine.nix_ld:
        return Check(
            OK, f"{venv} uses a {downloaded} Python ({home}); nix-ld lets it run", subject=project
        )
    return Check(
        FAIL,
        f"{venv} was made with a {downloaded} Python ({home}), which cannot run on NixOS "
        "without nix-ld.",
        f"{NIX_LD_FIX}; or recreate the venv with a Nix-provided Python: in the project's shell, "
        "`UV_PYTHON_DOWNLOADS=never uv venv --clear --python $(which python3)` then `uv sync` "
        "(set UV_PYTHON_DOWNLOADS=never for good, e.g. in the shell's environment).",
        subject=project,
    )


def check_flake_tracked(project: str) -> Check:
    """A flake inside a git repository: Nix sees only the files git tracks."""
    untracked = nix.untracked_flake_files(project)
    if untracked:
        names = " ".join(os.path.basename(u) for u in untracked)
        return Check(
            FAIL,
            f"{', '.join(untracked)} not tracked by git, so Nix cannot see it.",
            f"Run `cd {shlex.quote(project)} && git add --intent-to-add {names}` (no commit "
            "needed).",
            subject=project,
        )
    return Check(OK, "flake files are visible to Nix (tracked by git, or no git)", subject=project)


def check_nix_files_parse(nix_path: str, project: str) -> Check | None:
    """Every Nix file of the project parses (``nix-instantiate --parse``: no evaluation, no
    store, no network): a syntax error is found before anything is evaluated."""
    from .cache import project_nix_files

    files = sorted(project_nix_files(project))
    instantiate = _sibling(nix_path, "nix-instantiate")
    if not files or instantiate is None:
        return None
    try:
        result = _run([instantiate, "--parse", *files])
    except (OSError, subprocess.SubprocessError) as exc:
        return Check(WARN, f"Could not parse the Nix files: {exc}", subject=project)
    if result.returncode == 0:
        return Check(OK, f"{len(files)} Nix file(s) parse", subject=project)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    located = re.search(r"at (/[^:\s]+\.nix):(\d+):(\d+)", result.stderr)
    if located is None or located.group(1) not in files:
        # Not a syntax error in these files (e.g. Nix cannot reach its store: the machine
        # checks above say why).
        reason = _last_line(result.stderr)
        return Check(WARN, f"Could not parse the Nix files: {reason}", subject=project)
    path, line = located.group(1), located.group(2)
    error = next((ln.strip() for ln in lines if ln.strip().startswith("error:")), lines[0])
    error = error.removeprefix("error:").strip()
    return Check(
        FAIL,
        f"{os.path.relpath(path, project)}: {error} at line {line}",
        f"Fix it in {path}; check with `nix-instantiate --parse {shlex.quote(path)}`.\n"
        + "\n".join(lines[:12]),
        subject=project,
    )


def check_flake_inputs(project: str) -> Check | None:
    """The inputs flake.lock pins are in the store; those that are not would be downloaded by
    the first evaluation (which fails offline). Nix does not run: their store paths follow from
    their narHash (see :mod:`nixkernel.flakelock`)."""
    from . import flakelock

    try:
        inputs = flakelock.locked_inputs(project)
    except ValueError as exc:
        return Check(
            FAIL, f"flake.lock cannot be read: {exc}", "Regenerate it: `nix flake lock`.",
            subject=project,
        )  # fmt: skip
    if not inputs:
        return None
    missing = flakelock.missing_inputs(project)
    if not missing:
        return Check(OK, f"the {len(inputs)} flake input(s) are in the Nix store", subject=project)
    shown = ", ".join(f"{i.name} ({i.reference})" for i in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return Check(
        WARN,
        f"{len(missing)} flake input(s) not in the Nix store: {shown}{more}. The first "
        "evaluation downloads them, so it needs the network (or a substituter that has them).",
        "Evaluate it once while online: `jupyter nixkernel doctor --evaluate` or `jupyter "
        "nixkernel warm NAME` (for an offline machine: `nix flake archive` it on one that is "
        "online and copy it over with `nix copy`).",
        subject=project,
    )


def evaluate_target(target: KernelTarget, manager: NixKernelSpecManager) -> Check | None:
    """Evaluate ``target``'s environment now (``doctor --evaluate``), unless it is fresh."""
    source = target_source(target, manager.venv_library_shell or None)
    if source is None or target.kind == KIND_AUTO:
        return None
    try:
        resolved = manager.cache.ensure(source, manager.nix_executable or None, allow_stale=False)
    except nix.NixKernelError as exc:
        return Check(
            FAIL, f"{target.display_name}: {exc.message}",
            "\n".join(part for part in (exc.hint, exc.details) if part), subject=target.project,
        )  # fmt: skip
    what = f"evaluated in {resolved.seconds:.1f} s" if resolved.evaluated else "already evaluated"
    return Check(OK, f"{target.display_name}: {what}", subject=target.project)


def imports_nixpkgs(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "<nixpkgs>" in f.read()
    except OSError:
        return False


def check_ipykernel(target: KernelTarget, manager: NixKernelSpecManager) -> Check | None:
    """ipykernel imports in the Python the kernel would run: in the cached environment, or in
    a virtualenv that needs no Nix. Environments not evaluated yet are reported, not evaluated."""
    if target.kind == KIND_AUTO or target.problem:
        return None
    if target.kernel is not None:
        return check_shell_kernel(target, manager)
    label = target.display_name
    source = target_source(target, manager.venv_library_shell or None, manager.nix_args)
    variables: Mapping[str, str] = {}
    shell_path: str | None = None
    model: Mapping | None = None
    if source is not None:
        state, entry = manager.cache.inspect(source, manager.nix_executable or None)
        if entry is None or state == "none":
            return Check(
                WARN,
                f"{label}: not evaluated yet, so its Python and ipykernel were not checked.",
                "Run `jupyter nixkernel doctor --evaluate` (evaluates with Nix, then checks), or "
                f"`jupyter nixkernel warm {target.name}` and doctor again.",
                subject=target.project,
            )
        variables = entry["variables"]
        shell_path = variables.get("PATH", "")
        model = entry["shell"]
    env = kernel_environment(variables, os.environ, target.venv, model)
    try:
        python = find_python(target, env, shell_path)
        result = _run([python, "-c", "import ipykernel"], env=env)
    except nix.NixKernelError as exc:
        return Check(FAIL, f"{label}: {exc.message}", exc.hint, subject=target.project)
    except (OSError, subprocess.SubprocessError) as exc:
        return Check(FAIL, f"{label}: its Python does not run: {exc}", subject=target.project)
    if result.returncode != 0:
        return Check(
            FAIL,
            f"{label}: `{shlex.quote(python)} -c 'import ipykernel'` failed: "
            f"{_last_line(result.stderr)}",
            "To fix it, " + ipykernel_hint(target) + ".",
            subject=target.project,
        )
    return Check(OK, f"{label}: ipykernel found ({python})", subject=target.project)


def check_shell_kernel(target: KernelTarget, manager: NixKernelSpecManager) -> Check:
    """A kernel of another language the shell carries (R...): its program is on the PATH of
    the cached environment (after the spec's env), as the launcher will look for it."""
    assert target.kernel is not None
    label = target.display_name
    source = target_source(target, manager.venv_library_shell or None)
    _state, entry = manager.cache.inspect(source, manager.nix_executable or None)
    env = kernel_environment(entry["variables"] if entry else {}, os.environ)
    try:
        executable, _argv = kernels.command(target.kernel, env, "{connection_file}", False)
    except nix.NixKernelError as exc:
        return Check(FAIL, f"{label}: {exc.message}", exc.hint, subject=target.project)
    return Check(OK, f"{label}: runs {executable}", subject=target.project)


# -- all of it ----------------------------------------------------------------------------------


def run_checks(
    manager: NixKernelSpecManager, machine: Machine | None = None, evaluate: bool = False
) -> list[Check]:
    """Every check, for the machine and for each project under ``manager.project_dirs``: the
    cheap ones (no evaluation of the projects); with ``evaluate``, each environment is also
    evaluated (runs Nix, may download) before its Python is checked."""
    machine = machine or Machine.detect()
    targets = manager.refresh()
    checks: list[Check] = []
    nix_check, nix_path = check_nix(manager.nix_executable or None)
    checks.append(nix_check)
    usable = check_nix_usable(nix_path) if nix_path is not None else None
    if usable is not None:
        checks.append(usable)
    has_flakes = any(t.kind == KIND_FLAKE for t in targets)
    importing = sorted(
        {
            os.path.join(t.project, "shell.nix")
            for t in targets
            if t.kind == KIND_SHELL_NIX and imports_nixpkgs(os.path.join(t.project, "shell.nix"))
        }
    )
    if nix_path is not None:
        checks.append(check_experimental_features(nix_path, need_flakes=has_flakes))
        if importing or any(t.kind == KIND_SHELL_NIX for t in targets):
            checks.append(check_nixpkgs(nix_path, importing))
    nix_ld = check_nix_ld(machine)
    if nix_ld is not None:
        checks.append(nix_ld)

    for project in sorted({t.project for t in targets}):
        mine = [t for t in targets if t.project == project]
        if nix_path is not None and any(t.kind in (KIND_FLAKE, KIND_SHELL_NIX) for t in mine):
            parsed = check_nix_files_parse(nix_path, project)
            if parsed is not None:
                checks.append(parsed)
        if any(t.kind == KIND_FLAKE for t in mine):
            checks.append(check_flake_tracked(project))
            inputs = check_flake_inputs(project)
            if inputs is not None:
                checks.append(inputs)
        venvs = sorted({t.venv for t in mine if t.venv})
        for venv in venvs:
            problem = next((t.problem for t in mine if t.venv == venv and t.problem), None)
            if problem:
                checks.append(Check(FAIL, f"{venv} cannot run.", problem, subject=project))
                continue
            venv_check = check_venv_interpreter(venv, machine, project)
            if venv_check is not None:
                checks.append(venv_check)
        for target in mine:
            if target.problem and not target.venv:  # a shell without Python (the listing's)
                checks.append(Check(FAIL, f"{target.display_name}: {target.problem}",
                                    subject=project))  # fmt: skip
                continue
            if evaluate and usable is not None and usable.status == OK and not target.problem:
                evaluated = evaluate_target(target, manager)
                if evaluated is not None:
                    checks.append(evaluated)
                    if evaluated.status == FAIL:
                        continue
            ipykernel = check_ipykernel(target, manager)
            if ipykernel is not None:
                checks.append(ipykernel)
    return checks


def failed(checks: list[Check]) -> bool:
    return any(c.status == FAIL for c in checks)


def format_report(checks: list[Check]) -> str:
    """One line per check (``OK``/``WARN``/``FAIL``), the fix indented below, grouped by project."""
    lines: list[str] = []
    subject: str | None = None
    for check in checks:
        if check.subject != subject:
            subject = check.subject
            if lines:
                lines.append("")
            lines.append(subject or "This machine")
        lines.append(f"  {check.status:<4}  {check.message}")
        if check.fix:
            lines.append(f"        fix: {check.fix}")
    fails = sum(c.status == FAIL for c in checks)
    warns = sum(c.status == WARN for c in checks)
    lines.append("")
    lines.append(f"{fails} problem(s), {warns} warning(s).")
    return "\n".join(lines)
