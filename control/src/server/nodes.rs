//! The nodes `svidcar control` serves SVIDs to: a YAML file naming each node, its one-time join
//! token, and the SPIFFE IDs its workloads may obtain; plus the ledger of join tokens already used.
//!
//! ```yaml
//! nodes:
//!   - name: node-a                     # the node SVID is spiffe://<td>/svidcar/node/node-a
//!     join_token: 3b6f0c1e9d2a47c8a1f0 # one-time; at least 16 characters
//!     expires: 2026-12-31T00:00:00Z    # optional: the token is refused after (RFC 3339)
//!     allow:                           # SPIFFE IDs its workloads may obtain
//!       - spiffe://example.org/ns/shop/*
//!       - spiffe://example.org/ns/db/sa/postgres
//! ```
//!
//! The file is checked on every request and parsed again when it changed, so edits apply at
//! once; removing a node stops its next renewal. IDs under `/svidcar/` (nodes, the control plane) are never issued to workloads.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;
use svidcar_identity::{SpiffeId, TrustDomain};
use svidcar_policy::Pattern;

/// The shortest join token accepted.
pub const MIN_TOKEN_LEN: usize = 16;
/// Different characters a join token needs at least (`aaaaaaaaaaaaaaaa` is no secret).
pub const MIN_TOKEN_DISTINCT: usize = 8;

/// A nodes file or the token ledger cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct NodesError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, naming the entry.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRaw {
    #[serde(default)]
    nodes: Vec<NodeRaw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeRaw {
    name: String,
    join_token: String,
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    allow: Vec<String>,
}

/// One node.
#[derive(Debug)]
pub struct Node {
    /// Its name.
    pub name: String,
    token_digest: String,
    /// When the join token stops working, seconds since the Unix epoch.
    pub token_expires: Option<i64>,
    allow: Vec<Pattern>,
}

impl Node {
    /// Whether this node's workloads may obtain `id`.
    pub fn may_obtain(&self, id: &SpiffeId) -> bool {
        !is_reserved(id) && self.allow.iter().any(|p| p.matches(id.as_str()))
    }
}

/// IDs only the control plane hands out (node and control-plane SVIDs).
pub fn is_reserved(id: &SpiffeId) -> bool {
    id.path() == "/svidcar" || id.path().starts_with("/svidcar/")
}

/// The parsed nodes file.
#[derive(Debug, Default)]
pub struct Nodes {
    nodes: Vec<Node>,
}

/// SHA-256 of a token, hex: the only form in which tokens are compared or stored.
pub fn token_digest(token: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
}

impl Nodes {
    /// Parses `text` (the contents of `path`) for trust domain `td`.
    pub fn parse(path: &Path, text: &str, td: &TrustDomain) -> Result<Self, NodesError> {
        let bad = |message: String| NodesError {
            path: path.to_owned(),
            message,
        };
        let raw: FileRaw = serde_yaml_ng::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut names = HashSet::new();
        let mut tokens = HashSet::new();
        let mut nodes = Vec::with_capacity(raw.nodes.len());
        for (i, n) in raw.nodes.into_iter().enumerate() {
            let at = format!("nodes[{i}] ({})", n.name);
            if !valid_name(&n.name) {
                return Err(bad(format!(
                    "{at}: name: use 1-63 lowercase letters, digits, '-' or '.'"
                )));
            }
            if !names.insert(n.name.clone()) {
                return Err(bad(format!("{at}: name: already used by an earlier node")));
            }
            let distinct: HashSet<char> = n.join_token.chars().collect();
            if n.join_token.chars().count() < MIN_TOKEN_LEN || distinct.len() < MIN_TOKEN_DISTINCT {
                return Err(bad(format!(
                    "{at}: join_token: at least {MIN_TOKEN_LEN} characters, {MIN_TOKEN_DISTINCT} of them different (e.g. the output of `openssl rand -hex 16`)"
                )));
            }
            let token_digest = token_digest(&n.join_token);
            if !tokens.insert(token_digest.clone()) {
                return Err(bad(format!(
                    "{at}: join_token: the same as an earlier node's"
                )));
            }
            let token_expires = match &n.expires {
                None => None,
                Some(when) => Some(
                    time::OffsetDateTime::parse(
                        when,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .map_err(|e| {
                        bad(format!(
                            "{at}: expires: {when:?} is not an RFC 3339 time such as 2026-12-31T00:00:00Z ({e})"
                        ))
                    })?
                    .unix_timestamp(),
                ),
            };
            let prefix = format!("{}/", td.id_string());
            let mut allow = Vec::with_capacity(n.allow.len());
            for (j, a) in n.allow.iter().enumerate() {
                let field = format!("{at}: allow[{j}]");
                if !a.starts_with(&prefix) {
                    return Err(bad(format!(
                        "{field}: {a:?} must be an ID of trust domain {td} (start with {prefix})"
                    )));
                }
                let p = Pattern::parse(a).map_err(|e| bad(format!("{field}: {e}")))?;
                if matches!(p, Pattern::Suffix(_)) {
                    return Err(bad(format!(
                        "{field}: {a:?}: only an exact ID or a prefix ending in `*`"
                    )));
                }
                allow.push(p);
            }
            nodes.push(Node {
                name: n.name,
                token_digest,
                token_expires,
                allow,
            });
        }
        Ok(Self { nodes })
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path, td: &TrustDomain) -> Result<Self, NodesError> {
        let text = std::fs::read_to_string(path).map_err(|e| NodesError {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Self::parse(path, &text, td)
    }

    /// The node whose join token is `token`.
    pub fn by_token(&self, token: &str) -> Option<&Node> {
        let digest = token_digest(token);
        self.nodes.iter().find(|n| n.token_digest == digest)
    }

    /// The node called `name`.
    pub fn by_name(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// How many nodes the file names.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the file names no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// What identifies a version of the file without reading it.
type Stamp = (std::time::SystemTime, u64, u64);

/// The nodes file, parsed again only when its modification time, size or inode changed.
#[derive(Debug)]
pub struct NodesFile {
    path: PathBuf,
    td: TrustDomain,
    cached: Mutex<Option<(Stamp, std::sync::Arc<Nodes>)>>,
}

impl NodesFile {
    /// The file at `path`, for trust domain `td`.
    pub fn new(path: PathBuf, td: TrustDomain) -> Self {
        Self {
            path,
            td,
            cached: Mutex::new(None),
        }
    }

    /// The nodes as the file says now.
    pub fn current(&self) -> Result<std::sync::Arc<Nodes>, NodesError> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&self.path).map_err(|e| NodesError {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let stamp = (
            meta.modified().unwrap_or(std::time::UNIX_EPOCH),
            meta.len(),
            meta.ino(),
        );
        let mut cached = match self.cached.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((seen, nodes)) = cached.as_ref() {
            if *seen == stamp {
                return Ok(nodes.clone());
            }
        }
        let nodes = std::sync::Arc::new(Nodes::load(&self.path, &self.td)?);
        *cached = Some((stamp, nodes.clone()));
        Ok(nodes)
    }
}

/// The join tokens already used, as SHA-256 digests, one per line in a file of the state
/// directory: a token works once, across restarts.
#[derive(Debug)]
pub struct TokenLedger {
    path: PathBuf,
    used: Mutex<HashSet<String>>,
}

impl TokenLedger {
    /// Opens (or starts) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Self, NodesError> {
        let used = match std::fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => {
                return Err(NodesError {
                    path: path.to_owned(),
                    message: e.to_string(),
                })
            }
        };
        Ok(Self {
            path: path.to_owned(),
            used: Mutex::new(used),
        })
    }

    /// Marks `token` used, durably. `Ok(false)` if it was used before.
    pub fn consume(&self, token: &str) -> Result<bool, NodesError> {
        let digest = token_digest(token);
        let mut used = match self.used.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if used.contains(&digest) {
            return Ok(false);
        }
        let io = |e: std::io::Error| NodesError {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(io)?;
        f.write_all(format!("{digest}\n").as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io)?;
        used.insert(digest);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    const GOOD: &str = "
nodes:
  - name: node-a
    join_token: tok-a-0123456789abcd
    expires: 2027-01-01T00:00:00Z
    allow: ['spiffe://example.org/ns/shop/*', 'spiffe://example.org/db']
  - name: node-b
    join_token: tok-b-0123456789abcd
";

    #[test]
    fn nodes_are_found_by_token_and_name_and_allow_what_they_list() {
        let nodes = Nodes::parse(Path::new("nodes.yaml"), GOOD, &td()).unwrap();
        assert_eq!(nodes.len(), 2);
        let a = nodes.by_token("tok-a-0123456789abcd").unwrap();
        assert_eq!(a.name, "node-a");
        assert!(nodes.by_token("tok-a-0123456789abce").is_none());
        assert!(a.may_obtain(&id("spiffe://example.org/ns/shop/sa/web")));
        assert!(a.may_obtain(&id("spiffe://example.org/db")));
        assert!(!a.may_obtain(&id("spiffe://example.org/db/x")));
        assert!(!a.may_obtain(&id("spiffe://example.org/ns/other/sa/web")));
        assert_eq!(a.token_expires, Some(1_798_761_600));
        let b = nodes.by_name("node-b").unwrap();
        assert_eq!(b.token_expires, None);
        assert!(!b.may_obtain(&id("spiffe://example.org/ns/shop/sa/web")));
        assert!(!format!("{nodes:?}").contains("tok-a-0123"));
    }

    #[test]
    fn reserved_ids_are_never_allowed_even_by_a_wide_pattern() {
        let text = "nodes: [{name: n, join_token: tok-c-0123456789abcd, allow: ['spiffe://example.org/*']}]";
        let nodes = Nodes::parse(Path::new("n.yaml"), text, &td()).unwrap();
        let n = nodes.by_name("n").unwrap();
        assert!(n.may_obtain(&id("spiffe://example.org/anything")));
        assert!(!n.may_obtain(&id("spiffe://example.org/svidcar/control")));
        assert!(!n.may_obtain(&id("spiffe://example.org/svidcar/node/other")));
        assert!(!n.may_obtain(&id("spiffe://example.org/svidcar")));
    }

    #[test]
    fn errors_name_the_file_the_entry_and_the_field() {
        let cases = [
            ("nodes: [{name: Bad_Name, join_token: tok-a-0123456789abcd}]", "nodes[0] (Bad_Name): name"),
            ("nodes: [{name: a, join_token: short}]", "nodes[0] (a): join_token: at least 16"),
            ("nodes: [{name: a, join_token: abababababababababab}]", "8 of them different"),
            (
                "nodes: [{name: a, join_token: tok-a-0123456789abcd}, {name: a, join_token: tok-b-0123456789abcd}]",
                "nodes[1] (a): name: already used",
            ),
            (
                "nodes: [{name: a, join_token: tok-a-0123456789abcd}, {name: b, join_token: tok-a-0123456789abcd}]",
                "nodes[1] (b): join_token: the same",
            ),
            (
                "nodes: [{name: a, join_token: tok-a-0123456789abcd, allow: ['spiffe://other.org/x']}]",
                "nodes[0] (a): allow[0]: \"spiffe://other.org/x\" must be an ID of trust domain example.org",
            ),
            (
                "nodes: [{name: a, join_token: tok-a-0123456789abcd, allow: ['spiffe://example.org/*/x']}]",
                "nodes[0] (a): allow[0]",
            ),
            ("nodes: [{name: a, join_token: tok-a-0123456789abcd, extra: 1}]", "unknown field `extra`"),
            (
                "nodes: [{name: a, join_token: tok-a-0123456789abcd, expires: tomorrow}]",
                "nodes[0] (a): expires: \"tomorrow\" is not an RFC 3339 time",
            ),
        ];
        for (text, want) in cases {
            let e = Nodes::parse(Path::new("/etc/svidcar/nodes.yaml"), text, &td())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("/etc/svidcar/nodes.yaml: "), "{e}");
            assert!(e.contains(want), "{e} does not contain {want}");
        }
    }

    #[test]
    fn the_file_is_parsed_again_only_when_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes.yaml");
        std::fs::write(&path, GOOD).unwrap();
        let file = NodesFile::new(path.clone(), td());
        let first = file.current().unwrap();
        assert!(
            std::sync::Arc::ptr_eq(&first, &file.current().unwrap()),
            "cached"
        );
        std::fs::write(&path, "nodes: []\n").unwrap();
        assert!(file.current().unwrap().is_empty(), "an edit applies");
        std::fs::write(&path, "nodes: [ {").unwrap();
        assert!(
            file.current().is_err(),
            "a bad edit is an error, not the old list"
        );
    }

    #[test]
    fn the_example_in_deploy_is_valid() {
        let text = include_str!("../../../deploy/identity/nodes.yaml");
        let nodes = Nodes::parse(Path::new("deploy/identity/nodes.yaml"), text, &td()).unwrap();
        assert_eq!(nodes.len(), 2);
    }

    #[test]
    fn a_token_is_used_once_across_restarts_and_stored_only_as_a_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("used-join-tokens");
        let ledger = TokenLedger::open(&path).unwrap();
        assert!(ledger.consume("tok-a-0123456789abcd").unwrap());
        assert!(!ledger.consume("tok-a-0123456789abcd").unwrap());
        assert!(ledger.consume("tok-b-0123456789abcd").unwrap());
        let reopened = TokenLedger::open(&path).unwrap();
        assert!(!reopened.consume("tok-a-0123456789abcd").unwrap());
        assert!(!reopened.consume("tok-b-0123456789abcd").unwrap());
        let stored = std::fs::read_to_string(&path).unwrap();
        assert!(!stored.contains("tok-a") && stored.lines().count() == 2);
    }
}
