//! The Workload API socket: bound under a temporary name, given its mode (and group) and only
//! then renamed into place, so it is never reachable with looser permissions. A stale socket
//! left by a crashed agent is replaced; a live one is an error.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use super::{AgentConfig, AgentError};

fn err(path: &Path, message: impl Into<String>) -> AgentError {
    AgentError::Socket {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Binds the socket at `path` with `mode` (e.g. `0o660`) and, if given, group `gid`.
pub fn bind(path: &Path, mode: u32, gid: Option<u32>) -> Result<UnixListener, AgentError> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| err(path, "needs a directory"))?;
    if !parent.exists() {
        std::fs::create_dir_all(parent).map_err(|e| err(parent, e.to_string()))?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| err(parent, e.to_string()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(err(path, "another process is serving on this socket"));
            }
            std::fs::remove_file(path)
                .map_err(|e| err(path, format!("removing stale socket: {e}")))?;
        }
        Ok(_) => return Err(err(path, "exists and is not a socket")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(path, e.to_string())),
    }
    let tmp = temp_name(path);
    let _ = std::fs::remove_file(&tmp);
    let std_listener =
        std::os::unix::net::UnixListener::bind(&tmp).map_err(|e| err(&tmp, e.to_string()))?;
    let finish = || -> std::io::Result<()> {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        std::fs::rename(&tmp, path)?;
        std_listener.set_nonblocking(true)
    };
    if let Err(e) = finish() {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(path, e.to_string()));
    }
    UnixListener::from_std(std_listener).map_err(|e| err(path, e.to_string()))
}

/// Binds the socket `args` names, with its mode and group, and says so.
pub(super) fn bind_configured(args: &AgentConfig) -> Result<UnixListener, AgentError> {
    let listener = bind(&args.socket, args.socket_mode, args.socket_group)?;
    tracing::info!(socket = %args.socket.display(), mode = format!("{:04o}", args.socket_mode), "serving the SPIFFE Workload API");
    Ok(listener)
}

fn temp_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.tmp", std::process::id()));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bound_with_its_mode_and_stale_sockets_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/agent.sock");
        let l = bind(&path, 0o660, None).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert!(!temp_name(&path).exists());

        let e = bind(&path, 0o660, None).unwrap_err().to_string();
        assert!(e.contains("another process is serving"), "{e}");
        drop(l);
        // The file stays behind, nobody listens: stale, replaced.
        assert!(path.exists());
        let _l = bind(&path, 0o600, None).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let e = bind(&file, 0o660, None).unwrap_err().to_string();
        assert!(e.contains("not a socket"), "{e}");
    }
}
