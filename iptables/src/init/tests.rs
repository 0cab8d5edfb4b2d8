//! `run_init` end to end against a scripted runner: no root, no processes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use clap::Parser;

use super::*;
use crate::exec::{ExecError, Output};
use crate::plan::tests::installed;
use crate::proc_status::ProcStatus;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    init: InitArgs,
}

fn args(flags: &[&str]) -> InitArgs {
    let argv = std::iter::once("svidcar-init").chain(flags.iter().copied());
    Cli::try_parse_from(argv).unwrap().init
}

/// Scripted commands: each program answers from its queue; the last answer repeats.
#[derive(Default)]
struct Script {
    answers: RefCell<HashMap<String, Vec<Answer>>>,
    calls: RefCell<Vec<(String, Option<String>)>>,
}

#[derive(Clone)]
enum Answer {
    Ok(String),
    Fail(i32, String),
    Missing,
}

impl Script {
    fn on(self, program: &str, answers: &[Answer]) -> Script {
        self.answers
            .borrow_mut()
            .insert(program.into(), answers.to_vec());
        self
    }

    fn restores(&self) -> Vec<String> {
        let calls = self.calls.borrow();
        calls
            .iter()
            .filter_map(|(_, stdin)| stdin.clone())
            .collect()
    }
}

impl Runner for Script {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, ExecError> {
        let key = format!("{program} {}", args.join(" ")).trim().to_string();
        self.calls
            .borrow_mut()
            .push((key.clone(), stdin.map(String::from)));
        let mut answers = self.answers.borrow_mut();
        let queue = answers
            .get_mut(&key)
            .unwrap_or_else(|| panic!("unscripted command: {key}"));
        let answer = if queue.len() > 1 {
            queue.remove(0)
        } else {
            queue[0].clone()
        };
        let out = |code: i32, stdout: String, stderr: String| Output {
            status: ExitStatus::from_raw(code << 8),
            stdout,
            stderr,
        };
        match answer {
            Answer::Ok(s) => Ok(out(0, s, String::new())),
            Answer::Fail(code, err) => Ok(out(code, String::new(), err)),
            Answer::Missing => Err(ExecError::NotFound),
        }
    }
}

fn ok(s: &str) -> Answer {
    Answer::Ok(s.to_string())
}

fn redirected(_: &Settings, target: SocketAddr) -> Result<Verification, VerifyError> {
    Ok(Verification::Redirected {
        target,
        listener: "127.0.0.1:15001".parse().unwrap(),
    })
}

fn never(_: &Settings, _: SocketAddr) -> Result<Verification, VerifyError> {
    panic!("the probe must not run here")
}

fn run_script(a: &InitArgs, script: &Script, probe: Probe<'_>) -> (Result<(), InitError>, String) {
    let mut out = Vec::new();
    let r = run(a, &mut out, script, probe);
    (r, String::from_utf8(out).unwrap())
}

/// Nothing installed anywhere; `nft_saves` are what `iptables-nft-save` prints on each call
/// after detection (the last one repeats).
fn fresh_nft(nft_saves: &[&str]) -> Script {
    let answers: Vec<Answer> = std::iter::once("")
        .chain(nft_saves.iter().copied())
        .map(ok)
        .collect();
    Script::default()
        .on("iptables-legacy-save", &[ok("")])
        .on("iptables-nft-save", &answers)
}

#[test]
fn dry_run_prints_the_exact_batch_and_changes_nothing() {
    let script = fresh_nft(&[""]);
    let (r, out) = run_script(&args(&["--dry-run"]), &script, &never);
    r.unwrap();
    let batch = plan(&Settings::default(), "", Family::V4)
        .unwrap()
        .restore_input();
    assert!(
        out.contains(&format!("iptables-nft-restore --noflush input:\n{batch}")),
        "{out}"
    );
    assert!(
        out.contains("no rules in either backend yet; nft preferred"),
        "{out}"
    );
    assert!(out.ends_with("dry run: nothing was changed\n"), "{out}");
    assert!(script.restores().is_empty());
}

#[test]
fn applies_then_checks_and_probes() {
    let s = Settings::default();
    let script = fresh_nft(&["", &installed(&s, Family::V4, &[])])
        .on("iptables-nft-restore --noflush -w 5", &[ok("")]);
    let (r, out) = run_script(&args(&[]), &script, &redirected);
    r.unwrap();
    assert_eq!(
        script.restores(),
        [plan(&s, "", Family::V4).unwrap().restore_input()]
    );
    assert!(out.contains("IPv4: applied\n"), "{out}");
    assert!(
        out.contains("IPv4: verified: a connection to 192.0.2.1:9 arrived at 127.0.0.1:15001"),
        "{out}"
    );
}

#[test]
fn second_run_is_a_no_op() {
    let s = Settings::default();
    let script = fresh_nft(&[&installed(&s, Family::V4, &[])]);
    let (r, out) = run_script(&args(&["--no-verify"]), &script, &never);
    r.unwrap();
    assert!(
        out.contains("IPv4: nat table already as planned, nothing to do"),
        "{out}"
    );
    assert!(script.restores().is_empty());
}

#[test]
fn ipv6_is_planned_too_and_skipped_without_ip6tables() {
    let script = fresh_nft(&[""]).on("ip6tables-nft-save", &[ok("")]);
    let (r, out) = run_script(&args(&["--ipv6", "--dry-run"]), &script, &never);
    r.unwrap();
    assert!(
        out.contains("ip6tables-nft-restore --noflush input:\n*nat\n"),
        "{out}"
    );
    assert!(out.contains("! -d ::1/128 -o lo"), "{out}");

    let script = fresh_nft(&[""]).on("ip6tables-nft-save", &[Answer::Missing]);
    let (r, out) = run_script(&args(&["--ipv6", "--dry-run"]), &script, &never);
    r.unwrap();
    assert!(
        out.contains("IPv6: `ip6tables-nft-save` not found, IPv6 rules skipped"),
        "{out}"
    );
}

#[test]
fn conflicts_stop_everything_before_any_change() {
    let istio = "*nat\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -p tcp -j ISTIO_OUTPUT\nCOMMIT\n";
    let script = fresh_nft(&[""]).on("ip6tables-nft-save", &[ok(istio)]);
    let (r, _) = run_script(&args(&["--ipv6"]), &script, &never);
    let e = r.unwrap_err();
    assert_eq!(e.exit_code(), 5);
    assert!(
        e.to_string()
            .starts_with("IPv6: conflicting rule `-A OUTPUT -p tcp -j ISTIO_OUTPUT`"),
        "{e}"
    );
    assert!(script.restores().is_empty());
}

#[test]
fn failures_map_to_exit_codes() {
    let missing = Script::default()
        .on("iptables-legacy-save", &[Answer::Missing])
        .on("iptables-nft-save", &[Answer::Missing]);
    let e = run_script(&args(&[]), &missing, &never).0.unwrap_err();
    assert_eq!(e.exit_code(), 3);
    assert!(e.to_string().contains("apt-get install iptables"), "{e}");

    let denied = "iptables-nft-restore v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)";
    let script = fresh_nft(&[""]).on(
        "iptables-nft-restore --noflush -w 5",
        &[Answer::Fail(4, denied.into())],
    );
    let e = run_script(&args(&[]), &script, &never).0.unwrap_err();
    assert_eq!(e.exit_code(), 4);
    assert!(e.to_string().contains("NET_ADMIN"), "{e}");

    let script = fresh_nft(&[""]).on(
        "iptables-nft-restore --noflush -w 5",
        &[Answer::Fail(2, "iptables-restore: line 3 failed".into())],
    );
    let e = run_script(&args(&[]), &script, &never).0.unwrap_err();
    if ProcStatus::current().is_some_and(|p| p.net_admin) {
        assert_eq!(e.exit_code(), 7);
        assert!(
            e.to_string().contains("line 3 failed") && e.to_string().contains("*nat\n"),
            "{e}"
        );
    }

    let script = fresh_nft(&[""]).on("iptables-nft-restore --noflush -w 5", &[ok("")]);
    let e = run_script(&args(&[]), &script, &|_, target| {
        Err(VerifyError::NotRedirected {
            target,
            listener: "127.0.0.1:15001".parse().unwrap(),
            detail: "connect failed: timed out".into(),
        })
    })
    .0
    .unwrap_err();
    // The re-read after applying still shows an empty table: the rules check fails first.
    assert_eq!(e.exit_code(), 8);
    assert!(e.to_string().contains("still needs changes"), "{e}");

    let bad = args(&["--inbound-port=15001"]);
    let e = run_script(&bad, &fresh_nft(&[]), &never).0.unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("`outbound_port`"), "{e}");
}

#[test]
fn probe_failure_is_a_verify_error() {
    let s = Settings::default();
    let script = fresh_nft(&["", &installed(&s, Family::V4, &[])])
        .on("iptables-nft-restore --noflush -w 5", &[ok("")]);
    let e = run_script(&args(&[]), &script, &|_, target| {
        Err(VerifyError::NotRedirected {
            target,
            listener: "127.0.0.1:15001".parse().unwrap(),
            detail: "connect failed: timed out".into(),
        })
    })
    .0
    .unwrap_err();
    assert_eq!(e.exit_code(), 8);
    let msg = e.to_string();
    assert!(
        msg.contains("192.0.2.1:9 was not redirected")
            && msg.contains("--no-verify")
            && msg.ends_with("The rules stay installed (a re-run is idempotent; `svidcar init --cleanup` removes them)"),
        "{msg}"
    );
}

#[test]
fn dry_run_without_privilege_plans_against_an_empty_table() {
    let denied = Answer::Fail(4, "Permission denied (you must be root)".into());
    let script = Script::default()
        .on("iptables-legacy-save", std::slice::from_ref(&denied))
        .on("iptables-nft-save", &[denied]);
    let (r, out) = run_script(&args(&["--dry-run"]), &script, &never);
    r.unwrap();
    assert!(out.contains("cannot be read without NET_ADMIN"), "{out}");
    assert!(
        out.contains("-A OUTPUT -p tcp -m comment --comment svidcar-managed -j SVIDCAR_OUTPUT"),
        "{out}"
    );
}

#[test]
fn cleanup_applies_the_cleanup_plan_without_probing() {
    let s = Settings::default();
    let save = installed(&s, Family::V4, &[]);
    let script = Script::default()
        .on("iptables-legacy-save", &[ok(&save)])
        .on("iptables-nft-save", &[ok("")])
        .on("iptables-legacy-restore --noflush -w 5", &[ok("")]);
    let (r, out) = run_script(&args(&["--cleanup"]), &script, &never);
    r.unwrap();
    assert!(
        out.contains("removing interception rules with iptables-legacy"),
        "{out}"
    );
    assert_eq!(
        script.restores(),
        [cleanup_plan(&save, Family::V4).unwrap().restore_input()]
    );
}
