//! Operator mistakes the real binary reports plainly: a policy directory that does not exist,
//! decision filters that could never match, an empty query result, and top-level errors (one
//! `svidcar:` prefix, no colour codes when stderr is not a terminal).

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use support::svidcar;

#[test]
fn run_refuses_a_policy_directory_that_is_missing_or_not_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nonexistent");
    let file = tmp.path().join("policy.yaml");
    std::fs::write(&file, "").unwrap();
    // The identity files do not exist either: validation speaks before anything is loaded or
    // bound.
    let absent = tmp.path().join("absent.pem");
    let absent = absent.to_str().unwrap();
    for (dir, what) in [
        (&missing, "No such file or directory"),
        (&file, "not a directory"),
    ] {
        let dir = dir.to_str().unwrap();
        let (code, _, err) = svidcar(&[
            "run",
            "--cert",
            absent,
            "--key",
            absent,
            "--bundle",
            absent,
            "--policy-dir",
            dir,
        ]);
        assert_ne!(code, 0, "{err}");
        assert!(err.contains(&format!("policy.dir: {dir}: {what}")), "{err}");
    }
}

#[test]
fn decisions_refuses_filters_that_could_never_match_and_says_what_is_allowed() {
    let (code, out, err) = svidcar(&["decisions", "--action", "REJECT"]);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(err.contains("use ALLOW, DENY or AUDIT (any case)"), "{err}");

    let (code, out, err) = svidcar(&["decisions", "--identity", "example.org/foo"]);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(
        err.contains("use a SPIFFE ID (spiffe://example.org/ns/web) or a prefix ending in *"),
        "{err}"
    );
}

/// A control plane whose decision log holds nothing: answers `requests` queries with an empty
/// body; returns its address and the request lines it saw.
fn empty_control_plane(requests: usize) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..requests {
            let (mut stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            seen.push(line.trim_end().to_owned());
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap() == 0 || header == "\r\n" {
                    break;
                }
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .unwrap();
        }
        seen
    });
    (addr, seen)
}

#[test]
fn an_empty_decision_query_says_so_on_stderr_and_keeps_json_output_clean() {
    let (addr, seen) = empty_control_plane(2);
    let (code, out, err) = svidcar(&[
        "decisions",
        "--control",
        &addr,
        "--action",
        "deny",
        "--identity",
        "spiffe://example.org/ns/*",
    ]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert_eq!(err.trim(), "no decision matched");

    let (code, out, err) = svidcar(&["decisions", "--control", &addr, "--json"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert_eq!(err.trim(), "no decision matched");

    let seen = seen.join().unwrap();
    assert!(
        seen[0].contains("action=DENY")
            && seen[0].contains("identity=spiffe%3A%2F%2Fexample.org%2Fns%2F%2A"),
        "{seen:?}"
    );
}

#[test]
fn top_level_errors_have_one_prefix_and_no_colour_codes_off_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    std::fs::create_dir(&ca).unwrap();
    std::fs::set_permissions(&ca, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let registration = tmp.path().join("registration.yaml");
    std::fs::write(&registration, "entries: []\n").unwrap();
    // The agent logs (registration loaded), then cannot bind its admin listener (before it opens or creates the CA).
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for format in ["text", "json"] {
        let (code, _, err) = svidcar(&[
            "agent",
            "--log-format",
            format,
            "--socket",
            tmp.path().join(format!("{format}.sock")).to_str().unwrap(),
            "--ca-dir",
            ca.to_str().unwrap(),
            "--trust-domain",
            "example.org",
            "--registration",
            registration.to_str().unwrap(),
            "--admin-listen",
            &taken,
        ]);
        assert_ne!(code, 0, "{err}");
        assert!(
            err.contains("registration"),
            "the agent logged first: {err}"
        );
        assert!(
            !err.contains('\x1b'),
            "colour codes in {format} logs: {err:?}"
        );
        let last = err.lines().last().unwrap();
        assert!(
            last.starts_with("svidcar: --admin-listen: cannot listen on"),
            "{last}"
        );
        assert_eq!(err.matches("svidcar:").count(), 1, "{err}");
    }
}
