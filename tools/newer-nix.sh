#!/usr/bin/env bash
# tools/newer-nix.sh 2.26|2.34 [PREFIX]
#
# The test suite runs every Nix-facing test on the Nix versions users run (tests/conftest.py):
# the system's Nix plus these. tools/test.sh calls this script; it is safe to run again.
#
# Installs Debian's newer Nix (nix-bin from trixie for 2.26, from sid for 2.34) side by side with
# the system's bookworm Nix 2.8, without installing or changing any system package (libc
# included). Everything lands under PREFIX (default /opt/nix-<ver>):
#
#   PREFIX/apt/        private apt state: sources, lists, an EMPTY dpkg status (so apt resolves
#                      nix-bin's whole dependency closure, libc6 included), logs
#   PREFIX/root/       that closure, unpacked with dpkg-deb -x (its own libc, libstdc++, ...)
#   PREFIX/bin/        nix, nix-shell, nix-build, nix-store, nix-daemon, ...: symlinks that keep
#                      their names (Debian's nix-bin, 2.8 too, is one multicall binary that
#                      dispatches on the name in argv[0])
#   PREFIX/etc/nix/    nix.conf + an empty flake registry, for NIX_CONF_DIR=PREFIX/etc/nix
#                      (optional: without it this Nix reads /etc/nix/nix.conf like the system's)
#
# The ELF programs under root/usr/bin, root/bin and root/usr/libexec get the unpacked ld-linux as
# their interpreter and a DT_RPATH (not RUNPATH: it applies to every library they load) naming
# the unpacked library directories, so no LD_LIBRARY_PATH is set or needed and nothing leaks into
# the shells that nix-shell / nix develop start. Every patched program is then checked with the
# unpacked loader (ld.so --list): each library must resolve inside PREFIX/root.
#
# The archive is the one the system already uses: the URIs: line of the non-security entry of
# /etc/apt/sources.list.d/debian.sources (another file: NEWER_NIX_SOURCES=FILE). apt's own
# configuration (proxy, auth.conf.d, trusted keys) stays in force; its update hooks do not run.
# Idempotent: with the same nix-bin version already installed, a run refreshes the lists, the
# bin/ links and etc/nix, and re-checks that nix runs (NEWER_NIX_FORCE=1 reinstalls anyway); a
# newer nix-bin in the suite is installed in place. Run as root (writes PREFIX; apt's downloads
# run as _apt).
set -euo pipefail

usage() { echo "usage: $0 2.26|2.34 [PREFIX]" >&2; exit 2; }
log() { printf '[newer-nix] %s\n' "$*" >&2; }
die() { printf '[newer-nix] error: %s\n' "$*" >&2; exit 1; }

[ $# -ge 1 ] && [ $# -le 2 ] || usage
ver=$1
case $ver in
  2.26) suite=trixie ;;
  2.34) suite=sid ;;
  *) usage ;;
esac
prefix=${2:-/opt/nix-$ver}
case $prefix in /*) ;; *) prefix=$PWD/$prefix ;; esac
prefix=${prefix%/}
[ -n "$prefix" ] || die "PREFIX must not be /"
case $prefix in *[:\ ]*) die "PREFIX must not contain ':' or spaces: $prefix" ;; esac
# Never take over a directory this script did not make (it replaces PREFIX/root and PREFIX/bin).
if [ -d "$prefix" ] && [ ! -e "$prefix/.newer-nix" ] && [ -n "$(ls -A "$prefix")" ]; then
  die "$prefix exists, is not empty and was not made by newer-nix.sh"
fi
for tool in apt-get apt-cache apt-config dpkg dpkg-deb awk find flock od realpath; do
  command -v "$tool" >/dev/null || die "missing tool: $tool"
done

t_start=$(date +%s)
apt_dir=$prefix/apt
root=$prefix/root
mkdir -p "$prefix"
touch "$prefix/.newer-nix"
exec 9>"$prefix/.lock"
flock 9

# ---------------------------------------------------------------------------------------------
# 1. A private apt state that sees SUITE on the system's own archive.
# ---------------------------------------------------------------------------------------------
sources=${NEWER_NIX_SOURCES:-/etc/apt/sources.list.d/debian.sources}
if [ -r "$sources" ]; then
  # deb822 paragraphs: the first enabled 'deb' entry whose suites are not *-security.
  # Prints "URI KEYRING" (KEYRING '-' when Signed-By is absent or an inline key).
  entry=$(awk '
    BEGIN { RS = ""; FS = "\n" }
    {
      t = ""; u = ""; s = ""; k = ""; en = "yes"
      for (i = 1; i <= NF; i++) {
        l = $i
        if (l ~ /^[ \t]*#/ || l ~ /^[ \t]/) continue
        key = tolower(l); sub(/:.*/, "", key)
        v = l; sub(/^[^:]*:[ \t]*/, "", v); sub(/[ \t]+$/, "", v)
        if (key == "types") t = v
        else if (key == "uris") u = v
        else if (key == "suites") s = v
        else if (key == "signed-by") k = v
        else if (key == "enabled") en = tolower(v)
      }
      if (en != "no" && (" " t " ") ~ /[ \t]deb[ \t]/ && s !~ /-security/ && u != "") {
        split(u, a, /[ \t]+/)
        if (k == "" || k ~ /[ \t]/ || substr(k, 1, 1) != "/") k = "-"
        print a[1], k
        exit
      }
    }' "$sources")
elif [ -z "${NEWER_NIX_SOURCES:-}" ] && [ -r /etc/apt/sources.list ]; then
  # one-line format: deb [options] URI SUITE COMPONENTS...
  entry=$(awk '$1 == "deb" {
      i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
      if ($(i + 1) !~ /-security/) { print $i, "-"; exit } }' /etc/apt/sources.list)
else
  die "cannot read $sources"
fi
read -r uri keyring <<<"${entry:-}" || true
[ -n "${uri:-}" ] || die "no non-security 'deb' entry with a URI in $sources"
[ "${keyring:--}" != "-" ] || keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || die "keyring $keyring not readable"
log "Nix $ver: nix-bin from $suite, archive $uri, into $prefix"

arch=$(dpkg --print-architecture)
# The system's trusted keys and credentials stay in force: give their paths absolutely, since
# moving Dir would otherwise move them into the private tree too.
eval "$(apt-config shell \
  SYS_TRUSTED Dir::Etc::trusted/f SYS_TRUSTEDPARTS Dir::Etc::trustedparts/d \
  SYS_NETRC Dir::Etc::netrc/f SYS_NETRCPARTS Dir::Etc::netrcparts/d)"

mkdir -p "$apt_dir/etc/apt/sources.list.d" "$apt_dir/etc/apt/apt.conf.d" \
  "$apt_dir/etc/apt/preferences.d" "$apt_dir/var/lib/apt/lists/partial" \
  "$apt_dir/var/cache/apt" "$apt_dir/archives/partial"
: > "$apt_dir/status"      # EMPTY dpkg status: apt fetches the whole closure, libc6 included
cat > "$apt_dir/etc/apt/sources.list.d/nix-$suite.sources" <<EOF
Types: deb
URIs: $uri
Suites: $suite
Components: main
Architectures: $arch
Targets: Packages
PDiffs: no
Signed-By: $keyring
EOF
cat > "$apt_dir/apt.conf" <<EOF
Dir "$apt_dir/";
Dir::State::status "$apt_dir/status";
Dir::Cache::archives "$apt_dir/archives/";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Dir::Etc::trusted "${SYS_TRUSTED:-/etc/apt/trusted.gpg}";
Dir::Etc::trustedparts "${SYS_TRUSTEDPARTS:-/etc/apt/trusted.gpg.d/}";
Dir::Etc::netrc "${SYS_NETRC:-/etc/apt/auth.conf}";
Dir::Etc::netrcparts "${SYS_NETRCPARTS:-/etc/apt/auth.conf.d/}";
APT::Architecture "$arch";
#clear APT::Architectures;
APT::Architectures { "$arch"; };
APT::Install-Recommends "false";
APT::Install-Suggests "false";
APT::Get::Download-Only "true";
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
#clear DPkg::Pre-Invoke;
#clear DPkg::Post-Invoke;
#clear DPkg::Pre-Install-Pkgs;
EOF
# The system's apt.conf.d is read first (proxy etc.), then this file moves everything else.
apt_() { env -u APT_CONFIG "$@" -c "$apt_dir/apt.conf"; }

installed_ok() {
  [ -f "$prefix/.installed" ] && [ -x "$prefix/bin/nix" ] && "$prefix/bin/nix" --version >/dev/null 2>&1
}

# PREFIX/bin: the Nix entry points, named as Nix expects (argv[0] picks the tool).
make_bin() {
  local f
  rm -rf "$prefix/bin.new"; mkdir -p "$prefix/bin.new"
  for f in "$root"/usr/bin/nix "$root"/usr/bin/nix-*; do
    [ -e "$f" ] || continue
    ln -s "../root/usr/bin/${f##*/}" "$prefix/bin.new/${f##*/}"
  done
  rm -rf "$prefix/bin"; mv "$prefix/bin.new" "$prefix/bin"
}

# PREFIX/etc/nix, for callers that set NIX_CONF_DIR=PREFIX/etc/nix. Without NIX_CONF_DIR this Nix
# reads /etc/nix/nix.conf, which works too (Debian's holds only sandbox = false).
write_conf() {
  mkdir -p "$prefix/etc/nix"
  echo '{"flakes": [], "version": 2}' > "$prefix/etc/nix/registry.json"
  cat > "$prefix/etc/nix/nix.conf" <<EOF
# Written by newer-nix.sh; read when NIX_CONF_DIR=$prefix/etc/nix.
# Builders run the host's /bin/bash (no nixpkgs here): no sandbox.
sandbox = false
# Build as root, without the nixbld users: the store stays root:root 0755 (with a build users
# group, any Nix that opens the store as root makes /nix/store root:nixbld 1775).
build-users-group =
# Offline: no binary cache.
substituters =
# Not here: flake-registry. Set in a file while flakes are enabled only later (NIX_CONFIG), it is
# ignored with a warning; put 'flake-registry = $prefix/etc/nix/registry.json' (an empty
# registry) in NIX_CONFIG next to 'experimental-features = nix-command flakes'.
EOF
  if [ -x "$root/usr/bin/bash-static" ]; then
    cat >> "$prefix/etc/nix/nix.conf" <<EOF
# Debian's default is the host's /usr/bin/bash-static, absent unless the bash-static package is
# installed: give the sandbox's /bin/sh from the unpacked copy, so sandbox = true works as well.
sandbox-paths = /bin/sh=$root/usr/bin/bash-static
EOF
  fi
}

# Nix finds itself through /proc/self/exe (build hook, nix-channel running nix-env): that must
# be the patched file. Its default build-hook setting shows what it found (opens no store).
check_self() {
  local nix_real hook
  nix_real=$(readlink -f "$root/usr/bin/nix")
  hook=$(env -u NIX_CONFIG NIX_CONF_DIR="$prefix/etc/nix" "$prefix/bin/nix" \
    --extra-experimental-features nix-command config show build-hook 2>"$apt_dir/check.log") \
    || { cat "$apt_dir/check.log" >&2; die "nix does not run"; }
  case $hook in
    "$nix_real "*) ;;
    *) die "nix does not find itself through /proc/self/exe: build-hook = $hook" ;;
  esac
}

finish() {
  make_bin
  write_conf
  check_self
  log "done in $(( $(date +%s) - t_start ))s. Use: PATH=$prefix/bin:\$PATH" \
      "(optional: NIX_CONF_DIR=$prefix/etc/nix)"
  "$prefix/bin/nix" --version
}

log "apt-get update ($suite)"
if ! apt_ apt-get -q update >"$apt_dir/update.log" 2>&1; then
  cat "$apt_dir/update.log" >&2
  if installed_ok; then
    log "warning: apt-get update failed; keeping the installed $(cat "$prefix/.installed")"
    finish
    exit 0
  fi
  die "apt-get update failed"
fi
grep -E '^(W|E):' "$apt_dir/update.log" >&2 || true

candidate=$(apt_ apt-cache policy nix-bin | awk '/Candidate:/ { print $2; exit }')
case $candidate in "" | "(none)") die "no nix-bin in $suite" ;; esac
stamp="nix-bin=$candidate suite=$suite arch=$arch"

if [ -z "${NEWER_NIX_FORCE:-}" ] && installed_ok && [ "$(cat "$prefix/.installed")" = "$stamp" ]; then
  log "nix-bin $candidate already installed in $prefix"
  finish
  exit 0
fi
rm -f "$prefix/.installed"

# ---------------------------------------------------------------------------------------------
# 2. Download nix-bin (and patchelf, used below) with their whole dependency closure.
# ---------------------------------------------------------------------------------------------
log "resolving and downloading nix-bin $candidate + dependencies"
rm -f "$apt_dir"/archives/*.deb
apt_ apt-get -q -y install nix-bin patchelf >"$apt_dir/download.log" 2>&1 \
  || { cat "$apt_dir/download.log" >&2; die "download failed"; }
debs=("$apt_dir"/archives/*.deb)
[ -e "${debs[0]}" ] || die "nothing downloaded"
log "${#debs[@]} packages downloaded ($(du -sh "$apt_dir/archives" | cut -f1))"

# ---------------------------------------------------------------------------------------------
# 3. Unpack into PREFIX/root (fresh); patchelf into a scratch dir.
# ---------------------------------------------------------------------------------------------
rm -rf "$root" "$prefix/bin"
mkdir -p "$root"
for deb in "${debs[@]}"; do
  case ${deb##*/} in patchelf_*) continue ;; esac
  dpkg-deb -x "$deb" "$root"
done
tools=$apt_dir/tools
rm -rf "$tools"; mkdir -p "$tools"
dpkg-deb -x "$apt_dir"/archives/patchelf_*.deb "$tools"
# The closure brings passwd & co.: no setuid/setgid programs under PREFIX.
find "$root" -type f -perm /6000 -exec chmod ug-s {} +

# Absolute symlinks would point at the host's files: make them point inside root.
while IFS= read -r -d '' link; do
  target=$(readlink "$link")
  case $target in
    /*) ln -sfn "$(realpath -ms --relative-to="${link%/*}" "$root$target")" "$link" ;;
  esac
done < <(find "$root" -type l -print0)

# The unpacked dynamic loader (the real file, not the usr/lib64 symlink).
ldso=$(find "$root/usr/lib" "$root/lib" -maxdepth 2 -type f -name 'ld-linux*.so.[0-9]' 2>/dev/null \
  | sort | head -n1 || true)
[ -n "$ldso" ] || die "no ld-linux*.so in the unpacked libc6"

# soname -> directory holding it (first in sorted order)
declare -A lib_at=()
while IFS= read -r -d '' f; do
  b=${f##*/}
  [ -n "${lib_at[$b]:-}" ] || lib_at[$b]=${f%/*}
done < <(find "$root" \( -type f -o -type l \) -name '*.so*' -print0 | sort -z)
all_dirs=$(printf '%s\n' "${lib_at[@]}" | sort -u | paste -sd:)
# The unpacked patchelf runs through the unpacked loader (nothing patched yet, nothing installed
# on the host); --library-path applies to that one process, it sets no environment.
PATCHELF() {
  env -u LD_LIBRARY_PATH -u LD_PRELOAD "$ldso" --library-path "$all_dirs" "$tools/usr/bin/patchelf" "$@"
}
PATCHELF --version >/dev/null || die "the unpacked patchelf does not run"

is_elf() { [ "$(head -c4 "$1" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]; }

# Programs to patch: dynamically linked ELF executables under usr/bin, bin, usr/libexec.
programs=()
for d in "$root/usr/bin" "$root/bin" "$root/usr/libexec"; do
  [ -d "$d" ] && [ ! -L "$d" ] || continue
  while IFS= read -r -d '' f; do
    is_elf "$f" || continue
    PATCHELF --print-interpreter "$f" >/dev/null 2>&1 || continue   # static, or a library
    programs+=("$f")
  done < <(find "$d" -type f -print0)
done
[ "${#programs[@]}" -gt 0 ] || die "no programs to patch"

# Needed libraries, transitively from the programs; their directories make the RPATH.
declare -A seen=() dirs_seen=()
rpath_dirs=("${ldso%/*}")
dirs_seen[${ldso%/*}]=1
closure_libs=()
missing=()
queue=("${programs[@]}")
while [ "${#queue[@]}" -gt 0 ]; do
  f=${queue[0]}; queue=("${queue[@]:1}")
  while IFS= read -r so; do
    [ -n "$so" ] && [ -z "${seen[$so]:-}" ] || continue
    seen[$so]=1
    d=${lib_at[$so]:-}
    if [ -z "$d" ]; then missing+=("$so (needed by ${f#"$root"/})"); continue; fi
    if [ -z "${dirs_seen[$d]:-}" ]; then dirs_seen[$d]=1; rpath_dirs+=("$d"); fi
    real=$(readlink -f "$d/$so")
    closure_libs+=("$real")
    queue+=("$real")
  done < <(PATCHELF --print-needed "$f")
done
[ "${#missing[@]}" -eq 0 ] || die "libraries not in the closure: ${missing[*]}"
rpath=$(IFS=:; echo "${rpath_dirs[*]}")
log "interpreter $ldso"
log "rpath $rpath"

for f in "${programs[@]}"; do
  PATCHELF --set-interpreter "$ldso" --force-rpath --set-rpath "$rpath" "$f"
done
# A library with its own RPATH/RUNPATH would look elsewhere first (a RUNPATH even makes the
# loader ignore the programs' RPATH for that library's dependencies): point it at root too.
for lib in $(printf '%s\n' "${closure_libs[@]}" | sort -u); do
  [ "$lib" != "$ldso" ] || continue
  [ -z "$(PATCHELF --print-rpath "$lib")" ] || PATCHELF --force-rpath --set-rpath "$rpath" "$lib"
done
log "patched ${#programs[@]} programs"

# Check: every program's libraries resolve inside root, with the unpacked loader.
bad=0
for f in "${programs[@]}"; do
  out=$(env -u LD_LIBRARY_PATH -u LD_PRELOAD "$ldso" --list "$f" 2>&1) \
    || { printf '%s:\n%s\n' "${f#"$root"/}" "$out" >&2; bad=1; continue; }
  stray=$(printf '%s\n' "$out" | awk -v r="$root/" '
    /not found/ { print; next }
    / => / { if (index($3, r) != 1) print }')
  if [ -n "$stray" ]; then
    printf '%s:\n%s\n' "${f#"$root"/}" "$stray" >&2
    bad=1
  fi
done
[ "$bad" -eq 0 ] || die "some libraries resolve outside $root (see above)"
log "all ${#programs[@]} programs resolve their libraries inside $root"

apt_ apt-get -q clean >/dev/null 2>&1 || true
rm -rf "$tools"
echo "$stamp" > "$prefix/.installed"

# ---------------------------------------------------------------------------------------------
# 4.-6. bin/ links, etc/nix, self-check, version.
# ---------------------------------------------------------------------------------------------
finish
