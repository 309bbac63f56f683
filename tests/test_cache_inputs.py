"""What invalidates a cached environment, on real Nix: files a flake reads elsewhere in its
repository, files and flakes outside the project, manifests, the search path (``<chan>``), an
edit made while Nix runs, and what does not (a saved notebook, an edited ``.py`` file). Also the
devShell-name list, the GC roots of a flake's inputs, and Lix's log (captured text).

Where Nix versions differ, the test says which rule it follows.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nixprojects import (
    DEFAULT_SHELL,
    MINI_NIX,
    Raw,
    git_track,
    write_flake,
    write_shell_nix,
)
from test_reliability import Gate

from nixkernel import inputs
from nixkernel import nix as nixmod
from nixkernel.cache import EnvironmentCache, file_digest
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


# -- flakes in a repository (item 10) and what must not evaluate (issue 13) -----------------


def repo_with_flake_in_sub(root: Path) -> tuple[Path, Path]:
    """repo/sub/flake.nix imports ../nix/common.nix; the repository also tracks a .py file and a
    notebook next to the flake."""
    repo = root / "repo"
    (repo / "nix").mkdir(parents=True)
    (repo / "nix" / "common.nix").write_text('{ color = "blue"; }\n')
    shell = {**DEFAULT_SHELL, "COLOR": Raw("(import ../nix/common.nix).color")}
    flake = write_flake(repo / "sub", {"default": shell}, git=False)
    (flake / "analysis.py").write_text("print('hello')\n")
    (flake / "notebook.ipynb").write_text('{"cells": []}\n')
    git_track(repo)
    return repo, flake


def test_a_flake_in_a_repository_subdirectory_reevaluates_when_a_repository_file_it_imports_changes(
    nix, counting_nix, projects, cache
):
    """A flake sees its whole git repository: ``import ../nix/common.nix`` from repo/sub. Nix
    2.8 and 2.26 log the store copy (``/nix/store/<h>-source/nix/common.nix``), mapped back to
    the repository by content; 2.34 logs the repository's own path (``printTalkative
    "evaluating file"``, src/libexpr/eval.cc). The user entered the shell before (twice: Nix
    fills its evaluation cache attribute by attribute), so Nix's own evaluation cache (setting
    ``eval-cache``; here 2.8 and 2.34 serve the shell from it, 2.26 does not on this dirty
    tree) and would evaluate no file: the miss must still see the files it reads (it turns that
    cache off)."""
    repo, flake = repo_with_flake_in_sub(projects)
    source = NixSource.flake_shell(str(flake), "default")
    for _ in range(2):
        subprocess.run(
            [nix, "print-dev-env", "--json", *source.installable_args()],
            check=True, capture_output=True,
        )  # fmt: skip
    assert start(cache, source, counting_nix.path)["COLOR"] == "blue"
    assert start(cache, source, counting_nix.path)["COLOR"] == "blue"
    assert counting_nix.evaluations() == 1

    (repo / "nix" / "common.nix").write_text('{ color = "green"; }\n')
    assert start(cache, source, counting_nix.path)["COLOR"] == "green"
    assert counting_nix.evaluations() == 2


def test_editing_a_tracked_python_file_or_saving_a_notebook_evaluates_nothing(
    nix, counting_nix, projects, cache
):
    """On a dirty tree ``nix develop`` evaluates again at every call (its evaluation cache is
    keyed by the whole source); the kernel's cache watches only what the evaluation read."""
    repo, flake = repo_with_flake_in_sub(projects)
    source = NixSource.flake_shell(str(flake), "default")
    start(cache, source, counting_nix.path)
    (flake / "analysis.py").write_text("print('edited')\n")
    (flake / "notebook.ipynb").write_text('{"cells": [{"cell_type": "code"}]}\n')
    (repo / "README.md").write_text("new\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    resolved = cache.ensure(source, counting_nix.path)
    assert not resolved.evaluated and counting_nix.evaluations() == 1


# -- inputs outside the project (item 9) -----------------------------------------------------


def outside_flake(directory: Path) -> Path:
    """A git flake outside the project (like /etc/nixos) whose output imports ./lib.nix."""
    directory.mkdir(parents=True)
    (directory / "lib.nix").write_text('{ value = "outside 1"; }\n')
    (directory / "flake.nix").write_text(
        "{ outputs = { self }: { value = (import ./lib.nix).value; }; }\n"
    )
    (directory / "flake.lock").write_text('{"nodes": {"root": {}}, "root": "root", "version": 7}\n')
    git_track(directory)
    return directory


def test_a_flake_outside_the_project_that_shell_nix_gets_is_watched_with_its_lock_file(
    nix, counting_nix, projects, tmp_path, cache
):
    """``(builtins.getFlake "/abs/outside").value``: Nix evaluates the outside flake from its
    store copy (2.8 logs ``copying '/abs/outside'...``, 2.26 ``copying '"/abs/outside"' to the
    store...``, 2.34 ``copying "/abs/outside" to the store...``); its files are mapped back, and
    its flake.lock, read but never logged, is watched beside its flake.nix."""
    outside = outside_flake(tmp_path / "outside")
    project = write_shell_nix(
        projects / "uses-outside",
        {**DEFAULT_SHELL, "VALUE": Raw(f'(builtins.getFlake "{outside}").value')},
    )
    source = shell_source(project)
    assert start(cache, source, counting_nix.path)["VALUE"] == "outside 1"
    assert not cache.ensure(source, counting_nix.path).evaluated

    (outside / "lib.nix").write_text('{ value = "outside 2"; }\n')
    assert start(cache, source, counting_nix.path)["VALUE"] == "outside 2"
    assert counting_nix.evaluations() == 2

    (outside / "flake.lock").write_text('{"nodes": {"root": {}}, "root": "root", "version": 7}\n\n')
    start(cache, source, counting_nix.path)
    assert counting_nix.evaluations() == 3


def test_an_imported_file_and_a_copied_directory_outside_the_project_are_inputs(
    nix, counting_nix, projects, tmp_path, cache
):
    """``import /abs/common.nix`` is logged as evaluated; ``"${/abs/data}"`` as ``copied source
    '/abs/data' -> '/nix/store/...'`` (all versions): a copied directory is watched whole."""
    outside = tmp_path / "outside"
    (outside / "data").mkdir(parents=True)
    (outside / "data" / "table.csv").write_text("a,b\n")
    (outside / "common.nix").write_text('{ value = "common 1"; }\n')
    project = write_shell_nix(
        projects / "imports-outside",
        {
            **DEFAULT_SHELL,
            "VALUE": Raw(f"(import {outside}/common.nix).value"),
            "DATA": Raw(f'"${{{outside}/data}}"'),
        },
    )
    source = shell_source(project)
    first = start(cache, source, counting_nix.path)
    assert first["VALUE"] == "common 1" and first["DATA"].startswith("/nix/store/")
    assert not cache.ensure(source, counting_nix.path).evaluated

    (outside / "common.nix").write_text('{ value = "common 2"; }\n')
    assert start(cache, source, counting_nix.path)["VALUE"] == "common 2"
    (outside / "data" / "table.csv").write_text("a,b\n1,2\n")
    second = start(cache, source, counting_nix.path)
    assert second["DATA"] != first["DATA"]
    assert counting_nix.evaluations() == 3


def test_manifests_read_with_readfile_are_watched_by_name(nix, counting_nix, projects, cache):
    """``readFile`` / ``fromTOML`` / ``importJSON`` are never logged: uv.lock, pyproject.toml,
    requirements*.txt... are watched by name (uv2nix, poetry2nix and devenv read them)."""
    project = write_shell_nix(
        projects / "manifests",
        {**DEFAULT_SHELL, "LOCK": Raw("(builtins.readFile ./uv.lock)")},
    )
    (project / "uv.lock").write_text("version = 1\n")
    source = shell_source(project)
    assert start(cache, source, counting_nix.path)["LOCK"] == "version = 1\n"
    (project / "uv.lock").write_text("version = 2\n")
    assert start(cache, source, counting_nix.path)["LOCK"] == "version = 2\n"
    assert counting_nix.evaluations() == 2
    (project / "requirements-dev.txt").write_text("pytest\n")
    start(cache, source, counting_nix.path)
    assert counting_nix.evaluations() == 3
    assert not cache.ensure(source, counting_nix.path).evaluated


# -- the search path (item 8) ----------------------------------------------------------------


def test_switching_a_nix_path_link_reevaluates_and_the_shell_sees_the_new_target(
    nix, counting_nix, projects, tmp_path, cache, monkeypatch
):
    """``NIX_PATH=chan=<link>``, ``import <chan/x.nix>``; the link moves, as a channel does on
    ``nix-channel --update`` (its target is a new store path). Nix 2.8 logs the file under the
    link (``<link>/x.nix``), 2.26 and 2.34 under the resolved target (``A/x.nix``), which does
    not change: the entry's resolved search path does."""
    for name, color in (("A", "red"), ("B", "yellow")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.nix").write_text(f'{{ color = "{color}"; }}\n')
    link = tmp_path / "chan"
    link.symlink_to(tmp_path / "A")
    monkeypatch.setenv("NIX_PATH", f"chan={link}")
    project = write_shell_nix(
        projects / "channel", {**DEFAULT_SHELL, "COLOR": Raw("(import <chan/x.nix>).color")}
    )
    source = shell_source(project)
    assert start(cache, source, counting_nix.path)["COLOR"] == "red"
    assert not cache.ensure(source, counting_nix.path).evaluated

    tmp = tmp_path / "chan.new"
    tmp.symlink_to(tmp_path / "B")
    tmp.replace(link)
    assert start(cache, source, counting_nix.path)["COLOR"] == "yellow"
    assert counting_nix.evaluations() == 2


def test_nix_conf_nix_path_decides_the_search_path_and_is_watched(
    nix, counting_nix, projects, tmp_path, cache, monkeypatch
):
    """Without NIX_PATH, nix.conf's ``nix-path`` names the channels (all versions): the
    targets Nix reports in ``builtins.nixPath`` are recorded, and an edit of nix.conf pointing
    ``chan`` elsewhere evaluates again."""
    for name, color in (("A", "red"), ("B", "yellow")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.nix").write_text(f'{{ color = "{color}"; }}\n')
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "nix.conf").write_text(f"nix-path = chan={tmp_path / 'A'}\n")
    monkeypatch.delenv("NIX_PATH", raising=False)
    monkeypatch.setenv("NIX_CONF_DIR", str(conf))
    project = write_shell_nix(
        projects / "conf-channel", {**DEFAULT_SHELL, "COLOR": Raw("(import <chan/x.nix>).color")}
    )
    source = shell_source(project)
    assert start(cache, source, counting_nix.path)["COLOR"] == "red"
    entry = cache.load(cache.slot(source))
    assert entry["key"]["search_path"][str(tmp_path / "A")] == str(tmp_path / "A")
    assert not cache.ensure(source, counting_nix.path).evaluated

    (conf / "nix.conf").write_text(f"nix-path = chan={tmp_path / 'B'}\n")
    assert start(cache, source, counting_nix.path)["COLOR"] == "yellow"
    assert counting_nix.evaluations() == 2


def test_a_flake_search_path_entry_watches_the_flake_registries(
    nix, counting_nix, projects, tmp_path, cache, monkeypatch
):
    """``NIX_PATH=flake:nixpkgs`` resolves ``<nixpkgs>`` through the flake registries (checked
    here: 2.26 and 2.34 keep ``flake:nixpkgs`` as one entry of ``builtins.nixPath``; 2.8 splits
    it at ``:``, so it has no such entry): the user's registry.json is an input there."""
    whole = tuple(int(p) for p in nixmod.nix_version(nix).split(".")[:2]) >= (2, 26)
    config = tmp_path / "config"
    (config / "nix").mkdir(parents=True)
    registry = config / "nix" / "registry.json"
    registry.write_text('{"flakes": [], "version": 2}\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.setenv("NIX_PATH", "flake:nixpkgs")
    project = write_shell_nix(projects / "registry")
    source = shell_source(project)
    start(cache, source, counting_nix.path)
    watched = cache.load(cache.slot(source))["key"]["inputs"]
    assert (str(registry) in watched) == whole
    registry.write_text('{"flakes": [], "version": 2}\n\n')
    start(cache, source, counting_nix.path)
    assert counting_nix.evaluations() == (2 if whole else 1)


def test_search_path_targets_resolve_links_and_add_default_channels_without_nix_path(tmp_path):
    """Without NIX_PATH (and nix.conf's nix-path), Nix searches its default channel links
    (``EvalSettings::getDefaultNixPath``): they are part of the key even before they exist."""
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with_env = inputs.search_path_targets([str(tmp_path / "link")], {"NIX_PATH": "x"})
    assert with_env == {str(tmp_path / "link"): str(tmp_path / "target")}
    without = inputs.search_path_targets([], {})
    assert "/nix/var/nix/profiles/per-user/root/channels" in without
    assert os.path.expanduser("~/.nix-defexpr/channels") in without
    assert inputs.search_path_targets(["https://example.org/x.tar.gz"], {"NIX_PATH": ""}) == {
        "https://example.org/x.tar.gz": "https://example.org/x.tar.gz"
    }


# -- edits while Nix runs (item 11) ----------------------------------------------------------


@pytest.mark.parametrize("where", ["project", "outside"])
def test_a_file_edited_while_nix_evaluates_leaves_the_entry_stale(
    where, nix, counting_nix, projects, tmp_path, cache, gate
):
    """Nix reads lib.nix, then waits at the gate; the test edits lib.nix; the evaluation ends
    with the old value. The next start must evaluate again. A file known before (the project's
    ``*.nix``) keeps the digest taken before Nix ran; one learnt from the log (outside) and
    changed since the evaluation started is recorded as changed."""
    lib_dir = projects / "racy" / "lib" if where == "project" else tmp_path / "outside"
    lib_dir.mkdir(parents=True)
    lib = lib_dir / "lib.nix"
    lib.write_text('{ value = "before"; }\n')
    project = write_shell_nix(
        projects / "racy",
        {
            **DEFAULT_SHELL,
            "VALUE": Raw("lib.value"),
            "GATE": Raw(f"(builtins.seq lib.value {gate.value().expr})"),
        },
        let=f"lib = import {lib};",
    )
    source = shell_source(project)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(start(cache, source, counting_nix.path)))
    thread.start()
    try:
        gate.wait_started()
        lib.write_text('{ value = "during"; }\n')
    finally:
        gate.open()
        thread.join(timeout=300)
    assert result["VALUE"] == "before"
    assert start(cache, source, counting_nix.path)["VALUE"] == "during"
    assert counting_nix.evaluations() == 2


# -- the stat fast path ----------------------------------------------------------------------


def test_a_stamp_is_only_trusted_for_files_unchanged_since_well_before_it_was_taken(tmp_path):
    """git's racy-clean rule: a file changed within RACY_NS of its stamp may change again in
    the same timestamp tick unseen by stat, so it gets no stamp (its content is read at every
    check). A stamped file whose mtime is put back after an edit still differs (ctime)."""
    path = tmp_path / "f.nix"
    path.write_text("{ a = 1; }\n")
    assert inputs.stamp(str(path)) is None  # just written: racy
    later = time.time_ns() + 2 * inputs.RACY_NS
    recorded = inputs.stamp(str(path), now_ns=later)
    assert recorded is not None and inputs.stamp_matches(str(path), recorded)
    st = path.stat()
    path.write_text("{ a = 2; }\n")  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not inputs.stamp_matches(str(path), recorded)


def test_a_warm_start_reads_no_stamped_input(nix, projects, cache, monkeypatch):
    """Once stamped, a warm start checks an input with ``stat`` only, however big (a uv.lock).
    (RACY_NS is set to 0 here: ctime cannot be set back to make the files old.)"""
    monkeypatch.setattr(inputs, "RACY_NS", 0)
    project = write_shell_nix(projects / "stamped")
    (project / "uv.lock").write_text("x" * 100_000)
    source = shell_source(project)
    start(cache, source, nix)
    entry = cache.load(cache.slot(source))
    assert str(project / "uv.lock") in entry["stamps"]
    reads: list[str] = []

    def spy(path, *args, **kwargs):
        reads.append(str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setitem(file_digest.__globals__, "open", spy)
    assert cache.ensure(source, nix).state == "fresh"
    assert str(project / "uv.lock") not in reads and str(project / "shell.nix") not in reads
    (project / "uv.lock").write_text("y" * 100_000)
    assert cache.inspect(source, nix)[0] == "stale"
    assert str(project / "uv.lock") in reads


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


# -- devShell names (item 13) ----------------------------------------------------------------


def test_devshell_names_follow_a_file_the_flake_imports(nix, projects, manager_factory):
    """The names come from ``nix eval ...#devShells.<system> --apply builtins.attrNames``; they
    are kept with the files that evaluation read, so a shell added in an imported file shows."""
    project = projects / "shells"
    project.mkdir()
    shutil.copy(MINI_NIX, project / "mini.nix")
    (project / "nix").mkdir()
    (project / "nix" / "shells.nix").write_text('mini: { default = mini.mkShell { A = "1"; }; }\n')
    (project / "flake.nix").write_text(
        '{ outputs = { self }: let mini = import ./mini.nix { system = "x86_64-linux"; };\n'
        "  in { devShells.x86_64-linux = import ./nix/shells.nix mini; }; }\n"
    )
    git_track(project)
    manager = manager_factory(project_dirs=[str(projects)])
    manager.refresh()
    assert manager.learn_flake_shells()
    assert manager.cache.flake_shells(str(project)) == ["default"]
    (project / "notes.py").write_text("x = 1\n")
    assert manager.cache.flake_shells(str(project)) == ["default"]

    (project / "nix" / "shells.nix").write_text(
        'mini: { default = mini.mkShell { A = "1"; }; gpu = mini.mkShell { A = "2"; }; }\n'
    )
    assert manager.cache.flake_shells(str(project)) is None
    assert manager.learn_flake_shells()
    assert manager.cache.flake_shells(str(project)) == ["default", "gpu"]
    assert {t.shell for t in manager.refresh() if t.kind == "flake"} == {"default", "gpu"}


# -- GC roots of flake inputs (item 19) ------------------------------------------------------


def test_a_flakes_inputs_are_gc_rooted_next_to_its_environment(nix, projects, tmp_path, cache):
    """As nix-direnv's ``use_flake`` does (``nix flake archive --json``, then ``nix build
    --out-link`` per path), so a re-evaluation after a garbage collection needs no network.
    Checked without collecting: the roots exist, point at the inputs' store paths, and are
    registered (indirect roots in /nix/var/nix/gcroots/auto)."""
    dep = tmp_path / "dep"
    dep.mkdir()
    (dep / "flake.nix").write_text('{ outputs = { self }: { word = "from dep"; }; }\n')
    project = write_flake(
        projects / "with-input",
        {"default": {**DEFAULT_SHELL, "WORD": Raw("dep.word")}},
        git=False,
    )
    flake = project / "flake.nix"
    flake.write_text(
        flake.read_text()
        .replace("{\n", f'{{\n  inputs.dep.url = "path:{dep}";\n', 1)
        .replace("{ self }", "{ self, dep }")
    )
    git_track(project)
    source = NixSource.flake_shell(str(project), "default")
    assert start(cache, source, nix)["WORD"] == "from dep"
    # The lock file Nix wrote during that evaluation is what it used: not a change.
    assert (project / "flake.lock").exists()
    assert not cache.ensure(source, nix).evaluated
    archive = subprocess.run(
        [nix, "flake", "archive", "--json", "--no-write-lock-file", str(project)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    dep_path = json.loads(archive.stdout)["inputs"]["dep"]["path"]
    slot = Path(cache.slot(source))
    roots = {os.path.realpath(p): p for p in slot.glob("flake-input*")}
    assert dep_path in roots, roots
    registered = {os.readlink(p) for p in Path("/nix/var/nix/gcroots/auto").iterdir()}
    assert str(roots[dep_path]) in registered
