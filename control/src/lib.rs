//! svidcar's control plane: the trust-domain CA that issues X.509-SVIDs following the X509-SVID
//! specification; `svidcar agent`, a node agent serving the SPIFFE Workload API to attested local
//! processes with that CA; and `svidcar control`, which serves authorization policy to proxies
//! over mTLS gRPC and keeps their decision log. Leaves SVID *validation*, the Workload API
//! *client* and policy evaluation to `svidcar-proxy`.

pub mod agent;
pub mod authority;
mod ca;
pub mod decisions;
pub mod edge;
pub mod edges;
pub mod inventory;
pub mod node;
mod prom;
pub mod server;
pub mod suggest;

pub use ca::{Ca, CaError, IssuedSvid};
