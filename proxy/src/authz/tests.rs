//! `Authz` as a whole: deciding, recording, and closing what policy or revocation no longer
//! allows.

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

#[test]
fn identical_denials_travel_one_by_one() {
    let metrics = Metrics::new(Cardinality::default()).unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    // A policy source is configured and has sent nothing yet: the start-up default denies.
    let authz = Authz::new(&PolicyConfig::default(), true, Some(tx), metrics.clone());
    let me = SpiffeId::parse("spiffe://td/server").unwrap();
    let caller = SpiffeId::parse("spiffe://td/client").unwrap();
    let req = tcp_request(&caller);
    let addr: SocketAddr = "10.0.0.1:5555".parse().unwrap();
    for _ in 0..5 {
        let d = authz.decide(Some(&me), &req);
        assert!(!d.allowed);
        authz.record(Some(&me), addr, addr, &req, &d);
    }
    authz.flush_all_decisions();
    let events: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.action, e.count))
            .collect::<Vec<_>>(),
        [(Action::Deny, 1); 5]
    );
    let text = metrics.render(&svidcar_identity::CredentialStore::default());
    assert!(
        text.contains(r#"svidcar_authz_decisions_total{action="DENY",destination_id="spiffe://td/server",policy="",rule="-1",source_id="spiffe://td/client"} 5"#),
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

/// Inbound ends: `caller` (with certificate `serial`) to us, `me`.
fn inbound(me: &SpiffeId, caller: &SpiffeId, serial: &str) -> Ends {
    Ends {
        direction: crate::conn::Direction::Inbound,
        local: Some(me.clone()),
        peer: Some(caller.clone()),
        peer_serial: Some(svidcar_identity::tls::CertSerial::parse(serial).unwrap()),
        client: "10.0.0.1:5555".parse().unwrap(),
        dst: "127.0.0.1:80".parse().unwrap(),
    }
}

fn revocation(id: &str, serial: &str) -> Revocation {
    Revocation {
        spiffe_id: id.into(),
        serial: serial.into(),
        reason: "key leaked".into(),
        ..Default::default()
    }
}

#[test]
fn revocations_refuse_new_close_open_and_every_one_is_a_deny_event() {
    let metrics = Metrics::new(Cardinality::default()).unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let authz = Authz::new(&PolicyConfig::default(), false, Some(tx), metrics);
    let me = SpiffeId::parse("spiffe://td/server").unwrap();
    let bad = SpiffeId::parse("spiffe://td/bad").unwrap();
    let good = SpiffeId::parse("spiffe://td/good").unwrap();
    let drain = CancellationToken::new();
    let from_bad = authz.register(inbound(&me, &bad, "1"), true, &drain);
    let leaked = authz.register(inbound(&me, &good, "aa"), false, &drain);
    let fresh = authz.register(inbound(&me, &good, "ab"), true, &drain);

    assert_eq!(
        authz.install_revocations(&[revocation("spiffe://td/bad", ""), revocation("", "AA")]),
        2
    );
    assert!(from_bad.cancel.is_cancelled() && leaked.cancel.is_cancelled());
    assert!(
        !fresh.cancel.is_cancelled(),
        "another SVID of the same ID stays"
    );
    assert_eq!(
        from_bad.closed_by().map(|r| r.to_string()),
        Some("identity revoked: spiffe://td/bad (key leaked)".into())
    );
    let mut closures: Vec<_> = (0..2).map(|_| rx.try_recv().unwrap()).collect();
    closures.sort_by(|a, b| a.reason.cmp(&b.reason).reverse());
    assert_eq!(closures[0].action, Action::Deny);
    assert_eq!(closures[0].source_id.as_ref(), Some(&bad));
    assert_eq!(closures[0].destination_id.as_ref(), Some(&me));
    assert!(
        closures[1].reason.contains("serial aa (spiffe://td/good)"),
        "{}",
        closures[1].reason
    );

    // New connections: refused with a DENY event; the fresh SVID passes.
    let why = authz.refuse_revoked(&inbound(&me, &bad, "2")).unwrap();
    assert_eq!(why.label(), "identity_revoked");
    assert_eq!(rx.try_recv().unwrap().action, Action::Deny);
    assert!(authz.refuse_revoked(&inbound(&me, &good, "ab")).is_none());
    assert!(rx.try_recv().is_err());

    // Lifted: the next (complete) set no longer lists it.
    assert_eq!(authz.install_revocations(&[]), 0);
    assert!(authz.refuse_revoked(&inbound(&me, &bad, "2")).is_none());
}

#[test]
fn a_policy_change_that_closes_a_connection_is_a_deny_event() {
    let metrics = Metrics::new(Cardinality::default()).unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let authz = Authz::new(&PolicyConfig::default(), false, Some(tx), metrics);
    let me = SpiffeId::parse("spiffe://td/server").unwrap();
    let caller = SpiffeId::parse("spiffe://td/client").unwrap();
    let drain = CancellationToken::new();
    let tcp = authz.register(inbound(&me, &caller, "1"), true, &drain);
    let http = authz.register(inbound(&me, &caller, "1"), false, &drain);
    let policies = svidcar_policy::parse_set([(
        "p.yaml",
        "kind: AuthorizationPolicy\nname: no-client\naction: DENY\nrules: [{}]\n",
    )])
    .unwrap();
    let closed = authz.install(PolicySet {
        version: "v2".into(),
        policies,
    });
    assert_eq!(closed, 1, "HTTP connections are authorized per request");
    assert!(tcp.cancel.is_cancelled() && !http.cancel.is_cancelled());
    assert_eq!(tcp.closed_by(), Some(Refusal::PolicyRevoked));
    let e = rx.try_recv().unwrap();
    assert_eq!(
        (
            e.action,
            e.rule.map(|r| r.to_string()),
            e.policy_version.as_str()
        ),
        (Action::Deny, Some("no-client#rule0".into()), "v2")
    );
    assert!(
        e.reason
            .starts_with("open connection closed by a new policy"),
        "{}",
        e.reason
    );
}
