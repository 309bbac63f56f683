#!/usr/bin/env bash
# Install Nix, nixkernel and JupyterLab for this user on Debian, then run JupyterLab on a folder
# of projects:
#
#   bash tools/quickstart.sh [PROJECTS_DIR [JUPYTER LAB OPTIONS...]]     (default: ~/projects)
#
# Runs as root (a fresh Debian has no sudo: none is used) and as a user (apt-get through sudo).
# Steps, each skipped when already done:
#   1. apt-get install nix-bin python3-venv;
#   2. as a user whose Nix cannot build yet: Debian's multi-user set-up (nix-setup-systemd: the
#      nix-daemon under systemd) and the group nix-users, which may use the daemon's socket; this
#      session gets the group through `sg` (no need to log in again);
#   3. a virtualenv (~/.nixkernel, or $NIXKERNEL_VENV) with nixkernel (this checkout) and
#      JupyterLab; `jupyter nixkernel doctor` on the projects;
#   4. JupyterLab, with flakes enabled (NIX_CONFIG) and, as root, --allow-root (JupyterLab
#      refuses to run as root without it).
set -euo pipefail
cd "$(dirname "$0")/.."

projects="${1:-$HOME/projects}"
[ $# -gt 0 ] && shift
venv="${NIXKERNEL_VENV:-$HOME/.nixkernel}"
say() { echo "quickstart: $*" >&2; }

as_root() {  # run "$@" as root: directly when root, else through sudo
  if [ "$(id -u)" -eq 0 ]; then "$@"; return; fi
  command -v sudo >/dev/null || { say "\`$*\` needs root: run this as root, or install sudo"; exit 1; }
  sudo "$@"
}
apt_install() {
  say "installing $*"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

missing=()
command -v nix >/dev/null || missing+=(nix-bin)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

# A derivation that builds in milliseconds: whether Nix can build for this user.
probe='derivation { name = "nixkernel-quickstart"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo ok > $out" ]; allowSubstitutes = false; }'
with_group=()
if [ "$(id -u)" -ne 0 ] && ! nix-build --no-out-link -E "$probe" >/dev/null 2>&1; then
  dpkg -s nix-setup-systemd >/dev/null 2>&1 || apt_install nix-setup-systemd
  if ! id -nG "$USER" | tr ' ' '\n' | grep -qx nix-users; then
    say "adding $USER to the group nix-users (the Nix daemon's users)"
    as_root usermod -aG nix-users "$USER"
  fi
  # This session started before it joined the group: run what needs the daemon under it.
  id -nG | tr ' ' '\n' | grep -qx nix-users || with_group=(sg nix-users -c)
fi
run() {  # run "$@", in the group nix-users if this session is not in it yet
  if [ ${#with_group[@]} -eq 0 ]; then "$@"; else "${with_group[@]}" "$(printf '%q ' "$@")"; fi
}

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
say "installing nixkernel and JupyterLab in $venv"
"$venv/bin/python" -m pip install -q . jupyterlab
rm -rf build  # what building the wheel left in the checkout

mkdir -p "$projects"
export NIX_CONFIG="${NIX_CONFIG:+$NIX_CONFIG
}experimental-features = nix-command flakes"
run "$venv/bin/jupyter" nixkernel doctor "$projects" || say "see the problems above (the kernels concerned will explain them too)"

lab=("$venv/bin/jupyter" lab --notebook-dir "$projects")
[ "$(id -u)" -ne 0 ] || lab+=(--allow-root)
say "starting: ${lab[*]} $*"
if [ ${#with_group[@]} -eq 0 ]; then exec "${lab[@]}" "$@"; else run "${lab[@]}" "$@"; fi
