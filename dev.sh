#!/usr/bin/env bash
# Set up what gridbid needs on a Debian/Ubuntu machine or a Raspberry Pi, then run
# something. Safe to run again: it only installs what is missing.
#
#   ./dev.sh demo [ARGS]   the demo's stack (pyproject.toml extra `sim`), then gridbid demo
#   ./dev.sh test [ARGS]   the whole test stack (extra `dev`), then lint and the test suite
#                          (ARGS go to pytest)
#   ./dev.sh setup         the whole test stack only
set -euo pipefail
cd "$(dirname "$0")"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
installed() { dpkg-query -W -f '${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

cmd="${1:-setup}"
shift || true
case "$cmd" in
  demo) extra=sim ;;
  test | setup) extra=dev ;;
  *) echo "usage: ./dev.sh {demo|test|setup} [args]"; exit 2 ;;
esac

# A long install shows that it moves: apt's and pip's own lines go to a log, the
# terminal gets a line per package as its line matching $1 comes (one updating line on
# a terminal), and how many pip then installs.
progress() {
  local tty=""
  [ -t 1 ] && tty=1
  awk -v tty="$tty" -v item="$1" '
    function line(text) { printf "%s    %s%s", (tty ? "\r\033[K" : ""), text, (tty ? "" : "\n"); fflush() }
    $0 ~ item { line(++n ": " $2); open = tty }
    /^Installing collected packages: / {
      k = split(substr($0, 32), names, ", ")
      line("installing " k " package" (k > 1 ? "s" : "")); if (tty) print ""; n = open = 0 }
    END { if (open) print "" }'
}

# System packages, installed only when missing. The demo needs Python alone.
missing=()
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)  # Debian splits it out
if [ "$extra" = dev ]; then
  command -v socat >/dev/null || missing+=(socat)  # RS-485 (Modbus RTU) over a pty pair in tests
  command -v mosquitto >/dev/null || missing+=(mosquitto)  # the MQTT broker the tests use
  command -v chromium >/dev/null || missing+=(chromium)  # the web page's browser tests
  installed libatomic1 || missing+=(libatomic1)  # playwright's node needs it; chromium does not
  command -v openssl >/dev/null || missing+=(openssl)  # the broker's test TLS certificates
  command -v debootstrap >/dev/null || missing+=(debootstrap)  # deploy/ansible converges into a Debian root
fi

if ((${#missing[@]})); then
  say "installing system packages: ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
    echo "missing system packages and no root: as root, run"
    echo "  apt-get install -y --no-install-recommends ${missing[*]}"; exit 1
  fi
  log="${TMPDIR:-/tmp}/gridbid-apt.log"
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
         $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"; } 2>&1 \
       | tee "$log" | progress '^Unpacking '; then
    tail -n 30 "$log"; echo "apt-get failed: the whole log is in $log"; exit 1
  fi
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "gridbid needs Python 3.11 or newer (found $(python3 --version 2>&1))"; exit 1; }

# The Python environment: .venv with the chosen extra, reinstalled when pyproject.toml
# changes. dev includes sim: a .venv set up for the tests runs the demo as it is.
hash=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f ".venv/.installed-$hash-dev" ] && [ ! -f ".venv/.installed-$hash-$extra" ]; then
  say "installing the pinned Python packages into .venv (pyproject.toml, extra $extra)"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  log=.venv/install.log
  if ! { .venv/bin/python -m pip install --upgrade pip \
         && .venv/bin/python -m pip install -e ".[$extra]"; } 2>&1 | tee "$log" | progress '^Collecting '; then
    tail -n 30 "$log"; echo "pip install failed: the whole log is in $log"; exit 1
  fi
  rm -f .venv/.installed-*
  touch ".venv/.installed-$hash-$extra"
fi
if [ ! -x .venv/bin/micropython ]; then
  say "no MicroPython VM wheel for $(uname -m): device code runs on CPython here"
fi

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
esac
