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
command -v testssl >/dev/null 2>&1 || need+=(testssl.sh) # tests/faults.rs: TLS scan of the inbound
command -v wrk >/dev/null 2>&1 || need+=(wrk)                # tests/drain_load.rs: keep-alive load
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)       # tests/drain_load.rs: the backend
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

# Python packages the end-to-end tests run: the official Prometheus client's text-format parser
# checks /metrics (tests/admin.rs, tests/http.rs); grpcio, websockets and Hypercorn (HTTP/2 with
# prior knowledge) are the third-party clients and servers of tests/http.rs; kubernetes-validate
# checks injected and deploy/ manifests against the Kubernetes schemas (tests/inject.rs,
# tests/deploy.rs); jsonpatch applies the admission webhook's patches (tests/webhook.rs);
# grpcio-health-checking is the gRPC health server the proxy's app probes ask (tests/k8s_pods.rs).
py_need=()
for pkg in prometheus_client:prometheus_client grpc:grpcio websockets.asyncio.client:websockets hypercorn:hypercorn \
  kubernetes_validate:kubernetes-validate jsonpatch:jsonpatch grpc_health:grpcio-health-checking spiffe:spiffe; do
  python3 -c "import ${pkg%%:*}" 2>/dev/null || py_need+=("${pkg#*:}")
done
if [ ${#py_need[@]} -gt 0 ]; then
  python3 -m pip install --quiet --disable-pip-version-check "${py_need[@]}"
fi

# Unit, integration and end-to-end tests of every crate (doc tests hold no code; benches are run
# with `cargo bench`). The last line totals every test binary's result.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --lib --bins --tests "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
