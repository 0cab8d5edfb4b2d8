//! Which iptables backend (nft or legacy) the namespace uses — a pure decision over what the
//! two `*-save` commands print, so a mismatch ("can't initialize table nat", rules nobody
//! sees) cannot happen silently.

use std::fmt;

use crate::family::Family;
use crate::settings::BackendChoice;

/// The kernel API our rules go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// nf_tables, via `iptables-nft-*`.
    Nft,
    /// x_tables, via `iptables-legacy-*`.
    Legacy,
}

/// The backend to use and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// The chosen backend.
    pub backend: Backend,
    /// Why, in words (printed by `svidcar init`).
    pub reason: String,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }

    /// `iptables-nft-save`, `ip6tables-legacy-save`, ...
    pub fn save_program(self, family: Family) -> String {
        format!("{}-{}-save", family.tool(), self.name())
    }

    /// `iptables-nft-restore`, `ip6tables-legacy-restore`, ...
    pub fn restore_program(self, family: Family) -> String {
        format!("{}-{}-restore", family.tool(), self.name())
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "iptables-{}", self.name())
    }
}

/// Chooses the backend from the full output of `iptables-legacy-save` and `iptables-nft-save`
/// (run without `-t`, which would create tables), `None` where that binary is missing.
///
/// The namespace's existing rules decide: whichever backend holds rules or user chains is the
/// one the rest of the pod (CNI, kube tooling) already uses, and our rules must sit in the same
/// one to take effect in a predictable order. When neither holds anything (a fresh pod) or both
/// do (ambiguous), nft wins: it is the default of every current distribution and the only
/// one some kernels still ship. An explicit choice overrides all of this. `None` means neither
/// binary exists.
pub fn choose_backend(
    choice: BackendChoice,
    legacy_save: Option<&str>,
    nft_save: Option<&str>,
) -> Option<Detection> {
    let pick = |backend, reason: &str| {
        Some(Detection {
            backend,
            reason: reason.to_string(),
        })
    };
    match choice {
        BackendChoice::Nft => return pick(Backend::Nft, "chosen by --backend"),
        BackendChoice::Legacy => return pick(Backend::Legacy, "chosen by --backend"),
        BackendChoice::Auto => {}
    }
    match (legacy_save, nft_save) {
        (None, None) => None,
        (Some(_), None) => pick(Backend::Legacy, "iptables-nft is not installed"),
        (None, Some(_)) => pick(Backend::Nft, "iptables-legacy is not installed"),
        (Some(legacy), Some(nft)) => match (in_use(legacy), in_use(nft)) {
            (true, false) => pick(
                Backend::Legacy,
                "the namespace already has legacy rules and no nft rules",
            ),
            (false, true) => pick(
                Backend::Nft,
                "the namespace already has nft rules and no legacy rules",
            ),
            (true, true) => pick(Backend::Nft, "both backends hold rules; nft preferred"),
            (false, false) => pick(
                Backend::Nft,
                "no rules in either backend yet; nft preferred",
            ),
        },
    }
}

/// Whether a save output holds any rule or user-defined chain. Tables holding only built-in
/// chains do not count: merely listing a legacy table creates it.
fn in_use(save: &str) -> bool {
    save.lines().map(str::trim).any(|l| {
        l.starts_with("-A ") || (l.starts_with(':') && l.split_whitespace().nth(1) == Some("-"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_NAT: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
    const RULES: &str = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j RETURN\nCOMMIT\n";
    const USER_CHAIN: &str = "*filter\n:INPUT ACCEPT [0:0]\n:CNI-FW - [0:0]\nCOMMIT\n";

    fn auto(legacy: Option<&str>, nft: Option<&str>) -> Option<Backend> {
        choose_backend(BackendChoice::Auto, legacy, nft).map(|d| d.backend)
    }

    #[test]
    fn existing_rules_decide() {
        assert_eq!(auto(Some(RULES), Some("")), Some(Backend::Legacy));
        assert_eq!(
            auto(Some(USER_CHAIN), Some(EMPTY_NAT)),
            Some(Backend::Legacy)
        );
        assert_eq!(auto(Some(EMPTY_NAT), Some(RULES)), Some(Backend::Nft));
    }

    #[test]
    fn nft_when_ambiguous() {
        assert_eq!(auto(Some(""), Some("")), Some(Backend::Nft));
        assert_eq!(auto(Some(EMPTY_NAT), Some(EMPTY_NAT)), Some(Backend::Nft));
        assert_eq!(auto(Some(RULES), Some(RULES)), Some(Backend::Nft));
    }

    #[test]
    fn missing_binaries_and_overrides() {
        assert_eq!(auto(None, Some(RULES)), Some(Backend::Nft));
        assert_eq!(auto(Some(""), None), Some(Backend::Legacy));
        assert_eq!(auto(None, None), None);
        let d = choose_backend(BackendChoice::Legacy, None, Some(RULES));
        assert_eq!(d.map(|d| d.backend), Some(Backend::Legacy));
    }

    #[test]
    fn program_names() {
        assert_eq!(Backend::Nft.save_program(Family::V4), "iptables-nft-save");
        assert_eq!(
            Backend::Legacy.restore_program(Family::V6),
            "ip6tables-legacy-restore"
        );
    }
}
