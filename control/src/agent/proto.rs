//! Messages and generated gRPC stubs of the SPIFFE Workload API, written from the SPIFFE Workload
//! API specification (§5 X.509-SVID profile, §6 JWT-SVID profile). The service has no proto
//! package, so its routes are `/SpiffeWorkloadAPI/<Method>`:
//!
//! ```proto
//! syntax = "proto3";
//!
//! service SpiffeWorkloadAPI {
//!   // X.509-SVID profile: full state at once, then again on every change.
//!   rpc FetchX509SVID(X509SVIDRequest) returns (stream X509SVIDResponse);
//!   rpc FetchX509Bundles(X509BundlesRequest) returns (stream X509BundlesResponse);
//!   // JWT-SVID profile (svidcar answers Unimplemented).
//!   rpc FetchJWTSVID(JWTSVIDRequest) returns (JWTSVIDResponse);
//!   rpc FetchJWTBundles(JWTBundlesRequest) returns (stream JWTBundlesResponse);
//!   rpc ValidateJWTSVID(ValidateJWTSVIDRequest) returns (ValidateJWTSVIDResponse);
//! }
//!
//! message X509SVIDRequest {}
//! message X509SVIDResponse {
//!   repeated X509SVID svids = 1;                 // required, the default SVID first
//!   repeated bytes crl = 2;                      // optional, DER
//!   map<string, bytes> federated_bundles = 3;    // foreign trust domain ID -> DER certificates
//! }
//! message X509SVID {
//!   string spiffe_id = 1;                        // required
//!   bytes x509_svid = 2;                         // required, DER chain, leaf first
//!   bytes x509_svid_key = 3;                     // required, unencrypted PKCS#8 DER
//!   bytes bundle = 4;                            // required, DER certificates of our trust domain
//!   string hint = 5;                             // optional, unique within one response
//! }
//! message X509BundlesRequest {}
//! message X509BundlesResponse {
//!   repeated bytes crl = 1;
//!   map<string, bytes> bundles = 2;              // trust domain ID -> DER certificates
//! }
//! message JWTSVIDRequest { repeated string audience = 1; string spiffe_id = 2; }
//! message JWTSVIDResponse { repeated JWTSVID svids = 1; }
//! message JWTSVID { string spiffe_id = 1; string svid = 2; string hint = 3; }
//! message JWTBundlesRequest {}
//! message JWTBundlesResponse { map<string, bytes> bundles = 1; }
//! message ValidateJWTSVIDRequest { string audience = 1; string svid = 2; }
//! message ValidateJWTSVIDResponse { string spiffe_id = 1; google.protobuf.Struct claims = 2; }
//! ```
//!
//! Bundles are the DER encodings of their certificates, concatenated. `claims` (a
//! `google.protobuf.Struct`) is left out of [`ValidateJwtSvidResponse`]: that RPC is never
//! answered with a message, and prost skips unknown fields on decoding.

#![allow(
    missing_docs,
    unused_qualifications,
    clippy::derive_partial_eq_without_eq
)]

use std::collections::HashMap;

#[derive(Clone, PartialEq, prost::Message)]
pub struct X509SvidRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct X509SvidResponse {
    #[prost(message, repeated, tag = "1")]
    pub svids: Vec<X509Svid>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub crl: Vec<Vec<u8>>,
    #[prost(map = "string, bytes", tag = "3")]
    pub federated_bundles: HashMap<String, Vec<u8>>,
}

/// `Debug` shows the ID and hint only: never key material.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct X509Svid {
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
    #[prost(bytes = "vec", tag = "2")]
    pub x509_svid: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub x509_svid_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub bundle: Vec<u8>,
    #[prost(string, tag = "5")]
    pub hint: String,
}

impl std::fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct X509BundlesRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct X509BundlesResponse {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub crl: Vec<Vec<u8>>,
    #[prost(map = "string, bytes", tag = "2")]
    pub bundles: HashMap<String, Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct JwtSvidRequest {
    #[prost(string, repeated, tag = "1")]
    pub audience: Vec<String>,
    #[prost(string, tag = "2")]
    pub spiffe_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct JwtSvidResponse {
    #[prost(message, repeated, tag = "1")]
    pub svids: Vec<JwtSvid>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct JwtSvid {
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
    #[prost(string, tag = "2")]
    pub svid: String,
    #[prost(string, tag = "3")]
    pub hint: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct JwtBundlesRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct JwtBundlesResponse {
    #[prost(map = "string, bytes", tag = "1")]
    pub bundles: HashMap<String, Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValidateJwtSvidRequest {
    #[prost(string, tag = "1")]
    pub audience: String,
    #[prost(string, tag = "2")]
    pub svid: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValidateJwtSvidResponse {
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
}

include!(concat!(env!("OUT_DIR"), "/.SpiffeWorkloadAPI.rs"));

/// The generated client (`SpiffeWorkloadAPIClient`).
pub use spiffe_workload_a_p_i_client as client;
/// The generated server (`SpiffeWorkloadAPIServer`, trait `SpiffeWorkloadAPI`).
pub use spiffe_workload_a_p_i_server as server;
