#!/usr/bin/env bash
# Set up everything gridbid needs on a Debian/Ubuntu machine or a Raspberry Pi,
# then run something. Safe to run again: it only installs what is missing.
#
#   ./dev.sh demo [ARGS]   set up, then run the local demo (gridbid demo)
#   ./dev.sh test [ARGS]   set up, then lint and run the whole test suite (ARGS go to pytest)
#   ./dev.sh setup         set up only
set -euo pipefail
cd "$(dirname "$0")"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# System packages, installed only when missing. Later components add theirs here.
missing=()
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)  # Debian splits it out
command -v socat >/dev/null || missing+=(socat)  # RS-485 (Modbus RTU) over a pty pair in tests
command -v mosquitto >/dev/null || missing+=(mosquitto)  # the MQTT broker the tests use
command -v chromium >/dev/null || missing+=(chromium)  # the web page's browser test
command -v openssl >/dev/null || missing+=(openssl)  # the broker's test TLS certificates
command -v debootstrap >/dev/null || missing+=(debootstrap)  # deploy/ansible converges into a Debian root

if ((${#missing[@]})); then
  say "installing system packages: ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
    echo "missing system packages and no root: run  apt-get install -y ${missing[*]}  as root"; exit 1
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "gridbid needs Python 3.11 or newer (found $(python3 --version 2>&1))"; exit 1; }

# The Python environment: .venv, reinstalled when pyproject.toml changes.
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  say "creating .venv and installing pinned dependencies (pyproject.toml [dev])"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  log=.venv/install.log
  if ! { .venv/bin/python -m pip install --upgrade pip \
         && .venv/bin/python -m pip install -e ".[dev]"; } >"$log" 2>&1; then
    tail -n 30 "$log"; echo "pip install failed: the whole log is in $log"; exit 1
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi
if [ ! -x .venv/bin/micropython ]; then
  say "no MicroPython VM wheel for $(uname -m): device code runs on CPython here"
fi

cmd="${1:-setup}"
shift || true
case "$cmd" in
  setup) say "ready: .venv/bin/gridbid --help" ;;
  demo) exec .venv/bin/gridbid demo "$@" ;;
  test)
    say "ruff"
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    say "pytest"
    exec .venv/bin/python -m pytest "$@"
    ;;
  *) echo "usage: ./dev.sh {demo|test|setup} [args]"; exit 2 ;;
esac
