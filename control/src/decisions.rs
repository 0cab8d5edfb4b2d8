//! The control plane's decision log: JSON lines in a state directory, rotated by size (the
//! current file `decisions.jsonl`, rotated ones `decisions-<unix ms>-<seq>.jsonl`, the oldest removed
//! beyond a count), and queries over them.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use svidcar_api::DecisionEvent;

/// A decision as stored: the event plus the identity of the proxy that reported it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredDecision {
    /// The decision.
    #[serde(flatten)]
    pub event: DecisionEvent,
    /// SPIFFE ID of the reporting proxy (from its mTLS certificate).
    pub reporter: String,
}

/// Filters of a query; empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Matches the source or the destination SPIFFE ID: exact, or a `prefix*`.
    pub identity: Option<String>,
    /// `ALLOW`, `DENY` or `AUDIT`.
    pub action: Option<String>,
    /// Not before this Unix time (ms).
    pub since_ms: Option<i64>,
    /// Not after this Unix time (ms).
    pub until_ms: Option<i64>,
    /// At most this many, the newest.
    pub limit: Option<usize>,
}

/// Why a decision filter is refused: it could never match, so the query would silently find
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Not an action a decision can have.
    #[error("{0:?} is not an action: use ALLOW, DENY or AUDIT (any case)")]
    Action(String),
    /// Neither a SPIFFE ID nor a `spiffe://` prefix.
    #[error(
        "{0:?} is not an identity filter: use a SPIFFE ID (spiffe://example.org/ns/web) or a \
         prefix ending in * (spiffe://example.org/ns/*)"
    )]
    Identity(String),
}

/// An action filter, upper-cased: `ALLOW`, `DENY` or `AUDIT` in any case.
pub fn parse_action(s: &str) -> Result<String, FilterError> {
    let upper = s.to_ascii_uppercase();
    match upper.as_str() {
        "ALLOW" | "DENY" | "AUDIT" => Ok(upper),
        _ => Err(FilterError::Action(s.to_owned())),
    }
}

/// An identity filter: a SPIFFE ID, or a prefix of one ending in `*` (`spiffe://td/ns/*`).
pub fn parse_identity(s: &str) -> Result<String, FilterError> {
    let ok = match s.strip_suffix('*') {
        Some(prefix) => prefix.starts_with("spiffe://"),
        None => svidcar_identity::SpiffeId::parse(s).is_ok(),
    };
    if ok {
        Ok(s.to_owned())
    } else {
        Err(FilterError::Identity(s.to_owned()))
    }
}

impl Query {
    /// Whether a stored decision matches.
    pub fn matches(&self, d: &StoredDecision) -> bool {
        let id_ok = self.identity.as_deref().is_none_or(|want| {
            let m = |v: &str| match want.strip_suffix('*') {
                Some(prefix) => v.starts_with(prefix),
                None => v == want,
            };
            let id =
                |i: &Option<svidcar_identity::SpiffeId>| i.as_ref().is_some_and(|i| m(i.as_str()));
            id(&d.event.source_id) || id(&d.event.destination_id)
        });
        id_ok
            && self
                .action
                .as_deref()
                .is_none_or(|a| a.eq_ignore_ascii_case(d.event.action.as_str()))
            && self.since_ms.is_none_or(|t| d.event.time_ms >= t)
            && self.until_ms.is_none_or(|t| d.event.time_ms <= t)
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[error("decision log {path}: {source}")]
pub struct StoreError {
    path: PathBuf,
    source: std::io::Error,
}

struct Current {
    file: File,
    bytes: u64,
}

/// Append-only, size-rotated decision log.
pub struct DecisionStore {
    dir: PathBuf,
    max_bytes: u64,
    keep: usize,
    current: Mutex<Current>,
    rotations: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for DecisionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn open_current(dir: &Path) -> Result<Current, StoreError> {
    let path = dir.join("decisions.jsonl");
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|source| StoreError {
            path: path.clone(),
            source,
        })?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok(Current { file, bytes })
}

impl DecisionStore {
    /// Opens (creating) the log in `dir`; rotates at `max_bytes` and keeps `keep` rotated files.
    pub fn open(dir: &Path, max_bytes: u64, keep: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            current: Mutex::new(open_current(dir)?),
            dir: dir.to_owned(),
            max_bytes,
            keep,
            rotations: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn rotated(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("decisions-") && n.ends_with(".jsonl"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Appends decisions (one JSON object per line), rotating when the file is full.
    pub fn append(&self, decisions: &[StoredDecision]) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        for d in decisions {
            // Serializing plain strings and numbers cannot fail.
            if let Ok(line) = serde_json::to_string(d) {
                buf.extend_from_slice(line.as_bytes());
                buf.push(b'\n');
            }
        }
        self.append_lines(&buf)
    }

    /// Appends decisions already serialized as JSON lines (each ending in `\n`), rotating when
    /// the file is full.
    pub fn append_lines(&self, buf: &[u8]) -> Result<(), StoreError> {
        let path = self.dir.join("decisions.jsonl");
        let io = |source| StoreError {
            path: path.clone(),
            source,
        };
        let mut cur = match self.current.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        cur.file.write_all(buf).map_err(io)?;
        cur.bytes += buf.len() as u64;
        if cur.bytes >= self.max_bytes {
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            // Several rotations can happen within one millisecond: a sequence number keeps the
            // names distinct and ordered.
            let seq = self
                .rotations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let to = self.dir.join(format!("decisions-{ms:016}-{seq:08}.jsonl"));
            std::fs::rename(&path, &to).map_err(io)?;
            *cur = open_current(&self.dir)?;
            let rotated = self.rotated();
            for old in rotated.iter().take(rotated.len().saturating_sub(self.keep)) {
                let _ = std::fs::remove_file(old);
            }
        }
        Ok(())
    }

    /// The newest decisions matching `q`, oldest first.
    pub fn query(&self, q: &Query) -> Vec<StoredDecision> {
        let mut files = self.rotated();
        files.push(self.dir.join("decisions.jsonl"));
        let mut out = Vec::new();
        for f in files {
            let Ok(file) = File::open(&f) else { continue };
            for line in BufReader::new(file).lines().map_while(Result::ok) {
                // A torn last line (crash mid-write) is skipped, not fatal.
                if let Ok(d) = serde_json::from_str::<StoredDecision>(&line) {
                    if q.matches(&d) {
                        out.push(d);
                    }
                }
            }
        }
        out.sort_by_key(|d| d.event.time_ms);
        if let Some(limit) = q.limit {
            let skip = out.len().saturating_sub(limit);
            out.drain(..skip);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(t: i64, action: &str, src: &str) -> StoredDecision {
        StoredDecision {
            event: DecisionEvent {
                time_ms: t,
                action: match action {
                    "ALLOW" => svidcar_policy::Action::Allow,
                    "AUDIT" => svidcar_policy::Action::Audit,
                    _ => svidcar_policy::Action::Deny,
                },
                source_id: Some(svidcar_identity::SpiffeId::parse(src).unwrap()),
                destination_id: Some(
                    svidcar_identity::SpiffeId::parse("spiffe://td/server").unwrap(),
                ),
                source_addr: "10.0.0.1:1234".parse().unwrap(),
                destination_addr: "127.0.0.1:8080".parse().unwrap(),
                port: 8080,
                rule: Some(svidcar_policy::RuleRef {
                    policy: "p".into(),
                    rule: 0,
                }),
                reason: "r".into(),
                policy_version: "v".into(),
                method: None,
                path: None,
                count: 1,
            },
            reporter: "spiffe://td/server".into(),
        }
    }

    #[test]
    fn rotates_keeps_and_queries_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = DecisionStore::open(dir.path(), 600, 2).unwrap();
        for t in 0..40 {
            let action = if t % 2 == 0 { "ALLOW" } else { "DENY" };
            store
                .append(&[decision(t, action, &format!("spiffe://td/c{}", t % 3))])
                .unwrap();
        }
        assert_eq!(
            store.rotated().len(),
            2,
            "old files beyond `keep` are removed"
        );
        let all = store.query(&Query::default());
        assert!(
            !all.is_empty() && all.len() < 40,
            "oldest rotated away: {}",
            all.len()
        );
        assert!(all
            .windows(2)
            .all(|w| w[0].event.time_ms <= w[1].event.time_ms));
        assert_eq!(all.last().map(|d| d.event.time_ms), Some(39));
        let denies = store.query(&Query {
            action: Some("deny".into()),
            ..Query::default()
        });
        assert!(denies
            .iter()
            .all(|d| d.event.action == svidcar_policy::Action::Deny));
        let c1 = store.query(&Query {
            identity: Some("spiffe://td/c1".into()),
            ..Query::default()
        });
        assert!(
            !c1.is_empty()
                && c1
                    .iter()
                    .all(|d| d.event.source_id.as_ref().map(|i| i.as_str())
                        == Some("spiffe://td/c1"))
        );
        let prefix = store.query(&Query {
            identity: Some("spiffe://td/c*".into()),
            limit: Some(3),
            ..Query::default()
        });
        assert_eq!(
            prefix.iter().map(|d| d.event.time_ms).collect::<Vec<_>>(),
            vec![37, 38, 39]
        );
        let window = store.query(&Query {
            since_ms: Some(35),
            until_ms: Some(36),
            ..Query::default()
        });
        assert_eq!(window.len(), 2);
        // Reopening continues the same log.
        drop(store);
        let again = DecisionStore::open(dir.path(), 600, 2).unwrap();
        assert_eq!(
            again
                .query(&Query::default())
                .last()
                .map(|d| d.event.time_ms),
            Some(39)
        );
    }
}
