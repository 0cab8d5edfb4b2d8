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
//!   - spiffe_id: spiffe://example.org/shop/payments   # a pod (pod attestation on)
//!     selectors: ["k8s:ns:shop", "k8s:sa:payments", "k8s:pod-label:app:payments"]
//! federates_with:            # optional: foreign trust domains' bundles (PEM files)
//!   other.org: /etc/svidcar/bundles/other.org.pem
//! ```
//!
//! Every selector of an entry must match the caller. A caller matching several entries gets
//! several SVIDs, in file order; the first is its default identity. Entries naming the same
//! SPIFFE ID give one SVID. `k8s:` selectors match only callers attested as pods (never when pod
//! attestation is off); such callers also get their pod's default identity after the entries'
//! (see [`super::k8s`]).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use svidcar_identity::{SpiffeId, TrustDomain};

use super::k8s::{PodFacts, PodUid};

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
    /// `k8s:ns:<namespace>`: the pod's namespace.
    K8sNamespace(String),
    /// `k8s:sa:<service account>`: the pod's service account.
    K8sServiceAccount(String),
    /// `k8s:pod-label:<key>:<value>`: a label of the pod.
    K8sPodLabel {
        /// The label's key (may hold `/` and `.`, never `:`).
        key: String,
        /// Its value (may be empty).
        value: String,
    },
    /// `k8s:container-name:<name>`: the name of the caller's container in its pod.
    K8sContainerName(String),
    /// `k8s:pod-uid:<uid>`: the pod's UID.
    K8sPodUid(PodUid),
    /// `k8s:pod-name:<name>`: the pod's name.
    K8sPodName(String),
}

/// Parses the part of a `k8s:` selector after `k8s:`.
fn parse_k8s(s: &str, rest: &str) -> Result<Selector, String> {
    const KINDS: &str = "ns, sa, pod-label, container-name, pod-uid or pod-name";
    let (kind, value) = rest
        .split_once(':')
        .ok_or_else(|| format!("selector {s:?}: expected k8s:<type>:<value> ({KINDS})"))?;
    let nonempty = |what: &str, example: &str| {
        if value.is_empty() {
            Err(format!(
                "selector {s:?}: the {what} is missing; write {example}"
            ))
        } else {
            Ok(value.to_owned())
        }
    };
    match kind {
        "ns" => Ok(Selector::K8sNamespace(nonempty("namespace", "k8s:ns:<namespace>")?)),
        "sa" => Ok(Selector::K8sServiceAccount(nonempty(
            "service account",
            "k8s:sa:<service account>",
        )?)),
        "pod-label" => match value.split_once(':') {
            Some((key, value)) if !key.is_empty() => Ok(Selector::K8sPodLabel {
                key: key.to_owned(),
                value: value.to_owned(),
            }),
            _ => Err(format!(
                "selector {s:?}: write k8s:pod-label:<key>:<value> (e.g. k8s:pod-label:app:shop)"
            )),
        },
        "container-name" => Ok(Selector::K8sContainerName(nonempty(
            "container name",
            "k8s:container-name:<name>",
        )?)),
        "pod-uid" => PodUid::parse(value).map(Selector::K8sPodUid).ok_or_else(|| {
            format!(
                "selector {s:?}: write k8s:pod-uid:<uid> with the pod's metadata.uid                  (8-4-4-4-12 hex digits)"
            )
        }),
        "pod-name" => Ok(Selector::K8sPodName(nonempty("pod name", "k8s:pod-name:<name>")?)),
        _ => Err(format!(
            "selector {s:?}: unknown type {kind:?} (use {KINDS})"
        )),
    }
}

impl FromStr for Selector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("k8s:") {
            return parse_k8s(s, rest);
        }
        let rest = s.strip_prefix("unix:").ok_or_else(|| {
            format!("selector {s:?}: expected unix:<type>:<value> or k8s:<type>:<value>")
        })?;
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
            Selector::K8sNamespace(ns) => write!(f, "k8s:ns:{ns}"),
            Selector::K8sServiceAccount(sa) => write!(f, "k8s:sa:{sa}"),
            Selector::K8sPodLabel { key, value } => write!(f, "k8s:pod-label:{key}:{value}"),
            Selector::K8sContainerName(n) => write!(f, "k8s:container-name:{n}"),
            Selector::K8sPodUid(uid) => write!(f, "k8s:pod-uid:{uid}"),
            Selector::K8sPodName(n) => write!(f, "k8s:pod-name:{n}"),
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
    /// The caller's pod, when pod attestation is on and the caller is in one.
    pub k8s: Option<PodFacts>,
}

impl Selector {
    /// Whether the caller has this property. Unknown properties never match.
    pub fn matches(&self, w: &Workload) -> bool {
        match self {
            Selector::Uid(n) => w.uid == *n,
            Selector::Gid(n) => w.gid == *n,
            Selector::Path(p) => w.path.as_deref() == Some(p.as_path()),
            Selector::Sha256(h) => w.sha256.as_deref() == Some(h.as_str()),
            Selector::K8sNamespace(ns) => w.k8s.as_ref().is_some_and(|p| p.namespace == *ns),
            Selector::K8sServiceAccount(sa) => {
                w.k8s.as_ref().is_some_and(|p| p.service_account == *sa)
            }
            Selector::K8sPodLabel { key, value } => w
                .k8s
                .as_ref()
                .is_some_and(|p| p.labels.get(key) == Some(value)),
            Selector::K8sContainerName(n) => w
                .k8s
                .as_ref()
                .is_some_and(|p| p.container_name.as_ref() == Some(n)),
            Selector::K8sPodUid(uid) => w.k8s.as_ref().is_some_and(|p| p.pod_uid == *uid),
            Selector::K8sPodName(n) => w.k8s.as_ref().is_some_and(|p| p.pod_name == *n),
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

/// Whether any entry has a `k8s:` selector.
pub fn uses_k8s(entries: &[Entry]) -> bool {
    entries.iter().flat_map(|e| &e.selectors).any(|s| {
        !matches!(
            s,
            Selector::Uid(_) | Selector::Gid(_) | Selector::Path(_) | Selector::Sha256(_)
        )
    })
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

/// A registration file that cannot be used: every problem found, each naming the entry (or
/// the line, for YAML syntax) and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RegistrationError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, each starting with the entry (`entries[2] (spiffe://…): selectors[1]`);
    /// never empty.
    pub problems: Vec<String>,
}

impl RegistrationError {
    /// One problem in `path`.
    pub fn one(path: &Path, problem: String) -> Self {
        Self {
            path: path.to_owned(),
            problems: vec![problem],
        }
    }
}

impl fmt::Display for RegistrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "{}: {one}", self.path.display()),
            many => {
                write!(f, "{}: {} problems:", self.path.display(), many.len())?;
                for p in many {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    entries: Vec<serde_yaml_ng::Value>,
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

/// Checks entry `i`; its problems go to `problems`.
fn entry(
    i: usize,
    raw: RawEntry,
    td: &TrustDomain,
    hints: &mut HashSet<String>,
    problems: &mut Vec<String>,
) -> Option<Entry> {
    let at = format!("entries[{i}] ({})", raw.spiffe_id);
    let before = problems.len();
    let spiffe_id = match SpiffeId::parse(&raw.spiffe_id) {
        Ok(id) if id.trust_domain_str() != td.as_str() => {
            problems.push(format!(
                "{at}: spiffe_id: not in trust domain {td} (the CA's)"
            ));
            None
        }
        Ok(id) => Some(id),
        Err(e) => {
            problems.push(format!("{at}: spiffe_id: {e}"));
            None
        }
    };
    if raw.selectors.is_empty() {
        problems.push(format!("{at}: selectors: at least one is required"));
    }
    let mut selectors = Vec::with_capacity(raw.selectors.len());
    for (j, s) in raw.selectors.iter().enumerate() {
        match s.parse::<Selector>() {
            Ok(sel) => selectors.push(sel),
            Err(e) => problems.push(format!("{at}: selectors[{j}]: {e}")),
        }
    }
    if let Some(h) = &raw.hint {
        if h.is_empty() {
            problems.push(format!("{at}: hint: must not be empty when set"));
        } else if !hints.insert(h.clone()) {
            problems.push(format!("{at}: hint: {h:?} is already used"));
        }
    }
    if problems.len() > before {
        return None;
    }
    Some(Entry {
        spiffe_id: spiffe_id?,
        selectors,
        hint: raw.hint,
    })
}

/// Parses a registration document. Every SPIFFE ID must belong to `td` (the CA's trust domain);
/// federated trust domains must be others. Every problem is reported, not only the first (YAML
/// syntax errors excepted: nothing after one can be read).
pub fn parse(
    path: &Path,
    text: &str,
    td: &TrustDomain,
) -> Result<RegistrationFile, RegistrationError> {
    let file: File =
        serde_yaml_ng::from_str(text).map_err(|e| RegistrationError::one(path, e.to_string()))?;
    let mut problems = Vec::new();
    let mut hints = HashSet::new();
    let mut entries = Vec::with_capacity(file.entries.len());
    for (i, value) in file.entries.into_iter().enumerate() {
        match serde_yaml_ng::from_value::<RawEntry>(value) {
            Ok(raw) => entries.extend(entry(i, raw, td, &mut hints, &mut problems)),
            Err(e) => problems.push(format!("entries[{i}]: {e}")),
        }
    }
    let mut federates_with = BTreeMap::new();
    for (name, bundle) in file.federates_with {
        let at = format!("federates_with.{name}");
        match TrustDomain::parse(&name) {
            Err(e) => problems.push(format!("{at}: trust domain: {e}")),
            Ok(other) if &other == td => {
                problems.push(format!("{at}: that is our own trust domain"))
            }
            Ok(_) if !bundle.is_absolute() => {
                problems.push(format!("{at}: the bundle path must be absolute"))
            }
            Ok(other) => {
                federates_with.insert(other, bundle);
            }
        }
    }
    if !problems.is_empty() {
        return Err(RegistrationError {
            path: path.to_owned(),
            problems,
        });
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
            k8s: None,
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
            "k8s:ns:shop",
            "k8s:sa:backend",
            "k8s:pod-label:app.kubernetes.io/name:shop",
            "k8s:pod-label:canary:",
            "k8s:container-name:app",
            "k8s:pod-uid:9a0c7e0e-5d3b-4f7a-8c1d-2b6e4f8a1c3d",
            "k8s:pod-name:shop-7d9f",
        ] {
            assert_eq!(s.parse::<Selector>().unwrap().to_string(), s);
        }
    }

    fn in_pod(uid: u32) -> Workload {
        let mut w = workload(uid, uid);
        w.k8s = Some(PodFacts {
            namespace: "shop".into(),
            service_account: "backend".into(),
            pod_name: "shop-7d9f".into(),
            pod_uid: PodUid::parse("9a0c7e0e-5d3b-4f7a-8c1d-2b6e4f8a1c3d").unwrap(),
            labels: [
                ("app".to_string(), "shop".to_string()),
                ("canary".into(), String::new()),
            ]
            .into_iter()
            .collect(),
            container_name: Some("app".into()),
            container_id: None,
        });
        w
    }

    #[test]
    fn k8s_selectors_match_pods_only() {
        let pod = in_pod(1337);
        let not_in_pod = workload(1337, 1337);
        for (s, want) in [
            ("k8s:ns:shop", true),
            ("k8s:ns:other", false),
            ("k8s:sa:backend", true),
            ("k8s:sa:default", false),
            ("k8s:pod-label:app:shop", true),
            ("k8s:pod-label:app:shopx", false),
            ("k8s:pod-label:canary:", true),
            ("k8s:pod-label:missing:", false),
            ("k8s:container-name:app", true),
            ("k8s:container-name:svidcar", false),
            ("k8s:pod-uid:9a0c7e0e-5d3b-4f7a-8c1d-2b6e4f8a1c3d", true),
            ("k8s:pod-uid:00000000-5d3b-4f7a-8c1d-2b6e4f8a1c3d", false),
            ("k8s:pod-name:shop-7d9f", true),
            ("k8s:pod-name:shop", false),
        ] {
            let sel: Selector = s.parse().unwrap();
            assert_eq!(sel.matches(&pod), want, "{s}");
            assert!(
                !sel.matches(&not_in_pod),
                "{s} matched a process outside pods"
            );
        }
        let mut pod_level = in_pod(1);
        if let Some(p) = &mut pod_level.k8s {
            p.container_name = None;
        }
        assert!(!"k8s:container-name:app"
            .parse::<Selector>()
            .unwrap()
            .matches(&pod_level));
        let entries = parse_ok(
            "entries:\n  - spiffe_id: spiffe://example.org/a\n    selectors: [k8s:ns:shop, unix:uid:1337]\n",
        );
        assert!(entries[0].matches(&pod));
        assert!(!entries[0].matches(&in_pod(1000)));
        assert!(uses_k8s(&entries));
        assert!(!uses_k8s(&parse_ok(
            "entries:\n  - { spiffe_id: spiffe://example.org/a, selectors: [unix:uid:1] }\n"
        )));
    }

    #[test]
    fn bad_selectors_say_why() {
        for (s, why) in [
            (
                "docker:label:x",
                "expected unix:<type>:<value> or k8s:<type>:<value>",
            ),
            ("k8s:ns", "expected k8s:<type>:<value>"),
            (
                "k8s:ns:",
                "the namespace is missing; write k8s:ns:<namespace>",
            ),
            ("k8s:sa:", "write k8s:sa:<service account>"),
            ("k8s:pod-label:app", "write k8s:pod-label:<key>:<value>"),
            ("k8s:pod-label::x", "write k8s:pod-label:<key>:<value>"),
            ("k8s:pod-uid:abc", "write k8s:pod-uid:<uid>"),
            ("k8s:container-name:", "write k8s:container-name:<name>"),
            ("k8s:pod-name:", "write k8s:pod-name:<name>"),
            ("k8s:namespace:x", "unknown type \"namespace\" (use ns, sa,"),
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
            e.starts_with(
                "reg.yaml: entries[1] (spiffe://example.org/bad): selectors[0]: selector"
            ),
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

    #[test]
    fn every_problem_is_reported_with_its_entry_and_field() {
        let e = parse(
            Path::new("reg.yaml"),
            "entries:
  - { spiffe_id: spiffe://example.org/a, selectors: [unix:uid:x, unix:gid:1, \"k8s:ns:\"], hint: h }
  - { spiffe_id: spiffe://example.org/ok, selectors: [unix:uid:1] }
  - { spiffe_id: spiffe://other.org/b, selectors: [], hint: h }
  - { spiffe_id: spiffe://example.org/c, selector: [unix:uid:1] }
federates_with:
  example.org: /b.pem
  third.org: relative.pem
",
            &td(),
        )
        .unwrap_err();
        assert_eq!(
            e.problems,
            [
                "entries[0] (spiffe://example.org/a): selectors[0]: selector \"unix:uid:x\": uid must be a number",
                "entries[0] (spiffe://example.org/a): selectors[2]: selector \"k8s:ns:\": the namespace is missing; write k8s:ns:<namespace>",
                "entries[2] (spiffe://other.org/b): spiffe_id: not in trust domain example.org (the CA's)",
                "entries[2] (spiffe://other.org/b): selectors: at least one is required",
                "entries[2] (spiffe://other.org/b): hint: \"h\" is already used",
                "entries[3]: unknown field `selector`, expected one of `spiffe_id`, `selectors`, `hint`",
                "federates_with.example.org: that is our own trust domain",
                "federates_with.third.org: the bundle path must be absolute",
            ]
        );
        let text = e.to_string();
        assert!(
            text.starts_with("reg.yaml: 8 problems:\n  - entries[0]"),
            "{text}"
        );
        // YAML syntax: the line is named.
        let e = parse_err("entries:\n  - { spiffe_id: a\n  - b: [\n");
        assert!(e.contains("line"), "{e}");
    }
}
