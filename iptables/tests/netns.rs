//! Privileged tests: real iptables, both backends, in network namespaces of our own.
//!
//! Each test creates uniquely named namespaces (`svc-ipt-<pid>-<n>`, deleted on drop even when
//! the test panics) and re-runs this test binary inside one with `ip netns exec`: the ignored
//! test `in_namespace` plays the scenario named in its environment, after checking that it
//! really is in that namespace. Every command is bounded in time. Traffic only goes to
//! loopback or to addresses assigned inside these namespaces (192.0.2.0/24, 2001:db8::/64).
//!
//! Without root these tests fail when `CI` is set and are skipped with a notice otherwise.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use support::{
    arrival, connected, dial, listen, must, Netns, NETNS, PEER, PEER_V4, POD_V4, SCENARIO,
};
use svidcar_iptables::{
    apply, default_target, desired_rules, detect_backend, plan, read_rules, run_init, verify,
    Backend, BackendChoice, Family, InitArgs, Settings, Verification, VerifyError, TAG,
};

// ---- the tests (run on the host, each in fresh namespaces) ----

#[test]
fn nft_apply_reapply_cleanup() {
    in_fresh_namespace("lifecycle", "nft");
}

#[test]
fn legacy_apply_reapply_cleanup() {
    in_fresh_namespace("lifecycle", "legacy");
}

#[test]
fn nft_dry_run_changes_nothing() {
    in_fresh_namespace("dry_run", "nft");
}

#[test]
fn legacy_dry_run_changes_nothing() {
    in_fresh_namespace("dry_run", "legacy");
}

#[test]
fn nft_verify_and_real_traffic() {
    in_pod_with_peer("traffic", "nft");
}

#[test]
fn legacy_verify_and_real_traffic() {
    in_pod_with_peer("traffic", "legacy");
}

#[test]
fn another_mesh_is_refused_untouched() {
    in_fresh_namespace("conflict", "nft");
}

fn in_fresh_namespace(scenario: &str, backend: &str) {
    if !support::privileged() {
        return;
    }
    let ns = Netns::create();
    ns.run_scenario(scenario, &[("SVIDCAR_BACKEND", backend)]);
}

fn in_pod_with_peer(scenario: &str, backend: &str) {
    if !support::privileged() {
        return;
    }
    let (pod, peer) = Netns::pod_and_peer();
    pod.run_scenario(
        scenario,
        &[("SVIDCAR_BACKEND", backend), (PEER, &peer.name)],
    );
}

// ---- inside the namespace ----

#[test]
#[ignore = "runs only inside a namespace created by the other tests"]
fn in_namespace() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return; // run by hand with --ignored: nothing to do outside a test namespace
    };
    let expected = std::env::var(NETNS).unwrap();
    let here = must(Command::new("ip").args(["netns", "identify"]));
    assert_eq!(
        here.trim(),
        expected,
        "refusing to touch iptables outside the test namespace"
    );
    // SVIDCAR_BACKEND (from the parent) reaches InitArgs through its env binding.
    let backend = match args(&[]).backend {
        BackendChoice::Nft => Backend::Nft,
        BackendChoice::Legacy => Backend::Legacy,
        BackendChoice::Auto => panic!("the parent sets SVIDCAR_BACKEND"),
    };
    match scenario.as_str() {
        "lifecycle" => lifecycle(backend),
        "dry_run" => dry_run(backend),
        "traffic" => traffic(),
        "conflict" => conflict(backend),
        other => panic!("unknown scenario {other}"),
    }
}

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    init: InitArgs,
}

fn args(flags: &[&str]) -> InitArgs {
    Cli::try_parse_from(std::iter::once("init").chain(flags.iter().copied()))
        .unwrap()
        .init
}

/// `svidcar init <flags>`: its output, or a panic with the error and output.
fn init(flags: &[&str]) -> String {
    let mut out = Vec::new();
    let result = run_init(&args(flags), &mut out);
    let out = String::from_utf8(out).unwrap();
    if let Err(e) = result {
        panic!("init {flags:?} failed (exit {}): {e}\n{out}", e.exit_code());
    }
    out
}

/// Both families' full save output without comments (which carry timestamps).
fn snapshot(backend: Backend) -> String {
    Family::ALL
        .iter()
        .flat_map(|&f| {
            read_rules(backend, f)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Our rules (tagged, or in our chains) in `-A` text, chain by chain, in order.
fn ours(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut by_chain: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("-A ")) {
        if line.contains(TAG) || line.starts_with("-A SVIDCAR_") {
            let chain = line.split_whitespace().nth(1).unwrap().to_string();
            by_chain.entry(chain).or_default().push(line.to_string());
        }
    }
    by_chain
}

fn iptables(backend: Backend, family: Family, rule: &[&str]) {
    let name = match backend {
        Backend::Nft => "nft",
        Backend::Legacy => "legacy",
    };
    let program = format!("{}-{name}", family.tool());
    must(
        Command::new(program)
            .args(["-w", "5", "-t", "nat"])
            .args(rule),
    );
}

const FOREIGN: &str = "-A OUTPUT -d 198.51.100.0/24 -p tcp -j RETURN";

fn lifecycle(backend: Backend) {
    let settings = Settings {
        ipv6: true,
        ..Settings::default()
    };
    iptables(
        backend,
        Family::V4,
        &[
            "-A",
            "OUTPUT",
            "-d",
            "198.51.100.0/24",
            "-p",
            "tcp",
            "-j",
            "RETURN",
        ],
    );
    for family in Family::ALL {
        let before = read_rules(backend, family).unwrap();
        let p = plan(&settings, &before, family).unwrap();
        assert!(!p.is_empty());
        apply(backend, &p).unwrap();
        let after = read_rules(backend, family).unwrap();
        // What the kernel holds is exactly what the plan said, rule for rule.
        assert_eq!(ours(&after), ours(&p.restore_input()), "{family}:\n{after}");
        let want: Vec<String> = desired_rules(&settings, family)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(ours(&after), ours(&want.join("\n")), "{family}");
        assert!(
            plan(&settings, &after, family).unwrap().is_empty(),
            "{family}: not idempotent"
        );
    }
    assert!(read_rules(backend, Family::V4).unwrap().contains(FOREIGN));

    // Applying again through the CLI path changes nothing.
    let before = snapshot(backend);
    let out = init(&["--ipv6", "--no-verify"]);
    assert!(
        out.contains("IPv4: nat table already as planned, nothing to do"),
        "{out}"
    );
    assert!(
        out.contains("IPv6: nat table already as planned, nothing to do"),
        "{out}"
    );
    assert_eq!(snapshot(backend), before);

    // Our rules now make detection pick this backend.
    assert_eq!(
        detect_backend(BackendChoice::Auto).unwrap().backend,
        backend
    );

    let out = init(&["--ipv6", "--cleanup"]);
    assert!(
        out.contains("IPv4: applied") && out.contains("IPv6: applied"),
        "{out}"
    );
    for family in Family::ALL {
        let left = read_rules(backend, family).unwrap();
        assert!(
            !left.contains("SVIDCAR") && !left.contains(TAG),
            "{family}: traces left:\n{left}"
        );
    }
    assert!(
        read_rules(backend, Family::V4).unwrap().contains(FOREIGN),
        "cleanup removed a foreign rule"
    );
    let out = init(&["--ipv6", "--cleanup"]);
    assert_eq!(out.matches("nothing to do").count(), 2, "{out}");
}

fn dry_run(backend: Backend) {
    let untouched = snapshot(backend);
    let out = init(&["--ipv6", "--dry-run"]);
    assert!(
        out.contains("--noflush input:\n*nat\n:SVIDCAR_INBOUND - [0:0]\n"),
        "{out}"
    );
    assert!(out.ends_with("dry run: nothing was changed\n"), "{out}");
    assert_eq!(snapshot(backend), untouched, "a dry run changed the rules");

    // Installed with other settings: the dry run shows the refill, still touching nothing.
    init(&["--ipv6", "--no-verify", "--outbound-port=15002"]);
    let installed = snapshot(backend);
    let out = init(&["--ipv6", "--dry-run"]);
    assert!(
        out.contains(":SVIDCAR_OUTPUT - [0:0]\n") && out.contains("--to-ports 15001\n"),
        "{out}"
    );
    assert!(
        !out.contains("\n-A OUTPUT "),
        "jumps must not be duplicated:\n{out}"
    );
    assert_eq!(snapshot(backend), installed, "a dry run changed the rules");

    // And for real: the refill works on a live table and converges.
    init(&["--ipv6", "--no-verify"]);
    let now = snapshot(backend);
    assert!(
        now.contains("--to-ports 15001") && !now.contains("15002"),
        "{now}"
    );
    assert_eq!(
        now.matches("-j SVIDCAR_OUTPUT").count(),
        2,
        "one OUTPUT jump per family:\n{now}"
    );
}

fn conflict(backend: Backend) {
    iptables(backend, Family::V4, &["-N", "ISTIO_OUTPUT"]);
    iptables(
        backend,
        Family::V4,
        &["-A", "OUTPUT", "-p", "tcp", "-j", "ISTIO_OUTPUT"],
    );
    let before = snapshot(backend);
    let mut out = Vec::new();
    let e = run_init(&args(&["--no-verify"]), &mut out).unwrap_err();
    assert_eq!(e.exit_code(), 5, "{e}");
    assert!(
        e.to_string().contains("`-A OUTPUT -p tcp -j ISTIO_OUTPUT`"),
        "{e}"
    );
    assert_eq!(snapshot(backend), before);
}

const BRIEF: Duration = Duration::from_millis(300);
const PROXY_UID: u32 = 1337;

fn v4(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

fn traffic() {
    let peer = std::env::var(PEER).unwrap();
    // The full init, probe included, for both families.
    let out = init(&["--ipv6"]);
    assert!(
        out.contains("IPv4: verified: a connection to 192.0.2.1:9 arrived at 127.0.0.1:15001 with original destination 192.0.2.1:9"),
        "{out}"
    );
    assert!(
        out.contains("IPv6: verified: a connection to [2001:db8::1]:9 arrived at [::1]:15001"),
        "{out}"
    );

    let inbound = listen("0.0.0.0:15006".parse().unwrap());
    let outbound = listen("127.0.0.1:15001".parse().unwrap());

    // Inbound: the peer's connection to an app port lands on the inbound port.
    let app = v4(POD_V4, 8080);
    let c = dial(Some(&peer), None, app);
    assert_eq!(
        arrival(&inbound, Duration::from_secs(3)),
        Some(app),
        "inbound not captured"
    );
    assert!(connected(c));

    // Admin ports are never captured.
    let health = listen("0.0.0.0:15021".parse().unwrap());
    let c = dial(Some(&peer), None, v4(POD_V4, 15021));
    assert!(
        arrival(&health, Duration::from_secs(3)).is_some(),
        "health port unreachable"
    );
    assert!(connected(c));
    assert_eq!(arrival(&inbound, BRIEF), None, "admin port was captured");

    // Hairpin: the proxy calling its own pod address goes through the inbound side.
    let c = dial(None, Some(PROXY_UID), app);
    assert_eq!(
        arrival(&inbound, Duration::from_secs(3)),
        Some(app),
        "hairpin not captured"
    );
    assert!(connected(c));

    // The app calling its own pod address talks to itself directly.
    let direct = listen(v4(POD_V4, 8080));
    let c = dial(None, None, app);
    assert!(
        arrival(&direct, Duration::from_secs(3)).is_some(),
        "app → own address broken"
    );
    assert!(connected(c));
    assert_eq!(
        arrival(&inbound, BRIEF),
        None,
        "app → own address was captured"
    );

    // The app's outbound connection is captured with its original destination.
    let remote = v4(PEER_V4, 80);
    let c = dial(None, None, remote);
    assert_eq!(
        arrival(&outbound, Duration::from_secs(3)),
        Some(remote),
        "outbound not captured"
    );
    assert!(connected(c));

    // The proxy's own outbound connection is not (the peer refuses it: it reached the peer).
    let c = dial(None, Some(PROXY_UID), remote);
    assert!(!connected(c));
    assert_eq!(
        arrival(&outbound, BRIEF),
        None,
        "proxy traffic was captured (loop)"
    );

    // DNS over TCP is left alone by default.
    let c = dial(None, None, v4(PEER_V4, 53));
    assert!(!connected(c));
    assert_eq!(arrival(&outbound, BRIEF), None, "DNS was captured");
    drop(outbound);

    // Without our rules the probe fails, within its bounds.
    init(&["--ipv6", "--cleanup"]);
    let e = verify(
        &Settings::default(),
        default_target(&Settings::default(), Family::V4),
    )
    .unwrap_err();
    assert!(matches!(e, VerifyError::NotRedirected { .. }), "{e}");

    // With something already on the outbound port the probe steps aside.
    let _busy = listen("127.0.0.1:15001".parse().unwrap());
    let got = verify(
        &Settings::default(),
        default_target(&Settings::default(), Family::V4),
    )
    .unwrap();
    assert!(matches!(got, Verification::Skipped { .. }), "{got:?}");
}
