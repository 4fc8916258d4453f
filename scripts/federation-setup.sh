#!/usr/bin/env bash
# Install what the federation interop tests need (tests/federation.py calls this when a
# program is missing), once; idempotent and quick when everything is there:
#   dnsmasq   (Debian: dnsmasq-base, the binary without a system service)
#   prosody   (Debian: prosody, with lua-unbound for its resolver)
#   ejabberd  (Debian: ejabberd)
# Usage: scripts/federation-setup.sh [dnsmasq] [prosody] [ejabberd]   (default: all)
# Installs only as root with apt-get. The Debian packages start system services
# (prosody, ejabberd) on the default ports: they are stopped and disabled here, the tests
# run their own instances on their own loopback addresses.
# Exit status 0 when ready; otherwise non-zero, with the reason on stderr.
set -euo pipefail

wanted=("$@")
[ ${#wanted[@]} -eq 0 ] && wanted=(dnsmasq prosody ejabberd)

binary() {
  case "$1" in
    dnsmasq) echo /usr/sbin/dnsmasq ;;
    prosody) echo /usr/bin/prosody ;;
    ejabberd) echo /usr/sbin/ejabberdctl ;;
    *) echo "federation-setup: unknown program $1" >&2; exit 2 ;;
  esac
}
package() {
  case "$1" in
    dnsmasq) echo dnsmasq-base ;;
    prosody) echo "prosody lua-unbound" ;;
    ejabberd) echo ejabberd ;;
  esac
}

missing=()
for name in "${wanted[@]}"; do
  [ -x "$(binary "$name")" ] || missing+=("$name")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "federation-setup: ${missing[*]} not installed (apt-get install as root:" \
    "$(for m in "${missing[@]}"; do package "$m"; done | tr '\n' ' '))" >&2
  exit 3
fi
packages=()
for name in "${missing[@]}"; do
  # shellcheck disable=SC2207
  packages+=($(package "$name"))
done
echo "federation-setup: installing ${packages[*]}" >&2
apt-get update -qq >/dev/null
# policy-rc.d 101: no service is started by the installation itself.
restore_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  restore_policy=1
fi
status=0
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" \
  >/dev/null || status=$?
[ -n "$restore_policy" ] && rm -f /usr/sbin/policy-rc.d
if [ $status -ne 0 ]; then
  echo "federation-setup: apt-get install ${packages[*]} failed ($status)" >&2
  exit 4
fi
for name in "${missing[@]}"; do
  if [ ! -x "$(binary "$name")" ]; then
    echo "federation-setup: $name still missing after installing its package" >&2
    exit 4
  fi
done
