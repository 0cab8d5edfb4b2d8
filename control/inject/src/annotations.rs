//! The `svidcar.io/…` annotations (and the one label) the injector reads and writes.
//! docs/injection.md describes each.

/// `"false"` (or `"disabled"`) as a label or annotation of the pod template or the workload:
/// never inject. `"true"`/`"enabled"` are accepted and change nothing.
pub const INJECT: &str = "svidcar.io/inject";
/// Written on every injected pod: JSON saying what was added (`version`, `initContainers`,
/// `containers`, `volumes`). Its presence means "already injected".
pub const STATUS: &str = "svidcar.io/status";
/// Inbound ports never captured (comma-separated).
pub const SKIP_INBOUND_PORTS: &str = "svidcar.io/skip-inbound-ports";
/// Inbound ports captured: `*` or comma-separated (an empty value captures none).
pub const INBOUND_PORTS: &str = "svidcar.io/inbound-ports";
/// Outbound ports never captured (comma-separated).
pub const SKIP_OUTBOUND_PORTS: &str = "svidcar.io/skip-outbound-ports";
/// Outbound ports captured: `*` or comma-separated (an empty value captures none).
pub const OUTBOUND_PORTS: &str = "svidcar.io/outbound-ports";
/// Outbound destinations never captured (comma-separated CIDRs or addresses).
pub const SKIP_OUTBOUND_CIDRS: &str = "svidcar.io/skip-outbound-cidrs";
/// App ports never inspected for HTTP (comma-separated; replaces the proxy's default list).
pub const OPAQUE_PORTS: &str = "svidcar.io/opaque-ports";
/// Inbound mTLS mode of ports without their own: `strict` or `permissive`.
pub const MTLS: &str = "svidcar.io/mtls";
/// Per-port inbound mTLS modes: `8080=permissive,9090=strict`.
pub const PORT_MTLS: &str = "svidcar.io/port-mtls";
/// Outbound destinations: `CIDR[:PORT]=SPIFFE_ID|passthrough`, separated by `,` or `;`.
pub const DESTINATIONS: &str = "svidcar.io/destinations";
/// The proxy's log filter (`SVIDCAR_LOG`).
pub const LOG_LEVEL: &str = "svidcar.io/log-level";
/// The proxy's CPU request.
pub const PROXY_CPU_REQUEST: &str = "svidcar.io/proxy-cpu-request";
/// The proxy's memory request.
pub const PROXY_MEMORY_REQUEST: &str = "svidcar.io/proxy-memory-request";
/// The proxy's CPU limit.
pub const PROXY_CPU_LIMIT: &str = "svidcar.io/proxy-cpu-limit";
/// The proxy's memory limit.
pub const PROXY_MEMORY_LIMIT: &str = "svidcar.io/proxy-memory-limit";
/// The image of both injected containers.
pub const PROXY_IMAGE: &str = "svidcar.io/proxy-image";

/// Every annotation key the injector knows; any other `svidcar.io/` annotation is an error
/// (a typo would otherwise be ignored silently).
pub const ALL: &[&str] = &[
    INJECT,
    STATUS,
    SKIP_INBOUND_PORTS,
    INBOUND_PORTS,
    SKIP_OUTBOUND_PORTS,
    OUTBOUND_PORTS,
    SKIP_OUTBOUND_CIDRS,
    OPAQUE_PORTS,
    MTLS,
    PORT_MTLS,
    DESTINATIONS,
    LOG_LEVEL,
    PROXY_CPU_REQUEST,
    PROXY_MEMORY_REQUEST,
    PROXY_CPU_LIMIT,
    PROXY_MEMORY_LIMIT,
    PROXY_IMAGE,
];

/// The annotations' common prefix.
pub const PREFIX: &str = "svidcar.io/";
