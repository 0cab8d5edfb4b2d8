//! The mission end to end: two "pods" as two network namespaces joined by a veth pair, each with
//! an unmodified app (curl in one, a plain HTTP server in the other), `svidcar init` run in each,
//! and `svidcar run` as the proxy UID in each. curl calls the server pod's IP and port as if
//! there were no mesh; the bytes on the veth are TLS (a capture finds no plaintext of the
//! payload); the server proxy's access log shows the client's SPIFFE ID; a destination outside
//! the mesh (a third namespace) still works as passthrough.
//!
//! Needs root. Every namespace, process and file is removed on drop, even when the test fails;
//! every wait is bounded. Traffic goes only to addresses inside the namespaces created here.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure
#![allow(clippy::disallowed_types)] // a synchronous test: there is no tokio clock to pause

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::netns::{
    curl_in as curl, listening, root_or_skip, sh as run, wait_until as wait_for, World, PROXY_UID,
};
use support::Pki;
const CLIENT_ID: &str = "spiffe://example.org/ns/a/sa/client";
const SERVER_ID: &str = "spiffe://example.org/ns/b/sa/server";
const POD_A: &str = "10.251.0.1";
const POD_B: &str = "10.251.0.2";
const EXT_GW: &str = "10.252.0.1";
const EXT: &str = "10.252.0.2";

/// SVID files readable by the proxy user.
fn identity(pki: &Pki, dir: &Path, name: &str, id: &str) -> Vec<String> {
    let files = pki.write(name, &pki.issue(id));
    let owned = |p: &PathBuf| {
        let to = dir.join(p.file_name().expect("file name"));
        std::fs::copy(p, &to).expect("copy");
        run(&[
            "chown",
            &format!("{PROXY_UID}:{PROXY_UID}"),
            to.to_str().expect("utf-8"),
        ]);
        to.to_str().expect("utf-8").to_owned()
    };
    vec![
        "--cert".into(),
        owned(&files.cert),
        "--key".into(),
        owned(&files.key),
        "--bundle".into(),
        owned(&files.bundle),
    ]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn two_meshed_pods_in_network_namespaces() {
    if !root_or_skip("two_pods") {
        return;
    }
    let mut w = World::new("svc");
    let work = tempfile::tempdir().expect("tempdir");
    run(&["chmod", "755", work.path().to_str().expect("utf-8")]);
    let a = w.add_ns("a");
    let b = w.add_ns("b");
    let ext = w.add_ns("x");
    w.link(&a, "eth0", POD_A, &b, "eth0", POD_B);
    w.link(&a, "eth1", EXT_GW, &ext, "eth0", EXT);
    let svidcar = env!("CARGO_BIN_EXE_svidcar");

    // The server pod's app and an app outside the mesh: plain HTTP servers serving a secret.
    let secret = format!("secret-payload-{}", w.tag);
    let www = work.path().join("www");
    std::fs::create_dir(&www).expect("www");
    std::fs::write(
        www.join(format!("{secret}.txt")),
        format!("{secret} body\n"),
    )
    .expect("file");
    let www_s = www.to_str().expect("utf-8");
    w.spawn_in(
        &b,
        false,
        &[
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            "0.0.0.0",
            "--directory",
            www_s,
        ],
        &work.path().join("app-b.log"),
    );
    w.spawn_in(
        &ext,
        false,
        &[
            "python3",
            "-m",
            "http.server",
            "8081",
            "--bind",
            EXT,
            "--directory",
            www_s,
        ],
        &work.path().join("app-x.log"),
    );

    // `svidcar init` in each pod, as an init container would run it.
    for (ns, peer) in [(&a, POD_B), (&b, POD_A)] {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "timeout",
                "30",
                svidcar,
                "init",
                "--verify-target",
                &format!("{peer}:9"),
            ])
            .output()
            .expect("init");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "svidcar init in {ns}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("SVIDCAR_OUTPUT"),
            "init prints the plan it applied: {stdout}"
        );
    }

    // svidcar as the proxy UID in each pod.
    let pki = Pki::new("example.org");
    let mut a_args = vec!["--log-format", "json", "run", "--destination"];
    let dest = format!("{POD_B}/32={SERVER_ID}");
    a_args.push(&dest);
    let a_id = identity(&pki, work.path(), "a", CLIENT_ID);
    a_args.extend(a_id.iter().map(String::as_str));
    let mut full = vec![svidcar];
    full.extend(&a_args);
    w.spawn_in(&a, true, &full, &work.path().join("proxy-a.log"));
    let b_id = identity(&pki, work.path(), "b", SERVER_ID);
    let mut full = vec![svidcar, "--log-format", "json", "run"];
    full.extend(b_id.iter().map(String::as_str));
    w.spawn_in(&b, true, &full, &work.path().join("proxy-b.log"));
    for (ns, port) in [(&a, 15001), (&b, 15006), (&b, 8080), (&ext, 8081)] {
        wait_for(
            &format!("{ns} listening on {port}"),
            Duration::from_secs(20),
            || listening(ns, port),
        );
    }

    // Capture on the server pod's veth while the client app calls the server pod directly.
    let pcap = work.path().join("veth.pcap");
    w.spawn_in(
        &b,
        false,
        &[
            "tcpdump",
            "-i",
            "eth0",
            "--immediate-mode",
            "-U",
            "-s",
            "0",
            "-w",
            pcap.to_str().expect("utf-8"),
            "tcp",
        ],
        &work.path().join("tcpdump.log"),
    );
    wait_for("tcpdump", Duration::from_secs(10), || {
        std::fs::read_to_string(work.path().join("tcpdump.log"))
            .is_ok_and(|l| l.contains("listening"))
    });
    let (ok, body) = curl(&a, &format!("http://{POD_B}:8080/{secret}.txt"));
    assert!(ok, "curl through the mesh failed");
    assert_eq!(body, format!("{secret} body\n"));
    std::thread::sleep(Duration::from_millis(500));
    if let Some(c) = w.children.last_mut() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = c.wait();
    }
    let mut captured = Vec::new();
    std::fs::File::open(&pcap)
        .and_then(|mut f| f.read_to_end(&mut captured))
        .expect("capture");
    let tcpdump_log = std::fs::read_to_string(work.path().join("tcpdump.log")).unwrap_or_default();
    assert!(
        captured.len() > 2000,
        "capture too small to mean anything: {} bytes; tcpdump: {tcpdump_log}",
        captured.len()
    );
    assert!(
        contains(&captured, &[0x17, 0x03, 0x03]),
        "no TLS application data records on the wire"
    );
    assert!(
        !contains(&captured, secret.as_bytes()),
        "plaintext payload seen on the veth"
    );

    // The call was HTTP: both proxies served it per request (one access record each, the
    // server's naming the verified caller). It rode the pooled tunnel to pod B's port 15008
    // (which `svidcar init` leaves uncaptured) as an HTTP/2 request of its own, not on a
    // connection of its own: both records say `carrier: tunnel`.
    let inbound = format!("\"client.id\":\"{CLIENT_ID}\"");
    let request_record = |log: &str, direction: &str, client: &str| {
        std::fs::read_to_string(work.path().join(log)).is_ok_and(|l| {
            l.lines().any(|x| {
                x.contains("\"http.method\":\"GET\"")
                    && x.contains("\"http.status\":200")
                    && x.contains(&format!("\"direction\":\"{direction}\""))
                    && x.contains("\"carrier\":\"tunnel\"")
                    && x.contains(client)
            })
        })
    };
    wait_for(
        "per-request access records",
        Duration::from_secs(10),
        || {
            request_record("proxy-b.log", "inbound", &inbound)
                && request_record(
                    "proxy-a.log",
                    "outbound",
                    &format!("\"server.id\":\"{SERVER_ID}\""),
                )
        },
    );

    // A destination outside the mesh works as passthrough.
    let (ok, body) = curl(&a, &format!("http://{EXT}:8081/{secret}.txt"));
    assert!(ok, "passthrough failed");
    assert_eq!(body, format!("{secret} body\n"));
    let passthrough = format!("\"dst.addr\":\"{EXT}:8081\"");
    wait_for("passthrough access log", Duration::from_secs(10), || {
        std::fs::read_to_string(work.path().join("proxy-a.log")).is_ok_and(|l| {
            l.lines()
                .any(|x| x.contains(&passthrough) && x.contains("passthrough_destination"))
        })
    });
}
