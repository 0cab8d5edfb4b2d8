//! Operator mistakes with paths, each met with a message that names the path the operator gave
//! and says what to do: `svidcar agent --socket` in a directory that does not exist, and
//! `svidcar api fetch --write` into one. Nothing is created on the way. Real binaries; every
//! wait is bounded; everything lives in a temporary directory.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use support::{svidcar, try_wait_for, TD};

/// A private CA directory and a registration file giving uid 0 (this test) an SVID.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ca")).unwrap();
        std::fs::set_permissions(
            dir.path().join("ca"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("registration.yaml"),
            "entries:\n  - spiffe_id: spiffe://example.org/ns/ops/sa/fetcher\n    selectors: [\"unix:uid:0\"]\n",
        )
        .unwrap();
        Setup { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn agent_args(&self, socket: &Path) -> Vec<String> {
        let mut args: Vec<String> = vec!["agent".into(), "--socket".into()];
        args.push(socket.display().to_string());
        args.extend(["--ca-dir".into(), self.path("ca").display().to_string()]);
        args.extend(["--trust-domain".into(), TD.into()]);
        args.extend([
            "--registration".into(),
            self.path("registration.yaml").display().to_string(),
        ]);
        args
    }

    /// Starts `svidcar agent` on `socket` (killed on drop) and waits until it serves.
    async fn agent(&self, socket: &Path) -> tokio::process::Child {
        let log = std::fs::File::create(self.path("agent.log")).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_svidcar"))
            .args(self.agent_args(socket))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        try_wait_for("the agent to serve", Duration::from_secs(15), || {
            std::os::unix::net::UnixStream::connect(socket).is_ok()
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n{}",
                std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
            )
        });
        child
    }

    /// The names in the CA directory.
    fn ca_files(&self) -> Vec<String> {
        std::fs::read_dir(self.path("ca"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

/// `svidcar agent --socket <tmp>/nonexistent/dir/agent.sock`: exits at once, naming the socket
/// path and its missing directory and saying to create it; no directory and no CA created.
#[tokio::test]
async fn an_agent_socket_in_a_missing_directory_is_named_not_created() {
    let s = Setup::new();
    let socket = s.path("nonexistent/dir/agent.sock");
    let args = s.agent_args(&socket);
    let (code, out, err) = svidcar(&args.iter().map(String::as_str).collect::<Vec<_>>());
    eprintln!("exit {code}; stderr:\n{err}");
    assert_ne!(code, 0, "{out}{err}");
    let dir = socket.parent().unwrap().display().to_string();
    assert!(
        err.contains(&socket.display().to_string()),
        "names the socket path: {err}"
    );
    assert!(
        err.contains(&format!("{dir} does not exist")),
        "names the missing directory: {err}"
    );
    assert!(
        err.contains("create it") && err.contains(&format!("mkdir -p {dir}")),
        "says what to do: {err}"
    );
    assert!(!err.contains("agent.sock."), "no temporary name: {err}");
    assert!(!s.path("nonexistent").exists(), "nothing created");
    assert!(s.ca_files().is_empty(), "no CA created: {:?}", s.ca_files());

    // The socket's own directory, one level below an existing one, is still created for it
    // (`/run/svidcar` under `/run`): the agent serves.
    let _agent = s.agent(&s.path("sock/agent.sock")).await;
}

/// `svidcar api fetch --write <tmp>/nonexistent/dir`: exit 5 before the API is asked, with the
/// directory named (not a `…/svid_key.tmp` path) and what to do; a `--write` naming a file is
/// refused too; an existing directory receives the three files, the key with mode 0600.
#[tokio::test]
async fn api_fetch_write_into_a_missing_directory_says_to_create_it() {
    let s = Setup::new();
    // No agent yet: a missing directory is said without contacting the Workload API.
    let endpoint = format!("unix://{}", s.path("sock/agent.sock").display());
    let missing = s.path("nonexistent/dir");
    let (code, _, err) = svidcar(&[
        "api",
        "fetch",
        "--workload-api",
        &endpoint,
        "--timeout",
        "2s",
        "--write",
        missing.to_str().unwrap(),
    ]);
    eprintln!("exit {code}; stderr: {err}");
    assert_eq!(code, 5, "{err}");
    let dir = missing.display().to_string();
    assert!(
        err.contains(&format!("--write {dir}: no such directory")),
        "{err}"
    );
    assert!(
        err.contains("create it") && err.contains(&format!("mkdir -p -m 700 {dir}")),
        "{err}"
    );
    assert!(
        !err.contains("svid_key.tmp") && !err.contains("transport"),
        "neither a temporary name nor the API: {err}"
    );
    assert!(!s.path("nonexistent").exists());

    // With an agent serving: a file is not a directory; a directory gets the files.
    let _agent = s.agent(&s.path("sock/agent.sock")).await;
    let file = s.path("a-file");
    std::fs::write(&file, b"x").unwrap();
    let (code, _, err) = svidcar(&[
        "api",
        "fetch",
        "--workload-api",
        &endpoint,
        "--write",
        file.to_str().unwrap(),
    ]);
    eprintln!("exit {code}; stderr: {err}");
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains(&format!("--write {}: not a directory", file.display())),
        "{err}"
    );

    let out_dir = s.path("fetched");
    std::fs::create_dir(&out_dir).unwrap();
    let (code, out, err) = svidcar(&[
        "api",
        "fetch",
        "--workload-api",
        &endpoint,
        "--write",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let mut names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["svid.pem", "svid_bundle.pem", "svid_key.pem"]);
    let mode = std::fs::metadata(out_dir.join("svid_key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
