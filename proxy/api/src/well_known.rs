//! The numbers every svidcar command agrees on: the proxy's uid/gid and the well-known ports
//! (ARCHITECTURE.md, "Ports"). Defaults of the proxy, `svidcar init`, `svidcar agent`,
//! `svidcar control` and the CLI are built from these, so a number is written once.
//!
//! They are Istio's numbers, which operators, probes and firewall rules already know.

/// UID the proxy runs as. `svidcar init` exempts its traffic from capture (otherwise the
/// proxy's own upstream connections would be redirected back to it, a loop). Istio's convention.
pub const PROXY_UID: u32 = 1337;

/// GID the proxy runs as; exempted from capture exactly like [`PROXY_UID`]. Istio's convention.
pub const PROXY_GID: u32 = 1337;

/// The proxy's outbound (app → mesh) listener, on `127.0.0.1`: iptables REDIRECT of locally
/// generated traffic lands on loopback. Istio's outbound capture port.
pub const OUTBOUND_PORT: u16 = 15001;

/// The proxy's inbound (mesh → app) listener, on `0.0.0.0`: PREROUTING REDIRECT lands on the
/// receiving interface's address. Istio's inbound capture port.
pub const INBOUND_PORT: u16 = 15006;

/// The proxy's tunnel listener (mTLS HTTP/2, ALPN `h2`), on `0.0.0.0`: peers' outbound sides
/// carry app connections to it as `CONNECT` streams over pooled connections. Never captured by
/// `svidcar init`. The port of Istio's and ztunnel's HBONE.
pub const TUNNEL_PORT: u16 = 15008;

/// The proxy's admin server (`/metrics`, `/live`, `/ready`, `/config`, `POST /shutdown`), on
/// `0.0.0.0`, never captured by iptables. Istio's merged admin port, known to operators and
/// probes.
pub const ADMIN_PORT: u16 = 15020;

/// `svidcar control`'s gRPC listener (policy stream and, when it holds the CA, the node API),
/// TLS with SVIDs. istiod's mTLS xDS port; one port for agents and proxies keeps firewall rules
/// simple.
pub const CONTROL_GRPC_PORT: u16 = 15012;

/// `svidcar control`'s HTTP queries (`/decisions`, `/proxies`, `/nodes`, `/policies`,
/// `/bundle`, `/metrics`), on `127.0.0.1` because decisions are sensitive. istiod's monitoring
/// port.
pub const CONTROL_QUERY_PORT: u16 = 15014;

/// `svidcar agent`'s `/live`, `/ready`, `/metrics` (suggested; off unless `--admin-listen`).
/// Istio's health port, so `svidcar init` never captures it either.
pub const AGENT_ADMIN_PORT: u16 = 15021;

/// Istio's Envoy Prometheus port (`/stats/prometheus`). svidcar does not listen on it, but
/// `svidcar init` never captures it, so a pod moved from Istio keeps its scrape port reachable.
pub const ENVOY_PROMETHEUS_PORT: u16 = 15090;

/// `svidcar control`'s mutating admission webhook (HTTPS, `--webhook-listen`). istiod's
/// webhook port, which cluster firewall rules for the API server already allow.
pub const WEBHOOK_PORT: u16 = 15017;

/// The kubelet's authenticated HTTPS port, where `svidcar agent` reads the node's pod list
/// (`/pods`) to learn a calling pod's namespace, service account and labels.
pub const KUBELET_PORT: u16 = 10250;

/// The directory holding `svidcar agent`'s Workload API socket: on the node (a hostPath the
/// agent DaemonSet shares) and, mounted read-only, in every injected pod.
pub const AGENT_SOCKET_DIR: &str = "/run/svidcar";

/// `svidcar agent`'s Workload API socket (in [`AGENT_SOCKET_DIR`]).
pub const AGENT_SOCKET: &str = "/run/svidcar/agent.sock";

/// Ports `svidcar init` never captures inbound besides the proxy's own two: the admin, agent
/// health and Prometheus ports.
pub const ADMIN_PORTS: [u16; 3] = [ADMIN_PORT, AGENT_ADMIN_PORT, ENVOY_PROMETHEUS_PORT];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_numbers() {
        assert_eq!((PROXY_UID, PROXY_GID), (1337, 1337));
        assert_eq!(
            (OUTBOUND_PORT, INBOUND_PORT, ADMIN_PORT),
            (15001, 15006, 15020)
        );
        assert_eq!((CONTROL_GRPC_PORT, CONTROL_QUERY_PORT), (15012, 15014));
        assert_eq!(ADMIN_PORTS, [15020, 15021, 15090]);
        assert_eq!(TUNNEL_PORT, 15008);
        assert_eq!((WEBHOOK_PORT, KUBELET_PORT), (15017, 10250));
        assert!(AGENT_SOCKET.starts_with(AGENT_SOCKET_DIR));
    }
}
