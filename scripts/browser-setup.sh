#!/usr/bin/env bash
# Install what the real-browser tests (tests/browser) need, once; idempotent and quick when
# everything is there:
#   - Chromium from Debian's packages (`chromium`), only when missing and only as root;
#   - Node.js and npm from Debian's packages, the same way, when `npm` is missing;
#   - `npm ci` of tests/browser/package-lock.json (Converse.js and playwright-core) into
#     tests/browser/node_modules, skipped while the installed tree matches the lock file.
# No browser is downloaded: playwright-core drives Debian's /usr/bin/chromium.
# Exit status 0 when ready; otherwise non-zero, with the reason on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=tests/browser

as_root() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }
APT_UPDATED=""
apt_install() {
  if [ -z "$APT_UPDATED" ]; then
    apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

CHROMIUM=${CHROMIUM:-}  # another Chromium build to drive, e.g. CHROMIUM=/opt/chromium/chrome
if [ -n "$CHROMIUM" ] && [ ! -x "$CHROMIUM" ]; then
  echo "browser-setup: CHROMIUM=$CHROMIUM is not an executable file" >&2
  exit 3
fi
if [ -z "$CHROMIUM" ]; then
  CHROMIUM=$(command -v chromium || true)
fi
if [ -z "$CHROMIUM" ]; then
  if as_root; then
    echo "browser-setup: installing Debian's chromium" >&2
    apt_install chromium
    CHROMIUM=$(command -v chromium)
  else
    echo "browser-setup: chromium is not installed (apt-get install chromium, as root)" >&2
    exit 3
  fi
fi

if ! command -v npm >/dev/null 2>&1; then
  if as_root; then
    echo "browser-setup: installing Debian's nodejs and npm" >&2
    apt_install nodejs npm
  else
    echo "browser-setup: npm is not installed (apt-get install nodejs npm, as root)" >&2
    exit 3
  fi
fi

# npm ci only when node_modules does not hold exactly what package-lock.json pins.
STAMP="$DIR/node_modules/.dovecote-lock.sha256"
WANT=$(sha256sum "$DIR/package-lock.json" | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "browser-setup: npm ci in $DIR" >&2
  (cd "$DIR" && npm ci --no-audit --no-fund --loglevel=error >&2)
  echo "$WANT" >"$STAMP"
fi

echo "$CHROMIUM"
