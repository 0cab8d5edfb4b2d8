//! Pods as network namespaces, for the privileged end-to-end tests: namespaces joined by veth
//! pairs, processes started inside them, kubelet-style cgroups. Everything a [`World`] made is
//! removed when it drops, even when the test fails; every command and wait is bounded. Tests
//! are synchronous (no tokio clock), so waits use std's clock.

#![allow(clippy::disallowed_types)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// UID and GID of the proxy (what `svidcar init` exempts).
pub(crate) const PROXY_UID: &str = "1337";

/// Whether the test can run: root is needed (namespaces, iptables, cgroups). Under CI a test
/// that cannot run fails instead of skipping silently.
pub(crate) fn root_or_skip(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root (network namespaces, iptables)"
    );
    eprintln!("SKIPPED {test}: needs root");
    false
}

/// Runs a command (at most 30 s) that must succeed; returns its stdout.
pub(crate) fn sh(args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("30")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits (polling every 100 ms) until `check` holds; fails the test after `timeout`.
pub(crate) fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether something listens on TCP `port` in `ns`.
pub(crate) fn listening(ns: &str, port: u16) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ss",
            "-Htln",
            &format!("sport = :{port}"),
        ])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false)
}

/// curl inside `ns` (10 s at most): whether it succeeded, and what it printed (stdout, then
/// stderr).
pub(crate) fn curl_in(ns: &str, url: &str) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "--max-time", "10", url])
        .output()
        .expect("curl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Namespaces, processes and cgroups of one test.
pub(crate) struct World {
    /// Unique per test run; part of every name.
    pub(crate) tag: String,
    prefix: &'static str,
    namespaces: Vec<String>,
    /// Processes started; killed on drop.
    pub(crate) children: Vec<Child>,
    cgroups: Vec<PathBuf>,
}

impl World {
    /// An empty world whose namespaces are called `<prefix>-<name>-<tag>`.
    pub(crate) fn new(prefix: &'static str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        World {
            tag: format!("{}-{}", std::process::id() % 100_000, nanos % 1000),
            prefix,
            namespaces: vec![],
            children: vec![],
            cgroups: vec![],
        }
    }

    /// A new network namespace with loopback up.
    pub(crate) fn add_ns(&mut self, name: &str) -> String {
        let ns = format!("{}-{name}-{}", self.prefix, self.tag);
        sh(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// A veth pair between namespaces `a` and `b`, with a /24 address on each end.
    pub(crate) fn link(&self, a: &str, a_if: &str, a_ip: &str, b: &str, b_if: &str, b_ip: &str) {
        sh(&[
            "ip", "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
        ]);
        for (ns, dev, ip) in [(a, a_if, a_ip), (b, b_if, b_ip)] {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                dev,
            ]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
    }

    /// Starts `cmd` (stdin and stdout closed, stderr to `log`); killed on drop.
    pub(crate) fn spawn(&mut self, mut cmd: Command, log: &Path) {
        let err = std::fs::File::create(log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn");
        self.children.push(child);
    }

    /// Starts `args` inside `ns`, as the proxy user when `as_proxy`.
    pub(crate) fn spawn_in(&mut self, ns: &str, as_proxy: bool, args: &[&str], log: &Path) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]);
        if as_proxy {
            cmd.args([
                "setpriv",
                &format!("--reuid={PROXY_UID}"),
                &format!("--regid={PROXY_UID}"),
                "--clear-groups",
            ]);
        }
        cmd.args(args);
        self.spawn(cmd, log);
    }

    /// Creates the cgroup (v2) a kubelet with the systemd driver and containerd gives one
    /// container of a BestEffort pod, below a slice of this world; removed on drop.
    pub(crate) fn container_cgroup(&mut self, pod_uid: &str, container_id: &str) -> PathBuf {
        let base = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .map(Path::new)
            .find(|p| p.join("cgroup.procs").exists())
            .expect("a cgroup v2 hierarchy");
        let pod = format!("kubepods-besteffort-pod{}.slice", pod_uid.replace('-', "_"));
        let dir = base
            .join(format!("{}-{}.slice", self.prefix, self.tag))
            .join("kubepods.slice")
            .join("kubepods-besteffort.slice")
            .join(pod)
            .join(format!("cri-containerd-{container_id}.scope"));
        std::fs::create_dir_all(&dir).expect("cgroup");
        let mut p = dir.clone();
        while p != base {
            if !self.cgroups.contains(&p) {
                self.cgroups.push(p.clone());
            }
            p = p.parent().expect("below the hierarchy").to_path_buf();
        }
        // Deepest first, whatever order they were made in.
        self.cgroups
            .sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        dir
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            // Killing what is left in the namespace first lets `ip netns del` free it.
            let _ = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-9", pid]).status();
                    }
                });
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for cg in &self.cgroups {
            // Its processes were killed above; an emptied cgroup can be removed.
            for _ in 0..20 {
                if std::fs::remove_dir(cg).is_ok() || !cg.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
