//! Workload attestation on Linux: who is calling, from the kernel's word on the Unix socket
//! (`SO_PEERCRED`: uid, gid, pid) and, from the pid, the executable (`/proc/<pid>/exe`) and its
//! SHA-256. The caller takes no part in it.
//!
//! A pid can be reused once its process exits. The executable is read through `/proc/<pid>/exe`
//! (the file the process runs, even if the path was replaced since), and the effective uid and gid
//! in `/proc/<pid>/status` must still be the ones the socket reported; otherwise attestation fails
//! rather than describe some other process.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::registration::Workload;

/// Why the caller could not be attested.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The connection carries no peer credentials (not a Unix socket).
    #[error("no peer credentials on this connection")]
    NoCredentials,
    /// The kernel gave no pid (the peer is in another pid namespace).
    #[error("the caller's pid is not visible to the agent")]
    NoPid,
    /// The process is gone, or its ids no longer match the socket's.
    #[error("process {pid} exited or changed identity during attestation")]
    Changed {
        /// The pid.
        pid: i32,
    },
}

/// The effective uid and gid from the text of `/proc/<pid>/status`.
pub fn status_ids(status: &str) -> Option<(u32, u32)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok())
    };
    Some((field("Uid:")?, field("Gid:")?))
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use aws_lc_rs::digest::{Context, SHA256};
    let mut file = std::fs::File::open(path)?;
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Attests a caller from its socket credentials; reads the executable's hash only when
/// `with_sha256`. Blocking (file reads): run it off the async threads.
pub fn attest(
    uid: u32,
    gid: u32,
    pid: Option<i32>,
    with_sha256: bool,
) -> Result<Workload, AttestError> {
    let pid = pid.filter(|p| *p > 0).ok_or(AttestError::NoPid)?;
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let exe_link = proc_dir.join("exe");
    let path = std::fs::read_link(&exe_link).ok();
    let sha256 = if with_sha256 && path.is_some() {
        sha256_file(&exe_link).ok()
    } else {
        None
    };
    let status = std::fs::read_to_string(proc_dir.join("status")).ok();
    if status.as_deref().and_then(status_ids) != Some((uid, gid)) {
        return Err(AttestError::Changed { pid });
    }
    Ok(Workload {
        uid,
        gid,
        pid,
        path,
        sha256,
        k8s: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ids_take_the_effective_ids() {
        let status =
            "Name:\tapp\nUmask:\t0022\nUid:\t1000\t1001\t1002\t1003\nGid:\t50\t51\t52\t53\n";
        assert_eq!(status_ids(status), Some((1001, 51)));
        assert_eq!(status_ids("Name:\tapp\n"), None);
        assert_eq!(status_ids("Uid:\t1\tx\t1\t1\nGid:\t1\t1\t1\t1\n"), None);
    }

    #[test]
    fn sha256_of_a_known_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn attests_this_process() {
        let me = std::process::id() as i32;
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let (uid, gid) = status_ids(&status).unwrap();
        let w = attest(uid, gid, Some(me), true).unwrap();
        let exe = std::env::current_exe().unwrap();
        assert_eq!(w.path.as_deref(), Some(exe.as_path()));
        assert_eq!(w.sha256.unwrap(), sha256_file(&exe).unwrap());
        let w = attest(uid, gid, Some(me), false).unwrap();
        assert!(w.sha256.is_none());
        assert!(matches!(
            attest(uid.wrapping_add(1), gid, Some(me), false),
            Err(AttestError::Changed { .. })
        ));
        assert!(matches!(
            attest(uid, gid, None, false),
            Err(AttestError::NoPid)
        ));
    }
}
