//! What an agent getting SVIDs from `svidcar control` keeps in `--data-dir`: `node.json` (mode
//! 0600) with the node SVID, its key and the trust bundle last received, all PEM. The three are
//! one file replaced atomically (temporary file, fsync, rename, fsync of the directory), so a
//! crash never leaves a key beside another key's certificate.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

use crate::node::{bundle_pem, pem_of};

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
pub fn ensure_dir(dir: &Path) -> Result<(), String> {
    let at = |e: std::io::Error| format!("{}: {e}", dir.display());
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(at)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(at)?;
    }
    let probe = dir.join(".write-probe");
    let _ = std::fs::remove_file(&probe);
    write_atomic(dir, &probe, b"")?;
    std::fs::remove_file(&probe).map_err(at)
}

/// Writes `bytes` to `path` in `dir` atomically with mode 0600.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let at = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| at(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| at(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| at(path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| at(dir, e))
}

/// Replaces the state in `dir`.
pub fn save(dir: &Path, state: &NodeState) -> Result<(), String> {
    let stored = Stored {
        svid: pem_of("CERTIFICATE", &state.cert),
        key: pem_of("PRIVATE KEY", &state.key),
        bundle: bundle_pem(&state.bundle),
    };
    let json = serde_json::to_vec_pretty(&stored).map_err(|e| e.to_string())?;
    write_atomic(dir, &dir.join(STATE_FILE), &json)
}

/// The state kept in `dir`; `Err` says why there is none to use.
pub fn load(dir: &Path) -> Result<NodeState, String> {
    let path = dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("{} holds no node SVID yet", dir.display()))
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let bad = |what: String| format!("{}: {what}", path.display());
    let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let cert = CertificateDer::from_pem_slice(stored.svid.as_bytes())
        .map_err(|e| bad(format!("svid: {e}")))?;
    let key = PrivatePkcs8KeyDer::from_pem_slice(stored.key.as_bytes())
        .map_err(|e| bad(format!("key: {e}")))?
        .secret_pkcs8_der()
        .to_vec();
    let bundle = svidcar_identity::pem_source::parse_certs(&path, stored.bundle.as_bytes())
        .map_err(|e| format!("{e} (bundle)"))?;
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
        assert!(load(&sub).unwrap_err().contains("holds no node SVID yet"));
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
        assert!(load(&sub).unwrap_err().contains("node.json"));
    }

    #[test]
    fn an_unwritable_directory_is_found_before_joining() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        assert!(ensure_dir(&file).is_err());
    }
}
