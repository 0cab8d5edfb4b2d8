//! svidcar's control plane. Today: the trust-domain CA that issues X.509-SVIDs following the
//! X509-SVID specification. The node agent (Workload API) and the policy server build on it in
//! later work. Leaves SVID *validation* to `svidcar-proxy`'s identity module.

mod ca;

pub use ca::{Ca, CaError, IssuedSvid};
