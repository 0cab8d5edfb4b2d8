//! The CA directory. The directory itself must exist: it is the operator's choice where the keys
//! live (a volume, a tmpfs), not ours. It belongs to the authority: nothing else writes in it.
//!
//! Layout:
//! - `ca.pem`, `ca.key` (PKCS#8 PEM, mode 0600): the active root, the one that signs. A directory
//!   from before CA rotation holds only these two and loads as it always did.
//! - `next.pem`, `next.key` (0600): the prepared successor, published in the bundle but not
//!   signing yet. Its `notBefore` is when it was prepared.
//! - `retired-<serial>.json`: a retired root, `{"retired_at", "drop_at", "certificate"}` (Unix
//!   seconds, certificate PEM). Its key was destroyed when it retired. Removed when it leaves the
//!   bundle.
//!
//! Every file is written as `<name>.tmp`, fsynced, renamed into place, then the directory is
//! fsynced. Each step is ordered so that a crash between any two writes leaves a state the next
//! start loads consistently:
//! - *prepare*: `next.key`, then `next.pem` (neither may exist). A `next.key` without `next.pem`
//!   is an interrupted preparation (that key never signed nor was published): it is removed.
//! - *activate*: the retired record of the old root first (the commit point: only then is its key
//!   overwritten), then `ca.key` and `ca.pem` become the successor's, then `next.pem` and
//!   `next.key` are removed. A start that finds a complete successor while `ca.pem` is missing,
//!   recorded as retired, or already paired with the successor's key, finishes these steps.
//! - *drop*: remove `retired-<serial>.json`. *discard* a successor: `next.pem`, then `next.key`.
//! - *create* (an empty directory) and *replace* (every root expired): prepare, then activate
//!   with no retired record.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use svidcar_identity::TrustDomain;

use super::roots::{RetiredRoot, RootSet};
use super::AuthorityError;
use crate::ca::RootInfo;
use crate::Ca;

/// File name of the active root's certificate.
pub const CERT_FILE: &str = "ca.pem";
/// File name of the active root's key.
pub const KEY_FILE: &str = "ca.key";
/// File name of the prepared successor's certificate.
pub const NEXT_CERT_FILE: &str = "next.pem";
/// File name of the prepared successor's key.
pub const NEXT_KEY_FILE: &str = "next.key";

const RETIRED_PREFIX: &str = "retired-";
const RETIRED_SUFFIX: &str = ".json";
const TMP_SUFFIX: &str = ".tmp";

/// The file name of a retired root's record.
pub fn retired_file(serial: &str) -> String {
    format!("{RETIRED_PREFIX}{serial}{RETIRED_SUFFIX}")
}

/// A retired root as stored.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    retired_at: i64,
    drop_at: i64,
    certificate: String,
}

fn err(path: &Path, message: impl Into<String>) -> AuthorityError {
    AuthorityError::Dir {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// The directory must exist: where the key lives (a volume, a tmpfs) is the operator's choice.
fn check_is_dir(dir: &Path) -> Result<(), AuthorityError> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        err(
            dir,
            format!("CA directory: {e} (create it, e.g. with mode 0700)"),
        )
    })?;
    if !meta.is_dir() {
        return Err(err(dir, "CA directory: not a directory"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(err(
            dir,
            format!(
                "CA directory: open to group or others (mode {mode:04o}); its key is the whole trust domain: run chmod 700 {}",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Looks at the CA directory without changing anything: it must exist and be private, and if
/// it holds an active root, that root and its key must load. Returns the trust domain of that
/// root (`None` while the directory holds none: the first start creates it).
pub fn inspect(dir: &Path) -> Result<Option<TrustDomain>, AuthorityError> {
    check_is_dir(dir)?;
    if !dir.join(CERT_FILE).exists() || !dir.join(KEY_FILE).exists() {
        return Ok(None);
    }
    let ca = load_pair(dir, CERT_FILE, KEY_FILE, None)?;
    Ok(Some(ca.trust_domain().clone()))
}

/// The lock file: held (`flock`, exclusive) by the one process that uses the directory.
pub const LOCK_FILE: &str = ".lock";

/// Takes the directory's lock, so that two processes (an agent left running beside the control
/// plane, say) never rotate the same CA under each other. Released when the file is dropped.
pub fn lock(dir: &Path) -> Result<std::fs::File, AuthorityError> {
    check_is_dir(dir)?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| AuthorityError::Dir {
            path: path.clone(),
            message: e.to_string(),
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(AuthorityError::Dir {
            path,
            message: "another svidcar process holds this CA directory; one process per CA".into(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(AuthorityError::Dir {
            path,
            message: e.to_string(),
        }),
    }
}

/// Loads the roots from `dir`, first finishing whatever step a crash interrupted, or creates an
/// active root for `td` valid for `validity` from `now` when the directory holds none. Returns the
/// roots and whether the active one was created now. Roots that have expired are loaded as they
/// are: replacing them is the schedule's business.
pub fn load_or_create(
    dir: &Path,
    td: Option<&TrustDomain>,
    validity: Duration,
    now: i64,
) -> Result<(RootSet, bool), AuthorityError> {
    check_is_dir(dir)?;
    let names = file_names(dir)?;
    for name in names.iter().filter(|n| n.ends_with(TMP_SUFFIX)) {
        if is_ours(name.trim_end_matches(TMP_SUFFIX)) {
            remove(dir, name)?;
        }
    }
    let retired = read_retired(dir, &names)?;
    let path = |name: &str| dir.join(name);
    remove_orphan_next_key(dir)?;
    if path(NEXT_CERT_FILE).exists() {
        let next = load_pair(dir, NEXT_CERT_FILE, NEXT_KEY_FILE, td)?;
        if activation_interrupted(dir, &next, &retired)? {
            tracing::warn!(dir = %dir.display(), serial = next.serial(), "finishing an interrupted CA activation");
            finish_activation(dir, &next)?;
        }
    }
    let (active, created) = match (path(CERT_FILE).exists(), path(KEY_FILE).exists()) {
        (false, false) => {
            let td = td.ok_or_else(|| {
                err(
                    dir,
                    "the directory holds no CA yet: --trust-domain is needed to create one",
                )
            })?;
            let ca = Ca::generate_at(td, now, validity)?;
            prepare(dir, &ca)?;
            activate(dir, None, &ca)?;
            (ca, true)
        }
        (true, true) => (load_pair(dir, CERT_FILE, KEY_FILE, td)?, false),
        (true, false) => {
            return Err(err(
                &path(KEY_FILE),
                "missing (the certificate is there without its key)",
            ))
        }
        (false, true) => {
            return Err(err(
                &path(CERT_FILE),
                "missing (the key is there without its certificate)",
            ))
        }
    };
    let td = active.trust_domain().clone();
    let prepared = if path(NEXT_CERT_FILE).exists() {
        Some(load_pair(dir, NEXT_CERT_FILE, NEXT_KEY_FILE, Some(&td))?)
    } else {
        None
    };
    let mut kept = Vec::new();
    for (file, root, root_td) in retired {
        if root_td != td {
            return Err(err(
                &file,
                format!("the root is for trust domain {root_td}, not {td}"),
            ));
        }
        let live = std::iter::once(&active).chain(prepared.as_ref());
        if live.into_iter().any(|ca| ca.serial() == root.serial) {
            return Err(err(
                &file,
                "records a root as retired that is still active or prepared (was next.pem removed by hand?)",
            ));
        }
        kept.push(root);
    }
    kept.sort_by_key(|r| r.retired_at);
    Ok((
        RootSet {
            active: Arc::new(active),
            prepared: prepared.map(Arc::new),
            retired: kept,
        },
        created,
    ))
}

fn file_names(dir: &Path) -> Result<Vec<String>, AuthorityError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| err(dir, e.to_string()))? {
        let entry = entry.map_err(|e| err(dir, e.to_string()))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn is_retired_name(name: &str) -> bool {
    name.starts_with(RETIRED_PREFIX) && name.ends_with(RETIRED_SUFFIX)
}

fn is_ours(name: &str) -> bool {
    [CERT_FILE, KEY_FILE, NEXT_CERT_FILE, NEXT_KEY_FILE].contains(&name) || is_retired_name(name)
}

/// Whether an activation of `next` was interrupted: `ca.pem` is gone, or recorded as retired, or
/// `ca.key` is already `next`'s key.
fn activation_interrupted(
    dir: &Path,
    next: &Ca,
    retired: &[(PathBuf, RetiredRoot, TrustDomain)],
) -> Result<bool, AuthorityError> {
    let key_path = dir.join(KEY_FILE);
    let key_is_next = || -> Result<bool, AuthorityError> {
        if !key_path.exists() {
            return Ok(false);
        }
        let key_pem =
            std::fs::read_to_string(&key_path).map_err(|e| err(&key_path, e.to_string()))?;
        Ok(Ca::from_pem(next.bundle_pem(), &key_pem).is_ok())
    };
    let cert_path = dir.join(CERT_FILE);
    if !cert_path.exists() {
        if key_path.exists() && !key_is_next()? {
            return Err(err(
                &cert_path,
                "missing (the key is there without its certificate)",
            ));
        }
        return Ok(true);
    }
    let pem = std::fs::read(&cert_path).map_err(|e| err(&cert_path, e.to_string()))?;
    let der = CertificateDer::from_pem_slice(&pem)
        .map_err(|e| err(&cert_path, format!("bad PEM: {e}")))?;
    let info = RootInfo::parse(&der).map_err(|e| err(&cert_path, e.to_string()))?;
    if retired.iter().any(|(_, r, _)| r.serial == info.serial) {
        return Ok(true);
    }
    key_is_next()
}

/// Loads and checks a certificate and its key.
fn load_pair(
    dir: &Path,
    cert_name: &str,
    key_name: &str,
    td: Option<&TrustDomain>,
) -> Result<Ca, AuthorityError> {
    let cert_path = dir.join(cert_name);
    let key_path = dir.join(key_name);
    let mode = std::fs::metadata(&key_path)
        .map_err(|e| err(&key_path, e.to_string()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(err(
            &key_path,
            format!(
                "readable or writable by group or others (mode {:04o}); the key is the whole trust domain: run chmod 600 {}",
                mode & 0o7777,
                key_path.display()
            ),
        ));
    }
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| err(p, e.to_string()));
    let cert_pem = read(&cert_path)?;
    let key_pem = read(&key_path)?;
    let ca = Ca::from_pem(&cert_pem, &key_pem).map_err(|e| err(&cert_path, e.to_string()))?;
    if let Some(td) = td {
        if ca.trust_domain() != td {
            return Err(err(
                &cert_path,
                format!("the CA is for trust domain {}, not {td}", ca.trust_domain()),
            ));
        }
    }
    Ok(ca)
}

/// Reads every `retired-<serial>.json`.
fn read_retired(
    dir: &Path,
    names: &[String],
) -> Result<Vec<(PathBuf, RetiredRoot, TrustDomain)>, AuthorityError> {
    let mut out = Vec::new();
    for name in names.iter().filter(|n| is_retired_name(n)) {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| err(&path, e.to_string()))?;
        let record: Record =
            serde_json::from_slice(&bytes).map_err(|e| err(&path, e.to_string()))?;
        let cert = CertificateDer::from_pem_slice(record.certificate.as_bytes())
            .map_err(|e| err(&path, format!("certificate: bad PEM: {e}")))?;
        let info = RootInfo::parse(&cert).map_err(|e| err(&path, e.to_string()))?;
        if *name != retired_file(&info.serial) {
            return Err(err(
                &path,
                format!("holds the root with serial {}", info.serial),
            ));
        }
        let root = RetiredRoot {
            cert,
            cert_pem: record.certificate,
            serial: info.serial,
            not_after: info.not_after,
            retired_at: record.retired_at,
            drop_at: record.drop_at,
        };
        out.push((path, root, info.td));
    }
    Ok(out)
}

/// Removes a `next.key` without `next.pem`: left by an interrupted preparation (or by the last
/// step of an activation), that key was never published and never signed.
fn remove_orphan_next_key(dir: &Path) -> Result<(), AuthorityError> {
    let key = dir.join(NEXT_KEY_FILE);
    if key.exists() && !dir.join(NEXT_CERT_FILE).exists() {
        tracing::warn!(file = %key.display(), "removing a successor key left without its certificate by an interruption");
        remove(dir, NEXT_KEY_FILE)?;
    }
    Ok(())
}

/// Removes successor files a failed preparation left behind (a key alone, or a whole pair whose
/// final fsync failed). Called only while no successor is in force, so nothing here was ever
/// published.
fn remove_failed_preparation(dir: &Path) -> Result<(), AuthorityError> {
    for name in [NEXT_CERT_FILE, NEXT_KEY_FILE] {
        let path = dir.join(name);
        if path.exists() {
            tracing::warn!(file = %path.display(), "removing a successor file left by a failed preparation");
            remove(dir, name)?;
        }
    }
    Ok(())
}

/// Stores `ca` as the prepared successor (after a failed attempt, too).
pub fn prepare(dir: &Path, ca: &Ca) -> Result<(), AuthorityError> {
    remove_failed_preparation(dir)?;
    write(dir, NEXT_KEY_FILE, ca.key_pem().as_bytes(), 0o600, false)?;
    write(
        dir,
        NEXT_CERT_FILE,
        ca.bundle_pem().as_bytes(),
        0o644,
        false,
    )
}

/// Makes the prepared successor `next` the active root, recording `retiring` (the old active
/// root, if its SVIDs may still be valid) first.
pub fn activate(
    dir: &Path,
    retiring: Option<&RetiredRoot>,
    next: &Ca,
) -> Result<(), AuthorityError> {
    if let Some(r) = retiring {
        let record = Record {
            retired_at: r.retired_at,
            drop_at: r.drop_at,
            certificate: r.cert_pem.clone(),
        };
        let json = serde_json::to_vec_pretty(&record)
            .map_err(|e| err(&dir.join(retired_file(&r.serial)), e.to_string()))?;
        write(dir, &retired_file(&r.serial), &json, 0o644, true)?;
    }
    finish_activation(dir, next)
}

fn finish_activation(dir: &Path, next: &Ca) -> Result<(), AuthorityError> {
    write(dir, KEY_FILE, next.key_pem().as_bytes(), 0o600, true)?;
    write(dir, CERT_FILE, next.bundle_pem().as_bytes(), 0o644, true)?;
    discard(dir)
}

/// Removes the prepared successor.
pub fn discard(dir: &Path) -> Result<(), AuthorityError> {
    remove(dir, NEXT_CERT_FILE)?;
    remove(dir, NEXT_KEY_FILE)
}

/// Removes a retired root.
pub fn drop_retired(dir: &Path, serial: &str) -> Result<(), AuthorityError> {
    remove(dir, &retired_file(serial))
}

/// Replaces every root but the retired ones with `fresh`, active at once.
pub fn replace(dir: &Path, fresh: &Ca) -> Result<(), AuthorityError> {
    discard(dir)?;
    prepare(dir, fresh)?;
    activate(dir, None, fresh)
}

/// Writes `bytes` to `dir/name` with `mode` through a fsynced temporary file and a rename. Without
/// `replace`, an existing file is an error and stays as it is.
fn write(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
    replace: bool,
) -> Result<(), AuthorityError> {
    let path = dir.join(name);
    if !replace && path.exists() {
        return Err(err(&path, "exists already; not overwriting it"));
    }
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    remove(dir, &format!("{name}{TMP_SUFFIX}"))?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| err(&tmp, e.to_string()))?;
    // The umask may have narrowed the mode; never widened it. Set it exactly.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| f.write_all(bytes))
        .and_then(|()| f.sync_all())
        .map_err(|e| err(&tmp, e.to_string()))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(|e| err(&path, e.to_string()))?;
    sync_dir(dir)
}

/// Removes `dir/name` if it exists.
fn remove(dir: &Path, name: &str) -> Result<(), AuthorityError> {
    let path = dir.join(name);
    match std::fs::remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(&path, e.to_string())),
    }
}

fn sync_dir(dir: &Path) -> Result<(), AuthorityError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(dir, e.to_string()))
}

#[cfg(test)]
mod tests;
