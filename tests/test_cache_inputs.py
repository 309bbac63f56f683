"""What invalidates a cached environment, on real Nix: files a flake reads elsewhere in its
repository, files and flakes outside the project, manifests, the search path (``<chan>``), an
edit made while Nix runs, and what does not (a saved notebook, an edited ``.py`` file). Also the
devShell-name list, the GC roots of a flake's inputs, and Lix's log (captured text).

Where Nix versions differ, the test says which rule it follows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nixprojects import (
    DEFAULT_SHELL,
    Raw,
    write_shell_nix,
)
from test_reliability import Gate

from nixkernel import nix as nixmod
from nixkernel.cache import EnvironmentCache
from nixkernel.describe import NixSource


def start(cache: EnvironmentCache, source: NixSource, nix: str) -> dict[str, str]:
    """The environment a kernel start gets (evaluating on a miss, as the launcher does)."""
    resolved = cache.ensure(source, nix, allow_stale=False)
    return resolved.entry["variables"]


@pytest.fixture
def cache(tmp_path: Path) -> EnvironmentCache:
    return EnvironmentCache(str(tmp_path / "cache"))


@pytest.fixture
def gate(nix: str, tmp_path: Path) -> Iterator[Gate]:
    g = Gate(tmp_path / "gate")
    yield g
    g.close()


def shell_source(project: Path) -> NixSource:
    return NixSource("file", str(project / "shell.nix"))


# -- Lix (item 12) ---------------------------------------------------------------------------

#: What ``nix print-dev-env --debug`` prints on Lix 2.91 for a flake, built from Lix's own
#: messages (lix/libexpr/eval.cc ``debug("evaluating file '%1%'")``, flake.cc ``debug("got tree
#: '%s' from '%s'")``, eval-cache.cc, libfetchers/path.cc ``copying '%s'`` and
#: fetch-to-store.cc ``copying '%s' to the store`` (activities: the plain logger adds ``...``),
#: eval.cc ``printMsg(lvlChatty, "copied source '%1%' -> '%2%'")``): Lix is not installed here.
LIX_DEBUG_LOG = """\
checking access to '/home/u/proj'
got tree '/nix/store/5c0q1lb7gm6vd4a3xk7yfr0rf7xj9ic3-source' from 'git+file:///home/u/proj'
old lock file: { "nodes": { "root": {} }, "root": "root", "version": 7 }
computing lock file node ''
evaluating file '/nix/store/5c0q1lb7gm6vd4a3xk7yfr0rf7xj9ic3-source/flake.nix'
evaluating uncached attribute 'devShells.x86_64-linux.default'
evaluating file '/nix/store/5c0q1lb7gm6vd4a3xk7yfr0rf7xj9ic3-source/nix/shell.nix'
copying '/home/u/data'...
copying '/home/u/more' to the store...
copied source '/home/u/proj/req.txt' -> '/nix/store/qd2y2zzg8i2hl3qhn7kkmjzq7c5jvq5y-req.txt'
acquiring write lock on '/nix/var/nix/temproots/4242'
building '/nix/store/7fz1yxxyb0m6bmdi44gdvqfmyk0w6l4k-shell-env.drv'...
warning: Git tree '/home/u/proj' is dirty
"""


def test_lix_logs_evaluated_files_at_debug_level_so_it_gets_debug():
    """Lix moved ``evaluating file`` from talkative to debug (commit 076c19e0d "change
    'evaluating file' logs to debug", Lix 2.90.0): ``-vv`` would record nothing, ``--debug``
    (lix/libmain/common-args.cc: verbosity lvlDebug) does. Nix and Determinate Nix keep -vv."""
    flags = nixmod.evaluation_log_flags
    assert flags("nix (Lix, like Nix) 2.91.1")[0] == "--debug"
    assert flags("nix (Lix, like Nix) 2.90.0")[0] == "--debug"
    assert flags("nix (Nix) 2.8.0")[0] == "-vv"
    assert flags("nix (Determinate Nix 3.6.2) 2.29.0")[0] == "-vv"
    log = nixmod.read_evaluation_log(LIX_DEBUG_LOG.splitlines())
    assert log.evaluated_files == (
        "/nix/store/5c0q1lb7gm6vd4a3xk7yfr0rf7xj9ic3-source/flake.nix",
        "/nix/store/5c0q1lb7gm6vd4a3xk7yfr0rf7xj9ic3-source/nix/shell.nix",
    )
    assert log.copied == (
        ("/home/u/data", ""),
        ("/home/u/more", ""),
        (
            "/home/u/proj/req.txt",
            "/nix/store/qd2y2zzg8i2hl3qhn7kkmjzq7c5jvq5y-req.txt",
        ),
    )
    # Debug noise is not relayed as progress; what Nix shows by default is.
    shown = [line for line in LIX_DEBUG_LOG.splitlines() if nixmod._is_notice(line)]
    assert shown == [
        "building '/nix/store/7fz1yxxyb0m6bmdi44gdvqfmyk0w6l4k-shell-env.drv'...",
        "warning: Git tree '/home/u/proj' is dirty",
    ]


def test_a_nix_that_says_it_is_lix_is_asked_for_debug_output_and_its_files_are_recorded(
    nix, projects, tmp_path, cache
):
    """A wrapper reporting Lix's version line runs the real Nix: the evaluation gets
    ``--debug`` (debug includes talkative, so this Nix still logs ``evaluating file``), and the
    imported file is an input."""
    calls = tmp_path / "calls"
    wrapper = tmp_path / "lix" / "nix"
    wrapper.parent.mkdir()
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "nix (Lix, like Nix) 2.93.0"; exit 0; fi\n'
        f'echo "$*" >> "{calls}"\n'
        f'exec "{nix}" "$@"\n'
    )
    wrapper.chmod(0o755)
    project = write_shell_nix(
        projects / "lix", {**DEFAULT_SHELL, "V": Raw("(import ./lib/v.nix).v")}
    )
    (project / "lib").mkdir()
    (project / "lib" / "v.nix").write_text('{ v = "1"; }\n')
    source = shell_source(project)
    lines: list[str] = []
    resolved = cache.ensure(source, str(wrapper), on_line=lines.append)
    assert resolved.entry["variables"]["V"] == "1"
    assert any(
        "print-dev-env" in c and "--debug" in c.split() for c in calls.read_text().splitlines()
    )
    assert str(project / "lib" / "v.nix") in resolved.entry["key"]["inputs"]
    assert not any(line.startswith("evaluating file") for line in lines)
