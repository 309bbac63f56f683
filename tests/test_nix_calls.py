"""How nixkernel calls Nix: the flags, environment and references it gives each ``nix`` call,
checked against what ``nix develop`` / ``nix-shell`` of the running Nix version do.

Each test names the Nix rule it follows and the Nix source file that states it (NixOS/nix,
tags 2.8.0 to 2.34.0); see docs/nix-semantics.md.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from nixprojects import (
    DEFAULT_SHELL,
    MINI_NIX,
    Raw,
    git_track,
    shell_expr,
    write_flake,
    write_shell_nix,
)

from nixkernel import nix as nixmod
from nixkernel.describe import KIND_FLAKE, KIND_SHELL_NIX, NixSource
from nixkernel.nix import nix_release, nix_version, parse_release, parse_version

SYSTEM = "x86_64-linux"
GREETING = "import os; print(os.environ['GREETING'])"


def stock_nix_config(registry: Path) -> str:
    """The shared README's "Stock settings": the offline configuration without
    ``experimental-features``, as on a stock Nix or NixOS."""
    return f"sandbox = false\nsubstituters =\nflake-registry = {registry}\nwarn-dirty = false\n"


def kernel_of(manager, kind: str, project: Path, shell: str | None = None) -> str:
    (target,) = [
        t
        for t in manager.targets()
        if t.kind == kind and t.project == str(project) and (shell is None or t.shell == shell)
    ]
    return target.name


def test_kernels_start_without_experimental_features_in_nix_settings(
    nix, projects, manager_factory, kernel_runner, monkeypatch: pytest.MonkeyPatch, tmp_path
):
    """With no `experimental-features` in Nix's settings, a flake kernel and a shell.nix kernel
    start: nixkernel passes `--extra-experimental-features 'nix-command flakes'` on every nix
    call, as nix-direnv does (without it: "experimental Nix feature 'nix-command' is
    disabled")."""
    registry = tmp_path / "registry.json"
    registry.write_text('{"flakes": [], "version": 2}')
    monkeypatch.setenv("NIX_CONFIG", stock_nix_config(registry))
    flake = write_flake(projects / "flk")
    classic = write_shell_nix(projects / "classic")
    manager = manager_factory(project_dirs=[str(projects)])
    for kind, project in ((KIND_FLAKE, flake), (KIND_SHELL_NIX, classic)):
        run = kernel_runner(
            manager,
            kernel_of(manager, kind, project),
            GREETING,
            project,
        )
        assert run.stdout.strip() == "hello from the dev shell", (kind, run.error_text)


# -- nix --version ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "implementation", "version", "numbers"),
    [
        # NixOS/nix src/libmain/shared.cc printVersion: "%1% (Nix) %2%".
        ("nix (Nix) 2.8.0\n", "Nix", "2.8.0", (2, 8, 0)),
        ("nix (Nix) 2.34.8\n", "Nix", "2.34.8", (2, 34, 8)),
        # DeterminateSystems/nix-src src/libmain/shared.cc: version() is
        # fmt("(Determinate Nix %s) %s", determinateNixVersion, nixVersion), printed after the
        # program name: the Nix version is the second number, not Determinate's 3.x.
        ("nix (Determinate Nix 3.6.2) 2.29.0\n", "Determinate Nix 3.6.2", "2.29.0", (2, 29, 0)),
        ("nix (Determinate Nix 3.20.0) 2.34.6\n", "Determinate Nix 3.20.0", "2.34.6", (2, 34, 6)),
        # lix-project/lix lix/libmain/shared.cc printVersion: fmt("%1% (Lix, like Nix) %2%",
        # programName, nixVersion), followed by "System type: ..." lines; Lix numbers itself
        # 2.90 and up (forked from Nix 2.18), and its first release printed a -lix suffix.
        ("nix (Lix, like Nix) 2.91.1\nSystem type: x86_64-linux\n", "Lix", "2.91.1", (2, 91, 1)),
        ("nix (Lix, like Nix) 2.90.0-lix\n", "Lix", "2.90.0-lix", (2, 90, 0)),
    ],
)
def test_nix_version_of_nix_lix_and_determinate_nix(text, implementation, version, numbers):
    """`nix --version` parses to the Nix version (never Determinate's own 3.x) and the
    implementation, whose rules differ (Lix keeps Nix 2.18's flake-path rule)."""
    release = parse_release(text)
    assert (release.implementation, release.version, release.numbers) == (
        implementation,
        version,
        numbers,
    )
    assert parse_version(text) == version
    assert release.is_lix == (implementation == "Lix")


def test_nix_version_is_asked_once_per_installation(counting_nix):
    """An evaluation needs the version several times (cache entry, nix-shell rules): Nix runs
    once per installation and process."""
    first = nix_release(counting_nix.path)
    assert nix_version(counting_nix.path) == first.version
    assert [c for c in counting_nix.calls() if c == "--version"] == ["--version"]


# -- flake outputs: the order nix develop looks in ------------------------------------------------


def write_flake_outputs(directory: Path, outputs: str) -> Path:
    """A flake (tracked in git) whose outputs are ``outputs``, with ``mini`` in scope."""
    directory.mkdir(parents=True)
    shutil.copy(MINI_NIX, directory / "mini.nix")
    (directory / "flake.nix").write_text(
        "{\n  outputs = { self }:\n"
        f'    let mini = import ./mini.nix {{ system = "{SYSTEM}"; }};\n'
        f"    in {outputs};\n}}\n"
    )
    git_track(directory)
    return directory


def todays_kernel_name(project: Path, kind: str, shell: str) -> str:
    """The kernel name nixkernel gave this environment before (names in saved notebooks)."""
    digest = hashlib.sha256(f"{kind}\0{project}\0{shell}".encode()).hexdigest()[:10]
    return f"nix-{project.name}-{kind}-{digest}"


@pytest.mark.parametrize(
    "outputs",
    [
        f"{{ devShell.{SYSTEM} = {shell_expr(DEFAULT_SHELL)}; }}",
        f"{{ packages.{SYSTEM}.default = {shell_expr(DEFAULT_SHELL)}; }}",
    ],
    ids=["legacy-devShell", "packages.default"],
)
def test_flake_without_devshells_gets_one_working_kernel(
    nix, projects, manager_factory, kernel_runner, outputs
):
    """`nix develop` with no attribute tries devShells.<sys>.default, devShell.<sys>,
    packages.<sys>.default, defaultPackage.<sys> (src/nix/develop.cc getDefaultFlakeAttrPaths,
    Nix 2.8 to 2.34): nixkernel passes the bare flake reference and lets Nix look. Listing the
    devShell names copes with a flake that has none: one kernel, under the name it always had."""
    project = write_flake_outputs(projects / "legacy", outputs)
    assert nixmod.flake_shell_names(nix, str(project), SYSTEM) == []
    manager = manager_factory(project_dirs=[str(projects)])
    manager.refresh()
    assert manager.learn_flake_shells()
    (target,) = manager.refresh()
    assert target.kind == KIND_FLAKE and target.display_name == "legacy (flake)"
    assert target.name == todays_kernel_name(project, "flake", "default")
    run = kernel_runner(manager, target.name, GREETING, project)
    assert run.stdout.strip() == "hello from the dev shell", run.error_text


def test_named_shell_and_library_shell_reference_follow_nix_develop_prefixes(nix, tmp_path):
    """`ref#name` is looked up as devShells.<sys>.name, then packages.<sys>.name and
    legacyPackages.<sys>.name (getDefaultFlakeAttrPathPrefixes): a venv_library_shell
    `/lib#pylibs` finds a package, and a devShell name with a dot is quoted, not split."""
    lib = write_flake_outputs(
        tmp_path / "lib",
        f"{{ packages.{SYSTEM}.pylibs = {shell_expr({'LIB': 'from packages'})}; "
        f'devShells.{SYSTEM}."py3.11" = {shell_expr({"LIB": "dotted"})}; }}',
    )
    source = NixSource.parse(f"{lib}#pylibs")
    assert source == NixSource("flake", str(lib), "pylibs")
    assert nixmod.print_dev_env(nix, source).data["variables"]["LIB"]["value"] == "from packages"
    assert NixSource.parse(str(lib)) == NixSource("flake", str(lib), None)
    dotted = NixSource.flake_shell(str(lib), "py3.11")
    assert dotted.installable_args() == [f'{lib}#"py3.11"']
    assert nixmod.print_dev_env(nix, dotted).data["variables"]["LIB"]["value"] == "dotted"
    assert nixmod.flake_shell_names(nix, str(lib), SYSTEM) == ["py3.11"]


# -- shell.nix as nix-shell evaluates it ------------------------------------------------------


def write_nix_file(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(MINI_NIX, directory / "mini.nix")
    (directory / name).write_text(text)
    return directory


def shell_nix_kernel(manager, project: Path) -> str:
    return kernel_of(manager, KIND_SHELL_NIX, project)


def test_flake_compat_style_shell_nix_gets_the_shell_and_sees_in_nix_shell(
    nix, projects, manager_factory, kernel_runner
):
    """nix-shell evaluates with IN_NIX_SHELL=impure in its environment (nix-build.cc,
    setenv before parsing, all versions) and calls a function naming `inNixShell` with
    `inNixShell = true` (2.8: every function; >= 2.10: takesNixShellAttr). A flake-compat style
    `if inNixShell then shell else package` file gives the shell, and the evaluation sees
    IN_NIX_SHELL (lib.inNixShell, Haskell's developPackage)."""
    shell = shell_expr({**DEFAULT_SHELL, "SEEN": Raw('builtins.getEnv "IN_NIX_SHELL"')})
    project = write_nix_file(
        projects / "compat",
        "shell.nix",
        "{ inNixShell ? false }:\n"
        "let mini = import ./mini.nix {};\n"
        f"in if inNixShell then {shell} else mini.stdenv\n",
    )
    manager = manager_factory(project_dirs=[str(projects)])
    run = kernel_runner(
        manager,
        shell_nix_kernel(manager, project),
        "import os; print(os.environ['GREETING'], os.environ['SEEN'])",
        project,
    )
    assert run.stdout.strip() == "hello from the dev shell impure", run.error_text


def test_function_with_ellipsis_gets_in_nix_shell_only_on_nix_before_2_10(
    nix, projects, manager_factory, kernel_runner
):
    """`{ ... }@args: import ./inner.nix args` with inner.nix `{ }: mkShell ...`. Nix 2.8/2.9's
    nix-shell adds inNixShell to the automatic arguments of every call, so the ellipsis
    receives it and inner.nix fails ("called with unexpected argument 'inNixShell'"); since
    2.10 (nix-build.cc takesNixShellAttr) only a function naming inNixShell gets it, and the
    file works. The kernel does what this Nix's own `nix-shell --run` does."""
    project = write_nix_file(
        projects / "forward", "shell.nix", "{ ... }@args: import ./inner.nix args\n"
    )
    (project / "inner.nix").write_text(
        f"{{ }}:\nlet mini = import ./mini.nix {{}};\nin {shell_expr(DEFAULT_SHELL)}\n"
    )
    nix_shell = Path(nix).parent / "nix-shell"
    terminal = subprocess.run(
        [str(nix_shell), str(project / "shell.nix"), "--run", "echo $GREETING"],
        capture_output=True,
        text=True,
        cwd=project,
        env={**os.environ, "NIX_BUILD_SHELL": "bash"},
    )
    takes_nix_shell_attr = nix_release(nix).numbers >= (2, 10)
    assert (terminal.returncode == 0) == takes_nix_shell_attr, terminal.stderr
    manager = manager_factory(project_dirs=[str(projects)])
    run = kernel_runner(manager, shell_nix_kernel(manager, project), GREETING, project)
    if takes_nix_shell_attr:
        assert terminal.stdout.strip() == "hello from the dev shell"
        assert run.stdout.strip() == "hello from the dev shell", run.error_text
    else:
        assert "inNixShell" in terminal.stderr
        assert run.implementation == "nixkernel-fallback"
        assert "inNixShell" in run.error_text


def test_in_nix_shell_is_passed_through_a_file_that_only_imports_another(nix, tmp_path):
    """takesNixShellAttr looks at the file's value: `import ./default.nix` whose function names
    inNixShell receives it (and a plain shell file gets no --arg on Nix >= 2.10)."""
    from nixkernel import nixshell

    project = write_nix_file(tmp_path / "p", "shell.nix", "import ./default.nix\n")
    (project / "default.nix").write_text(
        "{ inNixShell ? false }:\nlet mini = import ./mini.nix {};\n"
        'in mini.mkShell { IN = if inNixShell then "shell" else "package"; }\n'
    )
    source = NixSource("file", str(project / "shell.nix"))
    assert nixshell.in_nix_shell_args(nix, source) == ["--arg", "inNixShell", "true"]
    assert nixmod.print_dev_env(nix, source).data["variables"]["IN"]["value"] == "shell"
    plain = write_shell_nix(tmp_path / "plain")
    expected = [] if nix_release(nix).numbers >= (2, 10) else ["--arg", "inNixShell", "true"]
    assert nixshell.in_nix_shell_args(nix, NixSource("file", str(plain / "shell.nix"))) == (
        expected
    )


@pytest.mark.parametrize(
    ("text", "is_function"),
    [
        ("{ inNixShell ? false }: 1", True),
        ("# comment\n{ pkgs ? import <nixpkgs> {} }: pkgs.mkShell {}", True),
        ("{ ... }@args: import ./inner.nix args", True),
        ("args@{ ... }: 1", True),
        ("{ }: 1", True),
        ("x: x", True),
        ("(\n /* c */ { a, b }: a)", True),
        ("{ # c\n  a ? 1 }: a", True),
        ("let mini = import ./mini.nix {}; in mini.mkShell {}", False),
        ("with import <nixpkgs> {}; mkShell {}", False),
        ("{ a = 1; }", False),
        ("{ inherit x; }", False),
        ("{ a.b = 1; }", False),
        ("{ }", False),
        ("http://example.org/x", False),
        ("(import ./flake-compat.nix { src = ./.; }).shellNix", False),
    ],
)
def test_function_literal_is_recognised_from_the_head_of_the_file(text, is_function):
    """Only a file starting with a function literal is asked for its formals (a cheap
    evaluation): any other file would have to be evaluated to know, and is not a function."""
    from nixkernel.nixshell import is_function_literal

    assert is_function_literal(text) == is_function


def test_default_nix_alone_is_not_a_project(tmp_path):
    """nix-shell falls back to default.nix, but a default.nix is usually a package (often a
    callPackage function nix-shell cannot call): nixkernel offers it only through a shell.nix
    (`import ./default.nix`), so package directories do not become kernels."""
    from nixkernel.discovery import discover

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "default.nix").write_text("{ stdenv }: stdenv.mkDerivation {}\n")
    (tmp_path / "shelled").mkdir()
    (tmp_path / "shelled" / "default.nix").write_text("{ }: {}\n")
    (tmp_path / "shelled" / "shell.nix").write_text("import ./default.nix\n")
    assert [p.path for p in discover([str(tmp_path)], 3)] == [str(tmp_path / "shelled")]


# -- flake path characters ----------------------------------------------------------------------


@pytest.mark.parametrize("char", [" ", "@", ":"], ids=["space", "at", "colon"])
def test_flake_path_characters_by_the_running_nix(
    nix, projects, manager_factory, kernel_runner, char
):
    """Since Nix 2.19 a path flake reference is everything before '?' or '#'
    (flakeref.cc parsePathFlakeRefWithFragment); before, each path component had to match
    fnRegex `[0-9a-zA-Z-._~!$&'"()*+,;=]+`. A flake at `a b`, `a@b`, `a:b` starts on 2.26 and
    2.34; on 2.8 it is refused up front with the reason and the way out."""
    project = write_flake(projects / f"a{char}b")
    manager = manager_factory(project_dirs=[str(projects)])
    run = kernel_runner(manager, kernel_of(manager, KIND_FLAKE, project), GREETING, project)
    if nix_release(nix).numbers >= (2, 19):
        assert run.stdout.strip() == "hello from the dev shell", run.error_text
    else:
        assert run.implementation == "nixkernel-fallback"
        assert f"cannot use the flake in {str(project)!r}" in run.error_text
        assert repr(char) in run.error_text and "Upgrade to Nix 2.19" in run.error_text


@pytest.mark.parametrize(
    ("implementation", "version", "path", "problem"),
    [
        ("Nix", "2.8.0", "/p/a b", "' '"),
        ("Nix", "2.18.1", "/p/a@b:c", "':', '@'"),
        ("Nix", "2.18.1", "/p/it's-(ok);=+,~!$&*\"", None),
        ("Nix", "2.19.0", "/p/a b@c:d%é[x]", None),
        ("Determinate Nix 3.6.2", "2.29.0", "/p/a b", None),
        # Lix kept Nix 2.18's parser (lix/libexpr/flake/flakeref.cc: the same fnRegex).
        ("Lix", "2.91.1", "/p/a b", "' '"),
        # '?' and '#' start query and fragment for every version; '^' starts the outputs
        # (outputs-spec.cc ExtendedOutputsSpec::parse, since 2.13).
        ("Nix", "2.34.8", "/p/a?b", "'?'"),
        ("Nix", "2.34.8", "/p/a#b", "'#'"),
        ("Nix", "2.34.8", "/p/a^b", "'^'"),
    ],
)
def test_flake_path_rule_of_each_nix(implementation, version, path, problem):
    """What each Nix rejects in a path flake reference, nothing more (captured rules)."""
    release = nixmod.NixRelease(implementation, version)
    assert nixmod.flake_path_problem(path, release) == problem


# -- per-project Nix flags: .envrc and nix_args ----------------------------------------------------

IMPURE_SHELL = {**DEFAULT_SHELL, "SEEN": Raw('builtins.getEnv "NIXKERNEL_TEST_IMPURE"')}
SEEN = "import os; print(repr(os.environ['SEEN']))"


def test_envrc_use_flake_impure_reaches_the_evaluation_and_reevaluates(
    nix, projects, manager_factory, kernel_runner, monkeypatch: pytest.MonkeyPatch
):
    """`use flake .#py --impure` in .envrc (nix-direnv passes its flags to `nix print-dev-env`):
    the flake kernels evaluate with --impure, so builtins.getEnv sees the server's environment
    (pure evaluation gives ""). The flags are part of the cache key: adding them re-evaluates,
    and `#py` does not change which shell a kernel is."""
    monkeypatch.setenv("NIXKERNEL_TEST_IMPURE", "from the server")
    project = write_flake(projects / "devenvish", {"default": IMPURE_SHELL})
    manager = manager_factory(project_dirs=[str(projects)])
    name = kernel_of(manager, KIND_FLAKE, project)
    assert kernel_runner(manager, name, SEEN, project).stdout.strip() == "''"
    (project / ".envrc").write_text("# nix-direnv\nuse flake .#py --impure  # devenv\n")
    run = kernel_runner(manager, name, SEEN, project)
    assert run.stdout.strip() == "'from the server'", run.error_text


def test_config_nix_args_reach_flake_and_shell_nix(
    nix, projects, manager_factory, kernel_runner, monkeypatch: pytest.MonkeyPatch
):
    """c.NixKernelSpecManager.nix_args (a directory or a glob -> flags) reaches the launcher
    through its argv: `--impure` for a flake, `--arg` for a shell.nix function."""
    monkeypatch.setenv("NIXKERNEL_TEST_IMPURE", "configured")
    flake = write_flake(projects / "flk", {"default": IMPURE_SHELL})
    classic = write_nix_file(
        projects / "classic",
        "shell.nix",
        '{ greeting ? "default" }:\nlet mini = import ./mini.nix {};\n'
        f"in {shell_expr({**DEFAULT_SHELL, 'GREETING': Raw('greeting')})}\n",
    )
    manager = manager_factory(
        project_dirs=[str(projects)],
        nix_args={str(flake): ["--impure"], str(projects / "cl*"): ["--arg", "greeting", '"hi"']},
    )
    flake_kernel = kernel_of(manager, KIND_FLAKE, flake)
    assert "--nix-args=" in " ".join(manager.get_kernel_spec(flake_kernel).argv)
    run = kernel_runner(manager, flake_kernel, SEEN, flake)
    assert run.stdout.strip() == "'configured'", run.error_text
    run = kernel_runner(manager, kernel_of(manager, KIND_SHELL_NIX, classic), GREETING, classic)
    assert run.stdout.strip() == "hi", run.error_text


def test_envrc_use_nix_arg_reaches_shell_nix_cached_and_direct(
    nix, projects, manager_factory, kernel_runner
):
    """`use nix --arg greeting '"from envrc"'` (nix-direnv's use_nix keeps --arg, --argstr,
    -I, --option and -A): the shell.nix kernel evaluates with it, in cached mode
    (`nix print-dev-env`) and in direct mode (`nix-shell`)."""
    classic = write_nix_file(
        projects / "classic",
        "shell.nix",
        '{ greeting ? "default" }:\nlet mini = import ./mini.nix {};\n'
        f"in {shell_expr({**DEFAULT_SHELL, 'GREETING': Raw('greeting')})}\n",
    )
    (classic / ".envrc").write_text("use nix --arg greeting '\"from envrc\"'\n")
    for mode in ("cached", "direct"):
        manager = manager_factory(project_dirs=[str(projects)], launch_mode=mode)
        name = kernel_of(manager, KIND_SHELL_NIX, classic)
        run = kernel_runner(manager, name, GREETING, classic)
        assert run.stdout.strip() == "from envrc", (mode, run.error_text)


@pytest.mark.parametrize(
    ("envrc", "flake", "nix", "attr"),
    [
        ("use flake", (), (), None),
        ("use flake .#py --impure", ("--impure",), (), None),
        (
            "use_flake . --override-input a path:/x  # comment",
            ("--override-input", "a", "path:/x"),
            (),
            None,
        ),
        ("use flake ./sub --impure", (), (), None),  # another flake
        ("use flake --impure", (), (), None),  # nix-direnv refuses: no reference
        ('use flake "$PWD" --impure', (), (), None),  # needs a shell to read
        ("use flake . --impure -c rm -rf /", ("--impure",), (), None),
        ("use flake . --profile /tmp/p --impure", ("--impure",), (), None),
        (
            "use nix --arg x '\"y\"' -I nixpkgs=/n",
            (),
            ("--arg", "x", '"y"', "-I", "nixpkgs=/n"),
            None,
        ),
        ("use nix -A dev --argstr a b --pure shell.nix", (), ("--argstr", "a", "b"), "dev"),
        ("use nix -p python3", (), (), None),
        ("if has nix; then use flake . --impure; fi", (), (), None),
    ],
)
def test_envrc_lines_read_as_nix_direnv_reads_them(tmp_path, envrc, flake, nix, attr):
    """nix-direnv's direnvrc: use_flake passes `REF FLAGS...` to print-dev-env; use_nix drops
    --command/--run/--exclude/--pure/-i/--keep, keeps -I/--include (1 value),
    --option/-o/--arg/--argstr (2), -A is the attribute, -p a package list."""
    from nixkernel.projectargs import read_envrc

    (tmp_path / "shell.nix").write_text("{ }\n")
    (tmp_path / ".envrc").write_text(envrc + "\n")
    flags = read_envrc(str(tmp_path))
    assert (flags.flake, flags.nix, flags.nix_attr) == (flake, nix, attr)


def test_nix_args_keys_match_directories_and_globs(tmp_path, monkeypatch: pytest.MonkeyPatch):
    from nixkernel.projectargs import configured_args

    monkeypatch.setenv("HOME", str(tmp_path))
    config = {"~/work/app": ["--impure"], "~/work/*": ["--arg", "x", "1"], "/elsewhere": ["-v"]}
    assert configured_args(config, str(tmp_path / "work" / "app")) == [
        "--impure",
        "--arg",
        "x",
        "1",
    ]
    assert configured_args(config, str(tmp_path / "work" / "other")) == ["--arg", "x", "1"]
    assert configured_args(config, str(tmp_path / "play")) == []
