//! Messages and generated gRPC stubs of svidcar's node API, by which `svidcar agent` on a node
//! without the CA obtains SVIDs from `svidcar control`:
//!
//! ```proto
//! syntax = "proto3";
//! package svidcar.node.v1;
//!
//! service NodeService {
//!   // No client certificate: the one-time join token proves the node. Returns its node SVID.
//!   rpc Join(JoinRequest) returns (NodeSvidResponse);
//!   // Client certificate = the node SVID. Returns a fresh node SVID.
//!   rpc RenewNode(RenewNodeRequest) returns (NodeSvidResponse);
//!   // Client certificate = the node SVID. Returns an SVID for a workload of that node.
//!   rpc SignWorkload(SignWorkloadRequest) returns (SignWorkloadResponse);
//!   // Client certificate = the node SVID. The trust bundle now.
//!   rpc GetBundle(GetBundleRequest) returns (BundleResponse);
//! }
//!
//! message JoinRequest { string token = 1; bytes csr = 2; }   // csr: PKCS#10 DER
//! message RenewNodeRequest { bytes csr = 1; }
//! message NodeSvidResponse {
//!   bytes svid = 1;            // DER leaf
//!   repeated bytes bundle = 2; // DER roots of the trust domain
//!   string node = 3;           // the node's name
//! }
//! message SignWorkloadRequest { string spiffe_id = 1; bytes csr = 2; }
//! message SignWorkloadResponse { bytes svid = 1; repeated bytes bundle = 2; }
//! message GetBundleRequest {}
//! message BundleResponse { repeated bytes bundle = 1; }
//! ```

use std::fmt;

/// Join with a one-time token. `Debug` never shows the token.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct JoinRequest {
    /// The join token.
    #[prost(string, tag = "1")]
    pub token: String,
    /// PKCS#10 request for the node key, DER.
    #[prost(bytes = "vec", tag = "2")]
    pub csr: Vec<u8>,
}

impl fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinRequest")
            .field("csr_len", &self.csr.len())
            .finish_non_exhaustive()
    }
}

/// Renew the node SVID.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RenewNodeRequest {
    /// PKCS#10 request for a new node key, DER.
    #[prost(bytes = "vec", tag = "1")]
    pub csr: Vec<u8>,
}

/// A node SVID and the bundle.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeSvidResponse {
    /// The node SVID, DER.
    #[prost(bytes = "vec", tag = "1")]
    pub svid: Vec<u8>,
    /// Roots of the trust domain, DER each.
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub bundle: Vec<Vec<u8>>,
    /// The node's name.
    #[prost(string, tag = "3")]
    pub node: String,
}

/// An SVID for a workload of the calling node.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignWorkloadRequest {
    /// The SPIFFE ID wanted.
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
    /// PKCS#10 request for the workload key, DER.
    #[prost(bytes = "vec", tag = "2")]
    pub csr: Vec<u8>,
}

/// A workload SVID and the bundle.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignWorkloadResponse {
    /// The SVID, DER.
    #[prost(bytes = "vec", tag = "1")]
    pub svid: Vec<u8>,
    /// Roots of the trust domain, DER each.
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub bundle: Vec<Vec<u8>>,
}

/// Ask for the bundle.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetBundleRequest {}

/// The bundle.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BundleResponse {
    /// Roots of the trust domain, DER each.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub bundle: Vec<Vec<u8>>,
}

include!(concat!(env!("OUT_DIR"), "/svidcar.node.v1.NodeService.rs"));

/// The generated client (`NodeServiceClient`).
pub use node_service_client as client;
/// The generated server (`NodeServiceServer`, trait `NodeService`).
pub use node_service_server as server;
