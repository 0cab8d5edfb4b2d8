//! `svidcar.node.v1`: messages and gRPC stubs of the node API
//! (`proto/svidcar/node/v1/node.proto`).

#![allow(
    missing_docs,
    unused_qualifications,
    clippy::derive_partial_eq_without_eq
)]

use std::fmt;

include!(concat!(env!("OUT_DIR"), "/svidcar.node.v1.rs"));

/// The generated client (`NodeServiceClient`).
pub use node_service_client as client;
/// The generated server (`NodeServiceServer`, trait `NodeService`).
pub use node_service_server as server;

/// Never shows the token.
impl fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinRequest")
            .field("csr_len", &self.csr.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_request_debug_hides_the_token() {
        let r = JoinRequest {
            token: "s3cr3t-t0ken".into(),
            csr: vec![1, 2, 3],
        };
        let shown = format!("{r:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("csr_len: 3"), "{shown}");
    }
}
