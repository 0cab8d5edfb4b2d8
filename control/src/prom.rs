//! What the agent's and the control plane's metrics share: the CA roots' gauges and the text
//! encoding.

use prometheus::{Encoder, IntGauge, IntGaugeVec, Registry, TextEncoder};

use crate::authority::Authority;

/// Sets `roots` to the bundle's size and `expiry{role}` to the active and prepared roots'
/// expiry (`expiry` must have been reset by the caller, under its scrape lock).
pub(crate) fn set_root_gauges(a: &Authority, roots: &IntGauge, expiry: &IntGaugeVec) {
    roots.set(a.bundle().len() as i64);
    expiry
        .with_label_values(&["active"])
        .set(a.active().not_after());
    if let Some(p) = a.prepared() {
        expiry.with_label_values(&["prepared"]).set(p.not_after());
    }
}

/// Every metric of `registry` in the Prometheus text format.
pub(crate) fn encode(registry: &Registry) -> String {
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail for well-formed families.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}
