//! The revocation set, pure: entries by whole SPIFFE ID or by one certificate's serial, each with
//! why, who, when and an optional end; adding, lifting, lapsing, matching, and the wire form
//! pushed to every proxy.

use std::fmt;

use serde::{Deserialize, Serialize};
use svidcar_api::policy::Revocation;
use svidcar_identity::tls::CertSerial;
use svidcar_identity::SpiffeId;

/// What a revocation names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every SVID of this SPIFFE ID.
    Id(SpiffeId),
    /// One certificate (a leaked SVID), by serial.
    Serial(CertSerial),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Id(id) => id.fmt(f),
            Target::Serial(s) => write!(f, "serial {s}"),
        }
    }
}

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "EntryJson", into = "EntryJson")]
pub struct Entry {
    /// What is revoked.
    pub target: Target,
    /// Why (the operator's words).
    pub reason: String,
    /// Who revoked it (free text: the CLI sends the user name).
    pub revoked_by: String,
    /// When (Unix seconds).
    pub revoked_at: i64,
    /// When it lapses (Unix seconds); `None`: until lifted.
    pub until: Option<i64>,
}

/// The JSON form of an [`Entry`] (the state file, `GET /revocations`, `POST /revocations`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryJson {
    /// The revoked SPIFFE ID (or `serial`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// The revoked certificate's serial, hex (or `spiffe_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Why.
    #[serde(default)]
    pub reason: String,
    /// Who.
    #[serde(default)]
    pub revoked_by: String,
    /// When (Unix seconds); set by the control plane on `POST`.
    #[serde(default)]
    pub revoked_at: i64,
    /// When it lapses (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
}

/// Why a revocation entry is malformed (the request's fault: `400`, or a damaged state file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Neither or both of `spiffe_id` and `serial`.
    #[error("give exactly one of spiffe_id and serial")]
    Target,
    /// A malformed SPIFFE ID.
    #[error("spiffe_id {0:?}: {1}")]
    Id(String, svidcar_identity::IdError),
    /// A malformed serial.
    #[error("serial {0:?}: {1}")]
    Serial(String, svidcar_identity::tls::SerialError),
}

impl TryFrom<EntryJson> for Entry {
    type Error = EntryError;

    fn try_from(j: EntryJson) -> Result<Self, EntryError> {
        let target = match (j.spiffe_id, j.serial) {
            (Some(id), None) => {
                Target::Id(SpiffeId::parse(&id).map_err(|e| EntryError::Id(id, e))?)
            }
            (None, Some(s)) => {
                Target::Serial(CertSerial::parse(&s).map_err(|e| EntryError::Serial(s, e))?)
            }
            _ => return Err(EntryError::Target),
        };
        Ok(Entry {
            target,
            reason: j.reason,
            revoked_by: j.revoked_by,
            revoked_at: j.revoked_at,
            until: j.until.filter(|u| *u > 0),
        })
    }
}

impl From<Entry> for EntryJson {
    fn from(e: Entry) -> Self {
        let (spiffe_id, serial) = match e.target {
            Target::Id(id) => (Some(id.to_string()), None),
            Target::Serial(s) => (None, Some(s.to_string())),
        };
        EntryJson {
            spiffe_id,
            serial,
            reason: e.reason,
            revoked_by: e.revoked_by,
            revoked_at: e.revoked_at,
            until: e.until,
        }
    }
}

impl Entry {
    /// Whether it is in force at `now` (Unix seconds).
    pub fn in_force_at(&self, now: i64) -> bool {
        self.until.is_none_or(|u| now < u)
    }

    /// The wire form pushed to proxies.
    pub fn to_wire(&self) -> Revocation {
        let (spiffe_id, serial) = match &self.target {
            Target::Id(id) => (id.to_string(), String::new()),
            Target::Serial(s) => (String::new(), s.to_string()),
        };
        Revocation {
            spiffe_id,
            serial,
            reason: self.reason.clone(),
            revoked_by: self.revoked_by.clone(),
            revoked_at: self.revoked_at,
            until: self.until.unwrap_or(0),
        }
    }
}

/// The set, in the order entries were made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationSet {
    /// The entries.
    pub revocations: Vec<Entry>,
}

impl RevocationSet {
    /// Adds `entry`, replacing an entry for the same target (a new reason or end).
    pub fn revoke(&mut self, entry: Entry) {
        self.revocations.retain(|e| e.target != entry.target);
        self.revocations.push(entry);
    }

    /// Lifts the revocation of `target`; returns it, or `None` if there was none.
    pub fn lift(&mut self, target: &Target) -> Option<Entry> {
        let at = self.revocations.iter().position(|e| &e.target == target)?;
        Some(self.revocations.remove(at))
    }

    /// Removes the entries that lapsed by `now`; returns them.
    pub fn lapse(&mut self, now: i64) -> Vec<Entry> {
        let (kept, lapsed) = std::mem::take(&mut self.revocations)
            .into_iter()
            .partition(|e| e.in_force_at(now));
        self.revocations = kept;
        lapsed
    }

    /// The entry in force at `now` that revokes `id`, if any.
    pub fn revoking_id(&self, id: &SpiffeId, now: i64) -> Option<&Entry> {
        self.revocations
            .iter()
            .find(|e| e.in_force_at(now) && matches!(&e.target, Target::Id(r) if r == id))
    }

    /// The wire form of every entry.
    pub fn to_wire(&self) -> Vec<Revocation> {
        self.revocations.iter().map(Entry::to_wire).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(target: &str, until: Option<i64>) -> Entry {
        let mut j = EntryJson {
            reason: "leaked".into(),
            revoked_at: 10,
            until,
            ..Default::default()
        };
        if target.starts_with("spiffe://") {
            j.spiffe_id = Some(target.into());
        } else {
            j.serial = Some(target.into());
        }
        Entry::try_from(j).unwrap()
    }

    #[test]
    fn entries_are_replaced_lifted_and_lapse() {
        let mut set = RevocationSet::default();
        let a = SpiffeId::parse("spiffe://td/a").unwrap();
        set.revoke(entry("spiffe://td/a", Some(100)));
        set.revoke(entry("3A:5F", None));
        set.revoke(entry("spiffe://td/a", Some(200)));
        assert_eq!(set.revocations.len(), 2, "same target replaced");
        assert_eq!(set.revoking_id(&a, 150).map(|e| e.until), Some(Some(200)));
        assert!(set.revoking_id(&a, 200).is_none(), "lapsed at its end");
        assert_eq!(set.lapse(199).len(), 0);
        assert_eq!(set.lapse(200).len(), 1);
        let serial = Target::Serial(CertSerial::parse("3a5f").unwrap());
        assert!(set.lift(&serial).is_some());
        assert!(set.lift(&serial).is_none());
        assert!(set.revocations.is_empty());
    }

    #[test]
    fn json_and_wire_forms_round_trip_and_bad_entries_say_why() {
        let e = entry("spiffe://td/a", Some(100));
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"spiffe_id":"spiffe://td/a","reason":"leaked","revoked_by":"","revoked_at":10,"until":100}"#
        );
        assert_eq!(serde_json::from_str::<Entry>(&json).unwrap(), e);
        let w = entry("00:ab", None).to_wire();
        assert_eq!(
            (w.serial.as_str(), w.spiffe_id.as_str(), w.until),
            ("ab", "", 0)
        );
        for (bad, why) in [
            (
                r#"{"reason":"x"}"#,
                "give exactly one of spiffe_id and serial",
            ),
            (
                r#"{"spiffe_id":"spiffe://td/a","serial":"ab"}"#,
                "give exactly one",
            ),
            (
                r#"{"spiffe_id":"http://td/a"}"#,
                "spiffe_id \"http://td/a\": ",
            ),
            (r#"{"serial":"xyz"}"#, "serial \"xyz\": "),
            (r#"{"serial":"ab","color":"red"}"#, "unknown field"),
        ] {
            let e = serde_json::from_str::<Entry>(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
