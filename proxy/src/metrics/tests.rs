use super::*;
use std::time::Duration;

use svidcar_identity::{CredentialStore, SpiffeId};

use crate::conn::{ConnRecord, Direction, NoTlsReason, Outcome, TlsStatus};
use crate::refusal::Refusal;

/// Mutual TLS with the record's client as the verified peer.
const MTLS: Option<TlsStatus> = None;

/// An inbound record: `client` is the verified peer (with [`MTLS`]), `server` is us.
fn rec(client: Option<&str>, server: Option<&str>, tls: Option<TlsStatus>) -> ConnRecord {
    let mut r = ConnRecord::new(Direction::Inbound, "127.0.0.1:1".parse().unwrap());
    r.local_id = server.map(|s| SpiffeId::parse(s).unwrap());
    r.tls = tls.unwrap_or_else(|| TlsStatus::MutualTls {
        peer: SpiffeId::parse(client.unwrap()).unwrap(),
        serial: svidcar_identity::tls::CertSerial::parse("1").unwrap(),
    });
    r
}

#[test]
fn connections_are_counted_with_identities() {
    let m = Metrics::new(Cardinality::default()).unwrap();
    let mut r = rec(Some("spiffe://td/a"), Some("spiffe://td/b"), MTLS);
    let labels = m.conn.labels(&r);
    let bytes = m.conn.on_open(&labels);
    use crate::copy::ByteObserver;
    bytes.a_to_b(4);
    bytes.a_to_b(6);
    bytes.b_to_a(20);
    r.outcome = Outcome::Complete;
    r.bytes_up = 10;
    r.bytes_down = 20;
    m.conn.on_close(&r, Some(&labels), Duration::from_millis(3));
    let mut refused = rec(None, Some("spiffe://td/b"), Some(TlsStatus::Unknown));
    refused.refuse(Refusal::PlaintextRefused);
    m.conn.on_close(&refused, None, Duration::ZERO);
    let text = m.render(&CredentialStore::default());
    assert!(text.contains(r#"svidcar_tcp_connections_opened_total{destination_id="spiffe://td/b",direction="inbound",source_id="spiffe://td/a",tls_mode="mutual_tls"} 1"#), "{text}");
    assert!(text.contains(r#"svidcar_tcp_received_bytes_total{destination_id="spiffe://td/b",direction="inbound",source_id="spiffe://td/a",tls_mode="mutual_tls"} 10"#));
    assert!(text.contains(
        r#"outcome="refused",reason="plaintext_refused",source_id="unknown",tls_mode="unknown"} 1"#
    ));
    assert!(text.contains("svidcar_svid_valid 0"));
    let none = rec(None, None, Some(TlsStatus::None(NoTlsReason::ServerFirst)));
    m.conn.on_open(&m.conn.labels(&none));
    assert!(m
        .render(&CredentialStore::default())
        .contains(r#"tls_mode="none"} 1"#));
}

#[test]
fn the_identity_cap_folds_new_ids_into_overflow() {
    let m = Metrics::new(Cardinality {
        max_ids: 2,
        idle: Duration::from_secs(600),
    })
    .unwrap();
    for i in 0..5 {
        let r = rec(
            Some(&format!("spiffe://td/c{i}")),
            Some("spiffe://td/server"),
            MTLS,
        );
        m.conn.on_open(&m.conn.labels(&r));
    }
    let text = m.render(&CredentialStore::default());
    assert!(text.contains(r#"source_id="overflow""#), "{text}");
    assert!(
        text.contains("svidcar_metrics_identity_overflow_total 4"),
        "{text}"
    );
    assert!(text.contains(r#"source_id="spiffe://td/c0""#));
    assert!(!text.contains(r#"source_id="spiffe://td/c2""#));
}

/// A handler's response handles: like responses count into the same series, another status
/// into its own, and after an idle sweep dropped the series the next response starts it anew.
#[tokio::test(start_paused = true)]
async fn response_handles_follow_the_status_and_survive_a_sweep() {
    let m = Metrics::new(Cardinality {
        max_ids: 10,
        idle: Duration::from_secs(60),
    })
    .unwrap();
    let labels = m
        .conn
        .labels(&rec(Some("spiffe://td/a"), Some("spiffe://td/b"), MTLS));
    let handles = ResponseHandles::default();
    let ms = Duration::from_millis(1);
    for status in [200, 200, 404, 200] {
        m.http
            .on_response(&handles, &labels, &hyper::Method::GET, status, "", ms);
    }
    let series =
        |status: u16| format!(r#"method="GET",source_id="spiffe://td/a",status="{status}"}}"#);
    let text = m.render(&CredentialStore::default());
    assert!(text.contains(&format!("{} 3", series(200))), "{text}");
    assert!(text.contains(&format!("{} 1", series(404))), "{text}");
    assert!(
        text.lines().any(
            |l| l.starts_with("svidcar_http_response_latency_seconds_count{")
                && l.ends_with(r#"source_id="spiffe://td/a"} 4"#)
        ),
        "{text}"
    );
    tokio::time::advance(Duration::from_secs(120)).await;
    assert!(m.sweep() > 0);
    let text = m.render(&CredentialStore::default());
    assert!(!text.contains(&series(200)), "swept: {text}");
    m.http
        .on_response(&handles, &labels, &hyper::Method::GET, 200, "", ms);
    let text = m.render(&CredentialStore::default());
    assert!(text.contains(&format!("{} 1", series(200))), "{text}");
}
