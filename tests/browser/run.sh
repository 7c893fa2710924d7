#!/bin/bash
# Browser end-to-end tests: real headless Chromium against front + worker, inside a private
# network namespace that has only loopback. Needs root (unshare -n), Debian's chromium, sox, espeak-ng
# and /usr/bin/python3. Exit code 0 = all passed; the last line is "N passed, M failed".
#   tests/browser/run.sh [--update-screenshot]     (SKIP_BUILD=1 to use the existing binaries)
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --bins --features demo --quiet
fi
exec unshare -n bash -c 'ip link set lo up && exec /usr/bin/python3 tests/browser/e2e.py "$@"' e2e "$@"
