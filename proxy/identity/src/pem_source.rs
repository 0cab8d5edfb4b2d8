//! Credentials from PEM files in the layout spiffe-helper writes (certificate chain, private key,
//! trust bundle), reloaded when the files change. A bad update is reported and the previous
//! credentials stay in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use crate::bundle::TrustBundles;
use crate::credentials::{CredentialStore, Credentials};
use crate::svid::SvidError;

/// Where the PEM files live.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PemPaths {
    /// The X.509-SVID chain, leaf first (spiffe-helper: `svid.pem`).
    pub cert: PathBuf,
    /// The PKCS#8 (or SEC1) private key (spiffe-helper: `svid_key.pem`).
    pub key: PathBuf,
    /// CA certificates of our own trust domain (spiffe-helper: `svid_bundle.pem`).
    pub bundle: PathBuf,
}

/// Why the PEM files could not be turned into credentials.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file holds no usable PEM block of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The certificates or key are not a valid SVID.
    #[error("{path}: {source}")]
    Svid {
        /// The file that holds the SVID.
        path: PathBuf,
        /// Why it was refused.
        source: SvidError,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Parses every CERTIFICATE block of a PEM file; at least one is required.
pub fn parse_certs(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Pem {
            path: path.to_owned(),
            what: format!("bad PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(PemError::Pem {
            path: path.to_owned(),
            what: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// Parses the first private key block of a PEM file.
pub fn parse_key(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| PemError::Pem {
        path: path.to_owned(),
        what: format!("no usable private key: {e}"),
    })
}

/// The raw bytes of the three files, to notice changes cheaply.
#[derive(PartialEq, Eq)]
struct Snapshot {
    cert: Vec<u8>,
    key: Vec<u8>,
    bundle: Vec<u8>,
}

fn snapshot(paths: &PemPaths) -> Result<Snapshot, PemError> {
    Ok(Snapshot {
        cert: read(&paths.cert)?,
        key: read(&paths.key)?,
        bundle: read(&paths.bundle)?,
    })
}

fn credentials(
    paths: &PemPaths,
    snap: &Snapshot,
    provider: &CryptoProvider,
) -> Result<Credentials, PemError> {
    let chain = parse_certs(&paths.cert, &snap.cert)?;
    let key = parse_key(&paths.key, &snap.key)?;
    let bundle = parse_certs(&paths.bundle, &snap.bundle)?;
    let svid_err = |source| PemError::Svid {
        path: paths.cert.clone(),
        source,
    };
    let td = crate::svid::check_leaf(&chain[0])
        .map_err(svid_err)?
        .id
        .trust_domain();
    let mut bundles = TrustBundles::new();
    bundles
        .insert(td, bundle)
        .map_err(|source| PemError::Svid {
            path: paths.bundle.clone(),
            source,
        })?;
    Credentials::new(chain, key, bundles, provider).map_err(svid_err)
}

/// Loads the files once.
pub fn load(paths: &PemPaths, provider: &CryptoProvider) -> Result<Credentials, PemError> {
    credentials(paths, &snapshot(paths)?, provider)
}

/// Loads the files into `store` now (unless it holds these credentials already), then polls them every `interval` and swaps in a new set
/// when their contents change, until `cancel` fires. Poll (rather than inotify) so that the
/// atomic symlink swaps of Kubernetes secret volumes and spiffe-helper are always seen.
pub async fn watch(
    paths: PemPaths,
    store: Arc<CredentialStore>,
    provider: Arc<CryptoProvider>,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut last: Option<Snapshot> = None;
    loop {
        match snapshot(&paths) {
            Ok(snap) if last.as_ref() != Some(&snap) => {
                match credentials(&paths, &snap, &provider) {
                    // The caller usually loaded these very files into the store before starting
                    // the watch: installing them again would count as a rotation.
                    Ok(creds) if store.current().is_some_and(|c| c.same_material(&creds)) => {
                        tracing::debug!(id = %creds.id(), "SVID files hold the credentials in force");
                    }
                    Ok(creds) => {
                        tracing::info!(
                            id = %creds.id(),
                            serial = %creds.leaf.serial,
                            not_after = creds.leaf.not_after,
                            "loaded SVID from files"
                        );
                        store.set(creds);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring SVID files; keeping current credentials")
                    }
                }
                last = Some(snap);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read SVID files; keeping current credentials")
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use rcgen::string::Ia5String;
    use rcgen::{CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose, SanType};

    use super::*;
    use crate::tls::provider;

    fn key() -> KeyPair {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    }

    /// Writes a fresh SVID for `id` (and the CA's bundle) into the files of `paths`.
    fn write_svid(paths: &PemPaths, ca: &CertifiedIssuer<'static, KeyPair>, id: &str) {
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(Ia5String::try_from(id).unwrap())];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let k = key();
        let leaf = p.signed_by(&k, &**ca).unwrap();
        std::fs::write(&paths.cert, leaf.pem()).unwrap();
        std::fs::write(&paths.key, k.serialize_pem()).unwrap();
        std::fs::write(&paths.bundle, ca.pem()).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_files_loaded_at_start_are_not_installed_again_by_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let paths = PemPaths {
            cert: dir.path().join("svid.pem"),
            key: dir.path().join("svid_key.pem"),
            bundle: dir.path().join("svid_bundle.pem"),
        };
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca = CertifiedIssuer::self_signed(p, key()).unwrap();
        write_svid(&paths, &ca, "spiffe://td/app");

        // What `svidcar run` does: load once (failing hard on bad files), then watch.
        let store = CredentialStore::new();
        store.set(load(&paths, &provider()).unwrap());
        let cancel = CancellationToken::new();
        let watch = tokio::spawn(watch(
            paths.clone(),
            store.clone(),
            provider(),
            Duration::from_secs(1),
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(store.installs(), 1, "unchanged files are not a rotation");

        // A real rotation is still installed, once.
        write_svid(&paths, &ca, "spiffe://td/app");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(store.installs(), 2);
        cancel.cancel();
        watch.await.unwrap();
    }
}
