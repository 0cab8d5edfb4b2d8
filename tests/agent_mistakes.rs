//! Operator mistakes with `svidcar agent`, each met with an error that names the file or setting
//! and what to do, before anything is created: a trust domain that is not the CA's, a
//! registration file with several errors (all listed, also by `svidcar agent check`), a CA
//! directory or key open to others, a busy socket or admin port. The agent runs as the binary.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use svidcar_control::authority::Authority;
use svidcar_identity::TrustDomain;

use support::svidcar;

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    /// A private, empty CA directory and a valid registration file for example.org.
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let s = Setup { dir };
        std::fs::create_dir(s.ca()).unwrap();
        s.chmod(&s.ca(), 0o700);
        s.register(
            "entries:\n  - { spiffe_id: spiffe://example.org/a, selectors: [\"unix:uid:0\"] }\n",
        );
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca(&self) -> PathBuf {
        self.path("ca")
    }

    fn socket(&self) -> PathBuf {
        self.path("sock/agent.sock")
    }

    fn chmod(&self, path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn register(&self, yaml: &str) {
        std::fs::write(self.path("registration.yaml"), yaml).unwrap();
    }

    /// An example.org CA in the CA directory, as a first start leaves it.
    fn create_ca(&self) {
        let td = TrustDomain::parse("example.org").unwrap();
        let hour = Duration::from_secs(3600);
        Authority::open(&self.ca(), Some(&td), hour * 24 * 365, hour).unwrap();
    }

    /// The CA directory's names and contents.
    fn ca_state(&self) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<_> = std::fs::read_dir(self.ca())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).unwrap())
            })
            .collect();
        out.sort();
        out
    }

    /// The flags of a start, with `extra` after them.
    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<String> {
        let mut a: Vec<String> = [
            "--socket",
            self.socket().to_str().unwrap(),
            "--ca-dir",
            self.ca().to_str().unwrap(),
            "--registration",
            self.path("registration.yaml").to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    /// Runs `svidcar agent <args>`, which must fail before serving; returns stderr.
    fn agent_fails(&self, extra: &[&str]) -> String {
        let args = self.args(extra);
        let mut all = vec!["agent"];
        all.extend(args.iter().map(String::as_str));
        let (code, _, err) = svidcar(&all);
        assert_ne!(code, 0, "the agent started: {err}");
        err
    }

    /// Runs `svidcar agent check <args>`; returns the exit code, stdout and stderr.
    fn check(&self, extra: &[&str]) -> (i32, String, String) {
        let args = self.args(extra);
        let mut all = vec!["agent", "check"];
        all.extend(args.iter().map(String::as_str));
        svidcar(&all)
    }
}

#[test]
fn a_trust_domain_other_than_the_cas_blames_the_flag_not_the_registration() {
    let s = Setup::new();
    s.create_ca();
    let before = s.ca_state();
    let err = s.agent_fails(&["--trust-domain", "other.org"]);
    let ca = s.ca().display().to_string();
    assert!(
        err.contains(&format!(
            "the CA in {ca} is for trust domain example.org, but --trust-domain (trust_domain) says other.org"
        )) && err.contains("drop --trust-domain"),
        "{err}"
    );
    assert!(
        !err.contains("registration.yaml"),
        "blames the registration: {err}"
    );
    assert_eq!(s.ca_state(), before);
    assert!(!s.socket().exists());
    // The same from the lint, which exits 1.
    let (code, _, err) = s.check(&["--trust-domain", "other.org"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is for trust domain example.org"), "{err}");
    // Without the flag the CA's trust domain is used, and the entries fit it.
    let (code, out, err) = s.check(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("holds example.org's CA"), "{out}");
}

#[test]
fn every_registration_error_is_listed_by_start_and_by_check() {
    let s = Setup::new();
    s.register(
        "entries:
  - { spiffe_id: spiffe://example.org/a, selectors: [\"unix:uid:root\"] }
  - { spiffe_id: spiffe://example.org/b, selectors: [\"unix:uid:1\"] }
  - { spiffe_id: spiffe://example.org/c, selectors: [], hint: x }
  - { spiffe_id: spiffe://example.org/d, selectors: [\"unix:uid:2\"], hints: x }
",
    );
    let wants = [
        "entries[0] (spiffe://example.org/a): selectors[0]: selector \"unix:uid:root\": uid must be a number",
        "entries[2] (spiffe://example.org/c): selectors: at least one is required",
        "entries[3]: unknown field `hints`",
    ];
    let err = s.agent_fails(&["--trust-domain", "example.org"]);
    assert!(err.contains("registration.yaml: 3 problems:"), "{err}");
    for want in wants {
        assert!(err.contains(want), "{want}: {err}");
    }
    assert!(
        s.ca_state().is_empty(),
        "no CA created for a bad registration"
    );

    let (code, out, err) = s.check(&["--trust-domain", "example.org", "--svid-ttl", "1s"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.starts_with("svidcar agent check: 4 problems:\n"),
        "{err}"
    );
    assert!(err.contains("svid_ttl: must be at least 2s"), "{err}");
    for want in wants {
        assert!(err.contains(want), "{want}: {err}");
    }
    s.register(
        "entries:\n  - { spiffe_id: spiffe://example.org/a, selectors: [\"unix:uid:0\"] }\n",
    );
    let (code, out, err) = s.check(&["--trust-domain", "example.org"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("svidcar agent check: ok"), "{out}");
    assert!(
        out.contains("a CA for example.org is created on first start"),
        "{out}"
    );
    assert!(s.ca_state().is_empty(), "check creates no CA");
    assert!(!s.socket().exists(), "check binds no socket");
}

#[test]
fn a_ca_directory_or_key_open_to_others_is_refused() {
    let s = Setup::new();
    s.chmod(&s.ca(), 0o755);
    let err = s.agent_fails(&["--trust-domain", "example.org"]);
    let ca = s.ca().display().to_string();
    assert!(
        err.contains(&ca)
            && err.contains("(mode 0755)")
            && err.contains(&format!("chmod 700 {ca}")),
        "{err}"
    );
    assert!(s.ca_state().is_empty());
    let (code, _, err) = s.check(&["--trust-domain", "example.org"]);
    assert_eq!(code, 1);
    assert!(err.contains("(mode 0755)"), "{err}");

    s.chmod(&s.ca(), 0o700);
    s.create_ca();
    let key = s.ca().join("ca.key");
    s.chmod(&key, 0o640);
    let err = s.agent_fails(&[]);
    let key = key.display().to_string();
    assert!(
        err.contains(&key)
            && err.contains("(mode 0640)")
            && err.contains(&format!("chmod 600 {key}")),
        "{err}"
    );
}

#[test]
fn a_busy_socket_or_admin_port_fails_before_a_ca_is_created() {
    let s = Setup::new();
    std::fs::create_dir(s.path("sock")).unwrap();
    let live = std::os::unix::net::UnixListener::bind(s.socket()).unwrap();
    let err = s.agent_fails(&["--trust-domain", "example.org"]);
    assert!(
        err.contains("another process is serving on this socket"),
        "{err}"
    );
    assert!(
        s.ca_state().is_empty(),
        "a CA was created: {:?}",
        s.ca_state()
    );
    drop(live);
    std::fs::remove_file(s.socket()).unwrap();

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let err = s.agent_fails(&["--trust-domain", "example.org", "--admin-listen", &taken]);
    assert!(
        err.contains("--admin-listen") && err.contains(&taken),
        "{err}"
    );
    assert!(
        s.ca_state().is_empty(),
        "a CA was created: {:?}",
        s.ca_state()
    );
    assert!(!s.socket().exists());

    // With a CA in place, a failed start leaves it exactly as it was.
    s.create_ca();
    let before = s.ca_state();
    let err = s.agent_fails(&["--admin-listen", &taken]);
    assert!(err.contains("--admin-listen"), "{err}");
    assert_eq!(s.ca_state(), before);
}
