//! svidcar's data plane: the outbound side (app → mesh) originates mutual TLS with the
//! workload's X.509-SVID and checks that the server is the SPIFFE ID expected for the
//! destination; the inbound side (mesh → app) terminates it, verifies the client's SVID and hands
//! plaintext to the app over loopback. Identity types, SVID validation and the credential store
//! live here too so the control plane can reuse them.
//!
//! Left to others: installing iptables rules (`svidcar-iptables`), issuing certificates and
//! policy (`svidcar-control`), process wiring and signals (the `svidcar` binary).

mod admin;
pub mod authz;
pub mod config;
pub mod conn;
pub mod control_client;
pub mod copy;
pub mod detect;
mod inbound;
pub mod metrics;
pub mod orig_dst;
mod outbound;
mod policy_watch;
pub mod prefixed;
mod runtime;

pub use admin::Readiness;
pub use outbound::{DestinationTable, Target};
pub use runtime::{start, ProxyHandle, StartError};
