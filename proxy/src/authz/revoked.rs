//! The revocation set a proxy enforces, pure: built from the control plane's snapshot, it says
//! whether either end of a connection — our own workload, the verified peer, or the peer's
//! certificate — is revoked at a given time.

use std::collections::HashMap;
use std::fmt;

use svidcar_api::policy::Revocation;
use svidcar_identity::tls::CertSerial;
use svidcar_identity::SpiffeId;

/// What matched a revocation, and why it was revoked: carried by the refusal, shown in the
/// access log, the decision's reason and an HTTP 403 body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The revoked SPIFFE ID, or `serial <hex> (<ID>)` for one revoked certificate.
    pub what: String,
    /// The operator's reason (may be empty).
    pub reason: String,
}

impl fmt::Display for Revoked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "identity revoked: {}", self.what)?;
        if !self.reason.is_empty() {
            write!(f, " ({})", self.reason)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Entry {
    reason: String,
    /// Unix seconds; 0: until lifted.
    until: i64,
}

impl Entry {
    fn in_force_at(&self, now: i64) -> bool {
        self.until == 0 || now < self.until
    }
}

/// Revoked IDs and serials.
#[derive(Debug, Clone, Default)]
pub(crate) struct RevocationSet {
    ids: HashMap<SpiffeId, Entry>,
    serials: HashMap<CertSerial, Entry>,
}

/// One end of a connection: its SPIFFE ID and, for a verified peer, its certificate's serial.
#[derive(Debug, Clone, Copy)]
pub(crate) struct End<'a> {
    pub(crate) id: Option<&'a SpiffeId>,
    pub(crate) serial: Option<&'a CertSerial>,
}

impl RevocationSet {
    /// The set from the wire; entries that name nothing usable are skipped and returned as
    /// errors (they cannot match a connection).
    pub(crate) fn from_wire(list: &[Revocation]) -> (Self, Vec<String>) {
        let mut set = Self::default();
        let mut errors = Vec::new();
        for r in list {
            let entry = Entry {
                reason: r.reason.clone(),
                until: r.until,
            };
            match (r.spiffe_id.as_str(), r.serial.as_str()) {
                (id, "") if !id.is_empty() => match SpiffeId::parse(id) {
                    Ok(id) => {
                        set.ids.insert(id, entry);
                    }
                    Err(e) => errors.push(format!("revocation of {id:?}: {e}")),
                },
                ("", serial) if !serial.is_empty() => match CertSerial::parse(serial) {
                    Ok(s) => {
                        set.serials.insert(s, entry);
                    }
                    Err(e) => errors.push(format!("revocation of serial {serial:?}: {e}")),
                },
                _ => errors.push("a revocation without exactly one of spiffe_id and serial".into()),
            }
        }
        (set, errors)
    }

    /// How many entries.
    pub(crate) fn len(&self) -> usize {
        self.ids.len() + self.serials.len()
    }

    /// The first revocation in force at `now` that covers one of `ends`.
    pub(crate) fn check(&self, ends: &[End<'_>], now: i64) -> Option<Revoked> {
        if self.ids.is_empty() && self.serials.is_empty() {
            return None;
        }
        for end in ends {
            if let Some(id) = end.id {
                if let Some(e) = self.ids.get(id).filter(|e| e.in_force_at(now)) {
                    return Some(Revoked {
                        what: id.to_string(),
                        reason: e.reason.clone(),
                    });
                }
            }
            if let Some(serial) = end.serial {
                if let Some(e) = self.serials.get(serial).filter(|e| e.in_force_at(now)) {
                    let of = end.id.map_or(String::new(), |id| format!(" ({id})"));
                    return Some(Revoked {
                        what: format!("serial {serial}{of}"),
                        reason: e.reason.clone(),
                    });
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(id: &str, serial: &str, until: i64) -> Revocation {
        Revocation {
            spiffe_id: id.into(),
            serial: serial.into(),
            reason: "leaked".into(),
            until,
            ..Default::default()
        }
    }

    #[test]
    fn ids_and_serials_match_either_end_until_they_lapse() {
        let (set, errors) = RevocationSet::from_wire(&[
            wire("spiffe://td/bad", "", 0),
            wire("", "0A:BC", 100),
            wire("not an id", "", 0),
            wire("", "", 0),
            wire("spiffe://td/x", "ab", 0),
        ]);
        assert_eq!((set.len(), errors.len()), (2, 3), "{errors:?}");
        let bad = SpiffeId::parse("spiffe://td/bad").unwrap();
        let good = SpiffeId::parse("spiffe://td/good").unwrap();
        let leaked = CertSerial::parse("abc").unwrap();
        let fresh = CertSerial::parse("abd").unwrap();
        let end = |id, serial| End { id, serial };
        let r = set
            .check(&[end(Some(&good), None), end(Some(&bad), Some(&fresh))], 0)
            .unwrap();
        assert_eq!(r.to_string(), "identity revoked: spiffe://td/bad (leaked)");
        let r = set.check(&[end(Some(&good), Some(&leaked))], 99).unwrap();
        assert_eq!(r.what, "serial abc (spiffe://td/good)");
        assert!(
            set.check(&[end(Some(&good), Some(&leaked))], 100).is_none(),
            "lapsed"
        );
        assert!(
            set.check(&[end(Some(&good), Some(&fresh))], 0).is_none(),
            "another SVID"
        );
        assert!(set.check(&[end(None, None)], 0).is_none());
    }
}
