//! Workload identity, shared by the data plane, the node agent and the control plane: SPIFFE
//! IDs and trust domains, X.509-SVID validation, trust bundles, the credential store and its
//! two sources — PEM files ([`pem_source`]) and the SPIFFE Workload API ([`workload_api`]) —,
//! the mesh's rustls configurations, verifiers and certificate resolver ([`tls`]), retry
//! pacing ([`backoff`]), time helpers, and how every command loads its configuration
//! ([`config_file`]: defaults, YAML file, flags; [`Dur`]).
//!
//! Left to others: issuing SVIDs (`svidcar-control`), proxying bytes (`svidcar-proxy`).

pub mod backoff;
mod bundle;
pub mod config_file;
mod credentials;
mod dur;
mod endpoint;
pub mod pem_source;
mod spiffe_id;
mod svid;
mod time_fmt;
pub mod tls;
pub mod workload_api;

pub use bundle::TrustBundles;
pub use credentials::{unix_now, CredentialStore, Credentials, SourceProblem};
pub use dur::Dur;
pub use endpoint::{EndpointError, WorkloadEndpoint};
pub use spiffe_id::{IdError, SpiffeId, TrustDomain, MAX_ID_LEN, MAX_TRUST_DOMAIN_LEN};
pub use svid::{
    check_leaf, check_signing_cert, verify_chain, LeafInfo, Purpose, SvidError, MAX_CHAIN_LEN,
};
pub use time_fmt::{format_unix, OrNone};
