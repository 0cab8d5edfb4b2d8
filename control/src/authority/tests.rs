use std::sync::atomic::{AtomicI64, Ordering};

use super::schedule::{Action, Step};
use super::*;
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use svidcar_identity::{check_leaf, unix_now, verify_chain, Purpose, TrustBundles};
use tokio_util::sync::CancellationToken;

fn td() -> TrustDomain {
    TrustDomain::parse("example.org").unwrap()
}

fn id() -> SpiffeId {
    SpiffeId::parse("spiffe://example.org/w").unwrap()
}

fn authority() -> Arc<Authority> {
    Authority::in_memory(Ca::generate(&td(), Duration::from_secs(3600)).unwrap())
}

#[test]
fn csrs_are_signed_with_our_contents_and_bad_ones_refused() {
    let a = authority();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut asked = CertificateParams::new(vec!["evil.example".into()]).unwrap();
    asked.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let csr = asked.serialize_request(&key).unwrap();
    let cert = a
        .sign_csr(&id(), csr.der(), Duration::from_secs(600))
        .unwrap();
    let leaf = check_leaf(&cert).unwrap();
    assert_eq!(leaf.id, id());
    assert!(leaf.not_after - leaf.not_before <= 630);
    let (_, x) = x509_parser::parse_x509_certificate(&cert).unwrap();
    assert!(!x.is_ca());
    assert_eq!(
        x.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
    );

    let mut tampered = csr.der().to_vec();
    let n = tampered.len();
    tampered[n - 5] ^= 0x55;
    assert!(matches!(
        a.sign_csr(&id(), &tampered, Duration::from_secs(600)),
        Err(AuthorityError::Csr(_))
    ));
    assert!(matches!(
        a.sign_csr(&id(), b"junk", Duration::from_secs(600)),
        Err(AuthorityError::Csr(_))
    ));
    let foreign = SpiffeId::parse("spiffe://other.org/w").unwrap();
    assert!(matches!(
        a.sign_csr(&foreign, csr.der(), Duration::from_secs(600)),
        Err(AuthorityError::Ca(CaError::ForeignId { .. }))
    ));
}

#[test]
fn svids_never_outlive_the_ca() {
    let a = Authority::in_memory(Ca::generate(&td(), Duration::from_secs(120)).unwrap());
    let svid = a.issue(&id(), Duration::from_secs(3600)).unwrap();
    assert!(check_leaf(&svid.cert_der).unwrap().not_after <= a.active().not_after());
    assert_eq!(a.bundle().len(), 1);
    assert_eq!(a.next_step(), None, "in-memory authorities do not rotate");
}

/// Whether `cert` chains to `root` alone at `now`.
fn signed_by(cert: &CertificateDer<'_>, root: &CertificateDer<'static>, now: i64) -> bool {
    let mut bundles = TrustBundles::new();
    bundles.insert(td(), vec![root.clone()]).unwrap();
    let at = rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(now as u64));
    verify_chain(std::slice::from_ref(cert), &bundles, at, Purpose::Server).is_ok()
}

/// Serials of the active, prepared and retired roots.
fn state(a: &Authority) -> (String, Option<String>, Vec<String>) {
    (
        a.active().serial().to_owned(),
        a.prepared().map(|p| p.serial().to_owned()),
        a.retired().iter().map(|r| r.serial.clone()).collect(),
    )
}

const CA_TTL: Duration = Duration::from_secs(3600);
const SVID_TTL: Duration = Duration::from_secs(300);

/// With tokio's time paused: a 1 h CA (backdated 60 s: lifetime 3660 s) and 5 min SVIDs. The
/// successor is prepared at half the lifetime (1770 s in), activated at 5/6 (2990 s in), and the
/// old root dropped once the last SVID it signed (at 2989 s, for 300 s) has expired.
#[tokio::test(start_paused = true)]
async fn prepares_activates_and_drops_on_schedule_and_every_phase_reloads_the_same() {
    let dir = private_tempdir();
    let clock = Clock::tokio();
    let t0 = clock.now();
    let open = || {
        Authority::open_with_clock(dir.path(), Some(&td()), CA_TTL, SVID_TTL, clock.clone())
            .unwrap()
    };
    let (a, opened) = open();
    assert_eq!(opened, Opened::Created);
    let old = a.active();
    assert_eq!(old.not_before(), t0 - 60);
    let mut bundle = a.watch_bundle();
    bundle.mark_unchanged();
    let stop = CancellationToken::new();
    let task = tokio::spawn(a.clone().run(stop.clone()));
    let sleep_to = |at: i64| {
        let wait = at - clock.now();
        tokio::time::sleep(Duration::from_secs(wait as u64))
    };

    sleep_to(t0 + 1769).await;
    assert!(!bundle.has_changed().unwrap());
    assert_eq!(a.bundle().len(), 1);

    // Prepared: published, the old root still signs.
    sleep_to(t0 + 1771).await;
    assert!(bundle.has_changed().unwrap());
    let next = a.prepared().expect("a successor at half the lifetime");
    assert_eq!(next.not_before(), t0 + 1770);
    assert_eq!(
        *bundle.borrow_and_update().clone(),
        [old.bundle_der().clone(), next.bundle_der().clone()]
    );
    let svid = a.issue(&id(), SVID_TTL).unwrap();
    assert!(signed_by(&svid.cert_der, old.bundle_der(), clock.now()));
    assert!(!signed_by(&svid.cert_der, next.bundle_der(), clock.now()));
    assert_eq!(state(&open().0), state(&a), "reloaded after preparation");
    assert_eq!(
        a.next_step(),
        Some(Step {
            action: Action::Activate,
            at: t0 + 2990
        })
    );

    sleep_to(t0 + 2989).await;
    assert!(!bundle.has_changed().unwrap());
    let last_of_old = a.issue(&id(), SVID_TTL).unwrap();
    assert!(signed_by(
        &last_of_old.cert_der,
        old.bundle_der(),
        clock.now()
    ));

    // Activated: the successor signs, the old root stays published.
    sleep_to(t0 + 2991).await;
    assert!(bundle.has_changed().unwrap());
    assert_eq!(a.active().serial(), next.serial());
    assert!(a.prepared().is_none());
    assert_eq!(
        *bundle.borrow_and_update().clone(),
        [old.bundle_der().clone(), next.bundle_der().clone()]
    );
    let svid = a.issue(&id(), SVID_TTL).unwrap();
    assert!(signed_by(&svid.cert_der, next.bundle_der(), clock.now()));
    assert!(!signed_by(&svid.cert_der, old.bundle_der(), clock.now()));
    let csr_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&csr_key)
        .unwrap();
    let cert = a.sign_csr(&id(), csr.der(), SVID_TTL).unwrap();
    assert!(signed_by(&cert, next.bundle_der(), clock.now()));
    let retired = a.retired();
    assert_eq!(retired.len(), 1);
    assert_eq!(retired[0].serial, old.serial());
    // Activated at 2990 s: 300 s later, which covers the SVID signed at 2989 s.
    assert_eq!(retired[0].drop_at, t0 + 3290);
    assert!(check_leaf(&last_of_old.cert_der).unwrap().not_after <= retired[0].drop_at);
    assert_eq!(state(&open().0), state(&a), "reloaded after activation");
    let retired_file = dir.path().join(dir::retired_file(old.serial()));
    assert!(retired_file.exists());

    // Dropped once the old root's last SVID has expired.
    sleep_to(t0 + 3290).await;
    assert_eq!(a.bundle().len(), 2);
    assert!(signed_by(
        &last_of_old.cert_der,
        old.bundle_der(),
        t0 + 3289
    ));
    sleep_to(t0 + 3292).await;
    assert!(bundle.has_changed().unwrap());
    assert_eq!(
        *bundle.borrow_and_update().clone(),
        [next.bundle_der().clone()]
    );
    assert!(a.retired().is_empty());
    assert!(!retired_file.exists());
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, [dir::KEY_FILE, dir::CERT_FILE]);
    assert_eq!(state(&open().0), state(&a), "reloaded after the drop");

    // The next generation follows the same rule: prepared at half the successor's lifetime.
    assert_eq!(
        a.next_step(),
        Some(Step {
            action: Action::Prepare,
            at: t0 + 1770 + 1800
        })
    );
    stop.cancel();
    task.await.unwrap();
}

/// A clock the test sets.
fn manual(at: i64) -> (Clock, Arc<AtomicI64>) {
    let now = Arc::new(AtomicI64::new(at));
    let read = now.clone();
    (Clock::from_fn(move || read.load(Ordering::SeqCst)), now)
}

fn open_at(dir: &Path, clock: &Clock) -> Arc<Authority> {
    Authority::open_with_clock(dir, Some(&td()), CA_TTL, SVID_TTL, clock.clone())
        .unwrap()
        .0
}

#[test]
fn a_root_stays_published_while_an_svid_it_signed_for_longer_is_valid() {
    let dir = private_tempdir();
    let t0 = unix_now();
    let (clock, now) = manual(t0);
    let a = open_at(dir.path(), &clock);
    now.store(t0 + 2000, Ordering::SeqCst);
    a.catch_up().unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap())
        .unwrap();
    // A CSR signed for 25 min while the configured SVID TTL is 5 min.
    let cert = a
        .sign_csr(&id(), csr.der(), Duration::from_secs(1500))
        .unwrap();
    assert_eq!(check_leaf(&cert).unwrap().not_after, t0 + 3500);
    // Activated at 5/6 of the lifetime (2990 s in): kept until 3500 s, not 2990 + 300 s.
    now.store(t0 + 2990, Ordering::SeqCst);
    a.catch_up().unwrap();
    assert_eq!(a.retired()[0].drop_at, t0 + 3500);
}

#[test]
fn down_through_the_prepare_and_activate_points_the_successor_is_published_before_it_signs() {
    let dir = private_tempdir();
    let t0 = unix_now();
    let (clock, now) = manual(t0);
    let first = open_at(dir.path(), &clock).active();
    // Back at 3400 s: prepared at once, activated 200 s later when the old root expires
    // (the publication delay of 300 s is capped by the expiry).
    now.store(t0 + 3400, Ordering::SeqCst);
    let a = open_at(dir.path(), &clock);
    assert_eq!(a.active().serial(), first.serial());
    assert_eq!(a.prepared().unwrap().not_before(), t0 + 3400);
    assert_eq!(
        a.next_step(),
        Some(Step {
            action: Action::Activate,
            at: t0 + 3600
        })
    );
    // Back at 3000 s instead: activation waits the full publication delay.
    let dir = private_tempdir();
    now.store(t0, Ordering::SeqCst);
    open_at(dir.path(), &clock);
    now.store(t0 + 3000, Ordering::SeqCst);
    let a = open_at(dir.path(), &clock);
    assert_eq!(
        a.next_step(),
        Some(Step {
            action: Action::Activate,
            at: t0 + 3300
        })
    );
}

#[test]
fn an_expired_root_with_a_valid_successor_is_replaced_by_it_at_open() {
    let dir = private_tempdir();
    let t0 = unix_now();
    let (clock, now) = manual(t0);
    let first = open_at(dir.path(), &clock);
    now.store(t0 + 1800, Ordering::SeqCst);
    first.catch_up().unwrap();
    let next = first.prepared().unwrap();
    // Down from before the activation until after the old root's expiry.
    now.store(t0 + 3700, Ordering::SeqCst);
    let a = open_at(dir.path(), &clock);
    assert_eq!(a.active().serial(), next.serial());
    assert!(
        a.retired().is_empty(),
        "an expired root's SVIDs are all gone"
    );
    assert!(!a.bundle().contains(first.active().bundle_der()));
    // Past half of the successor's lifetime already: its own successor is prepared at once.
    assert_eq!(a.bundle().len(), 2);
    a.issue(&id(), SVID_TTL).unwrap();
}

#[test]
fn when_every_root_has_expired_a_new_one_is_created() {
    let dir = private_tempdir();
    let t0 = unix_now();
    let (clock, now) = manual(t0);
    let first = open_at(dir.path(), &clock);
    now.store(t0 + 1800, Ordering::SeqCst);
    first.catch_up().unwrap();
    let next = first.prepared().unwrap();
    now.store(t0 + 10 * 3600, Ordering::SeqCst);
    let (a, opened) =
        Authority::open_with_clock(dir.path(), Some(&td()), CA_TTL, SVID_TTL, clock.clone())
            .unwrap();
    assert_eq!(opened, Opened::Loaded);
    let fresh = a.active();
    assert!(fresh.serial() != first.active().serial() && fresh.serial() != next.serial());
    assert_eq!(fresh.not_after(), t0 + 10 * 3600 + 3600);
    assert!(a.prepared().is_none());
    assert_eq!(a.bundle().len(), 1);
    a.issue(&id(), SVID_TTL).unwrap();
    // Stored: the next start loads it.
    assert_eq!(state(&open_at(dir.path(), &clock)), state(&a));
}

/// A step that cannot be stored is not taken, and is retried.
#[tokio::test(start_paused = true)]
async fn a_step_that_cannot_be_stored_is_retried() {
    let parent = private_tempdir();
    let dir = parent.path().join("ca");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let clock = Clock::tokio();
    let t0 = clock.now();
    let (a, _) =
        Authority::open_with_clock(&dir, Some(&td()), CA_TTL, SVID_TTL, clock.clone()).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(a.clone().run(stop.clone()));
    let moved = parent.path().join("away");
    std::fs::rename(&dir, &moved).unwrap();
    tokio::time::sleep(Duration::from_secs(1771)).await;
    assert!(a.prepared().is_none(), "not prepared without storing it");
    assert_eq!(a.bundle().len(), 1);
    std::fs::rename(&moved, &dir).unwrap();
    tokio::time::sleep(Duration::from_secs(11)).await;
    let next = a.prepared().expect("prepared on a retry");
    assert!(dir.join(dir::NEXT_CERT_FILE).exists());
    assert_eq!(a.bundle().len(), 2);
    // Due at 1770 s, failed, retried 10 s later.
    assert_eq!(next.not_before(), t0 + 1780);
    stop.cancel();
    task.await.unwrap();
}

#[test]
fn one_process_per_ca_directory() {
    let dir = private_tempdir();
    let (first, _) = Authority::open(dir.path(), Some(&td()), CA_TTL, SVID_TTL).unwrap();
    let e = Authority::open(dir.path(), Some(&td()), CA_TTL, SVID_TTL)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(".lock") && e.contains("another svidcar process holds this CA directory"),
        "{e}"
    );
    drop(first);
    Authority::open(dir.path(), Some(&td()), CA_TTL, SVID_TTL).unwrap();
}

/// A temporary directory usable as a CA directory: open to its owner only (`tempdir` follows
/// the umask, often 0755, which the CA directory check refuses).
pub(crate) fn private_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}
