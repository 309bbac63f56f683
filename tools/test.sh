#!/usr/bin/env bash
# Installs everything the test suite needs on Debian and runs it all:
#   system packages: nix-bin (real Nix 2.8), chromium (browser test), git, gcc (test fixtures
#   build C), r-base-core and r-cran-irkernel (real R with IRkernel, wrapped into test shells)
#   Nix 2.26 and 2.34 side by side under /opt/nix-<ver> (tools/newer-nix.sh: Debian trixie's and
#   sid's nix-bin, changing no system package)
#   a virtualenv (.venv-test) with nixkernel and its test extras (pytest, pytest-jupyter,
#   pytest-xdist, jupyterlab, playwright, hypothesis, uv, ruff)
# then ruff and pytest: every Nix-facing test once per Nix version, in parallel workers.
# Extra arguments go to pytest (e.g. `tools/test.sh -k cache --nix-version 2.34`, or
# `tools/test.sh -m "not nix"` for the fast tier).
# Under CI=true a missing Nix 2.8 / 2.26 or Chromium fails the run: nothing passes by skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
command -v nix >/dev/null || missing+=(nix-bin)
command -v chromium >/dev/null || missing+=(chromium)
command -v git >/dev/null || missing+=(git)
command -v gcc >/dev/null || missing+=(gcc)
command -v R >/dev/null || missing+=(r-base-core)
[ -d /usr/lib/R/site-library/IRkernel ] || missing+=(r-cran-irkernel)
python_bin="${PYTHON:-python3}"
"$python_bin" -c "import ensurepip, venv" 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "tools/test.sh: installing ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Newer Nix beside the system's. 2.26 (trixie, stable) must install; sid moves, and a package
# transition there can make 2.34 uninstallable for a day: then say so, and run without it.
nix_notes=()
for ver in 2.26 2.34; do
  if ! $SUDO bash tools/newer-nix.sh "$ver" >".newer-nix-$ver.log" 2>&1; then
    if [ "$ver" = 2.34 ]; then
      nix_notes+=("Nix 2.34 could not be installed from Debian sid today (see .newer-nix-$ver.log); its tests are skipped")
    else
      cat ".newer-nix-$ver.log" >&2
      echo "tools/test.sh: Nix $ver could not be installed" >&2
      exit 1
    fi
  fi
done

if [ ! -x .venv-test/bin/python ]; then
  "$python_bin" -m venv .venv-test
fi
.venv-test/bin/python -m pip install -q --upgrade pip >/dev/null
.venv-test/bin/python -m pip install -q -e ".[test]"
export PATH="$PWD/.venv-test/bin:$PATH"

if [ "${CI:-}" = "true" ]; then
  for tool in nix chromium uv git gcc R; do
    command -v "$tool" >/dev/null || { echo "tools/test.sh: $tool is required under CI=true" >&2; exit 1; }
  done
fi
echo "tools/test.sh: $(nix --version) (system), $(/opt/nix-2.26/bin/nix --version 2>/dev/null || echo 'no 2.26'), $(/opt/nix-2.34/bin/nix --version 2>/dev/null || echo 'no 2.34')"
echo "tools/test.sh: $(python --version), $(chromium --version 2>/dev/null | head -n1)"

ruff check .
ruff format --check .
status=0
python -m pytest -n "${NIXKERNEL_TEST_WORKERS:-4}" "$@" || status=$?
for note in "${nix_notes[@]+"${nix_notes[@]}"}"; do echo "tools/test.sh: NOTE: $note"; done
exit "$status"
