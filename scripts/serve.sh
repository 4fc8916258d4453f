#!/usr/bin/env bash
# Install Dovecote into ./.venv and run it on its embedded defaults:
# domain "localhost" (or ./dovecote.toml when present), SQLite and a self-signed
# certificate under the data directory. Extra arguments go to `dovecote serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/dovecote serve "$@"
