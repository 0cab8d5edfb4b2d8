//! What an agent getting SVIDs from `svidcar control` keeps in `--data-dir`: `node.json` (mode
//! 0600) with the node SVID, its key and the trust bundle last received, all PEM. The three are
//! one file replaced atomically (temporary file, fsync, rename, fsync of the directory), so a
//! crash never leaves a key beside another key's certificate.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

use crate::node::{bundle_pem, pem_of};

/// Why the node state cannot be kept or used. Every cause is local (the data directory or the
/// file in it); the agent joins again when there is no usable state.
#[derive(Debug, thiserror::Error)]
pub enum NodeStateError {
    /// The data directory holds no state file yet (a first start: the agent joins).
    #[error("{} holds no node SVID yet", dir.display())]
    Missing {
        /// The data directory.
        dir: PathBuf,
    },
    /// A file or directory cannot be created, written, read or synced.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The state cannot be encoded as JSON (cannot happen with these plain strings).
    #[error("cannot encode the node state: {0}")]
    Encode(#[source] serde_json::Error),
    /// The state file is not the JSON we write.
    #[error("{}: {source}", path.display())]
    Json {
        /// The state file.
        path: PathBuf,
        /// What the parser says.
        #[source]
        source: serde_json::Error,
    },
    /// The SVID or key in the state file is not valid PEM.
    #[error("{}: {part}: {source}", path.display())]
    Pem {
        /// The state file.
        path: PathBuf,
        /// Which part: `svid` or `key`.
        part: &'static str,
        /// What the PEM parser says.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The bundle in the state file is not valid PEM.
    #[error("{0} (bundle)")]
    Bundle(#[source] svidcar_identity::pem_source::PemError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NodeStateError + '_ {
    move |source| NodeStateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The state file's name.
pub const STATE_FILE: &str = "node.json";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    svid: String,
    key: String,
    bundle: String,
}

/// The node SVID, its key and the bundle. `Debug` never shows the key.
#[derive(Clone)]
pub struct NodeState {
    /// The node SVID, DER.
    pub cert: CertificateDer<'static>,
    /// Its PKCS#8 key, DER.
    pub key: Vec<u8>,
    /// Our trust domain's roots, DER each.
    pub bundle: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeState")
            .field("roots", &self.bundle.len())
            .finish_non_exhaustive()
    }
}

/// Creates `dir` (mode 0700) if needed and proves that files can be written in it — before a
/// join spends a one-time token on state that could not be kept.
pub fn ensure_dir(dir: &Path) -> Result<(), NodeStateError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    let probe = dir.join(".write-probe");
    let _ = std::fs::remove_file(&probe);
    write_atomic(dir, &probe, b"")?;
    std::fs::remove_file(&probe).map_err(io(dir))
}

/// Writes `bytes` to `path` in `dir` atomically with mode 0600.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), NodeStateError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Replaces the state in `dir`.
pub fn save(dir: &Path, state: &NodeState) -> Result<(), NodeStateError> {
    let stored = Stored {
        svid: pem_of("CERTIFICATE", &state.cert),
        key: pem_of("PRIVATE KEY", &state.key),
        bundle: bundle_pem(&state.bundle),
    };
    let json = serde_json::to_vec_pretty(&stored).map_err(NodeStateError::Encode)?;
    write_atomic(dir, &dir.join(STATE_FILE), &json)
}

/// The state kept in `dir`; `Err` says why there is none to use.
pub fn load(dir: &Path) -> Result<NodeState, NodeStateError> {
    let path = dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(NodeStateError::Missing {
                dir: dir.to_owned(),
            })
        }
        Err(e) => return Err(io(&path)(e)),
    };
    let stored: Stored = serde_json::from_slice(&bytes).map_err(|source| NodeStateError::Json {
        path: path.clone(),
        source,
    })?;
    let pem = |part: &'static str| {
        let path = path.clone();
        move |source| NodeStateError::Pem { path, part, source }
    };
    let cert = CertificateDer::from_pem_slice(stored.svid.as_bytes()).map_err(pem("svid"))?;
    let key = PrivatePkcs8KeyDer::from_pem_slice(stored.key.as_bytes())
        .map_err(pem("key"))?
        .secret_pkcs8_der()
        .to_vec();
    let bundle = svidcar_identity::pem_source::parse_certs(&path, stored.bundle.as_bytes())
        .map_err(NodeStateError::Bundle)?;
    Ok(NodeState { cert, key, bundle })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> NodeState {
        NodeState {
            cert: CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]),
            key: vec![0x30, 0x03, 0x02, 0x01, 0x02],
            bundle: vec![CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x03])],
        }
    }

    #[test]
    fn saved_atomically_private_and_loaded_back() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("data");
        ensure_dir(&sub).unwrap();
        let mode = std::fs::metadata(&sub).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let e = load(&sub).unwrap_err();
        assert!(matches!(e, NodeStateError::Missing { .. }), "{e:?}");
        assert!(e.to_string().contains("holds no node SVID yet"), "{e}");
        save(&sub, &state()).unwrap();
        save(&sub, &state()).unwrap();
        let back = load(&sub).unwrap();
        assert_eq!(back.cert, state().cert);
        assert_eq!(back.key, state().key);
        assert_eq!(back.bundle, state().bundle);
        let file = sub.join(STATE_FILE);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [STATE_FILE], "no temporary or probe file left");
        assert!(!format!("{back:?}").contains("key"));

        std::fs::write(&file, "{").unwrap();
        let e = load(&sub).unwrap_err();
        assert!(matches!(e, NodeStateError::Json { .. }), "{e:?}");
        assert!(e.to_string().contains("node.json"), "{e}");
    }

    #[test]
    fn an_unwritable_directory_is_found_before_joining() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        assert!(ensure_dir(&file).is_err());
    }
}
