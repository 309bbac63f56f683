"""Example jupyter_server_config.py for nixkernel: every NixKernelSpecManager setting.

Copy the lines you need into ~/.jupyter/jupyter_server_config.py (`jupyter --config-dir` shows
where that is) and remove the leading `# `. The Jupyter server and `jupyter nixkernel` both read
this file. Generated from the settings' help by `python -m nixkernel.serverconfig`.
"""

c = get_config()  # noqa: F821  (provided by Jupyter when it loads this file)

# Installing nixkernel enables its server extension, which selects NixKernelSpecManager unless
# you chose another manager. To select it explicitly (e.g. with the extension disabled):
# c.ServerApp.kernel_spec_manager_class = "nixkernel.kernelspec.NixKernelSpecManager"

## Directories searched for projects (flake.nix, shell.nix, .venv). Default: the Jupyter server's
## root directory (outside the server: c.ServerApp.root_dir if configured, else the current
## directory). A path that is not a directory is an error; a directory that does not exist only a
## warning (it is searched once it exists).
## Type: List. Default: computed, see above.
# c.NixKernelSpecManager.project_dirs = ["~/projects", "~/work"]

## How many directory levels below each of project_dirs are searched for projects.
## Type: Int. Default: 3.
# c.NixKernelSpecManager.max_depth = 3

## Where evaluated environments are cached (and GC-rooted). Default: $NIXKERNEL_CACHE_DIR, else the
## user's cache directory (~/.cache/nixkernel).
## Type: Unicode. Default: computed, see above.
# c.NixKernelSpecManager.cache_dir = "~/.cache/nixkernel"

## The nix command to use. Default: `nix` on the server's PATH, else
## /nix/var/nix/profiles/default/bin/nix or ~/.nix-profile/bin/nix.
## Type: Unicode. Default: ''.
# c.NixKernelSpecManager.nix_executable = "/nix/var/nix/profiles/default/bin/nix"

## How kernels enter their environment. 'cached': from nixkernel's cache of `nix print-dev-env`
## (fast; re-evaluates when a Nix file changes). 'direct': through `nix develop -c` / `nix-shell
## --run` at every start (exact Nix semantics, slower).
## Type: Enum. Default: 'cached'.
# c.NixKernelSpecManager.launch_mode = "cached"

## When re-evaluating a changed Nix file fails, start the kernel in the last good environment (with
## a warning in the kernel's log) instead of the error kernel.
## Type: Bool. Default: True.
# c.NixKernelSpecManager.stale_fallback = True

## Offer virtualenvs (.venv with pyvenv.cfg): alone as their own kernels, and inside a Nix project
## as the Python that runs in the project's shell.
## Type: Bool. Default: True.
# c.NixKernelSpecManager.include_venvs = True

## A Nix environment applied to kernels of projects that have a .venv but no Nix file, to provide
## the libraries wheels need on NixOS (libstdc++, zlib...). A flake reference with an attribute
## (`/etc/nixos#devShells.x86_64-linux.pylibs`, or `/etc/nixos#pylibs` for a devShell), a flake
## directory, or a .nix file.
## Type: Unicode. Default: ''.
# c.NixKernelSpecManager.venv_library_shell = "/etc/nixos#pylibs"

## Also offer the ordinary kernelspecs (python3 and those installed with `jupyter kernelspec
## install`), so notebooks that name them still open.
## Type: Bool. Default: True.
# c.NixKernelSpecManager.keep_native_kernels = True

## Offer 'Python (this project)', a kernel that starts in the environment of the project enclosing
## the notebook's folder, so one kernel name works in every project.
## Type: Bool. Default: True.
# c.NixKernelSpecManager.project_kernel = True

## Learn each flake's devShell names (`nix eval`, in the background, cached) so every devShell gets
## a kernel; until then a flake offers its default shell.
## Type: Bool. Default: True.
# c.NixKernelSpecManager.discover_flake_shells = True

## Seconds between background re-scans of project_dirs: a project added or removed shows up in the
## next listing after that, without restarting the server.
## Type: Float. Default: 30.0.
# c.NixKernelSpecManager.refresh_interval = 30.0

## Seconds a kernel start may wait for the server's first scan of project_dirs, for a kernel name
## the last listing (kept in cache_dir) does not have. The server asks for a kernel's spec on its
## event loop, which stops everything else while it waits; known names, the project-following
## kernel and the ordinary kernelspecs never wait.
## Type: Float. Default: 2.0.
# c.NixKernelSpecManager.first_scan_wait = 2.0

## Seconds `nix eval` may take to list one flake's devShells; then it is stopped and the flake
## offers its default shell until its files change or the server restarts. The listing never waits
## for it: JupyterLab polls it about once a minute.
## Type: Float. Default: 60.0.
# c.NixKernelSpecManager.flake_shells_timeout = 60.0

## How many flakes' devShell names are evaluated at the same time, in the background.
## Type: Int. Default: 2.
# c.NixKernelSpecManager.flake_shells_jobs = 2

## When the server starts, evaluate the environments whose cache is stale or missing, two at a time
## on a background thread (never on the event loop), so the first kernel start of the day does not
## wait for Nix. What it did goes to the server's log.
## Type: Bool. Default: False.
# c.NixKernelSpecManager.warm_on_start = True

## Languages whose kernels are offered from each shell, case-insensitive (e.g. ["python", "R"]);
## empty (the default): every language. Besides its Python kernel, an evaluated shell offers every
## kernel it carries: kernelspecs in the share/jupyter/kernels of its packages (XDG_DATA_DIRS, and
## beside each bin/ on its PATH), R with IRkernel, Julia with IJulia, evcxr for Rust. "python"
## covers each shell's Python kernel.
## Type: List. Default: [].
# c.NixKernelSpecManager.offer_languages = ["python", "R"]

## Languages whose kernels are never offered from shells, case-insensitive (e.g. ["julia"]).
## "python" hides each shell's Python kernel ('Python (this project)' is project_kernel's).
## Type: List. Default: [].
# c.NixKernelSpecManager.hide_languages = ["julia"]

## Names of kernelspecs found in shells that are not offered (e.g. ["ir"]; see the 'spec' of
## `jupyter nixkernel list --json`). ipykernel's own spec (python3), which a Python with ipykernel
## ships, is never offered apart: it is the shell's Python kernel.
## Type: List. Default: [].
# c.NixKernelSpecManager.hide_kernelspecs = ["ir"]

## Under a server: re-evaluate in the background, one at a time, the environments of kernels
## started in the last keep_fresh_hours hours once their Nix files change (and then stay unchanged
## for keep_fresh_interval seconds), so the next start is warm. What it does goes to the server's
## log.
## Type: Bool. Default: True.
# c.NixKernelSpecManager.keep_fresh = True

## How long after its last start an environment is kept fresh (keep_fresh).
## Type: Float. Default: 12.0.
# c.NixKernelSpecManager.keep_fresh_hours = 12.0

## Seconds between two looks at the recently used environments (keep_fresh).
## Type: Float. Default: 10.0.
# c.NixKernelSpecManager.keep_fresh_interval = 10.0

## Extra Nix flags per project: {directory or glob: [flags]}, e.g. {"~/work/devenv-app":
## ["--impure"], "~/work/*": ["--option", "allow-import-from-derivation", "false"]}. They are given
## to every evaluation of the matching project's environments (`nix print-dev-env`, and `nix
## develop` / `nix-shell` in direct mode), after the flags of the project's .envrc (`use flake .
## --impure`, `use nix --arg x y`, read as nix-direnv does, never run). A key is a project
## directory (~ allowed) or a glob on its absolute path; for venv_library_shell, the directory of
## that shell. Changing them re-evaluates.
## Type: Dict. Default: {}.
# c.NixKernelSpecManager.nix_args = {}
