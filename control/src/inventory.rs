//! The identity inventory: every SPIFFE ID this control plane's CA issued (which node asked,
//! first and last issuance, current expiry and serial), kept in the state directory, merged with
//! what traffic shows (last seen as caller and as callee, distinct peers) into one row per
//! identity with flags: issued but unused for N days, seen in traffic but not issued here (another
//! trust domain, or another issuer of ours), expired and gone. The merge is pure; the store is
//! the one I/O edge. Served as `/identities` on the query port and by `svidcar identities`.

mod endpoint;
mod merge;
mod store;
mod traffic;

pub use endpoint::{identities, parse_unused_days, EndpointError, DEFAULT_UNUSED_DAYS};
pub use merge::{merge, Flag, IdentityRow, Issued, MergeParams, Traffic};
pub use store::{certificate_facts, InventoryError, Issuance, IssuanceStore};
pub use traffic::edges_from_decisions;
