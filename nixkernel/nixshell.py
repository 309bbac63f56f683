"""nix-shell's rules for a ``shell.nix``, applied to ``nix print-dev-env --file``.

``nix-shell`` (src/nix-build/nix-build.cc; src/nix/nix-build/nix-build.cc from 2.3x) does two
things before it evaluates a file that ``nix print-dev-env`` does not:

- it sets ``IN_NIX_SHELL=impure`` in its own environment, so ``builtins.getEnv "IN_NIX_SHELL"``
  (nixpkgs' ``lib.inNixShell``, Haskell's ``developPackage``, flake-compat) sees it
  (all versions, before parsing the file);
- it auto-calls the file's function with ``inNixShell = true``: Nix 2.8 and 2.9 add it to the
  automatic arguments of every call, so a function with ``...`` receives it too; since 2.10
  (``takesNixShellAttr``) only a function that names ``inNixShell`` among its formals does.

Only on a miss (an evaluation): nothing here runs on a warm start.
"""

from __future__ import annotations

import json
import os
import re

from .describe import NixSource

#: Nix 2.10 (nix-build.cc ``takesNixShellAttr``): ``inNixShell`` only to a function naming it.
TAKES_NIX_SHELL_ATTR_SINCE = (2, 10)

IN_NIX_SHELL = "impure"

_SKIP = r"(?:\s|#[^\n]*(?:\n|$)|/\*.*?\*/)*"
_ID = r"[A-Za-z_][\w'-]*"
#: The head of a function literal (after leading comments and parentheses): ``x: ...`` (a space
#: after the colon: ``x:y`` is a URI), ``args@{ ... }:``, ``{ }:``, ``{ ... }``, ``{ a ? ...``,
#: ``{ a, ...``, ``{ a }``. An attribute set starts ``{ a =``, ``{ a.b``, ``{ inherit`` or
#: ``{ "a"``, and never matches.
_LAMBDA_HEAD = re.compile(
    rf"(?:{_ID}{_SKIP}:(?=[\s(\[{{]))"
    rf"|(?:{_ID}{_SKIP}@{_SKIP}\{{)"
    rf"|(?:\{{{_SKIP}\}}{_SKIP}[:@])"
    rf"|(?:\{{{_SKIP}\.\.\.)"
    rf"|(?:\{{{_SKIP}(?!inherit\b){_ID}{_SKIP}[?,}}])",
    re.S,
)
_LEADING = re.compile(rf"(?:{_SKIP}\(?)*", re.S)
#: A file whose whole value is another file's: ``import ./default.nix`` (maybe parenthesised).
_IMPORT_ONLY = re.compile(rf"^\(?{_SKIP}import{_SKIP}((?:\.\.?)?/[^\s()#;]+){_SKIP}\)?{_SKIP}$")


def is_function_literal(text: str) -> bool:
    """Whether a Nix file's top-level expression is a function literal, judged from its head
    (comments and parentheses skipped). Cheap and conservative: a value that only evaluates to
    a function (``let f = x: x; in f``) is not recognised."""
    head = _LEADING.match(text)
    return bool(_LAMBDA_HEAD.match(text, head.end() if head else 0))


def imported_file(path: str, text: str) -> str | None:
    """The file ``path`` consists of the import of (``import ./default.nix``), if that is all."""
    match = _IMPORT_ONLY.match(text.strip())
    if not match:
        return None
    target = os.path.normpath(os.path.join(os.path.dirname(path), match.group(1)))
    return os.path.join(target, "default.nix") if os.path.isdir(target) else target


def takes_in_nix_shell(nix: str, path: str, depth: int = 0) -> bool:
    """Whether the value of the Nix file ``path`` is a function with an ``inNixShell`` formal,
    as nix-shell >= 2.10 asks of it (``takesNixShellAttr``).

    The formal's name must appear in the file (or, for a file that is only ``import FILE``, in
    that file), and the file must start with a function literal: then ``builtins.functionArgs``
    of it costs one small evaluation (a function literal needs no further evaluation; the
    shell itself is never evaluated here)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return False  # Nix reports the missing file itself
    if "inNixShell" not in text:
        target = imported_file(path, text)
        return depth < 4 and target is not None and takes_in_nix_shell(nix, target, depth + 1)
    if not is_function_literal(text):
        return False
    return "inNixShell" in function_formals(nix, path)


def function_formals(nix: str, path: str) -> list[str]:
    """The formal arguments of the function in the Nix file ``path`` (none if it is not one)."""
    import subprocess

    from .nix import nix_command

    # A path literal cannot hold every character: build it from a string instead.
    literal = json.dumps(path).replace("${", "\\${")
    expr = (
        f"let v = import (/. + {literal}); in "
        "if builtins.isFunction v then builtins.attrNames (builtins.functionArgs v) else []"
    )
    argv = nix_command(nix, "eval", "--impure", "--json", "--expr", expr)
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120
        )
        names = json.loads(out.stdout) if out.returncode == 0 else []
    except (OSError, ValueError, subprocess.SubprocessError):
        names = []  # the evaluation proper reports what is wrong with the file
    return [str(n) for n in names] if isinstance(names, list) else []


def in_nix_shell_args(nix: str, source: NixSource) -> list[str]:
    """``--arg inNixShell true`` where the running Nix's nix-shell would pass it for
    ``source``: always before 2.10, else only to a function that names it."""
    if source.is_flake:
        return []
    from .nix import nix_release

    release = nix_release(nix)
    if release.numbers < TAKES_NIX_SHELL_ATTR_SINCE or takes_in_nix_shell(nix, source.location):
        return ["--arg", "inNixShell", "true"]
    return []


def evaluation_environment(source: NixSource, env: dict[str, str] | None) -> dict[str, str] | None:
    """The environment Nix evaluates ``source`` in: nix-shell's ``IN_NIX_SHELL=impure`` for a
    Nix file (``env`` or this process's environment otherwise unchanged)."""
    if source.is_flake:
        return env
    return {**(os.environ if env is None else env), "IN_NIX_SHELL": IN_NIX_SHELL}
