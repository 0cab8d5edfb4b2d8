//! Workload identity: SPIFFE IDs, X.509-SVID validation, trust bundles and the credential store.

mod bundle;
mod credentials;
pub mod pem_source;
mod spiffe_id;
mod svid;

pub use bundle::TrustBundles;
pub use credentials::{unix_now, CredentialStore, Credentials};
pub use spiffe_id::{IdError, SpiffeId, TrustDomain, MAX_ID_LEN, MAX_TRUST_DOMAIN_LEN};
pub use svid::{
    check_leaf, check_signing_cert, verify_chain, LeafInfo, Purpose, SvidError, MAX_CHAIN_LEN,
};
