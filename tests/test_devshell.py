"""The per-version rules of `nix develop` / `nix-shell` (nixkernel/devshell.py), on captured
`nix --version` lines and dumps: what the environment-diff test cannot run here (Lix, versions
between the three installed ones) is checked against the rule read from the sources named."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from nixprojects import write_shell_nix

from nixkernel import devshell
from nixkernel.devshell import DEVELOP, NIX_SHELL, Derivation, prepare, rules
from nixkernel.environment import kernel_environment, temporary_directory
from nixkernel.nix import parse_version

#: `nix --version` as each prints it (Nix: src/nix/main.cc; Lix: lix/nix/main.cc).
NIX_2_8 = "nix (Nix) 2.8.0"
NIX_2_26 = "nix (Nix) 2.26.3"
NIX_2_34 = "nix (Nix) 2.34.8"
LIX_2_93 = "nix (Lix, like Nix) 2.93.3"
LIX_2_95 = "nix (Lix, like Nix) 2.95.0"


def rules_of(semantics: str, line: str) -> dict:
    return rules(semantics, parse_version(line), devshell.implementation(line))


def dump(**variables: tuple[str, object]) -> dict:
    """A print-dev-env document: NAME=(type, value)."""
    return {
        "bashFunctions": {},
        "variables": {k: {"type": t, "value": v} for k, (t, v) in variables.items()},
    }


def prepared(line: str, semantics: str, document: dict, tmp_path: Path, **kw) -> devshell.Prepared:
    return prepare(
        document,
        semantics=semantics,
        version=parse_version(line),
        impl=devshell.implementation(line),
        project=str(tmp_path / "project"),
        slot=str(tmp_path / "slot"),
        **kw,
    )


def test_implementation_is_read_from_the_version_line() -> None:
    assert devshell.implementation(LIX_2_95) == "lix"
    assert devshell.implementation(NIX_2_34) == "nix"
    assert devshell.version_key("2.26.3") == (2, 26, 3)
    assert devshell.version_key("2.95") == (2, 95, 0)


def test_prepended_variables_by_version() -> None:
    """develop.cc `savedVars`: XDG_DATA_DIRS joined PATH in Nix 2.10 (Lix forked from 2.18);
    nix-shell never prepends XDG_DATA_DIRS (nix-build.cc, 2.4 to 2.34)."""
    assert rules_of(DEVELOP, NIX_2_8)["prepend"] == ["PATH"]
    assert rules_of(DEVELOP, "nix (Nix) 2.10.0")["prepend"] == ["PATH", "XDG_DATA_DIRS"]
    assert rules_of(DEVELOP, NIX_2_34)["prepend"] == ["PATH", "XDG_DATA_DIRS"]
    assert rules_of(DEVELOP, LIX_2_93)["prepend"] == ["PATH", "XDG_DATA_DIRS"]
    for line in (NIX_2_8, NIX_2_34, LIX_2_95):
        assert rules_of(NIX_SHELL, line)["prepend"] == ["PATH"]
    server = {"PATH": "/usr/bin", "XDG_DATA_DIRS": "/usr/share"}
    shell = {"PATH": "/nix/store/a/bin", "XDG_DATA_DIRS": "/nix/store/a/share"}
    old = kernel_environment(shell, server, shell=rules_of(DEVELOP, NIX_2_8))
    new = kernel_environment(shell, server, shell=rules_of(DEVELOP, NIX_2_26))
    assert old["XDG_DATA_DIRS"] == "/nix/store/a/share"
    assert new["XDG_DATA_DIRS"] == "/nix/store/a/share:/usr/share"
    assert old["PATH"] == new["PATH"] == "/nix/store/a/bin:/usr/bin"


@pytest.mark.parametrize(
    "line, rule",
    [
        (NIX_2_8, "caller-xdg"),  # nix-build.cc: getEnv("TMPDIR"), then XDG_RUNTIME_DIR, /tmp
        ("nix (Nix) 2.22.0", "caller-nonempty-xdg"),  # the same with getEnvNonEmpty
        ("nix (Nix) 2.23.0", "caller-nonempty"),  # getEnvNonEmpty("TMPDIR").value_or("/tmp")
        ("nix (Nix) 2.25.0", "dir"),  # tmpDir.path(): a directory per call
        (NIX_2_34, "dir"),
        ("nix (Lix, like Nix) 2.90.0", "caller-xdg"),
        (LIX_2_93, "caller-nonempty"),  # Lix nix-build.cc: defaultTempDir() (2.91)
        (LIX_2_95, "caller-else-dir"),  # getEnvNonEmpty("TMPDIR").value_or(buildTopTmpDir)
    ],
)
def test_temporary_directory_rule_by_version(line: str, rule: str, tmp_path: Path) -> None:
    shell = rules_of(NIX_SHELL, line)
    assert shell["tmp"] == rule
    assert rules_of(DEVELOP, line)["tmp"] == "mktemp"  # develop.cc, every version
    with_tmpdir = temporary_directory(shell, {"TMPDIR": str(tmp_path)})
    assert set(with_tmpdir) == {"NIX_BUILD_TOP", "TMPDIR", "TMP", "TEMP", "TEMPDIR"}
    assert len(set(with_tmpdir.values())) == 1
    path = with_tmpdir["TMPDIR"]
    if rule == "dir":
        assert os.path.dirname(path) == str(tmp_path) and os.path.isdir(path)
        assert os.path.basename(path).startswith("nix-shell-")
    else:
        assert path == str(tmp_path)
    xdg = temporary_directory(shell, {"XDG_RUNTIME_DIR": "/run/user/1000"})["TMPDIR"]
    assert (xdg == "/run/user/1000") == rule.endswith("-xdg")


def test_develop_makes_a_new_directory_like_mktemp(tmp_path: Path) -> None:
    """develop.cc: export NIX_BUILD_TOP="$(mktemp -d -t nix-shell.XXXXXX)", TMP* the same."""
    first = temporary_directory(rules_of(DEVELOP, NIX_2_34), {"TMPDIR": str(tmp_path)})
    second = temporary_directory(rules_of(DEVELOP, NIX_2_34), {"TMPDIR": str(tmp_path)})
    assert first["TMPDIR"] != second["TMPDIR"]
    for env in (first, second):
        assert os.path.basename(env["NIX_BUILD_TOP"]).startswith("nix-shell.")
        assert os.stat(env["TMPDIR"]).st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    "semantics, line, real, sandbox",
    [
        (DEVELOP, NIX_2_34, False, False),  # develop.cc ignoreVars: always dropped
        (DEVELOP, LIX_2_93, False, False),
        (DEVELOP, LIX_2_95, True, False),  # Lix 2.95 toBash: kept unless /no-cert-file.crt
        (NIX_SHELL, NIX_2_8, True, False),  # nix-shell: what the derivation or setup set
        (NIX_SHELL, NIX_2_34, True, False),
    ],
)
def test_ssl_cert_file_rule_by_implementation(
    semantics: str, line: str, real: bool, sandbox: bool, tmp_path: Path
) -> None:
    for value, kept in (("/etc/ssl/certs/ca.crt", real), (devshell.NO_CERT_FILE, sandbox)):
        document = dump(SSL_CERT_FILE=("exported", value), outputs=("var", ""))
        result = prepared(line, semantics, document, tmp_path)
        assert ("SSL_CERT_FILE" in result.variables) == kept, value


def test_lix_extras(tmp_path: Path) -> None:
    """Lix 2.95 develop.cc and nix-build.cc: NIX_SHELL_LEVEL one more than the caller's,
    NIX_LOG_FD=2. Nix has neither."""
    for semantics in (DEVELOP, NIX_SHELL):
        lix = prepared(LIX_2_95, semantics, dump(outputs=("var", "")), tmp_path).model
        env = kernel_environment({}, {"NIX_SHELL_LEVEL": "2", "PATH": "/bin"}, shell=lix)
        assert env["NIX_SHELL_LEVEL"] == "3" and env["NIX_LOG_FD"] == "2"
        nix = prepared(NIX_2_34, semantics, dump(outputs=("var", "")), tmp_path).model
        env = kernel_environment({}, {"PATH": "/bin"}, shell=nix)
        assert "NIX_SHELL_LEVEL" not in env and "NIX_LOG_FD" not in env


ENV_OUT = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-shell-env"
ENV_DEV = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-shell-env-dev"
REAL_OUT = "/nix/store/cccccccccccccccccccccccccccccccc-shell"
REAL_DEV = "/nix/store/dddddddddddddddddddddddddddddddd-shell-dev"


def two_output_dump() -> dict:
    document = dump(
        outputs=("exported", "out dev"),
        out=("exported", ENV_OUT),
        dev=("exported", ENV_DEV),
        NIX_LDFLAGS=("exported", f"-rpath {ENV_OUT}/lib -L{ENV_DEV}/lib"),
        prefix=("var", ENV_OUT),
        name=("exported", "shell-env"),
        shellHook=("exported", f'echo "{ENV_OUT}"'),
    )
    document["bashFunctions"] = {"runHook": "eval x", "where": f" echo {ENV_DEV}"}
    return document


def test_outputs_are_rewritten_per_semantics(tmp_path: Path) -> None:
    """develop.cc: every occurrence of the -env outputs becomes <dir>/outputs/<name> (values,
    functions, the hook); nix-shell: the shell's own derivation's outputs."""
    develop = prepared(NIX_2_34, DEVELOP, two_output_dump(), tmp_path)
    outputs = tmp_path / "project" / "outputs"
    assert develop.variables["out"] == f"{outputs}/out"
    assert develop.variables["NIX_LDFLAGS"] == f"-rpath {outputs}/out/lib -L{outputs}/dev/lib"
    assert develop.model["assigned"]["prefix"] == f"{outputs}/out"
    assert f"echo {outputs}/dev" in develop.hook and ENV_OUT not in develop.hook
    assert develop.variables["name"] == "shell-env"  # develop.cc's own renaming (2.13)

    drv = Derivation({"out": REAL_OUT, "dev": REAL_DEV}, {"name": "shell", "out": REAL_OUT})
    shell = prepared(NIX_2_34, NIX_SHELL, two_output_dump(), tmp_path, derivation=drv)
    assert shell.variables["out"] == REAL_OUT and shell.variables["dev"] == REAL_DEV
    assert shell.variables["NIX_LDFLAGS"] == f"-rpath {REAL_OUT}/lib -L{REAL_DEV}/lib"
    assert shell.variables["name"] == "shell"  # nix-shell keeps the derivation's name
    assert shell.unbuilt == {REAL_OUT, REAL_DEV}  # nobody builds them: no liveness check
    assert "runHook shellHook" in shell.hook and f"echo {REAL_DEV}" in shell.hook


def test_name_suffix_rule_by_version(tmp_path: Path) -> None:
    """develop.cc renames the -env derivation's `name` since 2.13; nix-shell undoes it there
    only: before 2.13 a shell really called `foo-env` keeps its name."""
    document = dump(outputs=("var", ""), name=("exported", "foo-env"))
    assert prepared(NIX_2_8, NIX_SHELL, document, tmp_path).variables["name"] == "foo-env"
    assert prepared(NIX_2_26, NIX_SHELL, document, tmp_path).variables["name"] == "foo"


def test_structured_attrs_files(tmp_path: Path) -> None:
    """develop.cc (2.19+) writes `.attrs.sh` / `.attrs.json` as print-dev-env has them and points
    NIX_ATTRS_*_FILE there; nix-shell's files hold placeholders for the outputs
    (prepareStructuredAttrs); nix-shell also exports the derivation's own environment (`__json`
    until 2.31)."""
    attrs_sh = f"declare -A outputs=(['out']='{ENV_OUT}' )\ndeclare GREETING='hi'\n"
    attrs_json = json.dumps({"outputs": {"out": ENV_OUT}, "GREETING": "hi"})
    document = dump(
        outputs=("associative", {"out": ENV_OUT}),
        out=("exported", ENV_OUT),
        NIX_ATTRS_SH_FILE=("exported", "/build/.attrs.sh"),
        NIX_ATTRS_JSON_FILE=("exported", "/build/.attrs.json"),
        GREETING=("var", "hi"),
    )
    document["structuredAttrs"] = {".attrs.sh": attrs_sh, ".attrs.json": attrs_json}
    slot = tmp_path / "slot"

    develop = prepared(NIX_2_34, DEVELOP, document, tmp_path)
    sh_file = develop.variables["NIX_ATTRS_SH_FILE"]
    assert os.path.dirname(sh_file) == str(slot) and sh_file.endswith(".sh")
    assert develop.files[os.path.basename(sh_file)] == attrs_sh  # as dumped
    assert develop.files[os.path.basename(develop.variables["NIX_ATTRS_JSON_FILE"])] == attrs_json

    drv = Derivation({"out": REAL_OUT}, {"__json": '{"GREETING":"hi"}', "out": REAL_OUT})
    placeholder = devshell.hash_placeholder("out")
    for line, exports_json in ((NIX_2_26, True), (NIX_2_34, False)):
        shell = prepared(line, NIX_SHELL, document, tmp_path, derivation=drv)
        sh_file = shell.variables["NIX_ATTRS_SH_FILE"]
        assert shell.files[os.path.basename(sh_file)] == attrs_sh.replace(ENV_OUT, placeholder)
        assert shell.variables["out"] == placeholder
        assert ("__json" in shell.variables) == exports_json


def test_hash_placeholder_is_nixs() -> None:
    """derivations.cc hashPlaceholder: the value nix-shell 2.8 / 2.26 / 2.34 gave `out` for a
    structured-attrs shell in the environment-diff test."""
    assert (
        devshell.hash_placeholder("out") == "/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9"
    )


def test_pass_as_file_for_nix_shell(tmp_path: Path) -> None:
    """nix-build.cc: each passAsFile attribute is written to a file, exported as NAMEPath."""
    document = dump(outputs=("var", ""), sourcePath=("exported", "/build/.attr-0"))
    drv = Derivation({}, {"passAsFile": "source", "source": "int x = 1;\n"})
    shell = prepared(NIX_2_34, NIX_SHELL, document, tmp_path, derivation=drv)
    path = shell.variables["sourcePath"]
    assert os.path.dirname(path) == str(tmp_path / "slot")
    assert shell.files[os.path.basename(path)] == "int x = 1;\n"
    develop = prepared(NIX_2_34, DEVELOP, document, tmp_path)
    assert develop.variables["sourcePath"] == "/build/.attr-0"  # nix develop leaves it


def test_parse_derivation_reads_what_nix_instantiated(nix: str, tmp_path: Path) -> None:
    """The shell's .drv (ATerm) as the running Nix writes it: outputs and environment, escapes
    included."""
    hook = 'echo "quoted" \\ back\nslash\ttab'
    project = write_shell_nix(tmp_path / "p", {"GREETING": "hi", "shellHook": hook})
    drv_path, out_path = (
        subprocess.run(
            [nix, "eval", "--raw", "--file", str(project / "shell.nix"), attr],
            capture_output=True, text=True, check=True,
        ).stdout
        for attr in ("drvPath", "outPath")
    )  # fmt: skip
    derivation = devshell.read_derivation(drv_path)
    assert derivation is not None
    assert derivation.outputs == {"out": out_path}
    assert derivation.env["shellHook"] == hook
    assert derivation.env["name"] == "shell" and derivation.env["out"] == out_path
    assert devshell.shell_derivation((("x", "/a.drv"), ("shell", drv_path)), "shell") == drv_path
