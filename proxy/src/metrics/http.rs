//! HTTP request metrics: requests by identities, method (a bounded set), status, gRPC status
//! and classification, and response latency.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::Method;
use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec};
use tokio::time::Instant;

use super::conn::ConnLabels;
use super::tracked::{Handle, Tracked};
use super::{counter_vec, IdLabels, MetricsError};

const REQUEST_LABELS: &[&str] = &[
    "direction",
    "source_id",
    "destination_id",
    "method",
    "status",
    "grpc_status",
    "classification",
];
const LATENCY_LABELS: &[&str] = &["direction", "source_id", "destination_id"];

/// The HTTP metrics.
pub struct HttpMetrics {
    requests: Tracked<IntCounterVec>,
    latency: Tracked<HistogramVec>,
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMetrics").finish_non_exhaustive()
    }
}

impl HttpMetrics {
    pub(super) fn new(_ids: Arc<IdLabels>) -> Result<Self, MetricsError> {
        Ok(Self {
            requests: Tracked::new(counter_vec(
                "svidcar_http_requests_total",
                "HTTP requests handled, by identities, method, status, gRPC status and classification (success, failure).",
                REQUEST_LABELS,
            )?),
            latency: Tracked::new(HistogramVec::new(
                HistogramOpts::new(
                    "svidcar_http_response_latency_seconds",
                    "Time from a request's arrival to its response headers.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0,
                ]),
                LATENCY_LABELS,
            )?),
        })
    }

    pub(super) fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![self.requests.collector(), self.latency.collector()]
    }

    pub(super) fn sweep(&self, cutoff: Instant) -> usize {
        self.requests.sweep(cutoff) + self.latency.sweep(cutoff)
    }

    /// A response went back to the client (the app's or the proxy's own); `handles` are the
    /// responding handler's.
    pub(crate) fn on_response(
        &self,
        handles: &ResponseHandles,
        conn: &ConnLabels,
        method: &Method,
        status: u16,
        grpc_status: &str,
        elapsed: Duration,
    ) {
        let method = method_label(method);
        let secs = elapsed.as_secs_f64();
        let mut latest = handles.0.lock().unwrap_or_else(PoisonError::into_inner);
        let like = latest.as_ref().filter(|l| {
            (l.method, l.status, l.grpc_status.as_str()) == (method, status, grpc_status)
        });
        if let Some((requests, latency)) =
            like.and_then(|l| Some((l.requests.get()?, l.latency.get()?)))
        {
            requests.inc();
            latency.observe(secs);
            return;
        }
        let [direction, source, destination, _tls] = conn.values();
        let status_label = status.to_string();
        let class = classify(status, grpc_status);
        let requests = self.requests.handle(&[
            direction,
            source,
            destination,
            method,
            &status_label,
            grpc_status,
            class,
        ]);
        let latency = self.latency.handle(&[direction, source, destination]);
        if let Some(c) = requests.get() {
            c.inc();
        }
        if let Some(h) = latency.get() {
            h.observe(secs);
        }
        *latest = Some(Latest {
            method,
            status,
            grpc_status: grpc_status.to_owned(),
            requests,
            latency,
        });
    }
}

/// Handles on the metrics of one handler's latest response, so that a run of like responses
/// (same method, status and gRPC status on one connection) takes no label lookup.
#[derive(Debug, Default)]
pub(crate) struct ResponseHandles(Mutex<Option<Latest>>);

#[derive(Debug)]
struct Latest {
    method: &'static str,
    status: u16,
    grpc_status: String,
    requests: Handle<IntCounter>,
    latency: Handle<Histogram>,
}

/// Standard methods by name, anything else as `other` (bounded cardinality).
fn method_label(m: &Method) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    KNOWN
        .into_iter()
        .find(|k| *k == m.as_str())
        .unwrap_or("other")
}

/// `failure` for 5xx and for a gRPC status other than OK; `success` otherwise (a 4xx is the
/// caller's problem, not a failure of the service).
fn classify(status: u16, grpc_status: &str) -> &'static str {
    if status >= 500 || !(grpc_status.is_empty() || grpc_status == "0") {
        "failure"
    } else {
        "success"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_bounded_and_failures_classified() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(
            method_label(&Method::from_bytes(b"PURGE").unwrap()),
            "other"
        );
        assert_eq!(classify(200, ""), "success");
        assert_eq!(classify(403, ""), "success");
        assert_eq!(classify(503, ""), "failure");
        assert_eq!(classify(200, "7"), "failure");
        assert_eq!(classify(200, "0"), "success");
    }
}
