//! Registration entries: which callers get which SPIFFE IDs. Pure: parsing a YAML document and
//! matching an attested [`Workload`] against the entries; reading the file is the caller's job.
//!
//! ```yaml
//! entries:
//!   - spiffe_id: spiffe://example.org/ns/shop/sa/backend
//!     selectors: ["unix:uid:1001", "unix:path:/usr/local/bin/backend"]
//!   - spiffe_id: spiffe://example.org/admin
//!     selectors: ["unix:uid:0", "unix:sha256:<64 lowercase hex digits>"]
//!     hint: admin            # optional, unique in the file
//! federates_with:            # optional: foreign trust domains' bundles (PEM files)
//!   other.org: /etc/svidcar/bundles/other.org.pem
//! ```
//!
//! Every selector of an entry must match the caller. A caller matching several entries gets
//! several SVIDs, in file order; the first is its default identity. Entries naming the same
//! SPIFFE ID give one SVID.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use svidcar_identity::{SpiffeId, TrustDomain};

/// One property of the calling process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// `unix:uid:<n>`: the effective user ID.
    Uid(u32),
    /// `unix:gid:<n>`: the effective group ID.
    Gid(u32),
    /// `unix:path:<absolute path>`: the executable (`/proc/<pid>/exe`).
    Path(PathBuf),
    /// `unix:sha256:<hex>`: SHA-256 of the executable, lowercase hex.
    Sha256(String),
}

impl FromStr for Selector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("unix:")
            .ok_or_else(|| format!("selector {s:?}: only unix: selectors are supported"))?;
        let (kind, value) = rest
            .split_once(':')
            .ok_or_else(|| format!("selector {s:?}: expected unix:<type>:<value>"))?;
        let number = |what: &str| {
            value
                .parse::<u32>()
                .map_err(|_| format!("selector {s:?}: {what} must be a number"))
        };
        match kind {
            "uid" => Ok(Selector::Uid(number("uid")?)),
            "gid" => Ok(Selector::Gid(number("gid")?)),
            "path" if value.starts_with('/') => Ok(Selector::Path(PathBuf::from(value))),
            "path" => Err(format!("selector {s:?}: path must be absolute")),
            "sha256"
                if value.len() == 64
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
            {
                Ok(Selector::Sha256(value.to_owned()))
            }
            "sha256" => Err(format!(
                "selector {s:?}: sha256 must be 64 lowercase hex digits"
            )),
            _ => Err(format!(
                "selector {s:?}: unknown type {kind:?} (use uid, gid, path or sha256)"
            )),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Uid(n) => write!(f, "unix:uid:{n}"),
            Selector::Gid(n) => write!(f, "unix:gid:{n}"),
            Selector::Path(p) => write!(f, "unix:path:{}", p.display()),
            Selector::Sha256(h) => write!(f, "unix:sha256:{h}"),
        }
    }
}

/// What attestation found out about a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Effective user ID (`SO_PEERCRED`).
    pub uid: u32,
    /// Effective group ID (`SO_PEERCRED`).
    pub gid: u32,
    /// Process ID (`SO_PEERCRED`).
    pub pid: i32,
    /// The executable, if it could be read.
    pub path: Option<PathBuf>,
    /// SHA-256 of the executable (lowercase hex), if asked for and readable.
    pub sha256: Option<String>,
}

impl Selector {
    /// Whether the caller has this property. Unknown properties never match.
    pub fn matches(&self, w: &Workload) -> bool {
        match self {
            Selector::Uid(n) => w.uid == *n,
            Selector::Gid(n) => w.gid == *n,
            Selector::Path(p) => w.path.as_deref() == Some(p.as_path()),
            Selector::Sha256(h) => w.sha256.as_deref() == Some(h.as_str()),
        }
    }
}

/// A SPIFFE ID and the selectors a caller must all match to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The identity issued.
    pub spiffe_id: SpiffeId,
    /// All must match; never empty.
    pub selectors: Vec<Selector>,
    /// Optional hint sent with the SVID (unique in the file).
    pub hint: Option<String>,
}

impl Entry {
    /// Whether every selector matches the caller.
    pub fn matches(&self, w: &Workload) -> bool {
        self.selectors.iter().all(|s| s.matches(w))
    }
}

/// The SPIFFE IDs (with their hints) a caller gets, in entry order, each ID once.
pub fn matching<'a>(entries: &'a [Entry], w: &Workload) -> Vec<&'a Entry> {
    let mut seen = HashSet::new();
    entries
        .iter()
        .filter(|e| e.matches(w) && seen.insert(&e.spiffe_id))
        .collect()
}

/// Whether attesting callers needs the executable's hash (costly: the file is read).
pub fn needs_sha256(entries: &[Entry]) -> bool {
    entries
        .iter()
        .flat_map(|e| &e.selectors)
        .any(|s| matches!(s, Selector::Sha256(_)))
}

/// A registration file that cannot be used, naming the file and the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct RegistrationError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, starting with the entry (`entries[2] (spiffe://…)`).
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    entries: Vec<RawEntry>,
    #[serde(default)]
    federates_with: BTreeMap<String, PathBuf>,
}

/// A parsed registration file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrationFile {
    /// The entries, in file order.
    pub entries: Vec<Entry>,
    /// Foreign trust domains whose bundles are sent to every caller, and their PEM files.
    pub federates_with: BTreeMap<TrustDomain, PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    spiffe_id: String,
    selectors: Vec<String>,
    #[serde(default)]
    hint: Option<String>,
}

/// Parses a registration document. Every SPIFFE ID must belong to `td` (the CA's trust domain);
/// federated trust domains must be others.
pub fn parse(
    path: &Path,
    text: &str,
    td: &TrustDomain,
) -> Result<RegistrationFile, RegistrationError> {
    let err = |message: String| RegistrationError {
        path: path.to_owned(),
        message,
    };
    let file: File = serde_yaml_ng::from_str(text).map_err(|e| err(e.to_string()))?;
    let mut hints = HashSet::new();
    let mut entries = Vec::with_capacity(file.entries.len());
    for (i, raw) in file.entries.into_iter().enumerate() {
        let at = format!("entries[{i}] ({})", raw.spiffe_id);
        let spiffe_id =
            SpiffeId::parse(&raw.spiffe_id).map_err(|e| err(format!("{at}: spiffe_id: {e}")))?;
        if spiffe_id.trust_domain_str() != td.as_str() {
            return Err(err(format!(
                "{at}: spiffe_id: not in trust domain {td} (the CA's)"
            )));
        }
        if raw.selectors.is_empty() {
            return Err(err(format!("{at}: selectors: at least one is required")));
        }
        let selectors = raw
            .selectors
            .iter()
            .map(|s| s.parse::<Selector>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(format!("{at}: {e}")))?;
        if let Some(h) = &raw.hint {
            if h.is_empty() {
                return Err(err(format!("{at}: hint: must not be empty when set")));
            }
            if !hints.insert(h.clone()) {
                return Err(err(format!("{at}: hint: {h:?} is already used")));
            }
        }
        entries.push(Entry {
            spiffe_id,
            selectors,
            hint: raw.hint,
        });
    }
    let mut federates_with = BTreeMap::new();
    for (name, bundle) in file.federates_with {
        let at = format!("federates_with.{name}");
        let other =
            TrustDomain::parse(&name).map_err(|e| err(format!("{at}: trust domain: {e}")))?;
        if &other == td {
            return Err(err(format!("{at}: that is our own trust domain")));
        }
        if !bundle.is_absolute() {
            return Err(err(format!("{at}: the bundle path must be absolute")));
        }
        federates_with.insert(other, bundle);
    }
    Ok(RegistrationFile {
        entries,
        federates_with,
    })
}

/// An entry for `id` matching uid 0 (the tests' caller), for unit tests of other modules.
#[cfg(test)]
pub(crate) fn uid0_entry(id: &str) -> Entry {
    Entry {
        spiffe_id: SpiffeId::parse(id).unwrap_or_else(|e| panic!("test SPIFFE ID {id}: {e}")),
        selectors: vec![Selector::Uid(0)],
        hint: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    #[test]
    fn the_example_in_deploy_is_valid() {
        let text = include_str!("../../../deploy/identity/registration.yaml");
        let file = parse(Path::new("deploy/identity/registration.yaml"), text, &td()).unwrap();
        assert_eq!(file.entries.len(), 2);
    }

    fn workload(uid: u32, gid: u32) -> Workload {
        Workload {
            uid,
            gid,
            pid: 42,
            path: Some("/usr/bin/app".into()),
            sha256: Some("ab".repeat(32)),
        }
    }

    fn parse_ok(text: &str) -> Vec<Entry> {
        parse(Path::new("reg.yaml"), text, &td()).unwrap().entries
    }

    fn parse_err(text: &str) -> String {
        parse(Path::new("reg.yaml"), text, &td())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn selectors_parse_and_print_back() {
        for s in [
            "unix:uid:1337",
            "unix:gid:0",
            "unix:path:/usr/bin/app",
            &format!("unix:sha256:{}", "0f".repeat(32)),
        ] {
            assert_eq!(s.parse::<Selector>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn bad_selectors_say_why() {
        for (s, why) in [
            ("k8s:ns:default", "only unix:"),
            ("unix:uid", "expected unix:<type>:<value>"),
            ("unix:uid:-1", "uid must be a number"),
            ("unix:uid:abc", "uid must be a number"),
            ("unix:gid:4294967296", "gid must be a number"),
            ("unix:path:relative/app", "must be absolute"),
            ("unix:sha256:ABCD", "64 lowercase hex"),
            (
                &format!("unix:sha256:{}", "AB".repeat(32)),
                "64 lowercase hex",
            ),
            ("unix:user:root", "unknown type \"user\""),
        ] {
            let e = s.parse::<Selector>().unwrap_err();
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn all_selectors_of_an_entry_must_match() {
        let entries = parse_ok(
            "entries:\n  - spiffe_id: spiffe://example.org/a\n    selectors: [unix:uid:1000, unix:gid:50]\n",
        );
        assert!(entries[0].matches(&workload(1000, 50)));
        assert!(!entries[0].matches(&workload(1000, 51)));
        assert!(!entries[0].matches(&workload(1001, 50)));
    }

    #[test]
    fn path_and_hash_need_attested_values() {
        let sel: Selector = "unix:path:/usr/bin/app".parse().unwrap();
        let mut w = workload(1, 1);
        assert!(sel.matches(&w));
        w.path = None;
        assert!(!sel.matches(&w), "an unreadable executable never matches");
        let sel: Selector = format!("unix:sha256:{}", "ab".repeat(32)).parse().unwrap();
        assert!(sel.matches(&workload(1, 1)));
        let mut w = workload(1, 1);
        w.sha256 = None;
        assert!(!sel.matches(&w));
    }

    #[test]
    fn several_matches_keep_file_order_and_dedupe_ids() {
        let entries = parse_ok(
            "entries:
  - { spiffe_id: spiffe://example.org/first, selectors: [unix:uid:7], hint: one }
  - { spiffe_id: spiffe://example.org/other, selectors: [unix:uid:8] }
  - { spiffe_id: spiffe://example.org/second, selectors: [unix:gid:9] }
  - { spiffe_id: spiffe://example.org/first, selectors: [unix:gid:9] }
",
        );
        let got: Vec<_> = matching(&entries, &workload(7, 9))
            .iter()
            .map(|e| e.spiffe_id.as_str())
            .collect();
        assert_eq!(
            got,
            ["spiffe://example.org/first", "spiffe://example.org/second"]
        );
        assert!(matching(&entries, &workload(1, 1)).is_empty());
        assert!(!needs_sha256(&entries));
    }

    #[test]
    fn federated_trust_domains() {
        let f = parse(
            Path::new("reg.yaml"),
            "federates_with:\n  other.org: /b/other.pem\n  spiffe://third.org: /b/third.pem\n",
            &td(),
        )
        .unwrap();
        let tds: Vec<_> = f.federates_with.keys().map(|t| t.as_str()).collect();
        assert_eq!(tds, ["other.org", "third.org"]);
        for (text, why) in [
            (
                "federates_with:\n  example.org: /b.pem\n",
                "our own trust domain",
            ),
            (
                "federates_with:\n  Other.org: /b.pem\n",
                "federates_with.Other.org: trust domain",
            ),
            ("federates_with:\n  other.org: b.pem\n", "must be absolute"),
        ] {
            let e = parse_err(text);
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn an_empty_file_has_no_entries() {
        assert!(parse_ok("").is_empty());
        assert!(parse_ok("entries: []").is_empty());
    }

    #[test]
    fn errors_name_the_file_and_the_entry() {
        let e = parse_err(
            "entries:\n  - { spiffe_id: spiffe://example.org/ok, selectors: [unix:uid:1] }\n  - { spiffe_id: spiffe://example.org/bad, selectors: [unix:uid:x] }\n",
        );
        assert!(
            e.starts_with("reg.yaml: entries[1] (spiffe://example.org/bad): selector"),
            "{e}"
        );
        let e = parse_err(
            "entries:\n  - { spiffe_id: spiffe://other.org/x, selectors: [unix:uid:1] }\n",
        );
        assert!(
            e.contains(
                "entries[0] (spiffe://other.org/x): spiffe_id: not in trust domain example.org"
            ),
            "{e}"
        );
        let e = parse_err("entries:\n  - { spiffe_id: spiffe://example.org/x, selectors: [] }\n");
        assert!(e.contains("at least one is required"), "{e}");
        let e = parse_err("entries:\n  - { spiffe_id: not-an-id, selectors: [unix:uid:1] }\n");
        assert!(e.contains("entries[0] (not-an-id): spiffe_id:"), "{e}");
        let e = parse_err(
            "entries:\n  - { spiffe_id: spiffe://example.org/a, selectors: [unix:uid:1], hint: h }\n  - { spiffe_id: spiffe://example.org/b, selectors: [unix:uid:2], hint: h }\n",
        );
        assert!(
            e.contains("entries[1]") && e.contains("already used"),
            "{e}"
        );
        let e = parse_err(
            "entries:\n  - { spiffe_id: spiffe://example.org/a, selector: [unix:uid:1] }\n",
        );
        assert!(e.contains("unknown field `selector`"), "{e}");
        let e = parse_err("entries: {");
        assert!(e.starts_with("reg.yaml: "), "{e}");
    }
}
