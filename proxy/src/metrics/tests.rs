use super::*;
use crate::conn::{Direction, NoTlsReason};

fn rec(client: Option<&str>, server: Option<&str>, tls: TlsStatus) -> ConnRecord {
    let mut r = ConnRecord::new(Direction::Inbound, "127.0.0.1:1".parse().unwrap());
    r.client_id = client.map(|s| SpiffeId::parse(s).unwrap());
    r.server_id = server.map(|s| SpiffeId::parse(s).unwrap());
    r.tls = tls;
    r
}

#[test]
fn connections_are_counted_with_identities() {
    let m = Metrics::new(Cardinality::default()).unwrap();
    let mut r = rec(
        Some("spiffe://td/a"),
        Some("spiffe://td/b"),
        TlsStatus::MutualTls,
    );
    let bytes = m.on_open(&r);
    use crate::copy::ByteObserver;
    bytes.a_to_b(4);
    bytes.a_to_b(6);
    bytes.b_to_a(20);
    r.outcome = "complete";
    r.bytes_up = 10;
    r.bytes_down = 20;
    m.on_close(&r, Duration::from_millis(3));
    let mut refused = rec(None, Some("spiffe://td/b"), TlsStatus::Unknown);
    refused.refuse("plaintext_refused", "x");
    m.on_close(&refused, Duration::ZERO);
    let text = m.render(&CredentialStore::default());
    assert!(text.contains(r#"svidcar_tcp_connections_opened_total{destination_id="spiffe://td/b",direction="inbound",source_id="spiffe://td/a",tls_mode="mutual_tls"} 1"#), "{text}");
    assert!(text.contains(r#"svidcar_tcp_received_bytes_total{destination_id="spiffe://td/b",direction="inbound",source_id="spiffe://td/a",tls_mode="mutual_tls"} 10"#));
    assert!(text.contains(
        r#"outcome="refused",reason="plaintext_refused",source_id="unknown",tls_mode="unknown"} 1"#
    ));
    assert!(text.contains("svidcar_svid_valid 0"));
    let none = rec(None, None, TlsStatus::None(NoTlsReason::ServerFirst));
    m.on_open(&none);
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
            TlsStatus::MutualTls,
        );
        m.on_open(&r);
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
