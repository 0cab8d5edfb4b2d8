//! Messages and generated gRPC stubs of the control-plane policy service
//! (`svidcar.control.v1.PolicyService`):
//!
//! ```proto
//! service PolicyService {
//!   // The proxy subscribes with its SVID (the identity comes from the mTLS handshake), then
//!   // acknowledges or rejects every snapshot it receives.
//!   rpc Watch(stream WatchRequest) returns (stream PolicySnapshot);
//!   // Decision events, streamed as they happen.
//!   rpc ReportDecisions(stream DecisionEventMsg) returns (ReportSummary);
//! }
//! ```

#![allow(missing_docs, clippy::derive_partial_eq_without_eq)]

/// Proxy → control plane on the watch stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchRequest {
    /// Free-form node name for status pages (e.g. pod name).
    #[prost(string, tag = "1")]
    pub node: String,
    /// The version acknowledged or rejected; empty on the first message.
    #[prost(string, tag = "2")]
    pub version: String,
    /// Empty when `version` was accepted; the reason it was rejected otherwise.
    #[prost(string, tag = "3")]
    pub error: String,
}

/// One policy document in YAML.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PolicyDocument {
    /// Where it came from (`file#document`), for error messages.
    #[prost(string, tag = "1")]
    pub origin: String,
    /// The document.
    #[prost(string, tag = "2")]
    pub yaml: String,
}

/// Control plane → proxy: every policy that selects the proxy's workload, as one version.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PolicySnapshot {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(message, repeated, tag = "2")]
    pub documents: Vec<PolicyDocument>,
}

/// One authorization decision (see `authz::DecisionEvent`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DecisionEventMsg {
    #[prost(int64, tag = "1")]
    pub time_ms: i64,
    #[prost(string, tag = "2")]
    pub action: String,
    #[prost(string, tag = "3")]
    pub source_id: String,
    #[prost(string, tag = "4")]
    pub destination_id: String,
    #[prost(string, tag = "5")]
    pub source_addr: String,
    #[prost(string, tag = "6")]
    pub destination_addr: String,
    #[prost(uint32, tag = "7")]
    pub port: u32,
    #[prost(string, tag = "8")]
    pub policy: String,
    #[prost(int64, tag = "9")]
    pub rule: i64,
    #[prost(string, tag = "10")]
    pub reason: String,
    #[prost(string, tag = "11")]
    pub policy_version: String,
}

/// Control plane → proxy when a decision stream ends.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReportSummary {
    #[prost(uint64, tag = "1")]
    pub received: u64,
}

impl From<crate::authz::DecisionEvent> for DecisionEventMsg {
    fn from(e: crate::authz::DecisionEvent) -> Self {
        Self {
            time_ms: e.time_ms,
            action: e.action,
            source_id: e.source_id,
            destination_id: e.destination_id,
            source_addr: e.source_addr,
            destination_addr: e.destination_addr,
            port: e.port.into(),
            policy: e.policy,
            rule: e.rule,
            reason: e.reason,
            policy_version: e.policy_version,
        }
    }
}

impl From<DecisionEventMsg> for crate::authz::DecisionEvent {
    fn from(m: DecisionEventMsg) -> Self {
        Self {
            time_ms: m.time_ms,
            action: m.action,
            source_id: m.source_id,
            destination_id: m.destination_id,
            source_addr: m.source_addr,
            destination_addr: m.destination_addr,
            port: u16::try_from(m.port).unwrap_or(0),
            policy: m.policy,
            rule: m.rule,
            reason: m.reason,
            policy_version: m.policy_version,
        }
    }
}

include!(concat!(
    env!("OUT_DIR"),
    "/svidcar.control.v1.PolicyService.rs"
));
