#!/usr/bin/env bash
# Runs svidcar's whole test suite. The privileged tests (network namespaces, iptables) need root
# and these system tools; as root on Debian/Ubuntu, missing ones are installed first.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "missing tools: ${need[*]} (run as root to install them)" >&2
    exit 1
  fi
fi

# The official Prometheus client's text-format parser checks /metrics in tests/admin.rs.
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check prometheus_client
fi

cargo test --workspace --locked "$@"
