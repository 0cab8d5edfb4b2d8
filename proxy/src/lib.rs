//! svidcar's data plane: the outbound side (app → mesh) originates mutual TLS with the
//! workload's X.509-SVID and checks that the server is the SPIFFE ID expected for the
//! destination; the inbound side (mesh → app) terminates it, verifies the client's SVID and hands
//! plaintext to the app over loopback. It exports what the CLI needs: the configuration, `start`
//! and its handle, the types of the connection records the handle reports, and `process`: the
//! sidecar process itself (runtime, identity source, signals, drain, log set-up), which
//! `svidcar run` and the proxy-only `svidcar-proxy` binary both run.
//!
//! Left to others: identity, SVID checks and TLS configs (`svidcar-identity`), policy evaluation
//! (`svidcar-policy`), wire contracts (`svidcar-api`), installing iptables rules
//! (`svidcar-iptables`), issuing certificates and serving policy (`svidcar-control`), command
//! lines (the binaries), the allocator (`svidcar-alloc`).

mod accept;
mod access_log;
mod admin;
pub mod authz;
pub mod config;
pub mod conn;
mod context;
mod control_client;
mod copy;
pub mod detect;
mod forward;
mod http;
mod inbound;
pub mod metrics;
mod orig_dst;
mod outbound;
mod policy_watch;
mod prefixed;
pub mod process;
pub mod refusal;
mod runtime;
mod sniff;
mod tunnel;

pub use admin::Readiness;
pub use outbound::{DestinationTable, Target};
pub use runtime::{start, ProxyHandle, StartError};
