#!/usr/bin/env bash
# The whole test suite on a fresh machine (README set-up command 2; CI's .ci/run calls it too).
# Installs what the tests need when it is missing, then runs the checks:
#   * Debian's chromium, chromium-driver and zbar-tools (the real-browser viewer tests, QR decoding) -
#     with apt-get when running as root or with password-less sudo, else a clear message and exit 1;
#   * Node's npm (nodejs/npm from Debian when missing, same rule) and the pinned npm packages
#     (`npm ci --ignore-scripts`: onnxruntime-web for the benchmark page; no download scripts run);
#   * the virtual environment .venv with the CPU build of torch and the project's test extras;
#   * lint-imports (the one-way import contract), ruff, then pytest with browsers required, so a
#     missing browser fails instead of skipping.
# Usage: scripts/test.sh [PYTEST-ARGS...]     e.g. scripts/test.sh -k viewer -x
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[test.sh] %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

apt_install() {  # apt_install PACKAGE...: as root, or with password-less sudo; else say what to run
  local run=()
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then run=(sudo); else
      die "the tests need the Debian packages '$*': run 'sudo apt-get install -y $*' (or run this script as root)"
    fi
  fi
  command -v apt-get >/dev/null || die "the tests need '$*' and this is not a Debian/Ubuntu system: install them yourself"
  say "installing Debian packages: $*"
  "${run[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${run[@]}" apt-get install -y -qq "$@" >/dev/null
}

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v zbarimg >/dev/null || missing+=(zbar-tools)
command -v npm >/dev/null || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi

# npm packages, when node_modules is absent or older than the lock file
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm packages (npm ci)"
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
fi

# Python: the venv, the CPU build of torch (a bare `torch` would pull a multi-GB CUDA build), the test extras
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
. .venv/bin/activate
if ! python -c 'import torch' 2>/dev/null; then
  python -m pip install --quiet --upgrade pip
  pip install --quiet torch==2.13.0
fi
pip install --quiet -e '.[test]'

export AGORA_REQUIRE_BROWSER=1  # browser and QR tests fail rather than skip when their tools are missing
say "lint-imports"
lint-imports --no-cache
say "ruff"
ruff check .
say "pytest"
python -m pytest -q "$@"
