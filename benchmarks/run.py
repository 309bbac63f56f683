"""Benchmarks: kernel start-up against the alternatives, and discovery at scale.

    python benchmarks/run.py [--quick]

Prints a table and writes docs/benchmarks.md. Runs real Nix offline (its own NIX_CONFIG, like
the test suite) on projects built from tests/fixtures/mini.nix, and real Jupyter.

Start-up: time from launching the kernel command to the first ``kernel_info`` reply
(``wait_for_ready``), median of several runs, the variants interleaved (round-robin in every
repetition, so machine noise hits all alike). The "heavy" shell forces a Nix computation of about
2.5 seconds: a stand-in for evaluating nixpkgs, which these offline machines do not have.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from jupyter_client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from nixprojects import DEFAULT_SHELL, Raw, write_flake, write_shell_nix  # noqa: E402

from nixkernel import environment  # noqa: E402
from nixkernel.describe import find_python  # noqa: E402
from nixkernel.kernelspec import NixKernelSpecManager  # noqa: E402

#: How long the heavy shell's evaluation takes: "on the order of a second", like nixpkgs on a
#: fast machine (2-10 s on real ones).
HEAVY_TARGET_SECONDS = 2.5


class Variant(NamedTuple):
    """One way to start a kernel, timed against the others."""

    argv: list[str]
    cwd: Path
    prepare: Callable[[], None] | None = None
    """Runs before each timed start (an edit that should or should not invalidate caches)."""
    env: dict[str, str] | None = None
    """The process environment (default: this one)."""
    settle: bool = False
    """Time until the project's kernel answers: a cold nixkernel start answers first from its
    building kernel (see the cold-start table for that)."""


# -- environment -----------------------------------------------------------------------------

#: The jupyter command of the Python running the benchmark (its venv need not be on PATH).
JUPYTER = shutil.which("jupyter", path=os.path.dirname(sys.executable)) or "jupyter"


def offline_nix_config(work: Path) -> str:
    registry = work / "empty-registry.json"
    registry.write_text('{"flakes": [], "version": 2}')
    return (
        "experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\n"
        f"flake-registry = {registry}\nwarn-dirty = false\n"
    )


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nix = subprocess.run(["nix", "--version"], capture_output=True, text=True).stdout.strip()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "Nix": nix,
        "Python": platform.python_version(),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "load average at start": load,
    }


# -- kernel start-up -------------------------------------------------------------------------


def _stop(client: Any, proc: subprocess.Popen, conn: Path) -> None:
    """Stop a benchmarked kernel: its client, its whole process group, its connection file."""
    client.stop_channels()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    conn.unlink(missing_ok=True)


def time_kernel(
    argv: list[str],
    conn: Path,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    settle: bool = False,
) -> float:
    """Seconds from launching ``argv`` to the kernel's first kernel_info reply (``settle``: to
    the first reply of the project's kernel, through a cell that runs in it)."""
    write_connection_file(str(conn), ip="127.0.0.1", key=b"bench")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [a.replace("{connection_file}", str(conn)) for a in argv],
        cwd=cwd,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = BlockingKernelClient(connection_file=str(conn))
    client.load_connection_file()
    # No heartbeat channel: without one, wait_for_ready polls kernel_info until it is answered.
    client.start_channels(hb=False)
    try:
        client.wait_for_ready(timeout=timeout)
        if settle:
            client.execute_interactive("pass", timeout=timeout, output_hook=lambda msg: None)
        return time.perf_counter() - start
    finally:
        _stop(client, proc, conn)


def heavy_let(n: int) -> str:
    return (
        "heavy = builtins.foldl' (acc: i: acc + builtins.stringLength "
        '(builtins.hashString "sha256" (toString i))) 0 (builtins.genList (x: x) '
        f"{n});"
    )


def calibrate_heavy(work: Path) -> tuple[int, float]:
    """An N for which evaluating ``heavy`` takes about HEAVY_TARGET_SECONDS here."""
    n = 200_000
    for _ in range(3):
        expr = heavy_let(n).removeprefix("heavy = ").removesuffix(";")
        start = time.perf_counter()
        subprocess.run(["nix", "eval", "--expr", expr], check=True, capture_output=True)
        took = time.perf_counter() - start
        if abs(took - HEAVY_TARGET_SECONDS) < 0.2:
            break
        n = max(10_000, int(n * HEAVY_TARGET_SECONDS / max(took, 0.01)))
    return n, took


def make_shells(work: Path, name: str, let: str, extra: dict) -> tuple[Path, Path]:
    attrs = {**DEFAULT_SHELL, **extra}
    flake = write_flake(work / f"{name}-flake", {"default": attrs}, let=let)
    shell = write_shell_nix(work / f"{name}-shell", attrs, let=let)
    return flake, shell


def startup_variants(work: Path, flake: Path, shell: Path, cache_dir: Path) -> dict[str, Variant]:
    """Variant label -> how to start it."""
    manager = NixKernelSpecManager(
        project_dirs=[str(flake)], cache_dir=str(cache_dir), keep_native_kernels=False
    )
    target = next(t for t in manager.refresh() if t.kind == "flake")
    nixkernel_argv = manager.kernel_spec_for(target).argv
    # The floor runs in the same environment: the dev shell's own python3 (a store wrapper, as
    # nixpkgs' interpreters are) with the shell's variables, as after entering the shell by hand.
    resolved = manager.cache.ensure(target.nix_source())
    shell_env = environment.kernel_environment(resolved.entry["variables"], os.environ)
    shell_python = find_python(target, shell_env)
    flake_nix = flake / "flake.nix"
    notes = flake / "analysis.py"
    notes.write_text("edits = 0\n")
    subprocess.run(["git", "-C", str(flake), "add", "analysis.py"], check=True)
    counter = [0]

    def edit_project_file() -> None:
        # What happens between two starts in real work: a tracked file that is not a Nix input
        # changes. Nix's flake evaluation cache is keyed by the whole source, so it misses;
        # nixkernel's cache only watches the Nix inputs, so it still hits.
        counter[0] += 1
        notes.write_text(f"edits = {counter[0]}\n")

    def touch_input() -> None:
        # A content change in a watched input: the next start must re-evaluate.
        counter[0] += 1
        text = re.sub(r"\n# bench \d+\n", "\n", flake_nix.read_text())
        flake_nix.write_text(text + f"\n# bench {counter[0]}\n")

    kernel = ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    script = "exec python3 -m ipykernel_launcher -f {connection_file}"
    return {
        "bare python -m ipykernel_launcher (floor)": Variant(
            [shell_python, "-m", "ipykernel_launcher", "-f", "{connection_file}"], flake,
            env=shell_env,
        ),
        "nixkernel, cache warm": Variant(nixkernel_argv, flake),
        "nixkernel, cache cold (input changed)": Variant(
            nixkernel_argv, flake, touch_input, settle=True
        ),
        "nix develop -c (every time, a project file edited)": Variant(
            ["nix", "develop", str(flake), "-c", *kernel], flake, edit_project_file
        ),
        "nix develop -c (every time, nothing changed)": Variant(
            ["nix", "develop", str(flake), "-c", *kernel], flake
        ),
        "nix-shell --run (every time)": Variant(
            ["nix-shell", str(shell / "shell.nix"), "--run", script], shell
        ),
    }  # fmt: skip


def bench_startup(work: Path, label: str, let: str, extra: dict, reps: int) -> list[dict]:
    flake, shell = make_shells(work, label, let, extra)
    cache_dir = work / f"cache-{label}"
    return run_variants(startup_variants(work, flake, shell, cache_dir), work, label, reps)


def run_variants(variants: dict[str, Variant], work: Path, label: str, reps: int) -> list[dict]:
    """Time each variant ``reps`` times, interleaved; the first variant is the floor."""
    # Warm-up: build everything once and fill the cache, outside the measurements.
    for v in variants.values():
        time_kernel(v.argv, work / "conn.json", v.cwd, v.env, settle=v.settle)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(reps):
        for name, v in variants.items():  # interleaved: round-robin
            if v.prepare:
                v.prepare()
            times[name].append(
                time_kernel(v.argv, work / "conn.json", v.cwd, v.env, settle=v.settle)
            )
    floor = times[next(iter(times))]
    rows = []
    for name, values in times.items():
        rows.append(
            {
                "shell": label,
                "variant": name,
                "median_s": statistics.median(values),
                "min_s": min(values),
                "max_s": max(values),
                # Paired: each run against the floor run of the same round, a few seconds
                # apart, so the load of a shared machine mostly cancels out of the ratio.
                "ratio": statistics.median(v / f for v, f in zip(values, floor, strict=True)),
                "runs": len(values),
            }
        )
    return rows


# -- Nix versions ----------------------------------------------------------------------------

#: Where the test suite's newer Nix versions live (tools/newer-nix.sh); the system's is on PATH.
NIX_PREFIXES = {"2.26": "/opt/nix-2.26/bin", "2.34": "/opt/nix-2.34/bin"}


def installed_nix_versions() -> dict[str, str]:
    """Nix version -> its bin directory: the system's (found on PATH) and /opt's."""
    found = {}
    system = shutil.which("nix")
    if system:
        out = subprocess.run([system, "--version"], capture_output=True, text=True).stdout
        found[".".join(re.findall(r"\d+", out)[:2])] = os.path.dirname(system)
    for version, directory in NIX_PREFIXES.items():
        if os.access(os.path.join(directory, "nix"), os.X_OK):
            found.setdefault(version, directory)
    return found


def version_variants(work: Path, flake: Path, shell: Path, cache_dir: Path) -> dict[str, Variant]:
    """Warm nixkernel against `nix develop -c` on a clean and a dirty git tree, and nix-shell."""
    manager = NixKernelSpecManager(
        project_dirs=[str(flake)], cache_dir=str(cache_dir), keep_native_kernels=False
    )
    target = next(t for t in manager.refresh() if t.kind == "flake")
    resolved = manager.cache.ensure(target.nix_source())
    shell_env = environment.kernel_environment(resolved.entry["variables"], os.environ)
    notes = flake / "analysis.py"
    notes.write_text("edits = 0\n")
    git = ["git", "-C", str(flake), "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "bench"], check=True)
    # A second checkout of the same flake, never committed again: its tree stays dirty, the way
    # a project under work is. Each run edits a tracked file that is not a Nix input.
    dirty = work / f"{flake.name}-dirty"
    subprocess.run(["git", "clone", "-q", str(flake), str(dirty)], check=True)
    counter = [0]

    def edit_tracked_file() -> None:
        counter[0] += 1
        (dirty / "analysis.py").write_text(f"edits = {counter[0]}\n")

    edit_tracked_file()
    kernel = ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    script = "exec python3 -m ipykernel_launcher -f {connection_file}"
    return {
        "bare python -m ipykernel_launcher (floor)": Variant(
            [find_python(target, shell_env), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            flake, env=shell_env,
        ),
        "nixkernel, cache warm": Variant(manager.kernel_spec_for(target).argv, flake),
        "nix develop -c, clean tree": Variant(["nix", "develop", str(flake), "-c", *kernel], flake),
        "nix develop -c, dirty tree (a .py edited)": Variant(
            ["nix", "develop", str(dirty), "-c", *kernel], dirty, edit_tracked_file
        ),
        "nix-shell --run": Variant(["nix-shell", str(shell / "shell.nix"), "--run", script], shell),
    }  # fmt: skip


def bench_versions(work: Path, let: str, extra: dict, reps: int, versions: list[str]) -> list[dict]:
    """The heavy shell's warm start against Nix's own commands, on each Nix version."""
    installed = installed_nix_versions()
    rows: list[dict] = []
    saved_path = os.environ["PATH"]
    try:
        for version in versions:
            if version not in installed:
                print(f"  Nix {version}: not installed, skipped", flush=True)
                continue
            os.environ["PATH"] = installed[version] + os.pathsep + saved_path
            label = f"nix{version}"
            flake, shell = make_shells(work, label, let, extra)
            variants = version_variants(work, flake, shell, work / f"cache-{label}")
            rows += [{**r, "nix": version} for r in run_variants(variants, work, label, reps)]
    finally:
        os.environ["PATH"] = saved_path
    return rows


# -- a cold start: a slow build ---------------------------------------------------------------

#: How long the cold-start table's build takes (a builder printing a line a second).
SLOW_BUILD_SECONDS = 10
CELL = "import os; print(os.environ['GREETING'])"


def slow_let(tag: str) -> str:
    script = (
        f"for i in $(seq 1 {SLOW_BUILD_SECONDS}); do echo step $i; sleep 1; done; "
        "mkdir -p $out; exit 0"
    )
    return (
        'slow = derivation { system = "x86_64-linux"; builder = "/bin/bash"; '
        f'name = "bench-slow-{tag}"; PATH = "/usr/bin:/bin"; '
        f'args = [ "-c" {json.dumps(script)} ]; }};'
    )


def time_cold_cell(argv: list[str], conn: Path, cwd: Path, timeout: float = 600) -> dict:
    """A user's first minute: launch ``argv``, ask kernel_info and run a cell at once. Seconds to
    the first kernel_info reply (the first feedback), to the first stderr line in the cell (the
    build shown), and to the cell's own output (the environment in use)."""
    write_connection_file(str(conn), ip="127.0.0.1", key=b"bench")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [a.replace("{connection_file}", str(conn)) for a in argv],
        cwd=cwd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = BlockingKernelClient(connection_file=str(conn))
    client.load_connection_file()
    client.start_channels(hb=False)
    result: dict = {"feedback_s": None, "progress_s": None, "output_s": None}
    try:
        client.kernel_info()
        client.get_shell_msg(timeout=timeout)
        result["feedback_s"] = time.perf_counter() - start
        # iopub may connect after shell: make sure it is, or the cell's output can be missed.
        client.wait_for_ready(timeout=timeout)
        msg_id = client.execute(CELL)
        deadline = time.monotonic() + timeout
        while result["output_s"] is None and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                msg = client.get_iopub_msg(timeout=1)
                if msg["parent_header"].get("msg_id") != msg_id or msg["msg_type"] != "stream":
                    continue
                name = msg["content"]["name"]
                if name == "stderr" and result["progress_s"] is None:
                    result["progress_s"] = time.perf_counter() - start
                elif name == "stdout":
                    result["output_s"] = time.perf_counter() - start
        return result
    finally:
        _stop(client, proc, conn)


def bench_cold(work: Path, reps: int) -> list[dict]:
    """nixkernel's cold start against `nix develop -c`, on a shell whose build takes
    SLOW_BUILD_SECONDS; every run builds anew (a new derivation name)."""
    flake = write_flake(
        work / "cold-flake", {"default": {**DEFAULT_SHELL, "SLOW": Raw("slow")}}, let=slow_let("0")
    )
    manager = NixKernelSpecManager(
        project_dirs=[str(flake)], cache_dir=str(work / "cache-cold"), keep_native_kernels=False
    )
    target = next(t for t in manager.refresh() if t.kind == "flake")
    kernel = ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    variants = {
        "nixkernel (building kernel, then the project's)": manager.kernel_spec_for(target).argv,
        "nix develop -c python3 -m ipykernel_launcher": [
            "nix",
            "develop",
            str(flake),
            "-c",
            *kernel,
        ],
    }
    flake_nix = flake / "flake.nix"
    base = flake_nix.read_text()
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    for rep in range(reps):
        for name, argv in variants.items():  # interleaved, each with a build of its own
            tag = f"{rep}-{len(runs[name])}-{abs(hash(name)) % 1000}-{time.time_ns()}"
            flake_nix.write_text(base.replace(slow_let("0"), slow_let(tag)))
            runs[name].append(time_cold_cell(argv, work / "conn.json", flake))
    rows = []
    for name, values in runs.items():

        def median(key: str, values: list[dict] = values) -> float | None:
            found = [v[key] for v in values if v[key] is not None]
            return statistics.median(found) if found else None

        rows.append({
            "variant": name, "feedback_s": median("feedback_s"),
            "progress_s": median("progress_s"), "output_s": median("output_s"),
            "runs": len(values),
        })  # fmt: skip
    return rows


# -- discovery -------------------------------------------------------------------------------


def generate_projects(root: Path, n: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        d = root / f"proj-{i:05d}"
        d.mkdir(exist_ok=True)
        (d / "shell.nix").touch()


IN_PROCESS = r"""
import json, sys, time, tracemalloc, glob, os
t0 = time.perf_counter()
from nixkernel.kernelspec import NixKernelSpecManager, RESOURCES
t_import = time.perf_counter() - t0
m = NixKernelSpecManager(project_dirs=[sys.argv[1]], cache_dir=sys.argv[2])
tracemalloc.start()
t0 = time.perf_counter()
m.refresh()
scan = time.perf_counter() - t0
specs = m.get_all_specs()
cold = time.perf_counter() - t0
_, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
warm = []
for _ in range(5):
    t0 = time.perf_counter(); m.get_all_specs(); warm.append(time.perf_counter() - t0)
t0 = time.perf_counter()
for _ in specs:
    glob.glob(os.path.join(RESOURCES, "logo-*"))
globs = time.perf_counter() - t0
print(json.dumps({"import": t_import, "cold": cold, "scan": scan, "warm": sorted(warm)[2],
                  "peak": peak, "count": len(specs), "globs": globs}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Straight to localhost: never through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, token: str) -> tuple[float, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    start = time.perf_counter()
    with _OPENER.open(req, timeout=120) as resp:
        body = resp.read()
    return time.perf_counter() - start, body


def max_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def bench_server(root: Path, cache_dir: Path, work: Path, warm_reps: int) -> dict:
    """A real jupyter_server with nixkernel's manager: first and repeated GET /api/kernelspecs."""
    port, token = free_port(), "bench-token"
    argv = [
        sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
        "--ServerApp.kernel_spec_manager_class=nixkernel.kernelspec.NixKernelSpecManager",
        f"--NixKernelSpecManager.cache_dir={cache_dir}",
    ]  # fmt: skip
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(work / "runtime")}
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=work
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                http_get(f"{base}/api/status", token)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("jupyter server did not start") from None
                time.sleep(0.05)
        cold, body = http_get(f"{base}/api/kernelspecs", token)
        count = len(json.loads(body)["kernelspecs"])
        warm = [http_get(f"{base}/api/kernelspecs", token)[0] for _ in range(warm_reps)]
        return {
            "cold": cold,
            "warm": statistics.median(warm),
            "count": count,
            "bytes": len(body),
            "rss_kib": max_rss_kib(proc.pid),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bench_discovery(work: Path, sizes: list[int], reps: int) -> list[dict]:
    rows = []
    for n in sizes:
        root = work / f"projects-{n}"
        generate_projects(root, n)
        cache_dir = work / f"cache-discovery-{n}"
        cli = []
        for _ in range(reps):
            start = time.perf_counter()
            subprocess.run(
                [JUPYTER, "nixkernel", "list", "--json", str(root),
                 f"--NixKernelSpecManager.cache_dir={cache_dir}"],
                check=True, capture_output=True,
            )  # fmt: skip
            cli.append(time.perf_counter() - start)
        inproc = [
            json.loads(
                subprocess.run(
                    [sys.executable, "-c", IN_PROCESS, str(root), str(cache_dir)],
                    check=True, capture_output=True, text=True,
                ).stdout
            )
            for _ in range(reps)
        ]  # fmt: skip
        server = bench_server(root, cache_dir, work, warm_reps=max(10, 3 * reps))
        rows.append(
            {
                "projects": n,
                "cli_s": statistics.median(cli),
                "manager_cold_s": statistics.median(r["cold"] for r in inproc),
                "scan_s": statistics.median(r["scan"] for r in inproc),
                "manager_warm_ms": 1000 * statistics.median(r["warm"] for r in inproc),
                "peak_mib": max(r["peak"] for r in inproc) / 2**20,
                "logo_globs_ms": 1000 * statistics.median(r["globs"] for r in inproc),
                "server_cold_s": server["cold"],
                "server_warm_ms": 1000 * server["warm"],
                "server_rss_mib": server["rss_kib"] / 1024,
                "response_kib": server["bytes"] / 1024,
                "specs": server["count"],
            }
        )
        print(f"  discovery {n}: {rows[-1]}", flush=True)
    return rows


# -- report ----------------------------------------------------------------------------------


def cold_markdown(cold: list[dict]) -> list[str]:
    def s(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    out = [
        f"## A cold start: a dev shell whose build takes {SLOW_BUILD_SECONDS} s",
        "",
        "A user's first minute with a project nothing is cached for: launch the kernel, ask "
        "`kernel_info` (what JupyterLab waits for before the notebook is usable), and run a cell "
        "at once. *first feedback*: the first `kernel_info` reply. *build shown*: the first "
        "stderr line in the cell's output (nixkernel streams Nix's progress there). *cell "
        "output*: the cell's own output, from the project's environment. Every run builds anew "
        f"(a builder printing a line a second for {SLOW_BUILD_SECONDS} s, under a new name).",
        "",
        "| variant | first feedback (s) | build shown (s) | cell output (s) | runs |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in cold:
        out.append(
            f"| {r['variant']} | {s(r['feedback_s'])} | {s(r['progress_s'])} | "
            f"{s(r['output_s'])} | {r['runs']} |"
        )
    return [*out, ""]


def markdown(
    info: dict,
    heavy: tuple[int, float],
    startup: list[dict],
    disc: list[dict],
    by_nix: list[dict],
    cold: list[dict],
) -> str:
    out = ["# Benchmarks", "", "Generated by `python benchmarks/run.py"
           + (" --quick" if info.get("quick") else "") + "`. Machine:", ""]  # fmt: skip
    out += [f"- {k}: {v}" for k, v in info["machine"].items()]
    out += [
        "",
        "These machines are shared (2 cores): absolute times are noisy. The variants are "
        "interleaved (round-robin in every repetition) so the noise falls on all of them alike. "
        "Times are medians; a ratio to the floor is the median of per-round ratios (each run "
        "against the floor run of its own round), which cancels most of the machine's drift.",
        "",
        "The floor is `python -m ipykernel_launcher` run the way a user inside the dev shell "
        "would run it: the shell's own `python3` (a store wrapper, as nixpkgs' interpreters are) "
        "with the shell's variables.",
        "",
        "## Kernel start-up: launch to first `kernel_info` reply",
        "",
        "- **trivial**: a `mini.nix` dev shell (a Python wrapper, one variable, a shellHook).",
        f"- **heavy**: the same shell plus a variable forced from a deliberately expensive Nix "
        f"computation (`builtins.foldl'` over `builtins.genList {heavy[0]}` hashing strings; "
        f"`nix eval` of it took {heavy[1]:.2f} s here). **It stands in for evaluating nixpkgs**, "
        "which these offline machines do not have.",
        "- *cold* = first start after a content change in `flake.nix` (re-evaluation), timed to "
        "the first reply of the project's kernel (the building kernel answers before it: see "
        "the cold-start table).",
        "- `nix develop`, *a project file edited*: before each run a tracked file that is not a "
        "Nix input (`analysis.py`) changes, as it does between two kernel starts in real work. "
        "Nix's flake evaluation cache is keyed by the flake's whole source, so it misses and Nix "
        "evaluates again; nixkernel's cache watches only the Nix inputs and still hits. *nothing "
        "changed*: the same command with an untouched tree, served by that evaluation cache.",
        "",
        "| shell | variant | median (s) | min | max | ratio to floor (paired) | runs |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in startup:
        out.append(
            f"| {r['shell']} | {r['variant']} | {r['median_s']:.3f} | {r['min_s']:.3f} | "
            f"{r['max_s']:.3f} | {r['ratio']:.2f}x | {r['runs']} |"
        )
    out += ["", *targets_text(startup, disc), ""]
    if by_nix:
        out += [
            "## On each Nix version",
            "",
            "The heavy shell on each Nix the test suite runs, that version first on PATH. "
            "*clean tree*: the flake's git tree is committed and untouched, so Nix's flake "
            "evaluation cache serves `nix develop`. *dirty tree*: a checkout with uncommitted "
            "work, where a tracked `.py` file (not a Nix input) changes before each run, as it "
            "does while people work; nixkernel's cache watches only what the evaluation read, so "
            "its warm start is the same in both cases.",
            "",
            "| Nix | variant | median (s) | min | max | ratio to floor (paired) | runs |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in by_nix:
            out.append(
                f"| {r['nix']} | {r['variant']} | {r['median_s']:.3f} | {r['min_s']:.3f} | "
                f"{r['max_s']:.3f} | {r['ratio']:.2f}x | {r['runs']} |"
            )
        out.append("")
    out += cold_markdown(cold)
    out += [
        "## Discovery",
        "",
        "N generated projects (directories with an empty `shell.nix`). `cli`: wall time of "
        "`jupyter nixkernel list --json DIR` (a fresh process: Python start-up and imports "
        "included). `scan`: `refresh()` (walk + describe) in a fresh process; `manager cold`: "
        "`refresh()` + the first `get_all_specs()` (which also loads the native kernelspecs: "
        "jupyter_client imports ipykernel to find `python3`, about 1 s here); `warm`: "
        "`get_all_specs()` again (served from memory). `peak`: tracemalloc peak during the cold "
        "listing. `server`: a real `jupyter server` with NixKernelSpecManager, GET "
        "/api/kernelspecs over HTTP (first request, then the median of repeated ones); RSS is the "
        "server's peak resident memory (VmHWM). `logo globs`: the time the server's handler "
        "spends globbing `logo-*` in every spec's resource_dir (measured alone).",
        "",
        "| projects | cli (s) | scan (s) | manager cold (s) | manager warm (ms) | peak (MiB) | "
        "server first (s) | server warm (ms) | logo globs (ms) | server RSS (MiB) | "
        "response (KiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in disc:
        out.append(
            f"| {r['projects']} | {r['cli_s']:.3f} | {r['scan_s']:.3f} | "
            f"{r['manager_cold_s']:.3f} | "
            f"{r['manager_warm_ms']:.1f} | {r['peak_mib']:.1f} | {r['server_cold_s']:.3f} | "
            f"{r['server_warm_ms']:.1f} | {r['logo_globs_ms']:.1f} | {r['server_rss_mib']:.0f} | "
            f"{r['response_kib']:.0f} |"
        )
    out += ["", "## What bounds the numbers", "", *NOTES]
    return "\n".join(out) + "\n"


NOTES = [
    "- **Warm start vs the floor.** A warm nixkernel start is the floor plus the launcher: one "
    "more interpreter start (`python -S`, no site-packages scan and no `.pth` hooks: about "
    "12 ms), its imports (about 30 ms, nearly all standard library: re, json, hashlib, "
    "argparse, typing), about 4 ms to hash the watched inputs, read the cache entry and plan "
    "the exec, and `bash` to run the shellHook (about 3 ms). Measured alone, 40-50 ms over a "
    "1 s floor. The launcher once imported dataclasses (inspect: about 19 ms) and, through "
    "argparse's help formatter, shutil; without them a warm launcher run to its exec went from "
    "74 to 59 ms. The trivial and heavy rows take the same warm path: their difference is "
    "noise.",
    "- **Heavy shell vs nix develop / nix-shell.** Each re-entry pays the evaluation plus the "
    "kernel start, so the best possible speed-up of a warm start is about (floor + evaluation) "
    "/ warm. `nix develop` on a flake whose files did not change at all is served by Nix's own "
    "evaluation cache and costs about what nixkernel's warm start does (the *nothing changed* "
    "row): nixkernel's advantage is that editing the project's code does not invalidate it. "
    "`nix-shell` has no evaluation cache.",
    "- **Cold start** = a full `nix print-dev-env` (evaluation) plus the warm path, plus the "
    "hand-over: the building kernel (which answers `kernel_info` in about 0.15 s) execs the "
    "launcher again when Nix is done, and the project's kernel runs the kept cell once its "
    "client has reconnected (about 0.3-0.5 s in all; the trivial row's ratio shows it most).",
    "- **Warm /api/kernelspecs.** NixKernelSpecManager answers from memory (`manager warm`, "
    "under a millisecond) and hands the server ready REST models (`name`, `spec`, "
    "`resources`, built once per scan), so jupyter_server's handler does not rebuild each one "
    "on its thread pool with a `logo-*` glob (that cost 337 ms per request at 1,000 projects "
    "before; `logo globs` shows the globs alone). What remains is the response itself: about "
    "0.9 KiB of JSON per kernel, as much as a native kernelspec's model (the launcher's argv "
    "with absolute paths, three logo URLs, the project). Sampled with py-spy at 1,000 "
    "kernels, 73% of the server's time in the request is jupyter_server's `json.dumps` of the "
    "model and 18% tornado's `finish` (an ETag hash of the body, UTF-8 encoding, the write); "
    "nixkernel's own `get_all_specs` is 3%. So up to a few hundred projects the 20 ms target "
    "holds with room to spare, and at 1,000 the time is that of encoding and sending 0.9 MB, "
    "which on this shared machine took 20 to 32 ms in different runs.",
]


def targets_text(startup: list[dict], disc: list[dict]) -> list[str]:
    lines = ["Targets:", ""]
    by = {(r["shell"], r["variant"]): r for r in startup}
    for shell in sorted({r["shell"] for r in startup}):
        warm = by.get((shell, "nixkernel, cache warm"))
        if warm:
            ok = "met" if warm["ratio"] <= 1.10 else "MISSED"
            lines.append(f"- {shell}: warm start {warm['ratio']:.2f}x the floor (<= 1.10x): {ok}")
    heavy = {r["variant"]: r for r in startup if r["shell"] == "heavy"}
    if heavy:
        warm = heavy["nixkernel, cache warm"]["median_s"]
        for alt in (
            "nix develop -c (every time, a project file edited)",
            "nix-shell --run (every time)",
        ):
            speedup = heavy[alt]["median_s"] / warm
            ok = "met" if speedup >= 3 else "MISSED"
            lines.append(f"- heavy: warm nixkernel {speedup:.1f}x faster than {alt} (>= 3x): {ok}")
    for r in disc:
        if r["projects"] == 1000:
            # The whole `jupyter nixkernel list` in a fresh process: start-up, walk, describe.
            ok = "met" if r["cli_s"] < 1 else "MISSED"
            lines.append(
                f"- 1,000 projects listed cold by `jupyter nixkernel list` in {r['cli_s']:.3f} s "
                f"(scan {r['scan_s']:.3f} s) (< 1 s): {ok}"
            )
    for r in disc:
        if r["projects"] in (100, 1000):
            ok = "met" if r["server_warm_ms"] < 20 else "MISSED (see below)"
            lines.append(
                f"- warm /api/kernelspecs with {r['projects']:,} projects: "
                f"{r['server_warm_ms']:.1f} ms for {r['response_kib']:.0f} KiB (< 20 ms): {ok}"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions, up to 1,000")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument(
        "--nix-version",
        action="append",
        default=[],
        help="Nix versions for the per-version table (default: every installed one)",
    )
    args = parser.parse_args()
    reps = 3 if args.quick else 11
    sizes = [10, 100, 1000] if args.quick else [10, 100, 1000, 5000]
    # Measure nixkernel as installed: pip byte-compiles a package, but an editable checkout on a
    # machine with PYTHONDONTWRITEBYTECODE set recompiles its modules at every launcher start.
    compileall.compile_dir(str(ROOT / "nixkernel"), quiet=1)
    work = Path(tempfile.mkdtemp(prefix="nixkernel-bench-"))
    os.environ["NIX_CONFIG"] = offline_nix_config(work)
    info = {"machine": machine(), "quick": args.quick}
    print("machine:", info["machine"], flush=True)
    try:
        n, took = calibrate_heavy(work)
        print(f"heavy shell: genList {n}, nix eval {took:.2f} s", flush=True)
        startup = bench_startup(work, "trivial", "", {}, reps)
        startup += bench_startup(
            work, "heavy", heavy_let(n), {"HEAVY": Raw("toString heavy")}, reps
        )
        for r in startup:
            print(
                f"  {r['shell']:8} {r['variant']:42} {r['median_s']:7.3f} s  {r['ratio']:.2f}x",
                flush=True,
            )
        versions = args.nix_version or sorted(
            installed_nix_versions(), key=lambda v: tuple(int(p) for p in v.split("."))
        )
        by_nix = bench_versions(
            work, heavy_let(n), {"HEAVY": Raw("toString heavy")}, 3 if args.quick else 7, versions
        )
        for r in by_nix:
            print(
                f"  {r['nix']:5} {r['variant']:45} {r['median_s']:7.3f} s  {r['ratio']:.2f}x",
                flush=True,
            )
        cold = bench_cold(work, 1 if args.quick else 3)
        for r in cold:
            print(f"  cold {r['variant']:50} {r}", flush=True)
        disc = bench_discovery(work, sizes, 3 if args.quick else 5)
        text = markdown(info, (n, took), startup, disc, by_nix, cold)
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
        print()
        print(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
