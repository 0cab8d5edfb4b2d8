//! `svidcar.control.v1`: messages and gRPC stubs of the policy service
//! (`proto/svidcar/control/v1/policy.proto`).

#![allow(
    missing_docs,
    unused_qualifications,
    clippy::derive_partial_eq_without_eq
)]

include!(concat!(env!("OUT_DIR"), "/svidcar.control.v1.rs"));

/// The generated client (`PolicyServiceClient`).
pub use policy_service_client as client;
/// The generated server (`PolicyServiceServer`, trait `PolicyService`).
pub use policy_service_server as server;
