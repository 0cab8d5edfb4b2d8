use super::*;
use svidcar_identity::unix_now;

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn td() -> TrustDomain {
    TrustDomain::parse("example.org").unwrap()
}

fn load(dir: &Path) -> Result<(RootSet, bool), AuthorityError> {
    load_or_create(dir, Some(&td()), YEAR, unix_now())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The names in `dir`, sorted.
fn ls(dir: &Path) -> Vec<String> {
    file_names(dir).unwrap()
}

#[test]
fn created_once_then_loaded_with_a_private_key_file() {
    let dir = super::super::tests::private_tempdir();
    let (set, created) = load(dir.path()).unwrap();
    assert!(created);
    assert_eq!(ls(dir.path()), [KEY_FILE, CERT_FILE]);
    assert_eq!(mode(&dir.path().join(KEY_FILE)), 0o600);
    let (again, created) = load_or_create(dir.path(), None, YEAR, unix_now()).unwrap();
    assert!(!created);
    assert_eq!(again.active.bundle_der(), set.active.bundle_der());
    assert_eq!(again.active.serial(), set.active.serial());
    assert_eq!(again.active.trust_domain(), &td());
    assert!(again.prepared.is_none() && again.retired.is_empty());
    // The loaded CA signs SVIDs that chain to the same root.
    let id = svidcar_identity::SpiffeId::parse("spiffe://example.org/w").unwrap();
    let svid = again.active.issue(&id, Duration::from_secs(60)).unwrap();
    let mut bundles = svidcar_identity::TrustBundles::new();
    bundles
        .insert(td(), vec![set.active.bundle_der().clone()])
        .unwrap();
    svidcar_identity::verify_chain(
        std::slice::from_ref(&svid.cert_der),
        &bundles,
        rustls::pki_types::UnixTime::now(),
        svidcar_identity::Purpose::Server,
    )
    .unwrap();
}

#[test]
fn clear_errors() {
    let dir = super::super::tests::private_tempdir();
    let missing = dir.path().join("nope");
    let e = load(&missing).unwrap_err().to_string();
    assert!(e.contains("nope") && e.contains("CA directory"), "{e}");

    let e = load_or_create(dir.path(), None, YEAR, unix_now())
        .unwrap_err()
        .to_string();
    assert!(e.contains("--trust-domain"), "{e}");

    load(dir.path()).unwrap();
    let other = TrustDomain::parse("other.org").unwrap();
    let e = load_or_create(dir.path(), Some(&other), YEAR, unix_now())
        .unwrap_err()
        .to_string();
    assert!(e.contains("ca.pem") && e.contains("not other.org"), "{e}");

    let key = dir.path().join(KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("ca.key") && e.contains("chmod 600"), "{e}");

    std::fs::remove_file(&key).unwrap();
    let e = load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("ca.key: missing"), "{e}");
}

#[test]
fn a_directory_open_to_others_is_refused_before_anything_is_written() {
    let dir = super::super::tests::private_tempdir();
    for mode in [0o755, 0o750, 0o701] {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        let want = format!("(mode {mode:04o})");
        assert!(
            e.contains(&want) && e.contains(&format!("chmod 700 {}", dir.path().display())),
            "{e}"
        );
        let e = inspect(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&want), "{e}");
        assert!(
            file_names(dir.path()).unwrap().is_empty(),
            "nothing written"
        );
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(inspect(dir.path()).unwrap(), None, "no CA yet");
    assert!(
        file_names(dir.path()).unwrap().is_empty(),
        "inspect writes nothing"
    );
    load(dir.path()).unwrap();
    assert_eq!(inspect(dir.path()).unwrap(), Some(td()));
}

#[test]
fn a_key_that_does_not_match_is_refused() {
    let a = super::super::tests::private_tempdir();
    let b = super::super::tests::private_tempdir();
    load(a.path()).unwrap();
    load(b.path()).unwrap();
    std::fs::copy(b.path().join(KEY_FILE), a.path().join(KEY_FILE)).unwrap();
    let e = load(a.path()).unwrap_err().to_string();
    assert!(e.contains("ca.pem") && e.contains("does not belong"), "{e}");
}

/// A directory laid out by hand: an active root A and a successor B.
struct Layout {
    dir: tempfile::TempDir,
    a: Ca,
    b: Ca,
    now: i64,
}

impl Layout {
    fn new() -> Self {
        let now = unix_now();
        let a = Ca::generate_at(&td(), now - 600, Duration::from_secs(3600)).unwrap();
        let b = Ca::generate_successor(&td(), now - 100, Duration::from_secs(3600)).unwrap();
        Layout {
            dir: super::super::tests::private_tempdir(),
            a,
            b,
            now,
        }
    }

    fn put(&self, name: &str, contents: &str, mode: u32) {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn active(&self, ca: &Ca) {
        self.put(CERT_FILE, ca.bundle_pem(), 0o644);
        self.put(KEY_FILE, &ca.key_pem(), 0o600);
    }

    fn next(&self, ca: &Ca) {
        self.put(NEXT_CERT_FILE, ca.bundle_pem(), 0o644);
        self.put(NEXT_KEY_FILE, &ca.key_pem(), 0o600);
    }

    fn retired_record(&self, ca: &Ca) -> RetiredRoot {
        RetiredRoot::of(ca, self.now - 10, self.now + 290)
    }

    fn retire(&self, ca: &Ca) {
        let r = self.retired_record(ca);
        let json = serde_json::to_string(&Record {
            retired_at: r.retired_at,
            drop_at: r.drop_at,
            certificate: r.cert_pem,
        })
        .unwrap();
        self.put(&retired_file(ca.serial()), &json, 0o644);
    }

    fn load(&self) -> Result<RootSet, AuthorityError> {
        load_or_create(self.dir.path(), Some(&td()), YEAR, self.now).map(|(set, created)| {
            assert!(!created);
            set
        })
    }

    fn ls(&self) -> Vec<String> {
        ls(self.dir.path())
    }
}

fn serials(set: &RootSet) -> (String, Option<String>, Vec<String>) {
    (
        set.active.serial().to_owned(),
        set.prepared.as_ref().map(|p| p.serial().to_owned()),
        set.retired.iter().map(|r| r.serial.clone()).collect(),
    )
}

#[test]
fn every_phase_loads_as_stored() {
    let l = Layout::new();
    l.active(&l.a);
    let (a, b) = (l.a.serial().to_owned(), l.b.serial().to_owned());
    assert_eq!(serials(&l.load().unwrap()), (a.clone(), None, vec![]));

    prepare(l.dir.path(), &l.b).unwrap();
    assert_eq!(mode(&l.dir.path().join(NEXT_KEY_FILE)), 0o600);
    let set = l.load().unwrap();
    assert_eq!(serials(&set), (a.clone(), Some(b.clone()), vec![]));
    assert_eq!(set.bundle().len(), 2);

    let retiring = l.retired_record(&l.a);
    activate(l.dir.path(), Some(&retiring), &l.b).unwrap();
    let set = l.load().unwrap();
    assert_eq!(serials(&set), (b.clone(), None, vec![a.clone()]));
    assert_eq!(set.retired, [retiring]);
    assert_eq!(set.bundle().len(), 2);
    assert_eq!(l.ls(), [KEY_FILE, CERT_FILE, retired_file(&a).as_str()]);

    drop_retired(l.dir.path(), &a).unwrap();
    assert_eq!(serials(&l.load().unwrap()), (b, None, vec![]));
    assert_eq!(l.ls(), [KEY_FILE, CERT_FILE]);
}

#[test]
fn a_crash_at_any_point_of_an_activation_loads_the_successor_active() {
    let l = Layout::new();
    let (a, b) = (l.a.serial().to_owned(), l.b.serial().to_owned());
    let after = (b.clone(), None, vec![a.clone()]);
    let done = vec![KEY_FILE.to_owned(), CERT_FILE.to_owned(), retired_file(&a)];

    // Crashed right after the retired record (the commit point).
    l.active(&l.a);
    l.next(&l.b);
    l.retire(&l.a);
    assert_eq!(serials(&l.load().unwrap()), after, "after the record");
    assert_eq!(l.ls(), done);
    // And nothing more happens on the next start.
    assert_eq!(serials(&l.load().unwrap()), after);

    // ...after ca.key became the successor's (ca.pem still the old root's).
    std::fs::remove_file(l.dir.path().join(retired_file(&a))).unwrap();
    l.put(CERT_FILE, l.a.bundle_pem(), 0o644);
    l.put(KEY_FILE, &l.b.key_pem(), 0o600);
    l.next(&l.b);
    l.retire(&l.a);
    assert_eq!(serials(&l.load().unwrap()), after, "after ca.key");
    // The same without a retired record (the old root had expired).
    std::fs::remove_file(l.dir.path().join(retired_file(&a))).unwrap();
    l.put(CERT_FILE, l.a.bundle_pem(), 0o644);
    l.put(KEY_FILE, &l.b.key_pem(), 0o600);
    l.next(&l.b);
    assert_eq!(serials(&l.load().unwrap()), (b.clone(), None, vec![]));

    // ...after ca.pem, before the successor's files were removed.
    l.next(&l.b);
    assert_eq!(serials(&l.load().unwrap()), (b.clone(), None, vec![]));
    assert_eq!(l.ls(), [KEY_FILE, CERT_FILE]);

    // ...between removing next.pem and next.key.
    l.put(NEXT_KEY_FILE, &l.b.key_pem(), 0o600);
    assert_eq!(serials(&l.load().unwrap()), (b, None, vec![]));
    assert_eq!(l.ls(), [KEY_FILE, CERT_FILE]);
}

#[test]
fn interrupted_preparations_and_creations_are_cleaned_up_or_finished() {
    let l = Layout::new();
    let a = l.a.serial().to_owned();
    // A preparation that wrote only the key, plus stray temporary files.
    l.active(&l.a);
    l.put(NEXT_KEY_FILE, &l.b.key_pem(), 0o600);
    l.put("next.pem.tmp", "half a certi", 0o644);
    l.put(&format!("{}.tmp", retired_file("00ff")), "{", 0o644);
    l.put("notes.txt", "the operator's", 0o644);
    assert_eq!(serials(&l.load().unwrap()), (a, None, vec![]));
    assert_eq!(l.ls(), [KEY_FILE, CERT_FILE, "notes.txt"]);

    // A creation (prepare, then activate) that stopped after the preparation...
    let fresh = Layout::new();
    fresh.next(&fresh.b);
    let set = fresh.load().unwrap();
    assert_eq!(set.active.serial(), fresh.b.serial());
    assert_eq!(fresh.ls(), [KEY_FILE, CERT_FILE]);
    // ...or after ca.key.
    let fresh = Layout::new();
    fresh.next(&fresh.b);
    fresh.put(KEY_FILE, &fresh.b.key_pem(), 0o600);
    assert_eq!(fresh.load().unwrap().active.serial(), fresh.b.serial());
    // ...or before next.pem: starts over.
    let fresh = Layout::new();
    fresh.put(NEXT_KEY_FILE, &fresh.b.key_pem(), 0o600);
    let (set, created) = load_or_create(fresh.dir.path(), Some(&td()), YEAR, fresh.now).unwrap();
    assert!(created);
    assert_ne!(set.active.serial(), fresh.b.serial());
    assert_eq!(fresh.ls(), [KEY_FILE, CERT_FILE]);
}

#[test]
fn expired_roots_load_so_that_the_schedule_can_replace_them() {
    let l = Layout::new();
    let old = Ca::generate_at(&td(), l.now - 7200, Duration::from_secs(3600)).unwrap();
    l.active(&old);
    let set = l.load().unwrap();
    assert!(set.active.not_after() < l.now);
}

/// A way to fill a directory.
type LayOut<'a> = Box<dyn Fn(&Layout) + 'a>;

#[test]
fn inconsistent_directories_stop_start_up_naming_the_file() {
    let other = TrustDomain::parse("other.org").unwrap();
    let foreign = Ca::generate_successor(&other, unix_now(), Duration::from_secs(3600)).unwrap();
    let cases: Vec<(&str, LayOut, &str)> = vec![
        (
            "a successor of another trust domain",
            Box::new(|l| {
                l.active(&l.a);
                l.next(&foreign);
            }),
            "next.pem: the CA is for trust domain other.org",
        ),
        (
            "a readable successor key",
            Box::new(|l| {
                l.active(&l.a);
                l.next(&l.b);
                l.put(NEXT_KEY_FILE, &l.b.key_pem(), 0o640);
            }),
            "next.key: readable or writable by group or others (mode 0640)",
        ),
        (
            "a successor key that does not match",
            Box::new(|l| {
                l.active(&l.a);
                l.next(&l.b);
                l.put(NEXT_KEY_FILE, &l.a.key_pem(), 0o600);
            }),
            "next.pem: the key does not belong",
        ),
        (
            "a successor certificate without its key",
            Box::new(|l| {
                l.active(&l.a);
                l.put(NEXT_CERT_FILE, l.b.bundle_pem(), 0o644);
            }),
            "next.key: No such file",
        ),
        (
            "a key without its certificate and another successor",
            Box::new(|l| {
                l.put(KEY_FILE, &l.a.key_pem(), 0o600);
                l.next(&l.b);
            }),
            "ca.pem: missing (the key is there without its certificate)",
        ),
        (
            "the active root recorded as retired, no successor",
            Box::new(|l| {
                l.active(&l.a);
                l.retire(&l.a);
            }),
            "records a root as retired that is still active",
        ),
        (
            "a retired root of another trust domain",
            Box::new(|l| {
                l.active(&l.a);
                l.retire(&foreign);
            }),
            "the root is for trust domain other.org, not example.org",
        ),
        (
            "a retired record under another serial's name",
            Box::new(|l| {
                l.active(&l.a);
                l.retire(&l.b);
                std::fs::rename(
                    l.dir.path().join(retired_file(l.b.serial())),
                    l.dir.path().join(retired_file("0123")),
                )
                .unwrap();
            }),
            "retired-0123.json: holds the root with serial",
        ),
        (
            "a broken retired record",
            Box::new(|l| {
                l.active(&l.a);
                l.put(&retired_file("0123"), "{\"retired_at\": 1}", 0o644);
            }),
            "retired-0123.json: missing field",
        ),
    ];
    for (name, lay_out, want) in cases {
        let l = Layout::new();
        lay_out(&l);
        let before = l.ls();
        let e = l.load().unwrap_err().to_string();
        assert!(e.contains(want), "{name}: {e}");
        assert_eq!(l.ls(), before, "{name}: files changed");
    }
}

#[test]
fn a_preparation_retried_after_a_failure_replaces_its_orphan_key() {
    let l = Layout::new();
    l.active(&l.a);
    l.put(NEXT_KEY_FILE, &l.a.key_pem(), 0o600);
    prepare(l.dir.path(), &l.b).unwrap();
    let set = l.load().unwrap();
    assert_eq!(set.prepared.unwrap().serial(), l.b.serial());
}

#[test]
fn a_preparation_retried_after_an_unconfirmed_pair_replaces_it() {
    // The pair was written but the preparation failed (its directory fsync, say), so it was
    // never published: the retry replaces it instead of failing on it until the CA expires.
    let l = Layout::new();
    l.active(&l.a);
    l.next(&l.b);
    let c = Ca::generate_successor(&td(), l.now - 50, Duration::from_secs(3600)).unwrap();
    prepare(l.dir.path(), &c).unwrap();
    assert_eq!(
        std::fs::read_to_string(l.dir.path().join(NEXT_KEY_FILE)).unwrap(),
        c.key_pem()
    );
    let set = l.load().unwrap();
    assert_eq!(set.prepared.unwrap().serial(), c.serial());
}
