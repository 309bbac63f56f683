#!/usr/bin/env bash
# Installs everything the test suite needs on Debian and runs it all:
#   system packages: nix-bin (real Nix), chromium (browser test), git, gcc (test fixtures build C),
#   r-base-core and r-cran-irkernel (real R with IRkernel, wrapped into test shells)
#   a virtualenv (.venv-test) with nixkernel and its test extras (pytest, pytest-jupyter,
#   jupyterlab, playwright, hypothesis, uv, ruff)
# then ruff and pytest. Extra arguments go to pytest (e.g. `tools/test.sh -k cache`).
# Under CI=true a missing Nix or Chromium fails the run: nothing passes by skipping.
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
echo "tools/test.sh: $(nix --version), $(python --version), $(chromium --version 2>/dev/null | head -n1)"

ruff check .
ruff format --check .
python -m pytest "$@"
