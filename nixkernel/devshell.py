"""What ``nix develop -c`` and ``nix-shell --run`` put in a command's environment, per Nix version.

``nix print-dev-env --json`` dumps the shell as the builder saw it. ``nix develop`` and
``nix-shell`` each turn such a shell into a command's environment by their own rules, which
changed between Nix releases. This module decides, when an environment is evaluated (a cache
miss), what the kernel must get, following the rules of the Nix that evaluated it:

- for a flake, ``nix develop``'s rc script (``src/nix/develop.cc``, ``makeRcScript``): every
  variable of the dump assigned (a non-exported one still replaces a value the caller exported),
  ``PATH`` (and since 2.10 ``XDG_DATA_DIRS``) in front of the caller's, a new temporary
  directory as ``TMPDIR`` & co., the outputs rewritten to ``<project>/outputs/<name>``, the
  structured-attrs files written out (2.19), ``NIX_GCROOT``;
- for a Nix file, ``nix-shell``'s (``src/nix-build/nix-build.cc``): the derivation's own
  attributes (its real ``name`` and output paths, ``passAsFile`` files, ``__json`` before 2.31),
  ``PATH`` after the one of ``bashInteractive`` from ``<nixpkgs>``, ``SHELL``, ``TMPDIR`` by the
  version's rule, ``runHook shellHook``.

The result is a JSON-able *model* (stored in the cache entry and applied at every start by
:func:`nixkernel.environment.kernel_environment`), the text of the hook script, and the files it
needs (written into the cache slot). docs/nix-semantics.md lists each rule with its source.

Standard library only, and only imported on a miss: the warm start never loads this module.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from typing import NamedTuple

from .environment import _BASH_INTERNALS, _FUNCTION_NAME, _NAME, _quote

DEVELOP, NIX_SHELL = "nix develop", "nix-shell"

#: ``ignoreVars`` of ``nix develop`` (develop.cc, unchanged from 2.4 to 2.34): the sandbox's values.
DEVELOP_IGNORED = frozenset(
    {
        "BASHOPTS", "HOME", "NIX_BUILD_TOP", "NIX_ENFORCE_PURITY", "NIX_LOG_FD", "NIX_REMOTE",
        "PPID", "SHELLOPTS", "SSL_CERT_FILE", "TEMP", "TEMPDIR", "TERM", "TMP", "TMPDIR", "TZ",
        "UID",
    }
)  # fmt: skip

#: The value the build sandbox gives SSL_CERT_FILE: never a real file.
NO_CERT_FILE = "/no-cert-file.crt"

#: Variables the builder's bash sets for itself at start-up. ``nix-shell`` runs its own bash, so
#: the caller's values (or that bash's) stay, never the builder's.
BUILDER_BASH_VARIABLES = _BASH_INTERNALS | {"SHELL"}

#: Variables a ``nix-shell`` command gets from nix-shell itself, not from the derivation.
NIX_SHELL_OWN = frozenset({"NIX_BUILD_TOP", "TMPDIR", "TEMPDIR", "TMP", "TEMP"})


class Prepared(NamedTuple):
    """What the cache stores for one evaluation."""

    variables: dict[str, str]
    """The exported variables the kernel gets (``PATH`` and the like before the caller's)."""
    model: dict
    """The rest of the rules, applied at every start with the caller's environment: see
    :func:`nixkernel.environment.kernel_environment`."""
    hook: str
    """The bash script that recreates the shell's non-exported state and runs its hook; empty
    when there is nothing to run (the kernel is then exec'd directly)."""
    files: dict[str, str]
    """File name (in the slot) -> content: structured-attrs and ``passAsFile`` files."""
    unbuilt: frozenset[str] = frozenset()
    """Store paths the variables name that nobody builds (nix-shell's outputs of the shell)."""


class Derivation(NamedTuple):
    """The parts of a ``.drv`` file nix-shell uses."""

    outputs: dict[str, str]
    env: dict[str, str]


# -- versions -------------------------------------------------------------------------------------


def version_key(version: str) -> tuple[int, int, int]:
    """``"2.26.3"`` -> ``(2, 26, 3)``; a missing or odd part counts as 0."""
    parts = re.findall(r"\d+", version or "")[:3]
    numbers = [int(p) for p in parts] + [0, 0, 0]
    return numbers[0], numbers[1], numbers[2]


def implementation(version_line: str) -> str:
    """``"lix"`` for Lix (``nix (Lix, like Nix) 2.93.0``), else ``"nix"`` (Nix, Determinate)."""
    return "lix" if "lix" in version_line.lower() else "nix"


def rules(semantics: str, version: str, impl: str = "nix") -> dict:
    """The version-dependent rules of ``nix develop`` / ``nix-shell``, as flags the launcher
    applies. Each names its source in docs/nix-semantics.md."""
    v = version_key(version)
    lix = impl == "lix"
    if semantics == DEVELOP:
        return {
            "semantics": DEVELOP,
            # develop.cc savedVars: XDG_DATA_DIRS joined PATH in 2.10 (Lix forked after).
            "prepend": ["PATH", "XDG_DATA_DIRS"] if lix or v >= (2, 10) else ["PATH"],
            "tmp": "mktemp",
            "shlvl": 0,
            # Lix 2.95 develop.cc: SSL_CERT_FILE kept unless it is the sandbox's; NIX_SHELL_LEVEL.
            "keep_ssl_cert": lix and v >= (2, 95),
            "shell_level": lix and v >= (2, 95),
            "log_fd": lix and v >= (2, 95),
        }
    if lix:
        # Lix's nix-build.cc: 2.90 as Nix 2.18; defaultTempDir() from 2.91; since 2.94 a
        # directory of its own when TMPDIR is unset; NIX_SHELL_LEVEL and NIX_LOG_FD from 2.95.
        if v >= (2, 94):
            tmp = "caller-else-dir"
        elif v >= (2, 91):
            tmp = "caller-nonempty"
        else:
            tmp = "caller-xdg"
    elif v >= (2, 25):
        tmp = "dir"  # nix-build.cc 2.25: env[...] = tmpDir.path(), a directory per call
    elif v >= (2, 23):
        tmp = "caller-nonempty"  # getEnvNonEmpty("TMPDIR").value_or("/tmp")
    elif v >= (2, 22):
        tmp = "caller-nonempty-xdg"  # getEnvNonEmpty TMPDIR, then XDG_RUNTIME_DIR, then /tmp
    else:
        tmp = "caller-xdg"  # getEnv TMPDIR, then XDG_RUNTIME_DIR, then /tmp
    return {
        "semantics": NIX_SHELL,
        "prepend": ["PATH"],
        "tmp": tmp,
        "shlvl": 1,  # `--run` runs the command as a child of nix-shell's bash
        "keep_ssl_cert": True,
        "shell_level": lix and v >= (2, 95),
        "log_fd": lix and v >= (2, 95),
        # develop.cc 2.13 renames the -env derivation's `name`; nix-shell keeps the real one.
        "strip_env_suffix": lix or v >= (2, 13),
        # nix-build.cc 2.31: structured attrs left drv.env, so `__json` is no longer exported
        # (Lix's still exports it).
        "export_json": lix or v < (2, 31),
    }


# -- .drv files -----------------------------------------------------------------------------------


def parse_derivation(text: str) -> Derivation:
    """Outputs and environment of a ``.drv`` file (ATerm: ``Derive([outputs], [inputDrvs],
    [inputSrcs], system, builder, [args], [env])``, or ``DrvWithVersion(version, ...)``)."""
    term, _end = _aterm(text, 0)
    if not isinstance(term, tuple) or len(term) != 2 or not isinstance(term[1], list):
        raise ValueError("not a derivation")
    fields = term[1][1:] if term[0] == "DrvWithVersion" else term[1]
    if term[0] not in ("Derive", "DrvWithVersion") or len(fields) < 7:
        raise ValueError(f"not a derivation: {term[0]}")
    outputs = {o[0]: o[1] for o in fields[0] if isinstance(o, list) and len(o) >= 2}
    env = {e[0]: e[1] for e in fields[6] if isinstance(e, list) and len(e) == 2}
    return Derivation(outputs, env)


_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}


def _aterm(text: str, i: int) -> tuple[object, int]:
    """One ATerm value at ``text[i]``: a string, a list ``[...]``, a tuple ``(...)`` (as a list)
    or a constructor ``Name(...)`` (as ``(name, [args])``)."""
    c = text[i]
    if c == '"':
        out = []
        i += 1
        while True:
            j = i
            while text[j] not in '"\\':
                j += 1
            out.append(text[i:j])
            if text[j] == '"':
                return "".join(out), j + 1
            out.append(_ESCAPES.get(text[j + 1], text[j + 1]))
            i = j + 2
    if c in "[(":
        close = "]" if c == "[" else ")"
        items: list = []
        i += 1
        while text[i] != close:
            item, i = _aterm(text, i)
            items.append(item)
            if text[i] == ",":
                i += 1
        return items, i + 1
    match = re.compile(r"[A-Za-z]+").match(text, i)
    if not match or text[match.end()] != "(":
        raise ValueError(f"unexpected {text[i : i + 20]!r} in a .drv file")
    args, i = _aterm(text, match.end())
    return (match.group(0), args), i


def shell_derivation(derivations: tuple[tuple[str, str], ...], name: str) -> str | None:
    """The ``.drv`` of the shell among those an evaluation instantiated: the last one named
    ``name`` (a derivation is written after all it depends on)."""
    for drv_name, path in reversed(derivations):
        if drv_name == name:
            return path
    return None


# -- the model ------------------------------------------------------------------------------------


def prepare(
    dev_env: Mapping,
    *,
    semantics: str,
    version: str,
    impl: str = "nix",
    project: str,
    slot: str,
    derivation: Derivation | None = None,
    gcroot: str | None = None,
    bash: str | None = None,
) -> Prepared:
    """The model, hook script and files for a kernel of ``dev_env`` (``print-dev-env --json``).

    ``project`` is where the hook runs and (flakes) where ``nix develop`` puts ``outputs/``;
    ``slot`` the cache slot the files go to; ``derivation`` the shell's own ``.drv`` (nix-shell
    semantics: its real outputs and attributes); ``gcroot`` the environment's store path
    (``NIX_GCROOT``); ``bash`` nix-shell's ``bashInteractive`` (None: the caller's ``bash``).
    """
    r = rules(semantics, version, impl)
    nix_shell = semantics == NIX_SHELL
    variables = dev_env.get("variables")
    variables = variables if isinstance(variables, Mapping) else {}
    files: dict[str, str] = {}

    # Output paths of the -env derivation that Nix built, and what the command gets instead.
    env_outputs = _outputs(variables)
    structured = isinstance(_value(variables.get("outputs")), Mapping)
    if nix_shell and structured:
        # nix-shell's .attrs files map outputs to placeholders, never rewritten outside a build
        # (parsed-derivations.cc prepareStructuredAttrs, 2.4-2.34): so do the values from them.
        targets = {name: hash_placeholder(name) for name in env_outputs}
    elif nix_shell:
        targets = derivation.outputs if derivation else {}
    else:
        targets = {name: os.path.join(project, "outputs", name) for name in env_outputs}
    rewrites = {p: targets[n] for n, p in env_outputs.items() if p and n in targets}

    attrs = dev_env.get("structuredAttrs")
    if isinstance(attrs, Mapping):
        for key, var in (
            (".attrs.sh", "NIX_ATTRS_SH_FILE"),
            (".attrs.json", "NIX_ATTRS_JSON_FILE"),
        ):
            content = attrs.get(key)
            if not isinstance(content, str):
                continue
            # nix develop writes them as dumped; nix-shell's are its derivation's own.
            content = _rewrite(content, rewrites) if nix_shell else content
            name = _file_name("attrs", content, key[len(".attrs") :])
            files[name] = content
            sandbox_path = _string(variables.get(var))
            if sandbox_path:
                rewrites[sandbox_path] = os.path.join(slot, name)

    exported: dict[str, str] = {}
    assigned: dict[str, str] = {}
    removed: list[str] = [] if nix_shell else ["shellHook"]  # develop's rc: `unset shellHook`
    rc_lines = [
        "# Written by nixkernel from `nix print-dev-env --json`; see docs/nix-semantics.md."
    ]
    for name, var in sorted(variables.items()):
        if not isinstance(name, str) or not _NAME.match(name) or not isinstance(var, Mapping):
            continue
        if nix_shell and (name in BUILDER_BASH_VARIABLES or name.startswith("BASH_")):
            continue
        if name == "SSL_CERT_FILE":
            if not r["keep_ssl_cert"] or _string(var) in (None, NO_CERT_FILE):
                continue
        elif name in DEVELOP_IGNORED:
            continue
        kind, value = var.get("type"), var.get("value")
        if kind in ("exported", "var") and isinstance(value, str):
            value = _rewrite(value.replace("\0", ""), rewrites)
            if kind == "exported":
                exported[name] = value
            else:
                assigned[name] = value
        elif kind == "array" and isinstance(value, list):
            removed.append(name)  # arrays are never exported: declaring one drops the variable
            items = " ".join(_quote(_rewrite(str(v), rewrites)) for v in value)
            rc_lines.append(f"declare -a {name}=({items})")
        elif kind == "associative" and isinstance(value, Mapping):
            removed.append(name)
            items = " ".join(
                f"[{_quote(str(k))}]={_quote(_rewrite(str(v), rewrites))}" for k, v in value.items()
            )
            rc_lines.append(f"declare -A {name}=({items})")

    if nix_shell:
        _nix_shell_attributes(r, exported, assigned, derivation, files, slot)
    model: dict = {
        **{k: r[k] for k in ("semantics", "prepend", "tmp", "shlvl", "shell_level", "log_fd")},
        "assigned": assigned,
        "removed": removed,
        "gcroot": gcroot if not nix_shell else None,
        "shell": (bash or "bash") if nix_shell else None,
        "path_head": os.path.dirname(bash) if nix_shell and bash else "",
    }

    for name, value in sorted(assigned.items()):
        if name not in _BASH_INTERNALS and not name.startswith("BASH_"):
            rc_lines.append(f"{name}={_quote(value)}")
    if "OLDPWD" in exported:
        # bash drops an OLDPWD that is not a directory when it starts; develop's rc sets it.
        rc_lines.append(f"export OLDPWD={_quote(exported['OLDPWD'])}")
    functions = dev_env.get("bashFunctions")
    functions = functions if isinstance(functions, Mapping) else {}
    for name, body in sorted(functions.items()):
        if isinstance(name, str) and _FUNCTION_NAME.match(name) and isinstance(body, str):
            rc_lines.append(f"{name} ()\n{{\n{_rewrite(body.replace(chr(0), ''), rewrites)}\n}}")
    if nix_shell:
        # nix-build.cc's rc: stdenv's runHook runs `shellHook` and the `shellHooks` array.
        runs = "runHook" in functions and (
            _has_text(variables.get("shellHook"))
            or "shellHook" in functions
            or _has_items(variables.get("shellHooks"))
        )
        rc_lines.append('if [ "$(type -t runHook)" = function ]; then runHook shellHook; fi')
        rc_lines.append("unset NIX_ENFORCE_PURITY")
    else:
        runs = _has_text(variables.get("shellHook"))
        rc_lines.append('eval "${shellHook:-}"')
    hook = "\n".join(rc_lines) + "\n" if runs else ""
    unbuilt = frozenset(p for p in targets.values() if p.startswith("/nix/store/"))
    return Prepared(exported, model, hook, files, unbuilt)


def _nix_shell_attributes(
    r: dict,
    exported: dict[str, str],
    assigned: dict[str, str],
    derivation: Derivation | None,
    files: dict[str, str],
    slot: str,
) -> None:
    """What nix-shell exports that the builder's dump does not say, or says otherwise."""
    # nix-shell's rc assigns it (not exported); get-env.sh exports it.
    if "dontAddDisableDepTrack" in exported:
        assigned["dontAddDisableDepTrack"] = exported.pop("dontAddDisableDepTrack")
    name = exported.get("name")
    if name is not None and r["strip_env_suffix"] and name.endswith("-env"):
        exported["name"] = name[: -len("-env")]
    if derivation is None:
        return
    drv_env = derivation.env
    if "__json" in drv_env:
        # Structured attrs: the builder got them only as files; nix-shell exports drv.env (the
        # output paths, and `__json` itself until 2.31).
        for key, value in drv_env.items():
            if key == "__json" and not r["export_json"]:
                continue
            if key not in exported and _NAME.match(key):
                exported[key] = value
        return
    # passAsFile: nix-shell writes each such attribute to a file and exports NAMEPath, where
    # the dump has the path of a file in the (gone) build directory.
    for key in sorted(set(drv_env.get("passAsFile", "").split())):
        if key in drv_env and _NAME.match(key + "Path"):
            file_name = _file_name("attr", drv_env[key], "")
            files[file_name] = drv_env[key]
            exported[key + "Path"] = os.path.join(slot, file_name)


_NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"


def hash_placeholder(output: str) -> str:
    """Nix's ``hashPlaceholder``: ``/`` + nix32(sha256("nix-output:" + output)), the path a
    structured-attrs derivation's ``outputs`` map holds outside a build (derivations.cc)."""
    digest = hashlib.sha256(f"nix-output:{output}".encode()).digest()
    chars = []
    for n in range((len(digest) * 8 - 1) // 5, -1, -1):
        b = n * 5
        i, j = divmod(b, 8)
        c = (digest[i] >> j) | (0 if i >= len(digest) - 1 else digest[i + 1] << (8 - j))
        chars.append(_NIX32[c & 0x1F])
    return "/" + "".join(chars)


def _outputs(variables: Mapping) -> dict[str, str]:
    """Output name -> path of the dumped (-env) derivation: ``outputs`` names the variables, or
    (structured attrs) maps names to paths."""
    outputs = variables.get("outputs")
    value = outputs.get("value") if isinstance(outputs, Mapping) else None
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items() if isinstance(v, str)}
    if isinstance(value, str):
        return {n: p for n in value.split() if (p := _string(variables.get(n)))}
    if isinstance(value, list):
        return {n: p for n in value if isinstance(n, str) and (p := _string(variables.get(n)))}
    return {}


def _rewrite(text: str, rewrites: Mapping[str, str]) -> str:
    # Longest first, so a path that is a prefix of another is not replaced inside it.
    for old in sorted(rewrites, key=len, reverse=True):
        if old:
            text = text.replace(old, rewrites[old])
    return text


def _value(var: object) -> object:
    return var.get("value") if isinstance(var, Mapping) else None


def _string(var: object) -> str | None:
    if isinstance(var, Mapping) and isinstance(var.get("value"), str):
        return var["value"]
    return None


def _has_text(var: object) -> bool:
    return bool((_string(var) or "").strip())


def _has_items(var: object) -> bool:
    return isinstance(var, Mapping) and bool(var.get("value"))


def _file_name(prefix: str, content: str, suffix: str) -> str:
    return f"{prefix}-{hashlib.sha256(content.encode()).hexdigest()[:16]}{suffix}"


# -- Nix calls made on a miss ---------------------------------------------------------------------


def version_line(nix: str) -> str:
    """``nix --version``'s line (``nix (Nix) 2.26.3``, ``nix (Lix, like Nix) 2.93.0``...)."""
    import subprocess

    try:
        return subprocess.run(
            [nix, "--version"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def read_derivation(path: str) -> Derivation | None:
    """The ``.drv`` at ``path``, or None if it cannot be read (nix-shell fidelity then degrades
    to the dump's values, documented)."""
    try:
        with open(path, encoding="utf-8") as f:
            return parse_derivation(f.read())
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


def nix_shell_bash(nix: str, root: str, env: Mapping[str, str] | None = None) -> str | None:
    """The bash ``nix-shell`` runs: ``$NIX_BUILD_SHELL``, else ``bashInteractive`` of
    ``<nixpkgs>`` (built, and GC-rooted at ``root``), else None (nix-shell then says "uses bash
    from your environment"). As nix-build.cc does it, from 2.4 to 2.34."""
    import subprocess

    environ = os.environ if env is None else env
    if environ.get("NIX_BUILD_SHELL"):
        return None  # the launcher reads it at every start, as nix-shell does
    nix_build = os.path.join(os.path.dirname(nix), "nix-build")
    argv = [nix_build, "-E", "(import <nixpkgs> {}).bashInteractive", "--out-link", root]
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
            env=None if env is None else dict(env),
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    out = result.stdout.strip().splitlines()
    bash = os.path.join(out[-1], "bin", "bash") if result.returncode == 0 and out else ""
    return bash if os.path.isfile(bash) else None
