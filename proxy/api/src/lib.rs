//! svidcar's own gRPC contracts, generated from the checked-in `.proto` files in `proto/`:
//! the policy service ([`policy`], `svidcar.control.v1`: policy snapshots to proxies, decision
//! events back) and the node API ([`node`], `svidcar.node.v1`: agents joining and asking the
//! control plane for SVIDs). Also the one [`DecisionEvent`] type, with its wire and JSON forms,
//! the mTLS channels clients open to the control plane ([`channel`]), and the proxy uid and
//! well-known ports every command agrees on ([`well_known`]), and the format in which the injector
//! hands an app's kubelet probes to the proxy ([`app_probe`]), and what sidecars tell each other
//! on a tunnel connection ([`tunnel`]).
//!
//! Left to others: serving these APIs (`svidcar-control`), enforcing policy (`svidcar-proxy`).

pub mod app_probe;
pub mod channel;
mod decision;
pub mod destination;
pub mod node;
pub mod policy;
pub mod tunnel;
pub mod well_known;

pub use decision::{DecisionEvent, EventError};
