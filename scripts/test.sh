#!/usr/bin/env bash
# Set up (or reuse) a virtual environment with the test dependencies, then run the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` or `-k parity`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# torch 2.14.1 + torchvision 0.29.1 is the pair the official package (our parity oracle) runs with.
"$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 -e ".[dev]"
# The annotation app's browser tests drive Debian's Chromium through Playwright.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "warning: could not install chromium; browser tests will be skipped" >&2
fi
exec "$VENV/bin/pytest" "$@"
