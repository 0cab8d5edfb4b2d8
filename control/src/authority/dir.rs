//! The CA directory: `ca.pem` (root certificate) and `ca.key` (PKCS#8 PEM, mode 0600). Created on
//! first start, loaded afterwards. The directory itself must exist: it is the operator's choice
//! where the key lives (a volume, a tmpfs), not ours.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use svidcar_proxy::identity::{unix_now, TrustDomain};

use super::AuthorityError;
use crate::Ca;

/// File name of the root certificate.
pub const CERT_FILE: &str = "ca.pem";
/// File name of the root key.
pub const KEY_FILE: &str = "ca.key";

fn err(path: &Path, message: impl Into<String>) -> AuthorityError {
    AuthorityError::Dir {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Loads the CA from `dir`, or creates one for `td` valid for `validity` when the directory holds
/// neither file. Returns the CA and whether it was created now.
pub fn load_or_create(
    dir: &Path,
    td: Option<&TrustDomain>,
    validity: Duration,
) -> Result<(Ca, bool), AuthorityError> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        err(
            dir,
            format!("CA directory: {e} (create it, e.g. with mode 0700)"),
        )
    })?;
    if !meta.is_dir() {
        return Err(err(dir, "CA directory: not a directory"));
    }
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    match (cert_path.exists(), key_path.exists()) {
        (false, false) => {
            let td = td.ok_or_else(|| {
                err(
                    dir,
                    "the directory holds no CA yet: --trust-domain is needed to create one",
                )
            })?;
            let ca = Ca::generate(td, validity).map_err(AuthorityError::Ca)?;
            write_new(&key_path, ca.key_pem().as_bytes(), 0o600)?;
            write_new(&cert_path, ca.bundle_pem().as_bytes(), 0o644)?;
            Ok((ca, true))
        }
        (true, true) => Ok((load(&cert_path, &key_path, td)?, false)),
        (true, false) => Err(err(
            &key_path,
            "missing (the certificate is there without its key)",
        )),
        (false, true) => Err(err(
            &cert_path,
            "missing (the key is there without its certificate)",
        )),
    }
}

fn load(cert_path: &Path, key_path: &Path, td: Option<&TrustDomain>) -> Result<Ca, AuthorityError> {
    let mode = std::fs::metadata(key_path)
        .map_err(|e| err(key_path, e.to_string()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(err(
            key_path,
            format!(
                "readable or writable by group or others (mode {:04o}); run chmod 600",
                mode & 0o7777
            ),
        ));
    }
    let read = |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| err(p, e.to_string()));
    let cert_pem = read(&cert_path.to_owned())?;
    let key_pem = read(&key_path.to_owned())?;
    let ca = Ca::from_pem(&cert_pem, &key_pem).map_err(|e| err(cert_path, e.to_string()))?;
    if let Some(td) = td {
        if ca.trust_domain() != td {
            return Err(err(
                cert_path,
                format!("the CA is for trust domain {}, not {td}", ca.trust_domain()),
            ));
        }
    }
    if ca.not_after() <= unix_now() {
        return Err(err(
            cert_path,
            format!(
                "the CA expired at {}; move ca.pem and ca.key away to create a new one",
                svidcar_proxy::identity::format_unix(ca.not_after())
            ),
        ));
    }
    Ok(ca)
}

/// Creates `path` with `mode` (never overwriting) and writes `bytes`.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AuthorityError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| err(path, e.to_string()))?;
    // The umask may have narrowed the mode; never widened it. Set it exactly.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| err(path, e.to_string()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| err(path, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    #[test]
    fn created_once_then_loaded_with_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, created) = load_or_create(dir.path(), Some(&td()), YEAR).unwrap();
        assert!(created);
        let key_mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let (again, created) = load_or_create(dir.path(), None, YEAR).unwrap();
        assert!(!created);
        assert_eq!(again.bundle_der(), ca.bundle_der());
        assert_eq!(again.trust_domain(), &td());
        // The loaded CA signs SVIDs that chain to the same root.
        let id = svidcar_proxy::identity::SpiffeId::parse("spiffe://example.org/w").unwrap();
        let svid = again.issue(&id, Duration::from_secs(60)).unwrap();
        let mut bundles = svidcar_proxy::identity::TrustBundles::new();
        bundles.insert(td(), vec![ca.bundle_der().clone()]).unwrap();
        svidcar_proxy::identity::verify_chain(
            std::slice::from_ref(&svid.cert_der),
            &bundles,
            rustls::pki_types::UnixTime::now(),
            svidcar_proxy::identity::Purpose::Server,
        )
        .unwrap();
    }

    #[test]
    fn clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = load_or_create(&missing, Some(&td()), YEAR)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("CA directory"), "{e}");

        let e = load_or_create(dir.path(), None, YEAR)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--trust-domain"), "{e}");

        load_or_create(dir.path(), Some(&td()), YEAR).unwrap();
        let other = TrustDomain::parse("other.org").unwrap();
        let e = load_or_create(dir.path(), Some(&other), YEAR)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not other.org"), "{e}");

        let key = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(dir.path(), None, YEAR)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ca.key") && e.contains("chmod 600"), "{e}");

        std::fs::remove_file(&key).unwrap();
        let e = load_or_create(dir.path(), None, YEAR)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ca.key: missing"), "{e}");
    }

    #[test]
    fn a_key_that_does_not_match_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        load_or_create(a.path(), Some(&td()), YEAR).unwrap();
        load_or_create(b.path(), Some(&td()), YEAR).unwrap();
        std::fs::copy(b.path().join(KEY_FILE), a.path().join(KEY_FILE)).unwrap();
        let e = load_or_create(a.path(), None, YEAR)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not belong"), "{e}");
    }
}
