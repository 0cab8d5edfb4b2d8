//! The proxy configuration: YAML parsing, validation (every refusal names its dotted field) and
//! the precedence of flags / environment over the file. Config is passed as data throughout; the
//! process environment is never touched.

use std::io::Write;
use std::net::Ipv6Addr;

use super::*;
use svidcar_identity::SpiffeId;

const FILE: &str = "/etc/svidcar/proxy.yaml";

fn yaml(text: &str) -> Result<ProxyConfig, ConfigError> {
    ProxyConfig::from_yaml(Path::new(FILE), text)
}

/// The message of a YAML document refused at parse time.
fn parse_error(text: &str) -> String {
    match yaml(text) {
        Err(ConfigError::Parse { path, message }) => {
            assert_eq!(path, Path::new(FILE));
            message
        }
        other => panic!("expected a parse error for {text:?}, got {other:?}"),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} is not an address: {e}"))
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

fn secs(n: u64) -> Dur {
    Dur(Duration::from_secs(n))
}

/// The smallest valid configuration: defaults plus the three identity files.
fn minimal() -> ProxyConfig {
    let mut c = ProxyConfig::default();
    c.identity.cert = Some("/run/svid/svid.pem".into());
    c.identity.key = Some("/run/svid/svid_key.pem".into());
    c.identity.bundle = Some("/run/svid/svid_bundle.pem".into());
    c
}

fn route(listen: &str, upstream: &str, server_id: &str) -> Route {
    Route {
        listen: addr(listen),
        upstream: addr(upstream),
        server_id: id(server_id),
        tunnel: None,
    }
}

/// The dotted field `validate` names for `c`.
fn invalid_field(c: &ProxyConfig) -> String {
    match c.validate() {
        Err((field, _)) => field,
        Ok(()) => panic!("expected {c:?} to be refused"),
    }
}

// ---------------------------------------------------------------------------------------------
// Defaults and YAML
// ---------------------------------------------------------------------------------------------

#[test]
fn defaults_are_the_documented_ones() {
    let c = ProxyConfig::default();
    assert_eq!(c.identity.cert, None);
    assert_eq!(c.identity.reload_interval, secs(1));
    assert!(c.outbound.enabled);
    assert_eq!(c.outbound.mode, Mode::Transparent);
    assert_eq!(c.outbound.listen, addr("127.0.0.1:15001"));
    assert_eq!(c.outbound.fallback, Fallback::Passthrough);
    assert!(c.outbound.routes.is_empty() && c.outbound.destinations.is_empty());
    assert!(c.inbound.enabled);
    assert_eq!(c.inbound.mode, Mode::Transparent);
    assert_eq!(c.inbound.listen, addr("0.0.0.0:15006"));
    assert_eq!(c.inbound.app, None);
    assert_eq!(c.inbound.app_host, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(c.inbound.mtls, MtlsMode::Strict);
    assert_eq!(c.inbound.detect_timeout, secs(1));
    assert_eq!(c.limits.connect_timeout, secs(5));
    assert_eq!(c.limits.handshake_timeout, secs(10));
    assert_eq!(c.limits.idle_timeout, secs(3600));
    assert_eq!(c.limits.max_connections, 10_000);
    assert_eq!(c.limits.drain_grace, secs(20));
    assert_eq!(c.limits.listen_backlog, 4096);
}

#[test]
fn defaults_round_trip_through_yaml() {
    let text = serde_yaml_ng::to_string(&ProxyConfig::default()).expect("serializing defaults");
    assert!(text.contains("idle_timeout: 1h"), "{text}");
    assert_eq!(
        yaml(&text).expect("parsing serialized defaults"),
        ProxyConfig::default()
    );
}

#[test]
fn an_empty_mapping_is_all_defaults() {
    assert_eq!(yaml("{}").expect("empty mapping"), ProxyConfig::default());
    assert_eq!(
        yaml("outbound: {}\ninbound: {}\n").expect("empty sections"),
        ProxyConfig::default()
    );
}

const FULL: &str = r#"
identity:
  cert: /run/svid/svid.pem
  key: /run/svid/svid_key.pem
  bundle: /run/svid/svid_bundle.pem
  reload_interval: 250ms
outbound:
  enabled: true
  mode: explicit
  listen: 127.0.0.1:16001
  routes:
    - listen: 127.0.0.1:9000
      upstream: 10.0.0.2:15006
      server_id: spiffe://example.org/ns/default/sa/backend
    - listen: "[::1]:9001"
      upstream: "[fd00::2]:15006"
      server_id: spiffe://example.org/db
  destinations:
    - cidr: 10.0.0.0/24
      port: 8080
      mode: mesh
      server_id: spiffe://example.org/api
    - cidr: 192.168.0.0/16
      mode: passthrough
  fallback: deny
inbound:
  enabled: true
  mode: explicit
  listen: 0.0.0.0:16006
  app: 127.0.0.1:8080
  app_host: 127.0.0.2
  mtls: permissive
  port_mtls:
    8080: strict
    9090: permissive
  detect_timeout: 2s
limits:
  connect_timeout: 3s
  handshake_timeout: 1m
  idle_timeout: 2h
  max_connections: 512
  drain_grace: 45s
  listen_backlog: 1024
"#;

fn full() -> ProxyConfig {
    ProxyConfig {
        identity: IdentityConfig {
            cert: Some("/run/svid/svid.pem".into()),
            key: Some("/run/svid/svid_key.pem".into()),
            bundle: Some("/run/svid/svid_bundle.pem".into()),
            reload_interval: Dur(Duration::from_millis(250)),
            ..IdentityConfig::default()
        },
        outbound: OutboundConfig {
            enabled: true,
            mode: Mode::Explicit,
            listen: addr("127.0.0.1:16001"),
            routes: vec![
                route(
                    "127.0.0.1:9000",
                    "10.0.0.2:15006",
                    "spiffe://example.org/ns/default/sa/backend",
                ),
                route("[::1]:9001", "[fd00::2]:15006", "spiffe://example.org/db"),
            ],
            destinations: vec![
                Destination {
                    cidr: "10.0.0.0/24".parse().expect("CIDR"),
                    port: Some(8080),
                    mode: DestMode::Mesh,
                    server_id: Some(id("spiffe://example.org/api")),
                },
                Destination {
                    cidr: "192.168.0.0/16".parse().expect("CIDR"),
                    port: None,
                    mode: DestMode::Passthrough,
                    server_id: None,
                },
            ],
            fallback: Fallback::Deny,
        },
        inbound: InboundConfig {
            enabled: true,
            mode: Mode::Explicit,
            listen: addr("0.0.0.0:16006"),
            app: Some(addr("127.0.0.1:8080")),
            app_host: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            mtls: MtlsMode::Permissive,
            port_mtls: BTreeMap::from([(8080, MtlsMode::Strict), (9090, MtlsMode::Permissive)]),
            detect_timeout: secs(2),
        },
        limits: Limits {
            connect_timeout: secs(3),
            handshake_timeout: secs(60),
            idle_timeout: secs(7200),
            max_connections: 512,
            drain_grace: secs(45),
            listen_backlog: 1024,
        },
        ..Default::default()
    }
}

#[test]
fn full_example_parses_to_the_expected_values() {
    let c = yaml(FULL).expect("full example");
    assert_eq!(c, full());
    // Spot checks that do not go through `full()`.
    assert_eq!(
        c.outbound.routes[1].listen.ip(),
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    );
    assert_eq!(c.inbound.mtls_for(8080), MtlsMode::Strict);
    assert_eq!(c.inbound.mtls_for(9090), MtlsMode::Permissive);
    assert_eq!(
        c.inbound.mtls_for(7070),
        MtlsMode::Permissive,
        "default mode"
    );
    assert_eq!(c.validate(), Ok(()));
    let paths = c.pem_paths().expect("all three paths");
    assert_eq!(paths.key, Path::new("/run/svid/svid_key.pem"));
}

#[test]
fn full_example_round_trips_through_yaml() {
    let text = serde_yaml_ng::to_string(&full()).expect("serializing");
    assert_eq!(yaml(&text).expect("re-parsing"), full());
}

#[test]
fn unknown_fields_are_refused_by_name() {
    for (text, field) in [
        ("identiy: {}\n", "identiy"),
        ("outbound:\n  lisen: 127.0.0.1:1\n", "lisen"),
        ("inbound:\n  port_mtl: {}\n", "port_mtl"),
        ("limits:\n  max_conns: 5\n", "max_conns"),
        ("identity:\n  certs: /x\n", "certs"),
        (
            "outbound:\n  routes:\n    - listen: 127.0.0.1:1\n      upstream: 127.0.0.1:2\n      server_id: spiffe://td/x\n      tls: false\n",
            "tls",
        ),
        (
            "outbound:\n  destinations:\n    - cidr: 10.0.0.0/8\n      mode: passthrough\n      ports: 80\n",
            "ports",
        ),
    ] {
        let msg = parse_error(text);
        assert!(msg.contains(&format!("unknown field `{field}`")), "{msg}");
    }
}

#[test]
fn bad_values_are_refused_naming_the_field() {
    for (text, field, detail) in [
        ("limits:\n  idle_timeout: 5x\n", "limits.idle_timeout", "5x"),
        (
            "identity:\n  reload_interval: 1.5s\n",
            "identity.reload_interval",
            "1.5s",
        ),
        (
            "inbound:\n  detect_timeout: 10\n",
            "inbound.detect_timeout",
            "missing unit",
        ),
        (
            "outbound:\n  routes:\n    - listen: 127.0.0.1:9000\n      upstream: backend:15006\n      server_id: spiffe://td/backend\n",
            "outbound.routes[0].upstream",
            "",
        ),
        (
            "outbound:\n  routes:\n    - listen: 127.0.0.1:9000\n      upstream: 10.0.0.2:15006\n      server_id: spiffe://TD/backend\n",
            // SpiffeId's Deserialize parses after reading the string, so serde_yaml_ng locates
            // the error at the entry: it names the route and the bad ID, not `.server_id`.
            "outbound.routes[0]",
            "\"spiffe://TD/backend\": trust domain characters",
        ),
        (
            "outbound:\n  destinations:\n    - cidr: 10.0.0.0/8\n      mode: passthrough\n    - cidr: 10.1.0.0/16\n      mode: mesh\n      server_id: spiffe://td/a/../b\n",
            "outbound.destinations[1]",
            "\"spiffe://td/a/../b\": path cannot contain dot segments",
        ),
        (
            "outbound:\n  destinations:\n    - cidr: 10.0.0.0/33\n      mode: passthrough\n",
            "outbound.destinations[0].cidr",
            "",
        ),
        ("inbound:\n  mtls: lax\n", "inbound.mtls", "lax"),
        ("inbound:\n  port_mtls:\n    80: lax\n", "inbound.port_mtls", "lax"),
        ("outbound:\n  mode: magic\n", "outbound.mode", "magic"),
        (
            "limits:\n  max_connections: -1\n",
            "limits.max_connections",
            "",
        ),
    ] {
        let msg = parse_error(text);
        assert!(msg.contains(field), "{field}: {msg}");
        assert!(msg.contains(detail), "{detail}: {msg}");
    }
}

#[test]
fn parse_errors_name_the_file() {
    let err = yaml("limits:\n  idle_timeout: soon\n").expect_err("bad duration");
    let text = err.to_string();
    assert!(text.starts_with(FILE), "{text}");
    assert!(text.contains("limits.idle_timeout"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

#[test]
fn minimal_config_is_valid() {
    assert_eq!(minimal().validate(), Ok(()));
}

#[test]
fn identity_files_are_required() {
    let (field, message) = ProxyConfig::default().validate().expect_err("no identity");
    assert_eq!(field, "identity.cert");
    assert!(message.contains("required"), "{message}");
    assert_eq!(ProxyConfig::default().pem_paths(), None);

    let mut c = minimal();
    c.identity.key = None;
    assert_eq!(invalid_field(&c), "identity.key");
    assert_eq!(c.pem_paths(), None);
    let mut c = minimal();
    c.identity.bundle = None;
    assert_eq!(invalid_field(&c), "identity.bundle");
}

#[test]
fn explicit_outbound_needs_routes() {
    let mut c = minimal();
    c.outbound.mode = Mode::Explicit;
    assert_eq!(invalid_field(&c), "outbound.routes");
    c.outbound.routes = vec![route("127.0.0.1:9000", "10.0.0.2:15006", "spiffe://td/x")];
    assert_eq!(c.validate(), Ok(()));
    // A disabled side is not checked.
    c.outbound.routes.clear();
    c.outbound.enabled = false;
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn mesh_destinations_need_a_server_id_and_passthrough_ones_none() {
    let dest = |s: &str| s.parse::<Destination>().expect("destination");
    let mut c = minimal();
    let mut mesh = dest("10.0.0.0/24=spiffe://td/api");
    mesh.server_id = None;
    c.outbound.destinations = vec![mesh];
    let (field, message) = c.validate().expect_err("mesh without server_id");
    assert_eq!(field, "outbound.destinations[0].server_id");
    assert!(message.contains("mesh"), "{message}");

    let mut pass = dest("10.9.0.0/16=passthrough");
    pass.server_id = Some(id("spiffe://td/api"));
    c.outbound.destinations = vec![dest("10.0.0.0/24=spiffe://td/api"), pass];
    assert_eq!(invalid_field(&c), "outbound.destinations[1].server_id");

    c.outbound.destinations = vec![
        dest("10.0.0.0/24=spiffe://td/api"),
        dest("10.9.0.0/16=passthrough"),
    ];
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn explicit_inbound_needs_the_app_address() {
    let mut c = minimal();
    c.inbound.mode = Mode::Explicit;
    assert_eq!(invalid_field(&c), "inbound.app");
    c.inbound.app = Some(addr("127.0.0.1:8080"));
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn durations_must_be_positive() {
    type Slot = fn(&mut ProxyConfig) -> &mut Dur;
    let slots: [(&str, Slot); 5] = [
        ("identity.reload_interval", |c| {
            &mut c.identity.reload_interval
        }),
        ("inbound.detect_timeout", |c| &mut c.inbound.detect_timeout),
        ("limits.connect_timeout", |c| &mut c.limits.connect_timeout),
        ("limits.handshake_timeout", |c| {
            &mut c.limits.handshake_timeout
        }),
        ("limits.idle_timeout", |c| &mut c.limits.idle_timeout),
    ];
    for (field, slot) in slots {
        let mut c = minimal();
        *slot(&mut c) = Dur(Duration::ZERO);
        let (got, message) = c.validate().expect_err(field);
        assert_eq!(got, field);
        assert!(message.contains("greater than zero"), "{message}");
        *slot(&mut c) = Dur(Duration::from_millis(1));
        assert_eq!(c.validate(), Ok(()), "{field}");
    }
}

#[test]
fn max_connections_must_be_at_least_one() {
    let mut c = minimal();
    c.limits.max_connections = 0;
    assert_eq!(invalid_field(&c), "limits.max_connections");
    c.limits.max_connections = 1;
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn the_policy_directory_must_be_a_readable_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = minimal();
    c.policy.dir = Some(tmp.path().to_owned());
    assert_eq!(c.validate(), Ok(()));

    let missing = tmp.path().join("nonexistent");
    c.policy.dir = Some(missing.clone());
    let (field, message) = c.validate().expect_err("missing directory");
    assert_eq!(field, "policy.dir");
    assert!(
        message.starts_with(&format!("{}: ", missing.display())),
        "{message}"
    );

    let file = tmp.path().join("policy.yaml");
    std::fs::write(&file, "").unwrap();
    c.policy.dir = Some(file.clone());
    let (field, message) = c.validate().expect_err("a file, not a directory");
    assert_eq!(field, "policy.dir");
    assert_eq!(message, format!("{}: not a directory", file.display()));
}

#[test]
fn listen_backlog_must_be_at_least_one() {
    let mut c = minimal();
    c.limits.listen_backlog = 0;
    assert_eq!(invalid_field(&c), "limits.listen_backlog");
    c.limits.listen_backlog = 1;
    assert_eq!(c.validate(), Ok(()));
    let msg = parse_error("limits:\n  listen_backlog: -1\n");
    assert!(msg.contains("limits.listen_backlog"), "{msg}");
}

#[test]
fn at_least_one_side_must_run() {
    let mut c = minimal();
    c.outbound.enabled = false;
    c.inbound.enabled = false;
    assert_eq!(invalid_field(&c), "outbound.enabled");
}

#[test]
fn duplicate_listen_addresses_name_the_second_setting() {
    let mut c = minimal();
    c.inbound.listen = c.outbound.listen;
    let (field, message) = c.validate().expect_err("same listener twice");
    assert_eq!(field, "inbound.listen");
    assert!(message.contains("outbound.listen"), "{message}");

    let mut c = minimal();
    c.outbound.mode = Mode::Explicit;
    c.outbound.routes = vec![
        route("127.0.0.1:9000", "10.0.0.2:15006", "spiffe://td/a"),
        route("127.0.0.1:9001", "10.0.0.3:15006", "spiffe://td/b"),
        route("127.0.0.1:9000", "10.0.0.4:15006", "spiffe://td/c"),
    ];
    let (field, message) = c.validate().expect_err("two routes on one port");
    assert_eq!(field, "outbound.routes[2].listen");
    assert!(message.contains("outbound.routes[0].listen"), "{message}");

    c.outbound.routes.truncate(2);
    c.inbound.listen = addr("127.0.0.1:9001");
    assert_eq!(invalid_field(&c), "inbound.listen");

    // In explicit mode the transparent listener is not opened, so it cannot clash.
    c.inbound.listen = c.outbound.listen;
    assert_eq!(c.validate(), Ok(()));

    let mut c = minimal();
    c.inbound.listen = c.admin.listen;
    let (field, message) = c.validate().expect_err("admin on the inbound port");
    assert_eq!(field, "admin.listen");
    assert!(message.contains("inbound.listen"), "{message}");
}

#[test]
fn port_zero_listeners_never_clash() {
    let mut c = minimal();
    c.outbound.listen = addr("127.0.0.1:0");
    c.inbound.listen = addr("127.0.0.1:0");
    assert_eq!(c.validate(), Ok(()));
}

// ---------------------------------------------------------------------------------------------
// Flags and environment over the file
// ---------------------------------------------------------------------------------------------

#[test]
fn no_flags_change_nothing() {
    let mut c = full();
    ProxyArgs::default().apply(&mut c);
    assert_eq!(c, full());
}

#[test]
fn flags_override_file_values() {
    let mut c = full();
    let args = ProxyArgs {
        cert: Some("/flags/cert.pem".into()),
        reload_interval: Some(secs(7)),
        outbound_mode: Some(Mode::Transparent),
        outbound_listen: Some(addr("127.0.0.1:25001")),
        routes: vec![route(
            "127.0.0.1:7000",
            "10.0.0.9:15006",
            "spiffe://td/flag",
        )],
        outbound_fallback: Some(Fallback::Passthrough),
        inbound_enabled: Some(false),
        inbound_app: Some(addr("127.0.0.1:7070")),
        mtls: Some(MtlsMode::Strict),
        port_mtls: vec![
            PortMtls(9090, MtlsMode::Strict),
            PortMtls(7070, MtlsMode::Permissive),
        ],
        idle_timeout: Some(secs(30)),
        max_connections: Some(3),
        ..Default::default()
    };
    args.apply(&mut c);

    assert_eq!(c.identity.cert, Some("/flags/cert.pem".into()));
    assert_eq!(
        c.identity.key,
        full().identity.key,
        "not given: file value kept"
    );
    assert_eq!(c.identity.reload_interval, secs(7));
    assert_eq!(c.outbound.mode, Mode::Transparent);
    assert_eq!(c.outbound.listen, addr("127.0.0.1:25001"));
    // Lists given as flags replace the file's.
    assert_eq!(c.outbound.routes, args.routes);
    assert_eq!(
        c.outbound.destinations,
        full().outbound.destinations,
        "not given"
    );
    assert_eq!(c.outbound.fallback, Fallback::Passthrough);
    assert!(!c.inbound.enabled);
    assert_eq!(c.inbound.app, Some(addr("127.0.0.1:7070")));
    assert_eq!(c.inbound.app_host, full().inbound.app_host);
    assert_eq!(c.inbound.mtls, MtlsMode::Strict);
    // Per-port modes merge: flags win per port, the file's other ports stay.
    assert_eq!(
        c.inbound.port_mtls,
        BTreeMap::from([
            (7070, MtlsMode::Permissive),
            (8080, MtlsMode::Strict),
            (9090, MtlsMode::Strict),
        ])
    );
    assert_eq!(c.inbound.detect_timeout, secs(2), "not given");
    assert_eq!(c.limits.idle_timeout, secs(30));
    assert_eq!(c.limits.connect_timeout, secs(3), "not given");
    assert_eq!(c.limits.max_connections, 3);
}

#[test]
fn every_flag_reaches_its_setting() {
    let dest: Destination = "10.0.0.0/8=passthrough".parse().expect("destination");
    let args = ProxyArgs {
        cert: Some("/c".into()),
        key: Some("/k".into()),
        bundle: Some("/b".into()),
        reload_interval: Some(secs(11)),
        outbound_enabled: Some(false),
        outbound_mode: Some(Mode::Explicit),
        outbound_listen: Some(addr("127.0.0.1:1001")),
        routes: vec![route("127.0.0.1:1002", "10.0.0.1:1003", "spiffe://td/r")],
        destinations: vec![dest.clone()],
        outbound_fallback: Some(Fallback::Deny),
        inbound_enabled: Some(false),
        inbound_mode: Some(Mode::Explicit),
        inbound_listen: Some(addr("127.0.0.1:1004")),
        inbound_app: Some(addr("127.0.0.1:1005")),
        inbound_app_host: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 1, 1))),
        mtls: Some(MtlsMode::Permissive),
        port_mtls: vec![PortMtls(1006, MtlsMode::Strict)],
        detect_timeout: Some(secs(12)),
        connect_timeout: Some(secs(13)),
        handshake_timeout: Some(secs(14)),
        idle_timeout: Some(secs(15)),
        max_connections: Some(16),
        drain_grace: Some(secs(17)),
        listen_backlog: Some(18),
        ..Default::default() // `config` is not a setting
    };
    let mut c = ProxyConfig::default();
    args.apply(&mut c);
    let expected = ProxyConfig {
        identity: IdentityConfig {
            cert: Some("/c".into()),
            key: Some("/k".into()),
            bundle: Some("/b".into()),
            reload_interval: secs(11),
            ..IdentityConfig::default()
        },
        outbound: OutboundConfig {
            enabled: false,
            mode: Mode::Explicit,
            listen: addr("127.0.0.1:1001"),
            routes: args.routes.clone(),
            destinations: vec![dest],
            fallback: Fallback::Deny,
        },
        inbound: InboundConfig {
            enabled: false,
            mode: Mode::Explicit,
            listen: addr("127.0.0.1:1004"),
            app: Some(addr("127.0.0.1:1005")),
            app_host: IpAddr::V4(Ipv4Addr::new(10, 1, 1, 1)),
            mtls: MtlsMode::Permissive,
            port_mtls: BTreeMap::from([(1006, MtlsMode::Strict)]),
            detect_timeout: secs(12),
        },
        limits: Limits {
            connect_timeout: secs(13),
            handshake_timeout: secs(14),
            idle_timeout: secs(15),
            max_connections: 16,
            drain_grace: secs(17),
            listen_backlog: 18,
        },
        ..Default::default()
    };
    assert_eq!(c, expected);
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

fn temp_yaml(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(text.as_bytes()).expect("writing temp file");
    f.flush().expect("flushing temp file");
    f
}

#[test]
fn load_reports_the_file_and_the_field() {
    let file = temp_yaml("limits:\n  max_connections: 100\n");
    let args = ProxyArgs {
        config: Some(file.path().to_owned()),
        ..Default::default()
    };
    let err = ProxyConfig::load(&args).expect_err("no identity files");
    match &err {
        ConfigError::Invalid { field, origin, .. } => {
            assert_eq!(field, "identity.cert");
            assert!(origin.contains(&*file.path().to_string_lossy()), "{origin}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&*file.path().to_string_lossy()), "{text}");
    assert!(text.contains("identity.cert"), "{text}");
}

#[test]
fn load_applies_flags_over_the_file_then_validates() {
    let file = temp_yaml(
        "identity:\n  key: /file/key.pem\n  bundle: /file/bundle.pem\nlimits:\n  max_connections: 100\n",
    );
    let args = ProxyArgs {
        config: Some(file.path().to_owned()),
        cert: Some("/flags/cert.pem".into()),
        bundle: Some("/flags/bundle.pem".into()),
        ..Default::default()
    };
    let c = ProxyConfig::load(&args).expect("flags complete the file");
    assert_eq!(c.identity.cert, Some("/flags/cert.pem".into()));
    assert_eq!(c.identity.key, Some("/file/key.pem".into()));
    assert_eq!(c.identity.bundle, Some("/flags/bundle.pem".into()));
    assert_eq!(c.limits.max_connections, 100);

    // A flag can also make a valid file invalid; the error still names file and field.
    let args = ProxyArgs {
        max_connections: Some(0),
        ..args
    };
    let text = ProxyConfig::load(&args).expect_err("zero").to_string();
    assert!(text.contains(&*file.path().to_string_lossy()), "{text}");
    assert!(text.contains("limits.max_connections"), "{text}");
}

#[test]
fn load_without_a_file_uses_flags_only() {
    let err = ProxyConfig::load(&ProxyArgs::default()).expect_err("no identity");
    assert!(
        matches!(&err, ConfigError::Invalid { origin, field, .. }
            if origin == "flags/environment" && field == "identity.cert"),
        "{err:?}"
    );
    let args = ProxyArgs {
        cert: Some("/c".into()),
        key: Some("/k".into()),
        bundle: Some("/b".into()),
        ..Default::default()
    };
    let c = ProxyConfig::load(&args).expect("flags only");
    let mut expected = ProxyConfig::default();
    args.apply(&mut expected);
    assert_eq!(c, expected);
}

#[test]
fn load_reports_unreadable_and_unparsable_files_by_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.yaml");
    let args = ProxyArgs {
        config: Some(missing.clone()),
        ..Default::default()
    };
    let err = ProxyConfig::load(&args).expect_err("missing file");
    assert!(
        matches!(&err, ConfigError::Read { path, .. } if *path == missing),
        "{err:?}"
    );
    assert!(err.to_string().contains(&*missing.to_string_lossy()));

    let file = temp_yaml("outbound:\n  lisen: 127.0.0.1:1\n");
    let args = ProxyArgs {
        config: Some(file.path().to_owned()),
        ..Default::default()
    };
    let err = ProxyConfig::load(&args).expect_err("unknown field");
    assert!(matches!(&err, ConfigError::Parse { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&*file.path().to_string_lossy()), "{text}");
    assert!(text.contains("lisen"), "{text}");
}

#[test]
fn identity_source_defaults_follow_what_is_configured() {
    use super::IdentitySource;
    use svidcar_identity::WorkloadEndpoint;
    let endpoint = WorkloadEndpoint::parse("unix:///run/spire/agent.sock").unwrap();

    // PEM files only: files.
    assert_eq!(
        minimal().identity.effective_source(),
        Some(IdentitySource::Files)
    );
    // A Workload API address only: workload_api, and no PEM file is needed.
    let mut c = minimal();
    c.identity.cert = None;
    c.identity.key = None;
    c.identity.bundle = None;
    c.identity.workload_api = Some(endpoint.clone());
    assert_eq!(
        c.identity.effective_source(),
        Some(IdentitySource::WorkloadApi)
    );
    assert_eq!(c.validate(), Ok(()));
    // Both: ambiguous until chosen.
    let mut both = minimal();
    both.identity.workload_api = Some(endpoint.clone());
    let (field, message) = both.validate().unwrap_err();
    assert_eq!(field, "identity.source");
    assert!(
        message.contains("choose files or workload_api"),
        "{message}"
    );
    both.identity.source = Some(IdentitySource::Files);
    assert_eq!(both.validate(), Ok(()));
    both.identity.source = Some(IdentitySource::WorkloadApi);
    assert_eq!(both.validate(), Ok(()));
    // workload_api chosen without an address.
    let mut c = ProxyConfig::default();
    c.identity.source = Some(IdentitySource::WorkloadApi);
    let (field, message) = c.validate().unwrap_err();
    assert_eq!(field, "identity.workload_api");
    assert!(message.contains("SPIFFE_ENDPOINT_SOCKET"), "{message}");

    // An SVID hint selects among the Workload API's SVIDs; PEM files hold one.
    both.identity.svid_hint = Some("backup".into());
    assert_eq!(both.validate(), Ok(()));
    both.identity.svid_hint = Some(String::new());
    assert_eq!(both.validate().unwrap_err().0, "identity.svid_hint");
    let mut files = minimal();
    files.identity.svid_hint = Some("backup".into());
    let (field, message) = files.validate().unwrap_err();
    assert_eq!(field, "identity.svid_hint");
    assert!(message.contains("PEM files hold one"), "{message}");
}

#[test]
fn identity_source_in_yaml_and_flags() {
    use super::IdentitySource;
    let c = ProxyConfig::from_yaml(
        Path::new("svidcar.yaml"),
        "identity:\n  source: workload_api\n  workload_api: unix:///run/spire/agent.sock\n",
    )
    .unwrap();
    assert_eq!(c.identity.source, Some(IdentitySource::WorkloadApi));
    assert_eq!(
        c.identity.workload_api.as_ref().unwrap().to_string(),
        "unix:///run/spire/agent.sock"
    );
    assert_eq!(c.validate(), Ok(()));
    let e = ProxyConfig::from_yaml(
        Path::new("svidcar.yaml"),
        "identity:\n  workload_api: unix://agent.sock\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("identity.workload_api") && e.contains("authority"),
        "{e}"
    );

    // --workload-api wins over SPIFFE_ENDPOINT_SOCKET, which is the fallback.
    let mut args = ProxyArgs {
        spiffe_endpoint_socket: Some("unix:///from/env.sock".parse().unwrap()),
        ..Default::default()
    };
    let mut c = ProxyConfig::default();
    args.apply(&mut c);
    assert_eq!(
        c.identity.workload_api.as_ref().unwrap().to_string(),
        "unix:///from/env.sock"
    );
    args.workload_api = Some("tcp://127.0.0.1:8081".parse().unwrap());
    args.identity_source = Some(IdentitySource::WorkloadApi);
    let mut c = ProxyConfig::default();
    args.apply(&mut c);
    assert_eq!(
        c.identity.workload_api.as_ref().unwrap().to_string(),
        "tcp://127.0.0.1:8081"
    );
    assert_eq!(c.identity.source, Some(IdentitySource::WorkloadApi));
}

// ---------------------------------------------------------------------------------------------
// Routes and destinations: the map form and the flag's string form
// ---------------------------------------------------------------------------------------------

#[test]
fn routes_and_destinations_take_the_map_or_the_string_form() {
    let c = yaml(
        "outbound:\n  routes:\n    - listen: 127.0.0.1:9000\n      upstream: 10.0.0.2:15006\n      server_id: spiffe://td/backend\n    - 127.0.0.1:9001=10.0.0.3:15006,spiffe://td/db\n  destinations:\n    - cidr: 10.0.0.0/24\n      port: 8080\n      mode: mesh\n      server_id: spiffe://td/api\n    - 10.0.0.0/24:8081=spiffe://td/api\n    - 192.168.0.0/16=passthrough\n",
    )
    .unwrap();
    assert_eq!(
        c.outbound.routes,
        vec![
            route("127.0.0.1:9000", "10.0.0.2:15006", "spiffe://td/backend"),
            route("127.0.0.1:9001", "10.0.0.3:15006", "spiffe://td/db"),
        ]
    );
    let d = &c.outbound.destinations;
    assert_eq!(d.len(), 3);
    assert_eq!((d[0].port, d[1].port), (Some(8080), Some(8081)));
    assert_eq!(
        (d[0].mode, d[2].mode),
        (DestMode::Mesh, DestMode::Passthrough)
    );
    assert_eq!(d[0].server_id, d[1].server_id);
    // What is written is read back (the map form).
    let back: ProxyConfig =
        serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn a_bad_route_or_destination_names_the_fields() {
    for (text, says) in [
        // A string that is not the flag's form: both forms are named.
        (
            "outbound:\n  routes:\n    - 127.0.0.1:9000\n",
            "`listen`, `upstream`, `server_id` and optionally `tunnel`",
        ),
        (
            "outbound:\n  routes:\n    - 127.0.0.1:9000\n",
            "LISTEN=UPSTREAM,SPIFFE_ID",
        ),
        (
            "outbound:\n  routes:\n    - 9000\n",
            "`listen`, `upstream`, `server_id` and optionally `tunnel`",
        ),
        (
            "outbound:\n  routes:\n    - listen: 127.0.0.1:9000\n      server_id: spiffe://td/x\n",
            "missing field `upstream`",
        ),
        (
            "outbound:\n  routes:\n    - 127.0.0.1:9000=10.0.0.2:15006,spiffe://TD/x\n",
            "SPIFFE ID",
        ),
        (
            "outbound:\n  destinations:\n    - 10.0.0.0/8\n",
            "`cidr`, `mode`",
        ),
        (
            "outbound:\n  destinations:\n    - cidr: 10.0.0.0/8\n",
            "missing field `mode`",
        ),
    ] {
        let msg = parse_error(text);
        assert!(msg.contains(says), "{text}: {msg}");
        assert!(msg.contains("outbound."), "{text}: {msg}");
    }
}

// ---------------------------------------------------------------------------------------------
// docs/config.md: the reference of every setting
// ---------------------------------------------------------------------------------------------

const CONFIG_DOC: &str = include_str!("../../../docs/config.md");

/// Every key of the configuration (as YAML writes it) has a row `section.key` in the
/// reference, so a new setting without documentation fails here.
#[test]
fn every_setting_is_in_the_config_reference() {
    let value = serde_yaml_ng::to_value(ProxyConfig::default()).unwrap();
    let serde_yaml_ng::Value::Mapping(sections) = value else {
        panic!("the configuration is not a map");
    };
    let mut missing = Vec::new();
    let mut seen = 0;
    for (section, body) in &sections {
        let section = section.as_str().unwrap();
        let serde_yaml_ng::Value::Mapping(keys) = body else {
            panic!("{section} is not a section");
        };
        for key in keys.keys() {
            let name = format!("{section}.{}", key.as_str().unwrap());
            seen += 1;
            if !CONFIG_DOC.contains(&format!("| `{name}` |")) {
                missing.push(name);
            }
        }
    }
    assert!(seen > 40, "only {seen} settings found");
    // The fields of a route and a destination entry, from a serialized example of each.
    let entry = |v: serde_yaml_ng::Value, what: &str| match v {
        serde_yaml_ng::Value::Mapping(m) => m
            .keys()
            .map(|k| format!("{what}.{}", k.as_str().unwrap()))
            .collect::<Vec<_>>(),
        other => panic!("{what}: {other:?}"),
    };
    let r = route("127.0.0.1:1", "127.0.0.1:2", "spiffe://td/x");
    let d: Destination = "10.0.0.0/8:80=spiffe://td/x".parse().unwrap();
    for name in entry(serde_yaml_ng::to_value(r).unwrap(), "outbound.routes[]")
        .into_iter()
        .chain(entry(
            serde_yaml_ng::to_value(d).unwrap(),
            "outbound.destinations[]",
        ))
    {
        if !CONFIG_DOC.contains(&format!("| `{name}` |")) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "missing from docs/config.md: {missing:?}"
    );
}

/// Every flag and environment variable of `svidcar run` is in the reference.
#[test]
fn every_flag_and_variable_is_in_the_config_reference() {
    use clap::Args;
    let cmd = ProxyArgs::augment_args(clap::Command::new("run"));
    let mut missing = Vec::new();
    for arg in cmd.get_arguments() {
        if let Some(long) = arg.get_long() {
            let flag = format!("`--{long}`");
            if !CONFIG_DOC.contains(&flag) {
                missing.push(flag);
            }
        }
        if let Some(env) = arg.get_env() {
            let env = format!("`{}`", env.to_string_lossy());
            if !CONFIG_DOC.contains(&env) {
                missing.push(env);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "missing from docs/config.md: {missing:?}"
    );
}
