//! The revocation set on disk: one JSON file in the state directory, replaced atomically (a
//! temporary file written and synced, then renamed over the old one), so a crash leaves either
//! the old set or the new one.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::set::RevocationSet;

/// The file's name in the state directory.
pub(super) const FILE: &str = "revocations.json";

/// Why the revocation file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The file is not a revocation set (it is never replaced by an empty one: fix or remove
    /// it).
    #[error("{}: not a revocation set ({source}); fix the file or move it away", .path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Parser error.
        source: serde_json::Error,
    },
}

/// Reads the set at `path`; a missing file is an empty set.
pub(super) fn load(path: &Path) -> Result<RevocationSet, StoreError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RevocationSet::default()),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    serde_json::from_slice(&text).map_err(|source| StoreError::Malformed {
        path: path.to_owned(),
        source,
    })
}

/// Replaces the file at `path` with `set`, atomically.
pub(super) fn save(path: &Path, set: &RevocationSet) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let text = serde_json::to_vec_pretty(set).map_err(|e| io(std::io::Error::other(e)))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&text).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        // The rename itself must survive a crash; a directory that cannot be synced is no error.
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::set::{Entry, EntryJson};
    use super::*;

    #[test]
    fn a_saved_set_loads_back_and_a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        assert_eq!(load(&path).unwrap(), RevocationSet::default());
        let mut set = RevocationSet::default();
        set.revoke(
            Entry::try_from(EntryJson {
                spiffe_id: Some("spiffe://td/a".into()),
                reason: "leaked".into(),
                ..Default::default()
            })
            .unwrap(),
        );
        save(&path, &set).unwrap();
        assert_eq!(load(&path).unwrap(), set);
        assert!(!path.with_extension("json.tmp").exists());
        std::fs::write(&path, "{").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("not a revocation set"), "{e}");
    }
}
