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

impl Revocation {
    /// Whether the revocation is in force at `now` (Unix seconds): it has no `until`, or its
    /// `until` is still ahead.
    pub fn in_force_at(&self, now: i64) -> bool {
        self.until == 0 || now < self.until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_lapses_at_its_until() {
        let mut r = Revocation {
            spiffe_id: "spiffe://td/a".into(),
            ..Default::default()
        };
        assert!(r.in_force_at(i64::MAX));
        r.until = 100;
        assert!(r.in_force_at(99));
        assert!(!r.in_force_at(100));
    }
}
