//! The state directory belongs to one `svidcar control` at a time: an exclusive `flock` on
//! `<state_dir>/control.lock`, held for the life of the control plane (the kernel releases it
//! when the process ends, however it ends); the file holds the holder's pid, for the message
//! the next one gets.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file's name inside the state directory.
const LOCK_FILE: &str = "control.lock";

/// Why the state directory cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum StateLockError {
    /// Another control plane holds it (the operator's mistake: two processes, one directory).
    #[error("state directory {} is in use by another svidcar control (pid {pid})", dir.display())]
    InUse {
        /// The state directory.
        dir: PathBuf,
        /// The holder's pid, as it wrote it (`unknown` when unreadable).
        pid: String,
    },
    /// The directory or the lock file cannot be created, opened or locked (local config).
    #[error("state directory {}: {what}: {source}", dir.display())]
    Io {
        /// The state directory.
        dir: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The held lock; released when dropped.
#[derive(Debug)]
pub(super) struct StateLock {
    _file: Flock<File>,
}

/// Creates `dir` if needed and locks it for this process, or says who holds it.
pub(super) fn lock(dir: &Path) -> Result<StateLock, StateLockError> {
    let io = |what| {
        move |source| StateLockError::Io {
            dir: dir.to_owned(),
            what,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("cannot create it"))?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))
        .map_err(io("cannot open control.lock"))?;
    let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(StateLockError::InUse {
                dir: dir.to_owned(),
                pid: if pid.is_empty() { "unknown" } else { pid }.to_owned(),
            });
        }
        Err((_, errno)) => return Err(io("cannot lock control.lock")(errno.into())),
    };
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .map_err(io("cannot write control.lock"))?;
    Ok(StateLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = lock(&state).unwrap();
        // flock locks belong to the open file description: a second open in the same process
        // conflicts just as another process would.
        let e = lock(&state).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "state directory {} is in use by another svidcar control (pid {})",
                state.display(),
                std::process::id()
            )
        );
        drop(first);
        let _again = lock(&state).unwrap();
    }
}
