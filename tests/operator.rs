//! Operator mistakes the real binary reports plainly: a policy directory that does not exist.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

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
