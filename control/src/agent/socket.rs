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
    socket_dir(path, parent)?;
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
    let std_listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(|e| {
        err(
            path,
            format!("cannot bind in its directory {}: {e}", parent.display()),
        )
    })?;
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

/// Makes sure the directory `parent` of the socket `path` exists. Its last component is created
/// (mode 0755) when everything above it exists, as `/run/svidcar` under `/run`; a longer missing
/// path is more likely a typo than a wish, so it is named, with what to do, instead of created.
fn socket_dir(path: &Path, parent: &Path) -> Result<(), AgentError> {
    match std::fs::metadata(parent) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(err(
                path,
                format!("{} is not a directory", parent.display()),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(err(
                path,
                format!("cannot use its directory {}: {e}", parent.display()),
            ))
        }
    }
    let above = parent
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !above.is_dir() {
        return Err(err(
            path,
            format!(
                "its directory {} does not exist (nor does {}); create it first, \
                 e.g. `mkdir -p {}`, or correct --socket",
                parent.display(),
                above.display(),
                parent.display()
            ),
        ));
    }
    let create = || -> std::io::Result<()> {
        std::fs::create_dir(parent)?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
    };
    create().map_err(|e| {
        err(
            path,
            format!(
                "cannot create its directory {}: {e}; create it first, e.g. `mkdir -p {}`",
                parent.display(),
                parent.display()
            ),
        )
    })
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

        // Only the last missing directory is created; a longer missing path is named.
        let deep = dir.path().join("no/such/agent.sock");
        let e = bind(&deep, 0o660, None).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "{} does not exist",
                deep.parent().unwrap().display()
            )) && e.contains("mkdir -p"),
            "{e}"
        );
        assert!(!dir.path().join("no").exists());

        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let e = bind(&file, 0o660, None).unwrap_err().to_string();
        assert!(e.contains("not a socket"), "{e}");
    }
}
