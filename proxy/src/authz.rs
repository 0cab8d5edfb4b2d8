//! Enforcement of authorization policy on inbound connections, in three parts: deciding with
//! the policy in force (`decide`), the registry of open connections re-checked when policy
//! changes (`registry`), and the decision log (`sink`). `Authz` ties them together.

mod aggregate;
mod decide;
mod registry;
mod sink;

use std::net::SocketAddr;
use std::sync::Arc;

use svidcar_api::DecisionEvent;
use svidcar_identity::{unix_now, SpiffeId};
use svidcar_policy::{Decision, PolicySet, Request};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{MtlsMode, PolicyConfig};
use crate::metrics::Metrics;
use decide::PolicyState;
pub(crate) use registry::ConnGuard;
use registry::OpenConns;
use sink::DecisionSink;

/// How long identical ALLOW decisions are folded into one logged and streamed event.
pub const DECISION_WINDOW: std::time::Duration = aggregate::WINDOW;

/// Policy state of a proxy.
#[derive(Debug)]
pub struct Authz {
    policy: PolicyState,
    open: OpenConns,
    sink: DecisionSink,
    metrics: Arc<Metrics>,
}

impl Authz {
    /// Creates the state. `source_configured` says whether a policy source (directory or
    /// control plane) will deliver policy; `events` receives decision events (dropped, and
    /// counted, when full).
    pub fn new(
        cfg: &PolicyConfig,
        source_configured: bool,
        events: Option<mpsc::Sender<DecisionEvent>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            policy: PolicyState::new(cfg, source_configured),
            open: OpenConns::default(),
            sink: DecisionSink::new(events, metrics.clone(), cfg.default),
            metrics,
        }
    }

    /// The version in force, if any policy arrived.
    pub fn version(&self) -> Option<String> {
        self.policy.version()
    }

    /// Unix time of the last installed policy (0 if none).
    pub fn updated_at(&self) -> i64 {
        self.policy.updated_at()
    }

    /// Whether the proxy still waits for its first policy.
    pub fn waiting_for_policy(&self) -> bool {
        self.policy.waiting_for_policy()
    }

    /// The mTLS mode policy sets for a port, if any.
    pub fn mtls_for(&self, workload: Option<&SpiffeId>, port: u16) -> Option<MtlsMode> {
        self.policy.mtls_for(workload, port)
    }

    /// Decides for one connection.
    pub fn decide(&self, workload: Option<&SpiffeId>, req: &Request<'_>) -> Decision {
        self.policy.decide(workload, req)
    }

    /// Installs a new policy set atomically, then re-checks every open inbound connection and
    /// closes those no longer allowed. Returns how many were closed.
    pub fn install(&self, set: PolicySet) -> usize {
        let version = set.version.clone();
        let set = self.policy.swap(set);
        self.metrics.policy.on_policy(&version, unix_now());
        let closed = self.open.recheck(&set, self.policy.default_policy());
        self.metrics.policy.on_policy_revoked(closed);
        tracing::info!(version, revoked = closed, "policy installed");
        closed
    }

    /// Registers an allowed connection for re-checks; `parent` is the drain token.
    pub(crate) fn register(
        &self,
        workload: &SpiffeId,
        req: &Request<'_>,
        parent: &CancellationToken,
    ) -> ConnGuard<'_> {
        self.open.register(workload, req, parent)
    }

    /// Sends the summaries of identical ALLOWs folded in windows that ended; call about once
    /// per [`DECISION_WINDOW`].
    pub fn flush_decisions(&self) {
        self.sink.flush(tokio::time::Instant::now());
    }

    /// Sends the summaries of every open window now (at shutdown).
    pub fn flush_all_decisions(&self) {
        self.sink
            .flush(tokio::time::Instant::now() + DECISION_WINDOW);
    }

    /// Logs a decision (target `svidcar::decision`), counts it, and streams it if a sink is
    /// attached. Never blocks: a full sink drops the event and counts the drop.
    pub fn record(
        &self,
        workload: Option<&SpiffeId>,
        source: SocketAddr,
        destination: SocketAddr,
        req: &Request<'_>,
        d: &Decision,
    ) {
        self.sink
            .record(self.version(), workload, source, destination, req, d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Cardinality;
    use svidcar_policy::Action;

    /// A TCP connection from `caller` to port 80.
    fn tcp_request(caller: &SpiffeId) -> Request<'_> {
        Request {
            source_id: Some(caller),
            source_ip: "10.0.0.1".parse().unwrap(),
            port: 80,
            method: None,
            path: None,
            host: None,
            headers: None,
        }
    }

    #[test]
    fn a_full_decision_buffer_drops_and_counts_instead_of_blocking() {
        let metrics = Metrics::new(Cardinality::default()).unwrap();
        let (tx, mut rx) = mpsc::channel(2);
        let authz = Authz::new(&PolicyConfig::default(), false, Some(tx), metrics.clone());
        let me = SpiffeId::parse("spiffe://td/server").unwrap();
        let caller = SpiffeId::parse("spiffe://td/client").unwrap();
        let req = tcp_request(&caller);
        let addr: SocketAddr = "10.0.0.1:5555".parse().unwrap();
        // Five different decisions (ports), so none is folded into another.
        for port in 80..85 {
            let req = Request {
                port,
                ..req.clone()
            };
            let d = authz.decide(Some(&me), &req);
            assert!(d.allowed, "default allow-all without a policy source");
            authz.record(Some(&me), addr, addr, &req, &d);
        }
        let text = metrics.render(&svidcar_identity::CredentialStore::default());
        assert!(
            text.contains("svidcar_decision_events_dropped_total 3"),
            "{text}"
        );
        let first = rx.try_recv().unwrap();
        assert_eq!(
            (first.action, first.source_id, first.rule),
            (Action::Allow, Some(caller), None)
        );
    }

    #[tokio::test]
    async fn identical_allows_are_streamed_once_then_as_a_counted_summary() {
        let metrics = Metrics::new(Cardinality::default()).unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        let authz = Authz::new(&PolicyConfig::default(), false, Some(tx), metrics.clone());
        let me = SpiffeId::parse("spiffe://td/server").unwrap();
        let caller = SpiffeId::parse("spiffe://td/client").unwrap();
        let req = Request {
            source_id: Some(&caller),
            source_ip: "10.0.0.1".parse().unwrap(),
            port: 80,
            method: Some("GET"),
            path: Some("/api/items"),
            host: None,
            headers: None,
        };
        let addr: SocketAddr = "10.0.0.1:5555".parse().unwrap();
        for _ in 0..100 {
            let d = authz.decide(Some(&me), &req);
            authz.record(Some(&me), addr, addr, &req, &d);
        }
        let first = rx.try_recv().unwrap();
        assert_eq!(
            (first.count, first.path.as_deref()),
            (1, Some("/api/items"))
        );
        assert!(rx.try_recv().is_err(), "the other 99 wait for the window");
        authz.flush_all_decisions();
        let summary = rx.try_recv().unwrap();
        assert_eq!((summary.action, summary.count), (Action::Allow, 99));
        // Every decision is still counted in the metrics, one by one.
        let text = metrics.render(&svidcar_identity::CredentialStore::default());
        assert!(
            text.contains(r#"svidcar_authz_decisions_total{action="ALLOW",destination_id="spiffe://td/server",policy="",rule="-1",source_id="spiffe://td/client"} 100"#),
            "{text}"
        );
    }

    /// Formatted log lines, collected.
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl tracing_subscriber::fmt::MakeWriter<'_> for Lines {
        type Writer = Lines;
        fn make_writer(&self) -> Lines {
            self.clone()
        }
    }

    /// The `svidcar::decision` log lines written while `f` runs.
    fn decision_log(f: impl FnOnce()) -> Vec<String> {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(lines.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter(|l| l.contains("svidcar::decision"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_decision_log_names_the_default_that_decided_not_an_empty_rule() {
        let me = SpiffeId::parse("spiffe://td/server").unwrap();
        let caller = SpiffeId::parse("spiffe://td/client").unwrap();
        let req = tcp_request(&caller);
        let addr: SocketAddr = "10.0.0.1:5555".parse().unwrap();
        let authz_with = |cfg: PolicyConfig, source_configured| {
            let metrics = Metrics::new(Cardinality::default()).unwrap();
            Authz::new(&cfg, source_configured, None, metrics)
        };

        // The configured default, for the first decision and for the folded summary.
        let authz = authz_with(PolicyConfig::default(), false);
        let lines = decision_log(|| {
            for _ in 0..3 {
                let d = authz.decide(Some(&me), &req);
                authz.record(Some(&me), addr, addr, &req, &d);
            }
            authz.flush_all_decisions();
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        for l in &lines {
            assert!(l.contains("default=allow-all"), "{l}");
            assert!(!l.contains("policy=") && !l.contains("rule="), "{l}");
        }
        assert!(lines[1].contains("count=2"), "{}", lines[1]);

        // The start-up default, before the first policy.
        let authz = authz_with(PolicyConfig::default(), true);
        let lines = decision_log(|| {
            let d = authz.decide(Some(&me), &req);
            assert!(!d.allowed);
            authz.record(Some(&me), addr, addr, &req, &d);
        });
        assert!(lines[0].contains("default=startup-deny"), "{lines:?}");

        // The configured deny default, once policy arrived that selects nothing.
        let cfg = PolicyConfig {
            default: svidcar_policy::DefaultPolicy::Deny,
            ..PolicyConfig::default()
        };
        let authz = authz_with(cfg, true);
        authz.install(PolicySet {
            version: "v1".into(),
            policies: Vec::new(),
        });
        let lines = decision_log(|| {
            let d = authz.decide(Some(&me), &req);
            authz.record(Some(&me), addr, addr, &req, &d);
        });
        assert!(lines[0].contains("default=deny"), "{lines:?}");

        // A rule decides: policy and rule, no default.
        let policies = svidcar_policy::parse_set([(
            "p.yaml",
            "kind: AuthorizationPolicy\nname: no-client\naction: DENY\nrules: [{}]\n",
        )])
        .unwrap();
        authz.install(PolicySet {
            version: "v2".into(),
            policies,
        });
        let lines = decision_log(|| {
            let d = authz.decide(Some(&me), &req);
            authz.record(Some(&me), addr, addr, &req, &d);
        });
        assert!(
            lines[0].contains("policy=no-client") && lines[0].contains("rule=0"),
            "{lines:?}"
        );
        assert!(!lines[0].contains("default="), "{lines:?}");
    }

    #[test]
    fn without_a_local_identity_everything_is_denied() {
        let metrics = Metrics::new(Cardinality::default()).unwrap();
        let authz = Authz::new(&PolicyConfig::default(), false, None, metrics);
        let req = Request {
            source_id: None,
            source_ip: "10.0.0.1".parse().unwrap(),
            port: 80,
            host: None,
            headers: None,
            method: None,
            path: None,
        };
        assert!(!authz.decide(None, &req).allowed);
    }
}
