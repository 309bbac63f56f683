"""The command line: ``jupyter nixkernel SUBCOMMAND``.

A :class:`~jupyter_core.application.JupyterApp` with subcommands, like ``jupyter kernelspec``.
Every subcommand reads ``jupyter_server_config.py`` (and ``.json``) like the server does, so
``c.NixKernelSpecManager.*`` settings apply to both.

- ``list``: the kernels nixkernel offers (``--all``: and the ordinary kernelspecs);
- ``show NAME``: one kernel's spec, project, watched inputs, cache state (``--env``: environment);
- ``warm``: evaluate and cache environments ahead of time, several at once;
- ``install`` / ``uninstall``: write real ``kernel.json`` files for tools that read kernelspecs
  from disk (VS Code, nbconvert, papermill, nbclient);
- ``clean``: drop cached environments and their GC roots;
- ``doctor``: check the machine and each project, with a fix for each problem;
- ``enable`` / ``disable`` / ``status``: the server extension's switch and what the server uses.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_core.application import JupyterApp, base_aliases, base_flags
from jupyter_core.paths import jupyter_data_dir
from traitlets import Bool, Instance, Int, List, Unicode

from . import __version__, buildlog, doctor, kernels, nix, serverconfig
from .cache import NONE, STALE, CacheEntry, SlotSource, watched_inputs
from .describe import KIND_AUTO, KernelTarget, NixSource
from .environment import kernel_environment
from .kernelspec import NixKernelSpecManager

INSTALLED_BY = "nixkernel"

#: The flags every subcommand has: not --generate-config, which would write a
#: jupyter_server_config.py holding nothing but nixkernel's settings.
_flags = {k: v for k, v in base_flags.items() if k not in ("generate-config", "y")}


class NixKernelSubcommand(JupyterApp):
    """Shared plumbing: server configuration, a manager, and DIR or NAME arguments."""

    version = __version__
    # Read the same configuration files as the Jupyter server.
    config_file_name = Unicode("jupyter_server_config")

    classes = [NixKernelSpecManager]

    aliases = {
        **base_aliases,
        "depth": "NixKernelSpecManager.max_depth",
        "cache-dir": "NixKernelSpecManager.cache_dir",
        "nix": "NixKernelSpecManager.nix_executable",
        "dir": "NixKernelSpecManager.project_dirs",
    }
    flags = dict(_flags)

    #: Whether positional arguments are directories to search (else kernel names).
    takes_dirs = True
    #: Whether the first positional argument is a kernel name and the others directories.
    takes_name_then_dirs = False

    manager = Instance(NixKernelSpecManager, allow_none=True)
    dirs = List(Unicode(), help="Directories given on the command line.")
    names = List(Unicode(), help="Kernel names given on the command line.")

    def initialize(self, argv: Any = None) -> None:
        super().initialize(argv)
        self.manager = NixKernelSpecManager(parent=self)
        if self.takes_name_then_dirs:
            self.names = list(self.extra_args[:1])
            self.dirs = [os.path.abspath(os.path.expanduser(d)) for d in self.extra_args[1:]]
        elif self.takes_dirs:
            self.dirs = [os.path.abspath(os.path.expanduser(d)) for d in self.extra_args]
        else:
            self.names = list(self.extra_args)
        if self.dirs:
            self.manager.project_dirs = self.dirs

    @property
    def nix_option(self) -> str | None:
        assert self.manager is not None
        return self.manager.nix_executable or None

    def source_of(self, target: KernelTarget) -> NixSource | None:
        assert self.manager is not None
        return self.manager.source_of(target)

    def cache_state(self, target: KernelTarget) -> str:
        assert self.manager is not None
        source = self.source_of(target)
        if source is None:
            return NONE  # nothing to evaluate (a plain venv): no cached environment
        state, _ = self.manager.cache.inspect(source, self.nix_option)
        return state

    def all_targets(self, learn_shells: bool = False) -> list[KernelTarget]:
        """Every kernel nixkernel offers here (with the project-following one, if on).

        ``learn_shells`` first evaluates the devShell names of flakes (runs Nix), so that every
        devShell is included, not only those already known."""
        assert self.manager is not None
        targets = self.manager.refresh()
        if (
            learn_shells
            and self.manager.discover_flake_shells
            and self.manager.learn_flake_shells()
        ):
            targets = self.manager.refresh()
        if self.manager.project_kernel:
            targets = [*targets, self.manager.project_kernel_target()]
        return targets

    def resolve_names(self, names: list[str]) -> list[KernelTarget]:
        """The targets ``names`` designate (a kernel name, a display name, or a unique prefix
        of either, in any case), or exit with a message saying how to find names."""
        targets = self.all_targets()
        found = [match_target(n, targets) for n in names]
        if any(isinstance(f, str) for f in found) and any(t.kind == "flake" for t in targets):
            # Maybe a devShell of a flake whose shell names are not learnt yet.
            targets = self.all_targets(learn_shells=True)
            found = [match_target(n, targets) for n in names]
        errors = [f for f in found if isinstance(f, str)]
        if errors:
            assert self.manager is not None
            self.fail(
                "\n".join(errors)
                + f"\n(searched {', '.join(map(shlex.quote, self.manager.project_dirs))}"
                ")\n`jupyter nixkernel list` shows the names of the kernels there; to look "
                "elsewhere, pass --dir=DIR (or set c.NixKernelSpecManager.project_dirs)."
            )
        return [f for f in found if not isinstance(f, str)]

    def fail(self, message: str, status: int = 1) -> None:
        print(f"jupyter nixkernel {self.name.rsplit('-', 1)[-1]}: {message}", file=sys.stderr)
        self.exit(status)


def match_target(wanted: str, targets: list[KernelTarget]) -> KernelTarget | str:
    """The target called ``wanted`` (its name or display name, case-insensitively; else the one
    whose name or display name starts with it), or why there is none."""
    key = wanted.casefold()
    for exact in (
        [t for t in targets if t.name == key],
        [t for t in targets if t.display_name.casefold() == key],
    ):
        if exact:
            return exact[0]
    prefixed = [
        t for t in targets if t.name.startswith(key) or t.display_name.casefold().startswith(key)
    ]
    if len(prefixed) == 1:
        return prefixed[0]
    if prefixed:
        choices = ", ".join(f"{t.name} ({t.display_name})" for t in prefixed[:8])
        return f"{wanted!r} could be any of {len(prefixed)} kernels: {choices}"
    return f"no kernel named {wanted}"


# -- list ----------------------------------------------------------------------------------------


class ListApp(NixKernelSubcommand):
    name = "jupyter-nixkernel-list"
    description = """List the kernels nixkernel offers: one per flake devShell, shell.nix and
    virtualenv found under DIR... (default: c.NixKernelSpecManager.project_dirs, else
    c.ServerApp.root_dir, else the current directory). The CACHE column says whether the
    environment is evaluated and current (fresh), evaluated but its Nix files changed since
    (stale), or not evaluated (none)."""
    examples = """
jupyter nixkernel list
jupyter nixkernel list --json ~/projects
jupyter nixkernel list --all

"""

    json_output = Bool(False, help="Print JSON instead of a table.").tag(config=True)
    include_native = Bool(False, help="Also list the ordinary kernelspecs (kind 'native').").tag(
        config=True
    )
    flags = {
        **NixKernelSubcommand.flags,
        "json": ({"ListApp": {"json_output": True}}, "Print machine-readable JSON."),
        "all": (
            {"ListApp": {"include_native": True}},
            "Also list the ordinary kernelspecs (python3, `jupyter kernelspec install`ed ones).",
        ),
    }

    def start(self) -> None:
        assert self.manager is not None
        manager = self.manager
        targets = self.all_targets()
        rows = []
        for target in targets:
            if not manager.allowed(target.name):
                continue
            row: dict[str, Any] = {**target.as_dict(), "cache": self.cache_state(target)}
            row["project"] = row["project"] or None  # Python (this project): no fixed project
            if target.problem:
                row["problem"] = target.problem
            rows.append(row)
        hidden = sum(not manager.allowed(t.name) for t in targets)
        installed = installed_rows(KernelSpecManager(parent=self), {r["name"] for r in rows})
        rows.extend(r for r in installed if r.get("problem"))
        if self.include_native:
            rows.extend(r for r in installed if not r.get("problem"))
            rows.extend(native_rows(rows, KernelSpecManager(parent=self)))
        if self.json_output:
            json.dump(rows, sys.stdout, indent=2)
            print()
        else:
            print_table(
                ["NAME", "DISPLAY NAME", "KIND", "PROJECT", "CACHE"],
                [
                    [r["name"], r["display_name"], r["kind"], r["project"] or "-",
                     r["cache"] + (f" ({problem_label(r['problem'])})" if r.get("problem") else "")]
                    for r in rows
                ],
            )  # fmt: skip
            problems = [r for r in rows if r.get("problem")]
            if problems:
                print("\nProblems:")
                for r in problems:
                    print(f"  {r['name']}: {r['problem']}")
        notes = []
        if hidden:
            notes.append(
                f"{hidden} kernel(s) hidden by c.KernelSpecManager.allowed_kernelspecs, as the "
                "server hides them."
            )
        unevaluated = sum(r.get("kind") in NIX_KINDS and r.get("cache") == NONE for r in rows)
        if unevaluated:
            notes.append(
                f"{unevaluated} environment(s) not evaluated yet (CACHE none) are listed with "
                "their Python kernel; the kernels of other languages a shell carries (R, Julia...) "
                "appear once it is evaluated: `jupyter nixkernel warm --all`, or start its kernel."
            )
        if not any(t.project for t in targets):
            notes.append(no_projects_hint(manager.project_dirs, bool(self.dirs)))
        for note in notes:
            # With --json, notes go to stderr: stdout stays one JSON document.
            print(
                ("" if self.json_output else "\n") + note,
                file=sys.stderr if self.json_output else sys.stdout,
            )


#: Kinds whose environment is a Nix shell: what kernels it carries is known once evaluated.
NIX_KINDS = ("flake", "shell.nix")


def no_projects_hint(project_dirs: list[str], given: bool) -> str:
    """What to do when nothing was found: where it looked, and how to look elsewhere."""
    where = ", ".join(shlex.quote(d) for d in project_dirs)
    if given:
        return (
            f"No projects found under {where} (a project is a folder with flake.nix, shell.nix or "
            f".venv, at most c.NixKernelSpecManager.max_depth levels down)."
        )
    return (
        f"No projects found under {where}. Pass the folder that holds your projects, e.g. "
        "`jupyter nixkernel list ~/projects`, or set it for the server and this command alike in "
        "jupyter_server_config.py (in `jupyter --config-dir`): "
        'c.NixKernelSpecManager.project_dirs = ["~/projects"].'
    )


def problem_label(problem: str) -> str:
    """A short name for a row's problem (the whole text is printed below the table)."""
    if problem.startswith("The shell has no Python"):
        return "no Python"
    if "project is gone" in problem:
        return "project gone"
    return "broken venv"


def nixkernel_metadata(spec: dict[str, Any]) -> dict[str, Any]:
    info = spec.get("metadata", {}).get("nixkernel") if isinstance(spec, dict) else None
    return info if isinstance(info, dict) else {}


def missing_project(info: dict[str, Any]) -> str | None:
    """The project an installed kernelspec was made for, if that directory is gone."""
    project = info.get("project")
    if info.get("installed_by") != INSTALLED_BY or not isinstance(project, str) or not project:
        return None
    return None if os.path.isdir(project) else project


def installed_rows(ksm: KernelSpecManager, taken: set[str]) -> list[dict[str, Any]]:
    """kernel.json files `install` wrote that are not among ``taken``, as ``list`` rows (with
    the kind nixkernel gave them); those of a project that is gone carry a problem saying how to
    remove them."""
    rows = []
    for name, resource_dir in sorted(ksm.find_kernel_specs().items()):
        if name in taken:
            continue
        try:
            with open(os.path.join(resource_dir, "kernel.json"), encoding="utf-8") as f:
                spec = json.load(f)
        except (OSError, ValueError):
            continue
        info = nixkernel_metadata(spec)
        if info.get("installed_by") != INSTALLED_BY:
            continue
        row: dict[str, Any] = {
            "name": name, "display_name": spec.get("display_name", name),
            "kind": info.get("kind", "native"), "shell": info.get("shell"),
            "project": info.get("project") or None, "venv": info.get("venv"), "cache": NONE,
            "resource_dir": resource_dir,
        }  # fmt: skip
        gone = missing_project(info)
        if gone:
            row["problem"] = (
                f"installed in {resource_dir}, but its project is gone ({gone} no longer exists). "
                f"Remove it with `{uninstall_missing_command(resource_dir)}`."
            )
        rows.append(row)
    return rows


def uninstall_missing_command(resource_dir: str) -> str:
    """The ``uninstall --missing`` command for the kernels directory holding ``resource_dir``."""
    kernels = os.path.dirname(resource_dir)
    if kernels == os.path.join(jupyter_data_dir(), "kernels"):
        return "jupyter nixkernel uninstall --missing"
    if kernels == os.path.join(sys.prefix, "share", "jupyter", "kernels"):
        return "jupyter nixkernel uninstall --missing --sys-prefix"
    prefix = os.path.dirname(os.path.dirname(os.path.dirname(kernels)))
    return f"jupyter nixkernel uninstall --missing --prefix {shlex.quote(prefix)}"


def native_rows(
    own: list[dict[str, Any]], ksm: KernelSpecManager | None = None
) -> list[dict[str, Any]]:
    """The ordinary kernelspecs on this machine, in ``list``'s row format (kind ``native``),
    as the configured manager lists them (``allowed_kernelspecs`` applies)."""
    taken = {r["name"] for r in own}
    rows = []
    for name, spec in sorted((ksm or KernelSpecManager()).get_all_specs().items()):
        if name in taken:
            continue
        rows.append(
            {
                "name": name,
                "display_name": spec["spec"].get("display_name", name),
                "kind": "native",
                "shell": None,
                "project": None,
                "venv": None,
                "language": spec["spec"].get("language"),
                "spec": None,
                "cache": NONE,
                "resource_dir": spec["resource_dir"],
            }
        )
    return rows


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    for line in [headers, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=False)).rstrip())


# -- show ----------------------------------------------------------------------------------------


class ShowApp(NixKernelSubcommand):
    name = "jupyter-nixkernel-show"
    description = """Show one kernel (NAME: its name, its display name, or a unique prefix of
    either; found under DIR... as `list` does): its kernelspec (command, display name, metadata),
    its project, the files whose change makes the cached environment stale, the cache's state, and
    with --env the environment the kernel would start with."""
    examples = """
jupyter nixkernel show nix-api-flake-0123456789
jupyter nixkernel show "api (flake)" ~/projects
jupyter nixkernel show api --env --evaluate
jupyter nixkernel show nix-api-flake-0123456789 --json

"""
    takes_dirs = False
    takes_name_then_dirs = True

    json_output = Bool(False, help="Print JSON.").tag(config=True)
    show_env = Bool(False, help="Show the environment the kernel would get.").tag(config=True)
    evaluate = Bool(False, help="Evaluate the environment first if it is not cached or stale.").tag(
        config=True
    )
    flags = {
        **NixKernelSubcommand.flags,
        "json": ({"ShowApp": {"json_output": True}}, "Print machine-readable JSON."),
        "env": ({"ShowApp": {"show_env": True}}, "Show the kernel's environment variables."),
        "evaluate": (
            {"ShowApp": {"evaluate": True}},
            "Evaluate (runs Nix) when the environment is not cached or stale.",
        ),
    }

    def start(self) -> None:
        assert self.manager is not None
        if len(self.names) != 1:
            self.fail("give one kernel name, then the folders to search if need be (see "
                      "`jupyter nixkernel list`).")  # fmt: skip
        (target,) = self.resolve_names(self.names)
        info = self.describe(target)
        if self.json_output:
            json.dump(info, sys.stdout, indent=2)
            print()
            return
        print_show(info)

    def describe(self, target: KernelTarget) -> dict[str, Any]:
        assert self.manager is not None
        spec = self.manager.kernel_spec_for(target).to_dict()
        info: dict[str, Any] = {**target.as_dict(), "problem": target.problem, "kernelspec": spec}
        if target.kernel is not None:
            info["found_in"] = target.kernel.origin
        source = self.source_of(target)
        info["source"] = source.describe() if source else None
        info["shell_command"] = source.shell_command() if source else None
        info["watched_inputs"] = watched_inputs(source) if source else []
        entry: dict | None = None
        if source is not None:
            cache = self.manager.cache
            state, entry = cache.inspect(source, self.nix_option)
            if self.evaluate and state != "fresh":
                try:
                    resolved = cache.ensure(
                        source, self.nix_option, allow_stale=False, on_line=_stderr_line
                    )
                    state, entry = resolved.state, resolved.entry
                except nix.NixKernelError as exc:
                    self.fail(f"evaluating {source.describe()} failed:\n{exc}")
            cached = CacheEntry.of(cache.slot(source), state, entry)
            info["cache"] = {
                "state": cached.state,
                "slot": cached.slot,
                "evaluated": _when(cached.created),
                "nix_version": cached.nix_version,
                "gc_root": cached.gc_root,
                "gc_root_target": cached.gc_root_target,
                "has_shell_hook": cached.has_shell_hook,
            }
            shell = kernels.from_entry(entry)
            if shell is not None:
                info["carries"] = {
                    "python3": shell.python3,
                    "ipykernel": shell.ipykernel,
                    "kernels": [k.name for k in shell.kernels],
                    "notes": list(shell.notes),
                }
            info["cache"].update(evaluation_info(cached.slot))
        else:
            info["cache"] = {"state": NONE, "note": "no Nix environment to cache"}
        if self.show_env:
            if source is not None and (entry is None or info["cache"]["state"] == NONE):
                info["env"] = None
                info["env_note"] = (
                    "Not evaluated yet: run `jupyter nixkernel warm "
                    f"{target.name}`, or pass --evaluate."
                )
            elif target.kind == "auto":
                info["env"] = None
                info["env_note"] = "Follows the notebook's project: see that project's kernel."
            else:
                variables = entry["variables"] if entry else {}
                model = entry.get("shell") if entry else None
                info["env"] = kernel_environment(variables, os.environ, target.venv, model)
                if entry and info["cache"]["state"] == STALE:
                    info["env_note"] = "From the stale cache entry: `warm` updates it."
        return info


def carried_kernels(entry: dict) -> str:
    """``; kernels: Python, R`` for an entry whose shell carries kernels besides Python."""
    shell = kernels.from_entry(entry)
    if shell is None or not shell.kernels:
        return ""
    names = (["Python"] if shell.ipykernel else []) + [k.display_name for k in shell.kernels]
    return "; kernels: " + ", ".join(names)


def evaluation_info(slot: str) -> dict[str, Any]:
    """An evaluation running now in ``slot`` (someone holds its lock: a kernel's build, `warm`),
    and the last evaluation's failure, recorded until the next success."""
    running = buildlog.running(slot)
    failure = buildlog.last_failure(slot)
    if running is not None:
        running = {
            **running,
            "started": _when(running["started"]),
            "log": os.path.join(slot, buildlog.LOG_FILE),
        }
    if failure is not None:
        error = nix.NixEvaluationError(
            str(failure.get("message", "")),
            str(failure.get("hint", "")),
            str(failure.get("details", "")),
        )
        failure = {"at": _when(failure["at"]), "error": str(error)}
    return {"evaluation": running, "last_failure": failure}


def _when(timestamp: object) -> str | None:
    if not isinstance(timestamp, int | float):
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def print_show(info: dict[str, Any]) -> None:
    spec = info["kernelspec"]
    kind = info["kind"] + (f" (devShell {info['shell']})" if info.get("shell") else "")
    rows = [
        ("Name", info["name"]),
        ("Display name", spec["display_name"]),
        ("Kind", kind),
        ("Project", info["project"] or "(the notebook's enclosing project)"),
        ("Virtualenv", info["venv"] or "-"),
        ("Nix source", info["source"] or "-"),
    ]
    if info.get("shell_command"):
        rows.append(("Enter it", info["shell_command"]))
    if info.get("spec"):
        rows.append(("Kernel", f"{info['spec']} ({info['language']}), found in {info['found_in']}"))
    if info.get("problem"):
        rows.append(("Problem", info["problem"]))
    for label, value in rows:
        print(f"{label + ':':<14}{value}")
    print("Command:")
    print("  " + " ".join(spec["argv"]))
    print("Metadata:")
    for line in json.dumps(spec["metadata"], indent=2).splitlines():
        print("  " + line)
    if info["watched_inputs"]:
        print("Watched inputs (a change makes the cached environment stale):")
        for path in info["watched_inputs"]:
            print(f"  {path}" + ("" if os.path.exists(path) else "  (absent)"))
    cache = info["cache"]
    print(f"Cache:        {cache['state']}")
    if cache.get("evaluated"):
        print(f"  evaluated   {cache['evaluated']} with Nix {cache['nix_version']}")
        print(f"  GC root     {cache['gc_root']} -> {cache['gc_root_target']}")
    if cache.get("slot"):
        print(f"  slot        {cache['slot']}")
    carries = info.get("carries")
    if carries:
        python = f"{carries['python3'] or '-'} ({'with' if carries['ipykernel'] else 'without'} "
        found = ", ".join(carries["kernels"]) or "none"
        print(f"The shell carries: python3 {python}ipykernel); kernels: {found}")
        for note in carries["notes"]:
            print(f"  note: {note}")
    running = cache.get("evaluation")
    if running is not None:
        since = f" since {running['started']}" if running.get("started") else ""
        pid = f" (pid {running['pid']})" if running.get("pid") else ""
        print(f"  evaluation  running now{since}{pid}; its output: {running['log']}")
        if running.get("last_line"):
            print(f"              last line: {running['last_line']}")
    failure = cache.get("last_failure")
    if failure is not None:
        print(f"  last evaluation failed ({failure['at']}):")
        for line in failure["error"].splitlines():
            print(f"    {line}")
    if "env" in info:
        if info.get("env_note"):
            print(f"Environment:  {info['env_note']}")
        if info["env"] is not None:
            print("Environment:" if not info.get("env_note") else "")
            for key, value in sorted(info["env"].items()):
                # Quoted like a shell would need it: some values hold newlines or spaces.
                print(f"  {key}={shlex.quote(value)}")
            if cache.get("has_shell_hook"):
                print("  (plus what the shell's shellHook sets when the kernel starts)")


# -- warm ----------------------------------------------------------------------------------------


class WarmApp(NixKernelSubcommand):
    name = "jupyter-nixkernel-warm"
    description = """Evaluate and cache the environments of the named kernels (or --all) now,
    several at once, so kernels start without waiting for Nix. Nix's output is shown prefixed
    by the kernel name. Exit status 1 if any evaluation failed."""
    examples = """
jupyter nixkernel warm --all
jupyter nixkernel warm --all --jobs 4 --dir ~/projects
jupyter nixkernel warm nix-api-flake-0123456789

"""
    takes_dirs = False

    warm_all = Bool(False, help="Warm every kernel's environment.").tag(config=True)
    jobs = Int(min(4, os.cpu_count() or 1), help="How many environments to evaluate at once.").tag(
        config=True
    )
    aliases = {**NixKernelSubcommand.aliases, "jobs": "WarmApp.jobs", "j": "WarmApp.jobs"}
    flags = {
        **NixKernelSubcommand.flags,
        "all": ({"WarmApp": {"warm_all": True}}, "Warm every kernel found."),
    }

    def start(self) -> None:
        assert self.manager is not None
        if self.warm_all == bool(self.names):
            self.fail("name the kernels to warm, or pass --all (not both).")
        targets = (
            self.all_targets(learn_shells=True) if self.warm_all else self.resolve_names(self.names)
        )
        jobs = self.plan(targets)
        if not self.warm_all:
            for target in targets:
                if self.source_of(target) is None:
                    print(
                        f"{target.name} ({target.display_name}) has no Nix environment: nothing "
                        "to evaluate (its virtualenv's Python starts as it is)."
                        if target.kind != KIND_AUTO
                        else f"{target.name} ({target.display_name}) follows the notebook's "
                        "project: warm that project's kernel instead."
                    )
        if not jobs:
            if self.warm_all:
                print("Nothing to evaluate: no kernel here has a Nix environment.")
            return
        failures = self.run(jobs)
        if failures:
            names = ", ".join(name for name, _ in failures)
            print(f"\n{len(failures)} of {len(jobs)} failed: {names}", file=sys.stderr)
            for name, error in failures:
                print(f"\n{name}:\n{error}", file=sys.stderr)
            self.exit(1)
        print(f"All {len(jobs)} environment(s) are cached.")

    def plan(self, targets: list[KernelTarget]) -> list[tuple[str, NixSource]]:
        """(kernel name, source) for each distinct Nix environment among ``targets``."""
        assert self.manager is not None
        return self.manager.warm_plan(targets)

    def run(self, jobs: list[tuple[str, NixSource]]) -> list[tuple[str, str]]:
        """Evaluate ``jobs`` several at once, printing progress; returns the failures."""
        assert self.manager is not None
        names = {source: name for name, source in jobs}
        lock = threading.Lock()

        def say(text: str) -> None:
            with lock:  # Nix's lines come from several threads at once
                print(text, flush=True)

        failures: list[tuple[str, str]] = []
        results = self.manager.cache.ensure_all(
            [source for _, source in jobs],
            self.nix_option,
            jobs=self.jobs,
            allow_stale=False,
            on_line=lambda source, line: say(f"  [{names[source]}] {line}"),
        )
        for done, (source, result) in enumerate(results, start=1):
            name = names[source]
            if isinstance(result, nix.NixKernelError):
                failures.append((name, str(result)))
                say(f"[{done}/{len(jobs)}] {name} ... FAILED: {result.message}")
            elif isinstance(result, Exception):  # a bug of ours: report it, warm the others
                reason = f"{type(result).__name__}: {result}"
                failures.append((name, reason))
                say(f"[{done}/{len(jobs)}] {name} ... FAILED: {reason}")
            else:
                what = (
                    f"evaluated in {result.seconds:.1f} s" if result.evaluated else "already cached"
                )
                say(f"[{done}/{len(jobs)}] {name} ... ok ({what}{carried_kernels(result.entry)})")
        return failures


# -- install / uninstall -----------------------------------------------------------------------

_location_flags = {
    "user": (
        {"KernelLocation": {"location": "user"}},
        "The user's kernels directory (jupyter --data-dir)/kernels (the default).",
    ),
    "sys-prefix": (
        {"KernelLocation": {"location": "sys-prefix"}},
        "This Python environment's kernels directory (sys.prefix/share/jupyter/kernels).",
    ),
}


class KernelLocation(NixKernelSubcommand):
    """Where ``install`` writes and ``uninstall`` removes kernelspecs."""

    takes_dirs = False
    location = Unicode("user", help="'user', 'sys-prefix' or 'prefix'.").tag(config=True)
    prefix = Unicode("", help="Install under PREFIX/share/jupyter/kernels.").tag(config=True)
    every = Bool(False, help="All kernels.").tag(config=True)
    aliases = {**NixKernelSubcommand.aliases, "prefix": "KernelLocation.prefix"}
    flags = {
        **NixKernelSubcommand.flags,
        **_location_flags,
        "all": ({"KernelLocation": {"every": True}}, "Every kernel."),
    }

    def install_prefix(self) -> str | None:
        """The prefix kernelspecs go under (PREFIX/share/jupyter/kernels), None for the user's."""
        if self.prefix:
            return os.path.abspath(os.path.expanduser(self.prefix))
        if self.location == "sys-prefix":
            return sys.prefix
        return None

    def kernels_dir(self) -> str:
        prefix = self.install_prefix()
        if prefix is None:
            return os.path.join(jupyter_data_dir(), "kernels")
        return os.path.join(prefix, "share", "jupyter", "kernels")

    def check_selection(self) -> None:
        if self.every == bool(self.names):
            self.fail("name the kernels, or pass --all (not both).")


def installed_by_us(spec_dir: str) -> bool:
    """Whether the kernelspec in ``spec_dir`` was written by ``jupyter nixkernel install``."""
    try:
        with open(os.path.join(spec_dir, "kernel.json"), encoding="utf-8") as f:
            spec = json.load(f)
        return spec["metadata"]["nixkernel"]["installed_by"] == INSTALLED_BY
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _subdirectories(directory: str, names: list[str]) -> list[str]:
    return [n for n in names if os.path.isdir(os.path.join(directory, n))]


def installed_project_gone(spec_dir: str) -> bool:
    """Whether the kernelspec in ``spec_dir`` (written by ``install``) names a project that no
    longer exists."""
    try:
        with open(os.path.join(spec_dir, "kernel.json"), encoding="utf-8") as f:
            return missing_project(nixkernel_metadata(json.load(f))) is not None
    except (OSError, ValueError):
        return False


class InstallApp(KernelLocation):
    name = "jupyter-nixkernel-install"
    description = """Write kernel.json files for the named kernels (or --all), so tools that read
    kernelspecs from disk instead of asking the Jupyter server (VS Code, nbconvert, papermill,
    nbclient) can start them. They run nixkernel's launcher with this Python."""
    examples = """
jupyter nixkernel install --all
jupyter nixkernel install nix-api-flake-0123456789 --sys-prefix
jupyter nixkernel install --all --prefix /opt/jupyter

"""

    def start(self) -> None:
        assert self.manager is not None
        self.check_selection()
        targets = (
            self.all_targets(learn_shells=True) if self.every else self.resolve_names(self.names)
        )
        destination_dir = self.kernels_dir()
        refused = []
        for target in targets:
            destination = os.path.join(destination_dir, target.name)
            if os.path.exists(destination) and not installed_by_us(destination):
                refused.append(destination)
                continue
            self.install(target, destination_dir)
            print(f"Installed {target.name} ({target.display_name}) in {destination}")
        if destination_dir not in KernelSpecManager(parent=self).kernel_dirs:
            share = os.path.dirname(destination_dir)
            print(
                f"Note: Jupyter does not look in {destination_dir} by default; tools find these "
                f"kernels with JUPYTER_PATH={share} in their environment."
            )
        if refused:
            self.fail(
                "left alone (not installed by nixkernel; `jupyter kernelspec remove` removes "
                "them): " + ", ".join(refused)
            )

    def install(self, target: KernelTarget, destination_dir: str) -> str:
        assert self.manager is not None
        spec = self.manager.kernel_spec_for(target).to_dict()
        spec["metadata"]["nixkernel"]["installed_by"] = INSTALLED_BY
        with tempfile.TemporaryDirectory(prefix="nixkernel-spec-") as tmp:
            source_dir = os.path.join(tmp, target.name)
            os.mkdir(source_dir)
            # The logos only (copyfile: a store directory's read-only modes must not follow).
            resources = self.manager.resource_dir_for(target)
            for logo in kernels.logos_in(resources):
                shutil.copyfile(os.path.join(resources, logo), os.path.join(source_dir, logo))
            with open(os.path.join(source_dir, "kernel.json"), "w", encoding="utf-8") as f:
                json.dump(spec, f, indent=2)
            # KernelSpecManager's own installer: validates the name, replaces an old copy.
            # Its log would repeat each path (at INFO) and warn about --prefix: start() says it.
            quiet = logging.getLogger("nixkernel.install")
            quiet.setLevel(logging.ERROR)
            ksm = KernelSpecManager(parent=self, log=quiet)
            prefix = self.install_prefix()
            return ksm.install_kernel_spec(
                source_dir, target.name, user=prefix is None, prefix=prefix
            )


class UninstallApp(KernelLocation):
    name = "jupyter-nixkernel-uninstall"
    description = """Remove kernel.json files that `jupyter nixkernel install` wrote (the named
    ones, --all of them, or --missing: those whose project directory no longer exists).
    Kernelspecs installed otherwise are never touched."""
    examples = """
jupyter nixkernel uninstall --all
jupyter nixkernel uninstall --missing
jupyter nixkernel uninstall nix-api-flake-0123456789 --sys-prefix

"""

    missing = Bool(False, help="The kernels whose project no longer exists.").tag(config=True)
    flags = {
        **KernelLocation.flags,
        "missing": (
            {"UninstallApp": {"missing": True}},
            "Remove the kernels whose project directory no longer exists.",
        ),
    }

    def start(self) -> None:
        if sum([self.every, self.missing, bool(self.names)]) != 1:
            self.fail("name the kernels, or pass --all or --missing.")
        kernels = self.kernels_dir()
        if self.every or self.missing:
            try:
                names = sorted(os.listdir(kernels))
            except OSError:
                names = []
            names = [n for n in names if installed_by_us(os.path.join(kernels, n))]
            if self.missing:
                names = [n for n in names if installed_project_gone(os.path.join(kernels, n))]
        else:
            names = [n.lower() for n in self.names]
        problems = []
        for name in names:
            spec_dir = os.path.join(kernels, name)
            if not os.path.isdir(spec_dir):
                problems.append(f"{name} is not installed in {kernels}")
            elif not installed_by_us(spec_dir):
                problems.append(
                    f"{spec_dir} was not installed by nixkernel: use `jupyter kernelspec remove`"
                )
            else:
                shutil.rmtree(spec_dir)
                print(f"Removed {spec_dir}")
        if not names:
            what = "of projects that are gone " if self.missing else ""
            print(f"No kernels {what}installed by nixkernel in {kernels}.")
        if problems:
            self.fail("\n".join(problems))


# -- clean -----------------------------------------------------------------------------------


class CleanApp(NixKernelSubcommand):
    name = "jupyter-nixkernel-clean"
    description = """Drop cached environments and their GC roots (the next `nix-collect-garbage`
    may then free their store paths): of the named kernels, --all of them (and the learnt
    flake devShell names), or --missing: those whose project directory no longer exists."""
    examples = """
jupyter nixkernel clean --missing
jupyter nixkernel clean nix-api-flake-0123456789
jupyter nixkernel clean --all

"""
    takes_dirs = False

    clean_all = Bool(False, help="Every cached environment.").tag(config=True)
    missing = Bool(False, help="Environments of projects that no longer exist.").tag(config=True)
    flags = {
        **NixKernelSubcommand.flags,
        "all": ({"CleanApp": {"clean_all": True}}, "Drop every cached environment."),
        "missing": (
            {"CleanApp": {"missing": True}},
            "Drop the environments of projects whose directory no longer exists.",
        ),
    }

    def start(self) -> None:
        assert self.manager is not None
        if sum([self.clean_all, self.missing, bool(self.names)]) != 1:
            self.fail("name the kernels to clean, or pass --all or --missing.")
        cache = self.manager.cache
        if self.names:
            slots: list[tuple[str, str]] = []
            for target in self.resolve_names(self.names):
                source = self.source_of(target)
                if source is None:
                    print(f"{target.name} has no Nix environment: nothing cached.")
                    continue
                slot = cache.slot(source)
                if os.path.isdir(slot):
                    slots.append((slot, source.describe()))
                else:
                    print(f"{target.name}: nothing cached.")
        else:
            slots = [
                (slot, recorded.describe())
                for slot in cache.slots()
                for recorded in [SlotSource.read(slot)]
                if self.clean_all or recorded.project_missing
            ]
        for slot, what in slots:
            cache.clean(slot)
            print(f"Removed {slot} ({what})")
        if self.clean_all:
            shutil.rmtree(os.path.join(cache.root, "flake-shells"), ignore_errors=True)
        if not slots:
            print(f"Nothing to clean in {cache.root}.")


# -- doctor ------------------------------------------------------------------------------------


class DoctorApp(NixKernelSubcommand):
    name = "jupyter-nixkernel-doctor"
    description = """Check this machine and each project under DIR... (default: the configured
    project_dirs, else the server's root_dir, else the current directory) for what keeps
    kernels from starting: Nix and its features, <nixpkgs>, nix-ld on NixOS, flake files git
    does not track, virtualenvs made with a downloaded Python, ipykernel in each evaluated
    environment. Each problem comes with its fix. Exit status 1 if any check FAILs.
    Nothing is evaluated unless --evaluate: Nix proves it can evaluate and build for this user
    with a trivial derivation, each project's Nix files are parsed and its flake inputs looked
    up in the store."""
    examples = """
jupyter nixkernel doctor
jupyter nixkernel doctor --evaluate
jupyter nixkernel doctor ~/projects/api --json

"""

    json_output = Bool(False, help="Print JSON.").tag(config=True)
    evaluate = Bool(
        False, help="Evaluate each environment (runs Nix, may download) before checking it."
    ).tag(config=True)
    flags = {
        **NixKernelSubcommand.flags,
        "json": ({"DoctorApp": {"json_output": True}}, "Print machine-readable JSON."),
        "evaluate": (
            {"DoctorApp": {"evaluate": True}},
            "Evaluate each environment first (runs Nix), then check its Python and ipykernel.",
        ),
    }

    def start(self) -> None:
        assert self.manager is not None
        checks = doctor.run_checks(self.manager, evaluate=self.evaluate)
        if self.json_output:
            json.dump([c.as_dict() for c in checks], sys.stdout, indent=2)
            print()
        else:
            print(doctor.format_report(checks))
        if doctor.failed(checks):
            self.exit(1)


# -- enable / disable / status -----------------------------------------------------------------

_scope_flags = {
    "user": (
        {"ServerSwitch": {"sys_prefix": False}},
        "This user's jupyter_server_config.json (jupyter --config-dir; the default).",
    ),
    "sys-prefix": (
        {"ServerSwitch": {"sys_prefix": True}},
        "This Python environment's sys.prefix/etc/jupyter/jupyter_server_config.json.",
    ),
}


class _ServerConfigProbe(JupyterApp):
    """Loads the configuration files the Jupyter server reads, and nothing else."""

    config_file_name = Unicode("jupyter_server_config")


class ServerSwitch(NixKernelSubcommand):
    """Shared by enable, disable and status."""

    sys_prefix = Bool(False, help="Use sys.prefix/etc/jupyter instead of the user's.").tag(
        config=True
    )
    flags = {**NixKernelSubcommand.flags, **_scope_flags}

    def server_status(self) -> serverconfig.Status:
        try:
            nix.find_nix(self.nix_option)
            nix_found = True
        except nix.NixNotFoundError:
            nix_found = False
        # Read the files afresh (not self.config, loaded at start-up): a switch this process just
        # flipped must be seen, and command-line options are not the server's configuration.
        probe = _ServerConfigProbe()
        probe.load_config_file()
        return serverconfig.server_status(probe.config, probe.config_file_paths, nix_found)

    def switch(self, enabled: bool) -> None:
        try:
            path = serverconfig.set_enabled(enabled, sys_prefix=self.sys_prefix)
        except (serverconfig.ConfigFileError, OSError) as exc:
            self.fail(str(exc))
            return
        word = "enabled" if enabled else "disabled"
        print(f"nixkernel server extension {word} in {path}")
        status = self.server_status()
        if status.enabled != enabled:
            seen = "enabled" if status.enabled else "disabled"
            print(
                f"Warning: the server will still see it {seen}, because of "
                f"{status.decided_by}, which takes precedence. Change it there.",
                file=sys.stderr,
            )
            self.exit(1)


class EnableApp(ServerSwitch):
    name = "jupyter-nixkernel-enable"
    description = """Turn nixkernel's server extension on (it selects NixKernelSpecManager when
    the server starts), in the user's jupyter_server_config.json (--user, the default) or this
    environment's (--sys-prefix). Other settings of that file are kept."""
    examples = """
jupyter nixkernel enable
jupyter nixkernel enable --sys-prefix

"""

    def start(self) -> None:
        self.switch(True)


class DisableApp(ServerSwitch):
    name = "jupyter-nixkernel-disable"
    description = """Turn nixkernel's server extension off for this user (--user, the default)
    or this environment (--sys-prefix): the server keeps its ordinary kernelspecs. Writes
    ServerApp.jpserver_extensions.nixkernel = false into jupyter_server_config.json, keeping the
    file's other settings; this beats the package's jupyter_server_config.d/nixkernel.json."""
    examples = """
jupyter nixkernel disable
jupyter nixkernel disable --sys-prefix

"""

    def start(self) -> None:
        self.switch(False)


class StatusApp(ServerSwitch):
    name = "jupyter-nixkernel-status"
    description = """Say whether the Jupyter server will offer nixkernel's kernels: whether the
    server extension is enabled (and which file decides it), which KernelSpecManager class the
    configuration selects, and what conflicts with it (another manager class, a kernel gateway,
    no Nix). Exit status 1 if nixkernel will not be active."""
    examples = """
jupyter nixkernel status
jupyter nixkernel status --json

"""

    json_output = Bool(False, help="Print JSON.").tag(config=True)
    flags = {
        **ServerSwitch.flags,
        "json": ({"StatusApp": {"json_output": True}}, "Print machine-readable JSON."),
    }

    def start(self) -> None:
        status = self.server_status()
        if self.json_output:
            json.dump(status.as_dict(), sys.stdout, indent=2)
            print()
        else:
            print(f"Server extension:   {'enabled' if status.enabled else 'disabled'}")
            print(f"  decided by        {status.decided_by}")
            print(f"KernelSpecManager:  {status.manager_class}")
            print(f"nixkernel active:   {'yes' if status.active else 'no'}")
            for conflict in status.conflicts:
                print(f"Conflict: {conflict}")
        if not status.active:
            self.exit(1)


# -- the command ---------------------------------------------------------------------------------


class NixKernelApp(JupyterApp):
    name = "jupyter-nixkernel"
    version = __version__
    description = """Jupyter kernels for every Nix dev shell, shell.nix and uv virtualenv in
    your projects. Configure with c.NixKernelSpecManager.* in jupyter_server_config.py."""
    examples = """
jupyter nixkernel list
jupyter nixkernel warm --all
jupyter nixkernel doctor
jupyter nixkernel install --all

"""
    subcommands = {
        "list": (ListApp, "List the kernels nixkernel offers (--all: and the ordinary ones)."),
        "show": (ShowApp, "Show a kernel's spec, inputs, cache state and environment."),
        "warm": (WarmApp, "Evaluate and cache environments ahead of time."),
        "install": (InstallApp, "Write kernel.json files for VS Code, nbconvert, papermill."),
        "uninstall": (UninstallApp, "Remove kernel.json files nixkernel installed."),
        "clean": (CleanApp, "Drop cached environments and their GC roots."),
        "doctor": (DoctorApp, "Check the machine and the projects; say how to fix problems."),
        "enable": (EnableApp, "Turn the server extension on (user or sys-prefix)."),
        "disable": (DisableApp, "Turn the server extension off (user or sys-prefix)."),
        "status": (StatusApp, "Say whether the server will use nixkernel, and what conflicts."),
    }
    aliases: dict = {}
    flags: dict = {}

    def start(self) -> None:
        if self.subapp is None:
            print(
                "No subcommand given. Available subcommands:", ", ".join(sorted(self.subcommands))
            )
            print("Run `jupyter nixkernel SUBCOMMAND --help` for help on one.")
            self.exit(1)
        self.subapp.start()


def main() -> None:
    try:
        NixKernelApp.launch_instance()
        sys.stdout.flush()
    except BrokenPipeError:
        # `jupyter nixkernel list | head`: the reader left; say nothing more, as `ls` does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
